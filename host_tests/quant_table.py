"""The quant table's fixtures and tests, made per share of the table's cells.

End to end, w8a16 and w16a16: every case of the share exported with calibration data, compiled
once (all of the share's models in one host module), and compared with the bit-exact reference
(every element of every output, float API and int16 API) and with torch (SQNR). The table is cut
into two shares, one test module each (test_quant_table_lstm.py, test_quant_table_gru_rnn.py),
so that pytest-xdist (one module per worker) runs them on two cores."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from c_checks import compiler_warnings, layout_problems
from models import Case, captured, table
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
from sanitize import Probe, Target, compile_model, sanitize
from tinyrnn.api import export_program
from tinyrnn.check import evaluate
from tinyrnn.passes.lower import lower
from tinyrnn.targets.host import load_many

SANITIZED_PER_SHARE = 500_000
"""Time steps under the sanitizers per share: two shares give over 10**6 steps in all."""


def _sanitizer_target(directory, manifest: dict, seed: int, steps_each: int) -> Target:
    """An export with its sanitizer budget and two probes from reset: int16 values with the
    extremes through run_q, floats with NaN, +-Inf, +-FLT_MAX and denormals through run."""
    rng = np.random.default_rng(10_000 + seed)
    api = manifest["interface"]
    steps = min(SEQ_LEN, api.get("max_seq_len") or SEQ_LEN)
    xq = rng.integers(-32768, 32768, size=(steps, api["input_size"])).astype(np.int16)
    xq.flat[:4] = (-32768, 32767, 0, -1)[: xq.size]
    xf = rng.normal(size=(steps, api["input_size"])).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, np.finfo(np.float32).max,
                        -np.finfo(np.float32).max, np.finfo(np.float32).smallest_subnormal,
                        -0.0, 1e30], dtype=np.float32)
    xf.flat[rng.choice(xf.size, size=min(xf.size, 6), replace=False)] = rng.choice(special, 6)
    states = {}
    for spec in api["forward_inputs"]:
        if spec["role"] in ("h0", "c0"):
            states[spec["role"]] = rng.integers(-32768, 32768, size=spec["size"]).astype(np.int16)
    probes = [Probe(xq, states.get("h0"), states.get("c0")),
              Probe(xf, *(None if v is None else (v / 32768.0).astype(np.float32)
                          for v in (states.get("h0"), states.get("c0"))))]
    return Target(Path(directory), manifest, steps_each, probes, seed=seed + 1)


def make(cells: tuple[str, ...]) -> dict[str, Any]:
    """The fixtures and tests for the cases of ``cells``; a test module takes them with
    ``globals().update(make(...))``."""
    CASES = [c for c in table() if c.cell in cells]
    PARAMS = [(c, f) for c in CASES for f in FORMATS]
    IDS = [f"{c.id}-{f}" for c, f in PARAMS]
    TEST_BATCH = 4
    FOLDERS: list = []  # every export of the table, filled by the fixture


    SANITIZER_STEPS = -(-SANITIZED_PER_SHARE // (len(CASES) * len(FORMATS)))
    """Time steps per export under the sanitizers: at least SANITIZED_PER_SHARE in this share."""

    SANITIZED: dict[str, Any] = {}  # the background sanitizer run: its targets and Future


    @pytest.fixture(scope="module")
    def exported(tmp_path_factory, request):
        """Capture each case once, export it in both formats (calibrated on 16 random sequences
        drawn apart from the test data) and build all of them in one host module.

        When the sanitizer test is collected, each export is also compiled with the sanitizers
        in a background thread as soon as it is written (one compiler at a time), and the
        sanitizer executables are linked and run there after the host build: that work uses the
        second core while the exports and the tests below keep the first one busy."""
        root = tmp_path_factory.mktemp("quant_table")
        wanted = any(item.originalname == "test_every_export_is_clean_under_the_sanitizers"
                     for item in request.session.items)
        pool = ThreadPoolExecutor(max_workers=1)
        objects: dict[str, Any] = {}
        dirs, keys, info = [], [], {}
        try:
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
                    if wanted:
                        objects[name] = pool.submit(compile_model, root / name, name,
                                                    root / "sanitize")
            compiled = dict(zip(keys, load_many(dirs)))
            if wanted:
                targets = [_sanitizer_target(d, info[key][3], k, SANITIZER_STEPS) for k, (d, key) in
                           enumerate(zip(dirs, keys))]
                SANITIZED["targets"] = targets
                SANITIZED["result"] = pool.submit(  # after every compile (one worker, in order)
                    lambda: sanitize(targets, root / "sanitize", 2, 1,
                                     {n: f.result() for n, f in objects.items()}))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=False)
        yield {key: (compiled[key], *info[key]) for key in keys}
        if "result" in SANITIZED:  # do not leave the compilers running past the module
            SANITIZED["result"].exception()



    SQNR: dict[tuple[str, str], float] = {}


    @pytest.fixture(scope="module", autouse=True)
    def sqnr_summary():
        """After the module: print the min SQNR per cell kind and format (shown with -s)."""
        yield
        if SQNR:
            print("\nmin SQNR against torch over the table (dB):")
            for fmt in FORMATS:
                row = ", ".join(f"{cell} {SQNR[(cell, fmt)]:.1f}" for cell in cells
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
        from tinyrnn.check.reference import quantize_batch, run
        from tinyrnn.check.simulate import batch_from_arrays

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
        """tinyrnn.check.simulate (calibration, the per-layer report) computes what torch
        computes."""
        from tinyrnn.check.simulate import batch_from_arrays, run_float
        from tinyrnn.frontend.reader import read_program
        from tinyrnn.io import assemble_outputs

        compiled, model, args, program, _ = exported[(case.id, FORMATS[0])]
        arrays = random_inputs(case, model, args, TEST_BATCH, SEQ_LEN, case.seed + 4000)
        ir = read_program(program, SEQ_LEN)
        batch = batch_from_arrays(ir, arrays)
        trace, _ = run_float(ir, batch)
        got = assemble_outputs(compiled.interface, trace.per_sample(), SEQ_LEN)
        for k, (g, e) in enumerate(zip(got, torch_call(model, args, arrays))):
            np.testing.assert_allclose(g, e, rtol=0, atol=2e-6, err_msg=f"out{k}")


    def test_generated_files_carry_nothing_unused_and_keep_their_shape(exported):
        """Over the share (both integer formats): no unused helper, table, macro or kernel on a
        host, Cortex-M0 (ARMv6-M assembly), Cortex-M4 (DSP assembly) or Cortex-M55 (MVE) build,
        clang -Weverything and gcc -Wunused; lines within the width, braces where C puts them,
        every array const."""
        assert len(FOLDERS) == len(exported)
        problems = [problem for folder in FOLDERS for path in sorted(folder.iterdir())
                    if path.suffix in (".c", ".h", ".S") for problem in layout_problems(path)]
        assert problems == [], problems[:20]
        assert compiler_warnings([folder / f"{folder.name}.c" for folder in FOLDERS]) == []


    def test_every_export_is_clean_under_the_sanitizers(exported):
        """Every export of the table, compiled with ASan + UBSan (-fno-sanitize-recover=all) and
        driven from C for 2,100 random time steps each (over 10**6 in all, int16 extremes and
        special floats included, error paths too): no finding, every return code as documented,
        and the sanitized build (-O0) gives the host build's (-O2) outputs bit for bit."""
        result = SANITIZED["result"].result()
        total = sum(result.steps.values())
        print(f"\nsanitizers: {len(result.steps)} exports, {total:,} time steps, 0 findings "
              f"(compile {result.seconds_compile:.0f} s in the background, run "
              f"{result.seconds_run:.1f} s)")
        assert len(result.steps) == len(exported) and total >= SANITIZED_PER_SHARE
        by_name = {compiled.name: compiled for compiled, *_ in exported.values()}
        for target in SANITIZED["targets"]:
            compiled = by_name[target.name]
            for probe, got in zip(target.probes, result.probes[target.name], strict=True):
                sample = {"x": probe.x}
                for role in ("h0", "c0"):
                    if getattr(probe, role) is not None:
                        sample[role] = getattr(probe, role)
                host = (compiled.run_sample_q(sample) if probe.x.dtype == np.int16
                        else compiled.run_sample(sample))
                for k, (g, h) in enumerate(zip(got, host, strict=True)):
                    assert g.tobytes() == h.tobytes(), (
                        f"{target.name} out{k}: {first_mismatch(g, h)}")

    return {name: value for name, value in locals().items()
            if name.startswith("test_") or name in ("exported", "sqnr_summary")}
