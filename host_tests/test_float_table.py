"""End to end, float32: every case of the table exported, compiled once on the host with
strict gcc flags through cffi, and compared with torch; and verify's torch reference (rebuilt
from the IR) compared with the captured program."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from c_checks import compiler_warnings, layout_problems
from models import Case, build, captured, flat_numpy, table, torch_run, traced
from quant_cases import random_inputs, torch_call
from tinyrnn.api import export_program
from tinyrnn.check import evaluate, torchref
from tinyrnn.check.simulate import batch_from_arrays, run_float
from tinyrnn.frontend.reader import read_program
from tinyrnn.numerics.helpers import TANH_MAX_ERROR
from tinyrnn.passes.lower import lower
from tinyrnn.targets.host import load_many

CASES = table()
TOL = 1e-5
# The torch reference rebuilt from the IR against the captured program: the IR folds
# b_ih + b_hh into one float32 bias, which moves each gate's pre-activation by about an ulp;
# over this table (outputs of order 1, up to 3 layers x 9 steps) the largest difference
# measured is 2.4e-7 (2 ulps at 1.0) and 144 of the 240 cases are bit-identical. 1e-6 leaves
# a margin of 4 and stays 10x below verify's default float32 tolerance.
REFERENCE_TOL = 1e-6
PLAN_TOL = 2.5 * TANH_MAX_ERROR
"""The plan (the C's arithmetic) against the IR's float model: they differ by the C's rational
tanh and sigmoid (|error| <= TANH_MAX_ERROR each), carried through the steps."""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Export every case into its own folder, then build all of them in one host module."""
    root = tmp_path_factory.mktemp("float_table")
    dirs = []
    for case in CASES:
        export_program(captured(case)[2], root / case.name, name=case.name, format="float32")
        dirs.append(root / case.name)
    return {case.id: c for case, c in zip(CASES, load_many(dirs))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_torch_reference_equals_the_captured_program(case: Case, compiled):
    """The example inputs tinyrnn's reader took from the saved archive equal the ones saved;
    verify's torch reference (torch modules rebuilt from the IR, tinyrnn.check.torchref) equals
    torch's own ExportedProgram.module() on the example; and, for the two-layer cases (every
    cell, direction, layout, bias and initial state), the eager model at another batch size
    and sequence length (the captured program is specialised to the example's shapes)."""
    model, args = build(case)
    exported, program = traced(case), captured(case)[2]
    for saved, read in zip(flat_numpy(args), program.example_inputs, strict=True):
        assert saved.dtype == read.dtype and np.array_equal(saved, read)  # tinyrnn's reader
    with torch.no_grad():
        expected = flat_numpy(exported.module()(*args))
    got = torchref.run(read_program(program), flat_numpy(args))
    assert [g.shape for g in got] == [e.shape for e in expected]
    for k, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g, e, rtol=0, atol=REFERENCE_TOL, err_msg=f"out{k}")
    if case.layers != 2:
        return
    arrays = random_inputs(case, model, args, 5, 17, case.seed + 7)
    got = torchref.run(read_program(program, 17), arrays)
    for k, (g, e) in enumerate(zip(got, torch_call(model, args, arrays))):
        np.testing.assert_allclose(g, e, rtol=0, atol=REFERENCE_TOL, err_msg=f"out{k} (5x17)")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_float_equals_torch(case: Case, compiled):
    model, args = build(case)
    expected = torch_run(model, args)
    # the float plan the C was printed from, run in numpy (float64), is the IR's float model
    # up to the C's activation approximations
    ir = read_program(captured(case)[2])
    batch = batch_from_arrays(ir, flat_numpy(args))
    planned = evaluate.run(lower(ir, case.name), batch.x, batch.h0, batch.c0)
    for k, (p, s) in enumerate(zip(planned, run_float(ir, batch)[0].outputs)):
        np.testing.assert_allclose(p, s, rtol=0, atol=PLAN_TOL, err_msg=f"plan, out{k}")
    got = compiled[case.id].run(*flat_numpy(args))
    assert len(got) == len(expected)
    scale = max(float(np.max(np.abs(e))) for e in expected)
    assert 0.05 < scale < 20, "outputs should be of order 1 for the tolerance to mean anything"
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, f"out{k}"
        np.testing.assert_allclose(g, e, rtol=0, atol=TOL, err_msg=f"out{k} of {case.id}")


STREAM_CASES = [c for c in CASES if not c.bidirectional and c.initial_state and c.bias]


@pytest.mark.parametrize("case", STREAM_CASES, ids=[c.id for c in STREAM_CASES])
def test_streaming_step_equals_run(case: Case, compiled):
    """Feeding one step at a time through NAME_step gives the whole-sequence result."""
    model, args = build(case)
    c = compiled[case.id]
    arrays = flat_numpy(args)
    whole = c.run(*arrays)[0]
    x = arrays[0] if case.batch_first else arrays[0].transpose(1, 0, 2)
    for b in range(case.batch):
        state = c.new_state()
        c.set_state(state, {"h0": arrays[1][:, b].reshape(-1),
                            **({"c0": arrays[2][:, b].reshape(-1)} if len(arrays) > 2 else {})})
        steps = np.stack([c.step(state, x[b, t]) for t in range(case.seq_len)])
        per_sample = whole[b] if case.batch_first else whole[:, b]
        np.testing.assert_array_equal(steps, per_sample)


def test_bidirectional_rejects_step_and_long_sequences(compiled):
    case = next(c for c in CASES if c.bidirectional)
    c = compiled[case.id]
    state = c.new_state()
    from tinyrnn.errors import TinyRNNError

    with pytest.raises(TinyRNNError, match="unsupported"):
        c.step(state, np.zeros(case.input_size, np.float32))
    too_long = {"x": np.zeros((case.seq_len + 1, case.input_size), np.float32)}
    with pytest.raises(TinyRNNError, match="max-seq-len is 9"):
        c.run_sample(too_long)


def test_generated_files_carry_nothing_unused_and_keep_their_shape(compiled):
    """Over the whole float32 table: no unused helper, macro or array (clang -Weverything, gcc
    -Wunused, host and Cortex-M); lines within the width, braces where C puts them, const."""
    folders = [c.folder for c in compiled.values()]
    problems = [problem for folder in folders for path in sorted(folder.iterdir())
                if path.suffix in (".c", ".h") for problem in layout_problems(path)]
    assert problems == [], problems[:20]
    assert compiler_warnings([folder / f"{folder.name}.c" for folder in folders]) == []
