"""nn.LSTMCell/GRUCell/RNNCell as a step module and as a loop over time (issue 12 item 1), in
three layers: torch -> IR (the IR equals the equivalent nn.LSTM/GRU/RNN model's), the safe
reader on torch.export.save's archive, and end to end (the C against torch in float32, against
the bit-exact reference in the integer formats, at another length than the archive's); the
refused forms and the whole-model error list (item 6); verify and report at any length with
the program saved beside the C (item 5)."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch

import tinyrnn
from cell_models import (
    CELL_KINDS,
    HIDDEN,
    INPUT,
    Equivalent,
    Form,
    PartialLoop,
    PerStepHead,
    PerStepWeights,
    ResetMidLoop,
    SileroStructure,
    StatesOutOfOrder,
    build,
    equivalent_example,
    sequence_inputs,
    torch_sequence,
)
from quant_cases import first_mismatch, reference_model, reference_outputs, sqnr_db
from tinyrnn.api import export_program
from tinyrnn.cli import main
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.pt2 import read_archive
from tinyrnn.frontend.reader import archive_bytes, capture, from_exported, read_program, trace
from tinyrnn.ir import Dense, RecurrentLayer
from tinyrnn.targets.host import load_many

# every kind as a step module and as a loop; the loop's variants (a head on the last h, an
# initial state argument, time-first x) and no bias spread over the kinds
FORMS = [Form(kind, form) for kind in CELL_KINDS for form in ("step", "loop")]
FORMS += [Form("lstm", "loop_last"), Form("rnn_relu", "loop_last"), Form("lstm", "loop_h0"),
          Form("gru", "loop_h0"), Form("lstm", "loop_tf"), Form("rnn_tanh", "loop_tf"),
          Form("lstm", "loop", bias=False), Form("gru", "step", bias=False),
          Form("gru", "stacked"), Form("lstm", "stacked")]
INTEGER_FORMS = [f for f in FORMS if f.form in ("step", "loop") and f.bias]
TOL = 1e-5
STEPS = 11  # the archives hold 6 steps: the C and the reference run at another length
CELL_TARGETS = {"lstm": "aten.lstm_cell.default", "gru": "aten.gru_cell.default",
                "rnn_tanh": "aten.rnn_tanh_cell.default", "rnn_relu": "aten.rnn_relu_cell.default"}


# ---------------------------------------------------------------------------------------------
# torch -> IR


def _assert_same_layers(got, want) -> None:
    assert [type(layer) for layer in got] == [type(layer) for layer in want]
    for g, w in zip(got, want):
        if isinstance(g, RecurrentLayer):
            assert (g.kind, g.input_size, g.hidden_size, g.state_size, g.num_directions) == (
                w.kind, w.input_size, w.hidden_size, w.state_size, w.num_directions)
            for gd, wd in zip(g.directions, w.directions, strict=True):
                assert gd.reverse == wd.reverse and gd.w_proj is None and wd.w_proj is None
                for gg, wg in zip(gd.gates, wd.gates, strict=True):
                    assert gg.name == wg.name
                    for ga, wa in zip(gg.accumulators, wg.accumulators, strict=True):
                        assert ga.name == wa.name
                        for field in ("w_x", "w_h", "bias"):
                            a, b = getattr(ga, field), getattr(wa, field)
                            assert (a is None) == (b is None), f"{ga.name}.{field}"
                            if a is not None:
                                assert np.array_equal(a.data, b.data), f"{ga.name}.{field}"
        elif isinstance(g, Dense):
            assert np.array_equal(g.weight.data, w.weight.data)
            assert np.array_equal(g.bias.data, w.bias.data)
        else:
            assert g == w  # Activation, SelectStep: frozen values


@pytest.mark.parametrize("f", FORMS, ids=lambda f: f.id)
def test_the_ir_equals_the_equivalent_recurrent_modules(f: Form):
    """A cell (step or loop) gives the layers of nn.LSTM/GRU/RNN with the cell's weights, and
    the interface of docs/c-api.md: x a sequence (B, T, I), states (B, H) in and out."""
    module, args = build(f)
    model = read_program(capture(module, args))
    equivalent = Equivalent(f, module.cell, module.fc, getattr(module, "cell2", None)).eval()
    want = read_program(capture(equivalent, (equivalent_example(f),)))
    _assert_same_layers(model.layers, want.layers)
    # each cell is a state group of its own (stacked cells: two), one torch module is one
    groups = [(g.cell, g.state_size, g.hidden_size, g.rows) for g in model.groups]
    assert groups == [(want.groups[0].cell, HIDDEN, HIDDEN, 1)] * len(want.recurrent)
    assert model.step_module == (f.form == "step")
    batch = 3
    x = model.inputs[0]
    if f.form == "step":
        assert (x.role, x.torch_shape, x.batch_axis, x.time_axis) == ("x", (batch, 1, INPUT), 0, 1)
    else:
        assert (x.role, x.torch_shape, x.batch_axis, x.time_axis) == (
            want.inputs[0].role, tuple(a.shape for a in args)[0], want.inputs[0].batch_axis,
            want.inputs[0].time_axis)
    roles = ("h0", "c0")[:f.state_count]
    states_in = [(s.role, s.torch_shape, s.batch_axis, s.size) for s in model.inputs[1:]]
    if f.form in ("step", "loop_h0"):
        assert states_in == [(r, (batch, HIDDEN), 0, HIDDEN) for r in roles]
    else:
        assert states_in == []
    outs = [(o.role, o.batch_axis, o.size) for o in model.outputs]
    if f.form == "loop_last":
        assert outs == [("vector", 0, 0)]
    else:
        assert outs[0][0] == "sequence"
        assert outs[1:] == [(r, 0, HIDDEN) for r in ("h_n", "c_n")[:f.state_count]]


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_the_safe_reader_reads_the_saved_archive_of_each_form(kind):
    """torch.export.save's archive (bytes) read by tinyrnn's reader: the unrolled loop's
    cell calls, the weights and the example inputs equal what torch saved."""
    for form in ("loop", "step"):
        module, args = build(Form(kind, form))
        buffer = io.BytesIO()
        torch.export.save(torch.export.export(module, args), buffer)
        program = read_archive(buffer.getvalue(), "test")
        targets = [n.target for n in program.graph.nodes]
        assert targets.count(CELL_TARGETS[kind]) == (6 if form == "loop" else 1)
        for name, tensor in module.state_dict().items():
            assert np.array_equal(program.weights[name], tensor.numpy()), name
        for got, want in zip(program.example_inputs, args, strict=True):
            assert np.array_equal(got, want.numpy())
        read_program(program)  # and the frontend takes it


def test_the_c_does_not_grow_with_the_loop_length(tmp_path):
    """The unrolled loop is one recurrent layer: 3 and 24 steps give the same sizes."""
    sizes = []
    for steps in (3, 24):
        module, args = build(Form("lstm", "loop"), steps=steps)
        sizes.append(tinyrnn.export(module, args, tmp_path / str(steps), format="w8a16",
                                    calibration=sequence_inputs(Form("lstm", "loop"), 4, 9, 1)
                                    )["sizes"])
    assert sizes[0] == sizes[1]


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every form in float32 and the step/loop forms in w8a16 and w16a16, one host build."""
    root = tmp_path_factory.mktemp("cells")
    jobs, dirs = [], []
    for f in FORMS:
        module, args = build(f)
        program = from_exported(trace(module, args))
        formats = ("float32", "w8a16", "w16a16") if f in INTEGER_FORMS else ("float32",)
        for fmt in formats:
            name = f"c_{f.id.replace('-', '_')}_{fmt}"
            calibration = sequence_inputs(f, 16, 20, 99) if fmt != "float32" else None
            manifest = export_program(program, root / name, name=name, format=fmt,
                                      calibration=calibration)
            jobs.append(((f.id, fmt), module, program, manifest))
            dirs.append(root / name)
    return {key: (module, program, manifest, c)
            for (key, module, program, manifest), c in zip(jobs, load_many(dirs))}


@pytest.mark.parametrize("f", FORMS, ids=lambda f: f.id)
def test_float_equals_torch_at_another_length(f: Form, compiled):
    module, _, _, c = compiled[(f.id, "float32")]
    arrays = sequence_inputs(f, 3, STEPS, 7)
    expected = torch_sequence(f, module, arrays)
    got = c.run(*arrays)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for k, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g, e, rtol=0, atol=TOL, err_msg=f"out{k}")


@pytest.mark.parametrize("fmt", ("w8a16", "w16a16"))
@pytest.mark.parametrize("f", INTEGER_FORMS, ids=lambda f: f.id)
def test_integer_equals_the_reference_and_tracks_torch(f: Form, fmt: str, compiled):
    module, program, manifest, c = compiled[(f.id, fmt)]
    arrays = sequence_inputs(f, 3, STEPS, 8)
    _, ref = reference_outputs(reference_model(program, manifest), manifest["interface"],
                               arrays)
    got = c.run(*arrays)
    for k, (g, r, t) in enumerate(zip(got, ref, torch_sequence(f, module, arrays),
                                      strict=True)):
        assert np.array_equal(g, r), f"out{k}: {first_mismatch(g, r)}"
        assert sqnr_db(t, g) > (30 if fmt == "w8a16" else 50), f"out{k}"


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_step_module_streams_through_name_step(kind, compiled):
    """NAME_step of a step module, called once per step with the state in NAME_state_t,
    returns what the torch step module returns at each step."""
    f = Form(kind, "step")
    module, _, _, c = compiled[(f.id, "float32")]
    x, *state = sequence_inputs(f, 1, STEPS, 9)
    expected = torch_sequence(f, module, [x, *state])[0][0]
    s = c.new_state()
    c.set_state(s, {"h0": state[0][0], **({"c0": state[1][0]} if kind == "lstm" else {})})
    got = np.stack([c.step(s, x[0, t]) for t in range(STEPS)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------
# verify and report at any length, with the program saved beside the C (item 5)


@pytest.mark.parametrize("f, fmt", [(Form("gru", "loop_h0"), "float32"),
                                    (Form("lstm", "step"), "w8a16")], ids=lambda v: str(v))
def test_verify_at_another_length_from_the_saved_program(f: Form, fmt: str, tmp_path, capsys):
    module, args = build(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tinyrnn.api.CalibrationWarning)
        tinyrnn.export(module, args, tmp_path / "c", format=fmt, name="m", save_program=True)
    # NAME_kernels.S holds the assembly kernels of the recurrent layers (every format)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        ["m.c", "m.h", "m.json", "m.pt2", "m_kernels.S"])
    arrays = sequence_inputs(f, 2, 13, 3)
    np.savez(tmp_path / "x.npz", **{f"in{i}": a for i, a in enumerate(arrays)})
    pt2, out = str(tmp_path / "c" / "m.pt2"), str(tmp_path / "c")
    capsys.readouterr()
    assert main(["verify", pt2, out, "--input", str(tmp_path / "x.npz")]) == 0
    text = capsys.readouterr().out
    assert "out0 " in text and "(2, 13, 3)" in text and "PASS" in text.splitlines()[-1]
    if fmt == "float32":
        return
    assert main(["report", pt2, out, "--input", str(tmp_path / "x.npz"), "-o",
                 str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").exists()


def test_save_program_writes_nothing_when_the_export_fails(tmp_path):
    module, args = build(Form("gru", "step"))
    with pytest.raises(TinyRNNError, match="unknown format"):
        tinyrnn.export(module, args, tmp_path / "c", format="int4", save_program=True)
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------
# Refused forms and the whole-model error list (item 6)


def _x(steps: int = 4):
    return (torch.randn(2, steps, INPUT),)


def _step_args():
    return (torch.randn(2, INPUT), torch.randn(2, HIDDEN), torch.randn(2, HIDDEN))


@pytest.mark.parametrize("module, args, module_path, phrases", [
    (PerStepWeights(), _x(), "cells.1 (GRUCell)",
     ["other weights at each step", "use one cell for every step"]),
    (ResetMidLoop(), _x(), "cell (GRUCell)",
     ["zero state at step 2", "NAME_reset between sequences"]),
    (PerStepHead(), _x(), "cell (RNNCell)",
     ["per-step head", "torch.stack(outs, 1)", "apply the head to the stacked sequence"]),
    (PartialLoop(), _x(), "cell (LSTMCell)", ["runs 3 of the 4 steps of x"]),
    (StatesOutOfOrder(), _step_args(), "cell (LSTMCell)",
     ["in the order of its state inputs: (..., new h, new c)", "returns (new c, new h) last"]),
], ids=["per-step-weights", "reset-mid-loop", "per-step-head", "partial-loop",
        "states-out-of-order"])
def test_cell_forms_that_do_not_fit_are_refused_with_a_rewrite(module, args, module_path,
                                                               phrases):
    with pytest.raises(TinyRNNError) as info:
        read_program(capture(module.eval(), args))
    text = str(info.value)
    items = [line for line in text.splitlines() if line.startswith("  - ")]
    assert len(items) == 1 and "uses 1 operation(s)" in text, text
    assert f" at {module_path}, " in items[0] and "cell_models.py" in items[0]
    for phrase in phrases:
        assert phrase in items[0], phrase


def test_a_whole_silero_structure_reads_and_exports_in_the_integer_formats(tmp_path, capsys):
    """Silero VAD's 16 kHz branch rebuilt from plain modules: the whole model reads (a frame
    front-end in a step module: reflect pad, STFT conv, magnitude, strided convs, the LSTMCell
    step, the k=1 conv head; host_tests/test_silero.py runs it against torch) and exports in
    w8a16, every frame layer with its integer form (host_tests/test_frames.py checks those
    against the reference)."""
    module = SileroStructure().eval()
    args = (torch.randn(2, 576), torch.zeros(2, 128), torch.zeros(2, 128))
    (tmp_path / "vad.pt2").write_bytes(archive_bytes(trace(module, args)))
    model = read_program(read_archive((tmp_path / "vad.pt2").read_bytes(), "vad"))
    assert model.step_module and model.input_size == 576
    calibration = tmp_path / "cal.npz"
    np.savez(calibration, in0=np.random.default_rng(0).normal(size=(4, 3, 576)).astype(
        np.float32), in1=np.zeros((4, 128), np.float32), in2=np.zeros((4, 128), np.float32))
    assert main(["export", str(tmp_path / "vad.pt2"), "--out", str(tmp_path / "c"),
                 "--format", "w8a16", "--calibration", str(calibration)]) == 0, \
        capsys.readouterr().err
    manifest = json.loads((tmp_path / "c" / "model.json").read_text())
    kinds = [layer["kind"] for layer in manifest["quantization"]["layers"]]
    assert kinds.count("frame_conv1d") == 6 and "frame_pad" in kinds and "hypot" in kinds
