"""The command line with integer formats: export with --calibration (or a warning without it),
verify against the bit-exact reference (text and --json), and a tampered C file caught."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from models import Case, build, flat_numpy
from quant_cases import random_inputs
from tinyrnn.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2-layer LSTM taking (x, (h0, c0)), saved as .pt2, with calibration and test inputs."""
    root = tmp_path_factory.mktemp("qcli")
    case = Case("lstm", False, 2, True, True, True)
    model, args = build(case)
    torch.export.save(torch.export.export(model, args), str(root / "m.pt2"))
    np.savez(root / "cal.npz", **{f"in{i}": a for i, a in
                                  enumerate(random_inputs(case, model, args, 16, 24, 5))})
    np.savez(root / "x.npz", **{f"in{i}": a for i, a in
                                enumerate(random_inputs(case, model, args, 3, 9, 6))})
    return root, model, args


def test_export_and_verify(files, capsys):
    root, _, _ = files
    assert main(["export", str(root / "m.pt2"), "--out", str(root / "c"), "--name", "lstm2",
                 "--calibration", str(root / "cal.npz")]) == 0
    out, err = capsys.readouterr()
    assert "(w8a16;" in out and "warning" not in err
    assert main(["verify", str(root / "m.pt2"), str(root / "c"), "--input",
                 str(root / "x.npz")]) == 0
    out, _ = capsys.readouterr()
    assert out.count("bit-exact yes") == 3  # output, h_n, c_n
    assert "layer 1: lstm rnn layer 1" in out and out.rstrip().endswith(
        "PASS: the C equals the reference on every element")
    assert main(["verify", str(root / "m.pt2"), str(root / "c"), "--input",
                 str(root / "x.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [o["bit_exact"] for o in report["outputs"]] == [True] * 3
    assert all(o["sqnr_db"] > 38 for o in report["outputs"])
    assert [layer["format"] for layer in report["layers"]][0].startswith("Q")


def test_verify_names_the_first_mismatch_of_a_tampered_export(files, capsys):
    root, _, _ = files
    main(["export", str(root / "m.pt2"), "--out", str(root / "t"), "--name", "lstm2",
          "--calibration", str(root / "cal.npz")])
    source = root / "t" / "lstm2.c"
    text = source.read_text()
    # flip the sign of the first weight of layer 0 (unit 0's input gate, column 0, in the
    # interleaved kernel layout; the ARMv6-M copy of the same name comes first)
    start = text.index("lstm2_l0_fwd_w[", text.index("#if !LSTM2_V6M_KERNELS"))
    line_start = text.index("\n", start) + 1
    match = re.compile(r"-?\d+").search(text, line_start)
    value = int(match.group())
    new = str(-value if value else 100)
    source.write_text(text[:match.start()] + new + text[match.end():])
    capsys.readouterr()
    assert main(["verify", str(root / "m.pt2"), str(root / "t"), "--input",
                 str(root / "x.npz")]) == 1
    out = capsys.readouterr().out
    assert "bit-exact NO" in out and "first at index" in out and "step " in out
    assert out.rstrip().endswith("FAIL: the C differs from the bit-exact reference")


def test_export_without_calibration_warns(files, capsys):
    root, _, _ = files
    assert main(["export", str(root / "m.pt2"), "--out", str(root / "w"),
                 "--format", "w16a16"]) == 0
    err = capsys.readouterr().err
    assert "warning: no calibration data given" in err and "--calibration" in err


def test_calibration_with_float32_is_ignored_with_a_warning(files, capsys):
    """One script can export every format: float32 warns, does not read the file, and
    writes the same bytes as without --calibration."""
    root, _, _ = files
    capsys.readouterr()
    assert main(["export", str(root / "m.pt2"), "--out", str(root / "f"), "--format",
                 "float32", "--calibration", str(root / "missing.npz")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: --calibration") and "so it is ignored" in err
    assert main(["export", str(root / "m.pt2"), "--out", str(root / "g"), "--format",
                 "float32"]) == 0
    for name in ("model.h", "model.c", "model.json"):
        assert (root / "f" / name).read_bytes() == (root / "g" / name).read_bytes()


def test_calibration_file_must_match_the_forward(files, capsys):
    root, _, _ = files
    np.save(root / "bad.npy", np.zeros((4, 24, 5), np.float32))
    assert main(["export", str(root / "m.pt2"), "--out", str(root / "b"),
                 "--calibration", str(root / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert "the calibration data: the model takes 3 input(s)" in err


def test_int16_api_matches_the_float_api(files, tmp_path):
    """run_q on the int16 conversion of the input equals run, converted exactly."""
    from tinyrnn.io import split_inputs
    from tinyrnn.targets.host import load

    root, _, args = files
    main(["export", str(root / "m.pt2"), "--out", str(tmp_path / "c"), "--name", "lstm2q",
          "--calibration", str(root / "cal.npz")])
    compiled = load(tmp_path / "c")
    quant = compiled.manifest["interface"]["quantized"]
    sample = split_inputs(compiled.interface, flat_numpy(args))[0]
    as_float = compiled.run_sample(sample)
    sample_q = {}
    for spec in quant["forward_inputs"]:
        v = sample[spec["role"]].reshape(-1).astype(np.float64)
        frac = np.resize(np.repeat(spec["frac"], spec["row_size"]), v.size)
        sample_q[spec["role"]] = np.clip(np.floor(np.ldexp(v, frac) + 0.5), -32768, 32767)
    sample_q["x"] = sample_q["x"].reshape(sample["x"].shape)
    as_int = compiled.run_sample_q(sample_q)
    for spec, f, q in zip(quant["outputs"], as_float, as_int):
        frac = np.resize(np.repeat(spec["frac"], spec["row_size"]), q.size)
        assert np.array_equal(np.ldexp(q.astype(np.float64), -frac).astype(np.float32), f)
