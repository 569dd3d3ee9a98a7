"""Silero VAD end to end (issue 12 item 7): the plain-module rebuild equals the silero-vad
package's own model per frame, and the exported C (one vad_step per 32 ms frame, the 64-sample
context and the LSTMCell state in vad_state_t) equals the rebuild over more than 1,000 frames
of synthesized speech (eSpeak NG), speech in noise, tones, noise and silence: float32 within
1e-5; w8a16 and w16a16 equal the bit-exact integer reference on every frame and stay within a
stated distance of torch, and under QEMU on a Cortex-M4 and a Cortex-M7 equal to the host build.
One float32 compile, one for both integer formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant_cases import first_mismatch, reference_model, reference_run
from tinyrnn import vad_example as vad
from tinyrnn.api import export_program
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.io import assemble_outputs, split_inputs
from tinyrnn.ir import Carry, FrameConv1d, FramePad, LSTMLayer
from tinyrnn.targets import cross
from tinyrnn.targets.boards import load_board
from tinyrnn.targets.host import load, load_many
from tinyrnn.targets.profile import macs_per_step

pytestmark = pytest.mark.filterwarnings(  # the package loads its TorchScript model
    "ignore:`torch.jit.load` is deprecated:DeprecationWarning")



@pytest.fixture(scope="module")
def package():
    return vad.package_model()


@pytest.fixture(scope="module")
def module(package):
    return vad.rebuild(package)


@pytest.fixture(scope="module")
def frames():
    return vad.test_audio(min_frames=1000)


@pytest.fixture(scope="module")
def expected(module, frames):
    return vad.run_frames(module, frames)


def test_the_audio_has_speech_and_non_speech(frames, expected):
    assert len(frames) >= 1000 and frames.shape[1] == vad.FRAME
    speech = float(np.mean(expected > vad.THRESHOLD))
    assert 0.2 < speech < 0.9, speech


def test_the_rebuild_equals_the_package_model_per_frame(package, frames, expected):
    """The context and the state carried by both, from reset, frame by frame."""
    got = vad.run_package(package, frames)
    assert float(np.max(np.abs(got - expected))) <= 1e-5


@pytest.fixture(scope="module")
def exported(module, tmp_path_factory):
    example = (torch.zeros(1, vad.FRAME), torch.zeros(1, vad.CONTEXT),
               torch.zeros(1, vad.HIDDEN), torch.zeros(1, vad.HIDDEN))
    program = capture(module, example)
    folder = tmp_path_factory.mktemp("silero") / "c"
    export_program(program, folder, name="vad", format="float32")
    return read_program(program), load(folder)


def test_the_export_is_one_step_per_frame(exported, module):
    """512 samples in, one probability out; the context is carried (a Carry layer) and the
    LSTMCell is the one recurrent layer; the STFT basis is the package's, untouched."""
    model, _ = exported
    assert model.step_module and model.input_size == vad.FRAME
    assert model.layers[0] == Carry(vad.CONTEXT)
    assert [o.role for o in model.outputs] == ["sequence", "carry_n", "h_n", "c_n"]
    assert [type(layer) for layer in model.layers].count(LSTMLayer) == 1
    pad = next(layer for layer in model.layers if isinstance(layer, FramePad))
    assert (pad.mode, pad.left, pad.right, pad.length) == ("reflect", 0, 64, 576)
    stft = next(layer for layer in model.layers if isinstance(layer, FrameConv1d))
    np.testing.assert_array_equal(stft.weight.data, module.stft_conv.weight.detach().numpy())
    assert (stft.stride, stft.out_length) == (128, 4)


def test_float32_c_equals_torch_per_frame(exported, frames, expected):
    """vad_step from vad_reset over every frame: max abs probability error and the speech
    decisions at 0.5; vad_run over the same frames gives the same, and its context output is
    the last 64 samples."""
    _, c = exported
    state = c.new_state()
    got = np.array([c.step(state, frame)[0] for frame in frames], np.float32)
    error = float(np.max(np.abs(got - expected)))
    flips = int(np.sum((got > vad.THRESHOLD) != (expected > vad.THRESHOLD)))
    print(f"Silero VAD float32 over {len(frames)} frames: max abs probability error "
          f"{error:.2e}, decisions at 0.5 that differ: {flips}")
    assert error <= 1e-5 and flips == 0
    zeros = [np.zeros((1, n), np.float32) for n in (vad.CONTEXT, vad.HIDDEN, vad.HIDDEN)]
    y, context, _, _ = c.run(frames[None], *zeros)
    np.testing.assert_array_equal(y[0, :, 0], got)
    np.testing.assert_array_equal(context[0], frames[-1, -vad.CONTEXT:])


def test_the_profiler_counts_the_frame_convs(exported, module):
    """MACs of one frame: every frame conv (output positions x out x in x kernel), the
    LSTMCell's 4 gates over x and h."""
    _, c = exported
    lengths = {"stft_conv": 4, "conv1": 4, "conv2": 2, "conv3": 1, "conv4": 1, "final_conv": 1}
    convs = sum(n * getattr(module, name).weight.numel() for name, n in lengths.items())
    assert macs_per_step(c.manifest) == convs + 4 * vad.HIDDEN * (128 + vad.HIDDEN)


INT_FORMATS = ("w8a16", "w16a16")
CHUNKS = 9
"""The bit-exact check runs the frames as 9 sequences of 122 from reset, batched (the
reference steps the LSTMCell in numpy; one 1,098-frame stream would take 10 s per format)."""
AGAINST_TORCH = {"w16a16": (0.15, 0.002, 0), "w8a16": (0.8, 0.02, 20)}
"""Per format: the largest and the mean absolute probability error against torch over the
1,098 frames of one stream, and the decisions at 0.5 that may differ (measured: w16a16 0.11,
0.0007, 0; w8a16 0.75, 0.012, 13: int8 encoder weights, conv3's most of all)."""


@pytest.fixture(scope="module")
def integer(module, tmp_path_factory):
    """Both integer formats calibrated on test audio of another seed, one compile."""
    example = (torch.zeros(1, vad.FRAME), torch.zeros(1, vad.CONTEXT),
               torch.zeros(1, vad.HIDDEN), torch.zeros(1, vad.HIDDEN))
    program = capture(module, example)
    calibration = vad.step_arrays(vad.calibration_frames())
    root = tmp_path_factory.mktemp("silero_int")
    manifests = [export_program(program, root / fmt, name=f"vad_{fmt}", format=fmt,
                                calibration=calibration) for fmt in INT_FORMATS]
    compiled = load_many([root / fmt for fmt in INT_FORMATS])
    return {fmt: (program, m, c) for fmt, m, c in zip(INT_FORMATS, manifests, compiled)}


@pytest.mark.parametrize("fmt", INT_FORMATS)
def test_integer_c_equals_the_reference_bit_for_bit(fmt, integer, frames):
    """Every frame of the test audio (9 sequences of 122 frames from vad_reset): the
    probability, the carried context and the LSTMCell state the C returns equal the bit-exact
    integer reference's."""
    program, manifest, c = integer[fmt]
    steps = len(frames) // CHUNKS
    x = frames[:CHUNKS * steps].reshape(CHUNKS, steps, vad.FRAME)
    arrays = [x] + [np.zeros((CHUNKS, n), np.float32) for n in (vad.CONTEXT, vad.HIDDEN,
                                                                 vad.HIDDEN)]
    _, ref_float, _, _ = reference_run(reference_model(program, manifest), c.interface, arrays)
    got = c.run(*arrays)
    for k, (g, r) in enumerate(zip(got, ref_float)):
        assert np.array_equal(g, r), f"out{k}: {first_mismatch(g, r)}"
    assert CHUNKS * steps >= 1000


@pytest.mark.parametrize("fmt", INT_FORMATS)
def test_integer_c_tracks_torch(fmt, integer, frames, expected):
    """vad_step from vad_reset over one stream of every frame, against the rebuild."""
    _, _, c = integer[fmt]
    state = c.new_state()
    got = np.array([c.step(state, frame)[0] for frame in frames], np.float32)
    error = np.abs(got - expected)
    flips = int(np.sum((got > vad.THRESHOLD) != (expected > vad.THRESHOLD)))
    print(f"Silero VAD {fmt} over {len(frames)} frames: max abs probability error "
          f"{error.max():.3f}, mean {error.mean():.4f}, decisions at 0.5 that differ: {flips}")
    top, mean, most = AGAINST_TORCH[fmt]
    assert error.max() <= top and error.mean() <= mean and flips <= most


@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500"], ids=["m4", "m7"])
def test_the_boards_equal_the_host_bit_for_bit(board, exported, integer, frames, tmp_path):
    """The float32 and both integer exports in one image under QEMU (Cortex-M4F: the DSP
    helpers and the FPU window dots; Cortex-M7), vad_run over 24 frames from reset: the
    probabilities, the context and the state equal the host build's bit for bit."""
    arrays = [frames[None, :24]] + [np.zeros((1, n), np.float32)
                                    for n in (vad.CONTEXT, vad.HIDDEN, vad.HIDDEN)]
    builds = [("float32", exported[1])] + [(fmt, integer[fmt][2]) for fmt in INT_FORMATS]
    jobs, expected = [], []
    for _, c in builds:
        model = cross.ExportedModel.load(c.folder)
        jobs.append(cross.ModelInputs(model, tuple(split_inputs(model.interface, arrays))))
        expected.append(c.run(*arrays))
    result = cross.run_qemu(cross.build(jobs, load_board(board), tmp_path), timeout=120)
    for (fmt, _), job, outs, want in zip(builds, jobs, result.outputs, expected, strict=True):
        got = assemble_outputs(job.model.interface, outs, 24)
        for k, (g, w) in enumerate(zip(got, want)):
            assert np.array_equal(g, w), f"{fmt} out{k} on {board}: {first_mismatch(g, w)}"


def test_verify_names_every_frame_layer(module, integer, frames, tmp_path):
    """`tinyrnn verify` of the w8a16 export on 16 frames: the C equals the reference, and the
    per-layer lines name the frame layers (the carried context, the cat, the frame pad, the
    convs over each frame) rather than failing on them."""
    from tinyrnn.commands import verify
    from tinyrnn.frontend.reader import archive_bytes, trace

    example = (torch.zeros(1, vad.FRAME), torch.zeros(1, vad.CONTEXT),
               torch.zeros(1, vad.HIDDEN), torch.zeros(1, vad.HIDDEN))
    (tmp_path / "vad.pt2").write_bytes(archive_bytes(trace(module, example)))
    result = verify(tmp_path / "vad.pt2", integer["w8a16"][2].folder,
                    vad.step_arrays(frames[:16]))
    assert result.ok, result.text()
    text = result.text()
    for phrase in ("carried value", "cat of values", "reflect padding of each frame",
                   "Conv1d stft_conv (over each frame)", "lstm lstm_cell"):
        assert phrase in text, (phrase, text)
