"""End to end, w8a16 and w16a16: every case of the table exported with calibration data,
compiled once (all 480 models in one host module), and compared with the bit-exact reference
(every element of every output, float API and int16 API) and with torch (SQNR)."""

from __future__ import annotations

import numpy as np
import pytest

from c_checks import layout_problems, unused_warnings
from models import CELLS, Case, captured, table
from quant_cases import (
    FORMATS,
    MIN_SQNR_DB,
    SEQ_LEN,
    first_mismatch,
    random_inputs,
    reference_model,
    reference_run,
    sqnr_db,
    torch_call,
)
from tinyrnn import evaluate
from tinyrnn.api import export_program
from tinyrnn.host import load_many
from tinyrnn.lower import lower

CASES = table()
PARAMS = [(c, f) for c in CASES for f in FORMATS]
IDS = [f"{c.id}-{f}" for c, f in PARAMS]
TEST_BATCH = 4
FOLDERS: list = []  # every export of the table, filled by the fixture


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Capture each case once, export it in both formats (calibrated on 16 random sequences
    drawn apart from the test data) and build all of them in one host module."""
    root = tmp_path_factory.mktemp("quant_table")
    dirs, keys, info = [], [], {}
    for case in CASES:
        model, args, program = captured(case)
        calibration = random_inputs(case, model, args, 16, SEQ_LEN, case.seed + 1000)
        for fmt in FORMATS:
            name = f"{case.name}_{fmt}"
            manifest = export_program(program, root / name, name=name, format=fmt,
                                      max_seq_len=SEQ_LEN, calibration=calibration)
            dirs.append(root / name)
            FOLDERS.append(root / name)
            keys.append((case.id, fmt))
            info[(case.id, fmt)] = (model, args, program, manifest)
    compiled = dict(zip(keys, load_many(dirs)))
    return {key: (compiled[key], *info[key]) for key in keys}


SQNR: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def sqnr_summary():
    """After the module: print the min SQNR per cell kind and format (shown with -s)."""
    yield
    if SQNR:
        print("\nmin SQNR against torch over the table (dB):")
        for fmt in FORMATS:
            row = ", ".join(f"{cell} {SQNR[(cell, fmt)]:.1f}" for cell in CELLS
                            if (cell, fmt) in SQNR)
            print(f"  {fmt}: {row}")


@pytest.mark.parametrize(("case", "fmt"), PARAMS, ids=IDS)
def test_c_equals_reference_and_tracks_torch(case: Case, fmt: str, exported):
    compiled, model, args, program, manifest = exported[(case.id, fmt)]
    arrays = random_inputs(case, model, args, TEST_BATCH, SEQ_LEN, case.seed + 2000)
    q = reference_model(program, manifest)
    ref_int, ref_float, batch_q, trace = reference_run(q, compiled.interface, arrays)

    # the plan the C was printed from, run in numpy with every kernel family's weights
    plan = lower(q.model, manifest["name"], q)
    for k, (g, r) in enumerate(zip(evaluate.run(plan, batch_q.x, batch_q.h0, batch_q.c0),
                                   trace.outputs)):
        assert np.array_equal(g, r), f"plan evaluator, out{k}: {first_mismatch(g, r)}"

    # the float API: the reference's integers, converted exactly
    got = compiled.run(*arrays)
    assert len(got) == len(ref_float)
    for k, (g, r) in enumerate(zip(got, ref_float)):
        assert g.shape == r.shape, f"out{k}"
        assert np.array_equal(g, r), f"out{k}: {first_mismatch(g, r)}"

    # the int16 API, sample by sample, against the reference's integers
    for b in range(TEST_BATCH):
        sample_q = {"x": batch_q.x[b]}
        if batch_q.h0 is not None:
            sample_q["h0"] = batch_q.h0[b]
        if batch_q.c0 is not None:
            sample_q["c0"] = batch_q.c0[b]
        outs_q = compiled.run_sample_q(sample_q)
        per_sample_ref = [np.take(r, b, axis=spec["batch_axis"]) for r, spec in
                          zip(ref_int, compiled.interface["outputs"])]
        for k, (g, r) in enumerate(zip(outs_q, per_sample_ref)):
            want = np.reshape(r, -1)
            assert np.array_equal(g, want), (
                f"sample {b} out{k} (int16 API): {first_mismatch(g, want)}")

    # against torch
    expected = torch_call(model, args, arrays)
    for k, (g, e) in enumerate(zip(got, expected)):
        db = sqnr_db(e, g)
        SQNR[(case.cell, fmt)] = min(SQNR.get((case.cell, fmt), np.inf), db)
        assert db >= MIN_SQNR_DB[fmt], f"out{k}: SQNR {db:.1f} dB < {MIN_SQNR_DB[fmt]} dB"


STREAM = [(c, f) for c in CASES if not c.bidirectional and c.initial_state and c.bias
          for f in FORMATS]


@pytest.mark.parametrize(("case", "fmt"), STREAM, ids=[f"{c.id}-{f}" for c, f in STREAM])
def test_step_q_equals_reference(case: Case, fmt: str, exported):
    """NAME_step_q, one step at a time from set_state_q, gives the reference's every step."""
    from tinyrnn.reference import quantize_batch, run
    from tinyrnn.simulate import batch_from_arrays

    compiled, model, args, program, manifest = exported[(case.id, fmt)]
    arrays = random_inputs(case, model, args, 2, 12, case.seed + 3000)
    q = reference_model(program, manifest)
    batch_q = quantize_batch(q, batch_from_arrays(q.model, arrays))
    trace = run(q, batch_q, all_steps=True)
    steps = evaluate.run(lower(q.model, manifest["name"], q), batch_q.x, batch_q.h0, batch_q.c0,
                         steps=True)[0]
    assert np.array_equal(steps, trace.outputs[0]), first_mismatch(steps, trace.outputs[0])
    for b in range(2):
        state = compiled.new_state()
        args_q = [batch_q.h0[b]] + ([batch_q.c0[b]] if batch_q.c0 is not None else [])
        bufs = [compiled.ffi.from_buffer("int16_t[]", np.ascontiguousarray(a, np.int16))
                for a in args_q]
        compiled._check(compiled._fn("set_state_q")(state, *bufs), "set_state_q")
        steps = np.stack([compiled.step_q(state, batch_q.x[b, t]) for t in range(12)])
        assert np.array_equal(steps, trace.outputs[0][b]), first_mismatch(
            steps, trace.outputs[0][b])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_float_simulation_of_the_ir_equals_torch(case: Case, exported):
    """tinyrnn.simulate (calibration, the per-layer report) computes what torch computes."""
    from tinyrnn.frontend import read_program
    from tinyrnn.io import assemble_outputs
    from tinyrnn.simulate import batch_from_arrays, run_float

    compiled, model, args, program, _ = exported[(case.id, FORMATS[0])]
    arrays = random_inputs(case, model, args, TEST_BATCH, SEQ_LEN, case.seed + 4000)
    ir = read_program(program, SEQ_LEN)
    batch = batch_from_arrays(ir, arrays)
    trace, _ = run_float(ir, batch)
    got = assemble_outputs(compiled.interface, trace.per_sample(), SEQ_LEN)
    for k, (g, e) in enumerate(zip(got, torch_call(model, args, arrays))):
        np.testing.assert_allclose(g, e, rtol=0, atol=2e-6, err_msg=f"out{k}")


def test_generated_files_carry_nothing_unused_and_keep_their_shape(exported):
    """Over the whole table (both integer formats): no unused helper, table, macro or kernel on
    a host, Cortex-M0 (ARMv6-M assembly) or Cortex-M4 (DSP assembly) build, clang -Weverything
    and gcc -Wunused; lines within the width, braces where C puts them, every array const."""
    assert len(FOLDERS) == len(exported)
    problems = [problem for folder in FOLDERS for path in sorted(folder.iterdir())
                if path.suffix in (".c", ".h", ".S") for problem in layout_problems(path)]
    assert problems == [], problems[:20]
    assert unused_warnings([folder / f"{folder.name}.c" for folder in FOLDERS]) == []
