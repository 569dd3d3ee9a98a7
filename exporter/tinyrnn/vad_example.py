"""The second built-in example: Silero VAD (pip package ``silero-vad``, MIT licence), the 16 kHz
branch rebuilt from plain torch modules with the package's own weights, exported as ONE step
per 32 ms frame (512 samples in, a speech probability out; the 64-sample context and the
LSTMCell state live in ``NAME_state_t``), compiled on the host and compared with torch over
synthesized test audio (eSpeak NG speech, noise, tones and silence).

``tinyrnn example --model silero-vad --out DIR [--format float32|w8a16|w16a16]`` runs it
(``pip install tinyrnn[silero]``); the integer formats calibrate on test audio of another seed
and check the C against the bit-exact integer reference as well.
"""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import TinyRNNError

RATE = 16_000
FRAME = 512  # samples per step (32 ms)
CONTEXT = 64  # samples of the frame before, carried
HIDDEN = 128
THRESHOLD = 0.5  # speech / non-speech
# The rebuild's parameters in the order of the package model's state_dict (its TorchScript
# module holds the 16 kHz branch first: the STFT basis, the four encoder convs, the LSTMCell,
# the decoder's k=1 conv).
WEIGHT_NAMES = (
    "stft_conv.weight", "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
    "conv3.weight", "conv3.bias", "conv4.weight", "conv4.bias", "lstm_cell.weight_ih",
    "lstm_cell.weight_hh", "lstm_cell.bias_ih", "lstm_cell.bias_hh", "final_conv.weight",
    "final_conv.bias",
)


class SileroVAD16k(nn.Module):
    """``forward(x (B, 512), context (B, 64), h (B, 128), c (B, 128)) -> (probability (B, 1),
    new context, h, c)``: one 32 ms frame of Silero VAD's 16 kHz branch."""

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, 256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, HIDDEN)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, x, context, h, c):
        x = torch.cat([context, x], dim=1)
        new_context = x[:, -CONTEXT:]
        x = F.pad(x.unsqueeze(1), (0, CONTEXT), mode="reflect")
        x = self.stft_conv(x)
        x = torch.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        h, c = self.lstm_cell(x.squeeze(-1), (h, c))
        y = torch.sigmoid(self.final_conv(F.relu(h.unsqueeze(-1))))
        return y.squeeze(1).mean(dim=1, keepdim=True), new_context, h, c


def package_model():
    """The ``silero-vad`` package's own model (TorchScript, loaded by the package)."""
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        raise TinyRNNError("the Silero VAD example needs the silero-vad package: "
                           "pip install 'tinyrnn[silero]'") from None
    with warnings.catch_warnings():  # the package loads its TorchScript model
        warnings.filterwarnings("ignore", message="`torch.jit.load` is deprecated")
        return load_silero_vad()


def rebuild(package=None) -> SileroVAD16k:
    """The plain-module rebuild with the package model's weights (not the safetensors file
    bundled beside it, which holds other weights)."""
    package = package if package is not None else package_model()
    values = list(package._model.state_dict().values())[:len(WEIGHT_NAMES)]
    module = SileroVAD16k().eval()
    state = dict(zip(WEIGHT_NAMES, (v.detach().clone().float() for v in values)))
    module.load_state_dict(state)
    return module


def run_frames(module: nn.Module, frames: np.ndarray) -> np.ndarray:
    """The rebuild called once per frame (``frames`` (T, 512)) with the context and the state
    carried from zeros: the probabilities (T,)."""
    context, h, c = torch.zeros(1, CONTEXT), torch.zeros(1, HIDDEN), torch.zeros(1, HIDDEN)
    out = np.empty(len(frames), np.float32)
    with torch.no_grad():
        for t, frame in enumerate(frames):
            p, context, h, c = module(torch.from_numpy(frame)[None], context, h, c)
            out[t] = p.item()
    return out


def run_package(package, frames: np.ndarray) -> np.ndarray:
    """The package model on the same frames (its own context and state from reset)."""
    package.reset_states()
    with torch.no_grad():
        return np.array([package(torch.from_numpy(f)[None], RATE).item() for f in frames],
                        np.float32)


# ---------------------------------------------------------------------------------------------
# Test audio: eSpeak NG speech (espeakng-loader ships the library and its data), noise, tones
# and silence, at 16 kHz


SENTENCES = (
    b"The quick brown fox jumps over the lazy dog.",
    b"Voice activity detection runs on a small microcontroller.",
    b"Please call Stella and ask her to bring these things with her from the store.",
    b"Six spoons of fresh snow peas, five thick slabs of blue cheese.",
)


def speak(text: bytes) -> np.ndarray:
    """One sentence synthesized by eSpeak NG, resampled to 16 kHz, float32 in [-1, 1]."""
    try:
        import espeakng_loader
        from scipy.signal import resample_poly
    except ImportError:
        raise TinyRNNError("the Silero VAD test audio needs espeakng-loader and scipy: "
                           "pip install 'tinyrnn[silero]'") from None
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                     ctypes.c_void_p)
    chunks: list[np.ndarray] = []

    def collect(wav, count, _events):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    keep = callback_type(collect)
    rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise TinyRNNError("eSpeak NG did not initialize")
    lib.espeak_SetSynthCallback(keep)
    lib.espeak_SetVoiceByName(b"en")
    lib.espeak_Synth(text, len(text) + 1, 0, 0, 0, 0, None, None)
    lib.espeak_Synchronize()
    samples = np.concatenate(chunks).astype(np.float64) / 32768.0
    g = int(np.gcd(RATE, rate))
    return resample_poly(samples, RATE // g, rate // g).astype(np.float32)


def test_audio(min_frames: int = 1000, seed: int = 0) -> np.ndarray:
    """Speech, speech in noise, tones, noise and silence in turn, at least ``min_frames``
    frames: (T, 512) float32."""
    rng = np.random.default_rng(seed)
    speech = [speak(text) for text in SENTENCES]
    parts: list[np.ndarray] = []
    k = 0
    while sum(len(p) for p in parts) < min_frames * FRAME:
        s = speech[k % len(speech)]
        t = np.arange(RATE) / RATE
        parts += [
            0.001 * rng.normal(size=RATE // 2),  # near silence
            0.8 * s,
            0.2 * np.sin(2 * np.pi * (300 + 200 * k) * t),  # a tone
            0.8 * s + 0.05 * rng.normal(size=len(s)),  # speech in noise
            0.1 * rng.normal(size=RATE // 2),  # noise
            np.zeros(RATE // 4),
        ]
        k += 1
    audio = np.concatenate(parts).astype(np.float32)
    frames = len(audio) // FRAME
    return audio[:frames * FRAME].reshape(frames, FRAME)


# ---------------------------------------------------------------------------------------------
# The example


FORMATS = ("float32", "w8a16", "w16a16")


def main(out_dir: Path, board: str = "mps2-an386", fmt: str = "float32",
         layer_formats: dict[str, str] | None = None) -> int:
    """Rebuild, export, compile on the host, compare with torch per frame; report. OK: float32
    within 1e-5 of torch with no decision flipped; an integer format equal to the bit-exact
    integer reference on every frame (its error against torch is printed, not judged)."""
    from .outputs import output_folder
    from .passes.quantize import check_layer_formats

    if fmt not in FORMATS:
        raise TinyRNNError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_layer_formats(fmt, layer_formats)  # before the work: a float32 export takes none
    with output_folder(out_dir, "--out") as work:
        return _run(work, Path(out_dir), fmt, layer_formats)


def calibration_frames() -> np.ndarray:
    """The integer formats' calibration data: test audio of another seed (other noise and
    tones, the same sentences), 400 frames."""
    return test_audio(min_frames=400, seed=1)


def step_arrays(frames: np.ndarray) -> list[np.ndarray]:
    """The step module's arguments for ``frames`` (T, 512) as one sequence: x (1, T, 512), the
    context, h and c at zero (the C starts the context at zero)."""
    return [frames[None]] + [np.zeros((1, n), np.float32) for n in (CONTEXT, HIDDEN, HIDDEN)]


def reference_probabilities(program, manifest: dict, frames: np.ndarray) -> np.ndarray:
    """The bit-exact integer reference (check/reference.py) of an integer export over
    ``frames`` from reset, as the float API returns its probabilities (T,)."""
    from .check import reference
    from .check.simulate import batch_from_arrays
    from .frontend.reader import read_program
    from .passes.quantize import formats_from_manifest, quantize

    model = read_program(program)
    q = quantize(model, manifest["format"], formats_from_manifest(model,
                                                                  manifest["quantization"]))
    batch_q = reference.quantize_batch(q, batch_from_arrays(model, step_arrays(frames)))
    out = reference.run(q, batch_q).outputs[0]
    return reference.dequantize(q, 0, out)[0, :, 0]


def _run(out_dir: Path, shown: Path, fmt: str,
         layer_formats: dict[str, str] | None = None) -> int:
    from .api import export_program
    from .frontend.reader import archive_bytes, load_program, trace
    from .targets.host import load

    package = package_model()
    module = rebuild(package)
    frames = test_audio()
    np.save(out_dir / "frames.npy", frames)
    expected = run_frames(module, frames)
    vs_package = float(np.max(np.abs(expected - run_package(package, frames))))
    example = (torch.zeros(1, FRAME), torch.zeros(1, CONTEXT), torch.zeros(1, HIDDEN),
               torch.zeros(1, HIDDEN))
    archive = out_dir / "silero_vad.pt2"
    archive.write_bytes(archive_bytes(trace(module, example)))
    print(f"rebuilt Silero VAD 16 kHz from plain modules with the silero-vad package's "
          f"weights; equals the package model per frame within {vs_package:.1e} over "
          f"{len(frames)} frames; saved {shown / archive.name}")
    c_dir = out_dir / "c"
    program = load_program(archive)
    calibration = None
    if fmt != "float32":
        calibration = step_arrays(calibration_frames())
        print(f"calibrating {fmt} on {calibration[0].shape[1]} frames of test audio of "
              "another seed")
    manifest = export_program(program, c_dir, format=fmt, name="vad", calibration=calibration,
                              layer_formats=layer_formats)
    sizes = manifest["sizes"]
    given = ", ".join([fmt, *(f"{k}={v}" for k, v in sorted((layer_formats or {}).items()))])
    print(f"exported {shown / c_dir.name}/vad.c, vad.h, vad.json ({given}, one vad_step per "
          f"32 ms frame; weights {sizes['weights_bytes']} B, state {sizes['state_bytes']} B, "
          f"scratch {sizes['scratch_bytes']} B)")
    c = load(c_dir)
    state = c.new_state()
    got = np.array([c.step(state, frame)[0] for frame in frames], np.float32)
    error = float(np.max(np.abs(got - expected)))
    flips = int(np.sum((got > THRESHOLD) != (expected > THRESHOLD)))
    speech = int(np.sum(expected > THRESHOLD))
    print(f"compiled on the host with gcc -std=c99 -O2 -Wall -Wextra -Werror -pedantic; "
          f"vad_step over {len(frames)} frames of synthesized speech, noise, tones and "
          f"silence ({speech} speech frames by torch):")
    exact = True
    if fmt != "float32":
        ref = reference_probabilities(program, manifest, frames)
        exact = bool(np.array_equal(got, ref))
        print(f"  the C equals the bit-exact integer reference on every frame: "
              f"{'yes' if exact else 'NO'}")
    print(f"  max abs probability error vs torch {error:.2e}; decisions at {THRESHOLD} that "
          f"differ: {flips}")
    # float32 must match torch; an integer format must equal its bit-exact reference (its
    # distance from torch is the format's, reported above)
    ok = exact and vs_package <= 1e-5
    if fmt == "float32":
        ok = ok and error <= 1e-5 and flips == 0
    print("RESULT: OK" if ok else "RESULT: MISMATCH")
    return 0 if ok else 1
