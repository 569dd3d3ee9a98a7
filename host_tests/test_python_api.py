"""The Python API of the commands (tinyrnn.verify, run_host, build, run, profile, report,
package): each returns its dataclass, with figures checked against torch, against the C's own
outputs or against what the command line prints for the same inputs; ``to_dict()`` is JSON;
bad input raises TinyRNNError; float32 ignores calibration data with a warning.

One small model, exported once per format (module fixture), serves every test.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tinyrnn
from tinyrnn.cli import main


class Tagger(nn.Module):
    """batch_first LSTM 3->8 and a Linear head on every step."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.lstm(x)[0])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    model = Tagger().eval()
    x = np.random.default_rng(1).normal(size=(3, 7, 3)).astype(np.float32)
    torch.export.save(torch.export.export(model, (torch.from_numpy(x),)), str(root / "m.pt2"))
    np.save(root / "x.npy", x)
    tinyrnn.export(model, torch.from_numpy(x), root / "f32", format="float32", name="tag")
    tinyrnn.export(model, torch.from_numpy(x), root / "q8", format="w8a16", name="tag",
                   calibration=torch.from_numpy(x))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    return {"root": root, "model": model, "x": x, "torch": expected}


def _cli(capsys, *argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def _json_round_trip(result) -> dict:
    data = result.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    return data


def _sqnr_db(reference: np.ndarray, value: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - value) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise))


@pytest.mark.parametrize("fmt", ["float32", "w8a16"])
def test_run_host_and_verify_against_torch(setup, fmt, tmp_path, capsys):
    root, x, expected = setup["root"], setup["x"], setup["torch"]
    folder = root / ("f32" if fmt == "float32" else "q8")
    ran = tinyrnn.run_host(folder, x, output=tmp_path / "y")
    assert isinstance(ran, tinyrnn.RunResult) and ran.output == tmp_path / "y.npz"
    assert ran.samples == 3 and ran.outputs[0].shape == expected.shape
    assert np.array_equal(np.load(ran.output)["out0"], ran.outputs[0])
    if fmt == "float32":
        np.testing.assert_allclose(ran.outputs[0], expected, rtol=0, atol=1e-5)
    printed = _cli(capsys, "run-host", folder, "--input", root / "x.npy", "--output",
                   tmp_path / "cli.npz")
    assert printed.strip() == f"wrote {tmp_path / 'cli.npz'}: out0 {expected.shape}"
    assert np.array_equal(np.load(tmp_path / "cli.npz")["out0"], ran.outputs[0])
    assert _json_round_trip(ran)["outputs"][0] == ran.outputs[0].tolist()

    checked = tinyrnn.verify(root / "m.pt2", folder, [torch.from_numpy(x)])
    assert isinstance(checked, tinyrnn.VerifyResult) and checked.ok
    (out,) = checked.outputs
    error = float(np.max(np.abs(ran.outputs[0].astype(np.float64) - expected)))
    assert out.max_abs_error == pytest.approx(error, rel=1e-6, abs=1e-9)
    assert out.sqnr_db == pytest.approx(_sqnr_db(expected, ran.outputs[0]), abs=0.01)
    assert out.shape == expected.shape and out.role == "sequence"
    if fmt == "float32":
        assert out.bit_exact is None and checked.tolerance == 1e-5 and not checked.layers
    else:
        assert out.bit_exact and out.first_mismatch is None and checked.tolerance is None
        assert [layer.index for layer in checked.layers] == [0, 1]
    printed = _cli(capsys, "verify", root / "m.pt2", folder, "--input", root / "x.npy")
    assert printed.strip() == checked.text()
    assert json.loads(_cli(capsys, "verify", root / "m.pt2", folder, "--input", root / "x.npy",
                           "--json")) == _json_round_trip(checked)


def _size_row(printed: str, label: str) -> tuple[int, ...]:
    """The numbers of a row of `tinyrnn build`'s table: bytes (and the board's, if shown)."""
    match = re.search(rf"^{re.escape(label)} +(\d+)(?: +(\d+))?", printed, re.MULTILINE)
    assert match, printed
    return tuple(int(g) for g in match.groups() if g is not None)


def test_build_and_run_on_a_board(setup, tmp_path, capsys):
    root, x = setup["root"], setup["x"]
    built = tinyrnn.build(root / "q8", board="mps2-an386", output=tmp_path / "app.elf",
                          inputs=x)
    assert isinstance(built, tinyrnn.BuildResult) and built.image == tmp_path / "app.elf"
    assert built.image.read_bytes()[:4] == b"\x7fELF"
    printed = _cli(capsys, "build", root / "q8", "--board", "mps2-an386", "-o",
                   tmp_path / "cli.elf", "--input", root / "x.npy")
    assert _size_row(printed, "flash") == (built.flash_bytes, built.flash_size)
    assert _size_row(printed, "RAM (without heap)") == (built.ram_bytes, built.ram_size)
    assert _size_row(printed, "  weights") == (built.sections["weights"],)
    assert _json_round_trip(built)["image"] == str(tmp_path / "app.elf")

    ran = tinyrnn.run(root / "q8", root / "x.npy", board="mps2-an386")
    assert isinstance(ran, tinyrnn.RunResult) and ran.output is None
    assert ran.board == "mps2-an386" and ran.samples == 3 and 0 < ran.stack_bytes
    host = tinyrnn.run_host(root / "q8", x)  # the integer C: bit for bit the same
    assert np.array_equal(ran.outputs[0], host.outputs[0])
    _json_round_trip(ran)


def test_profile_and_report(setup, tmp_path, capsys):
    root, x, expected = setup["root"], setup["x"], setup["torch"]
    cost = tinyrnn.profile(root / "q8", board="mps2-an386")
    assert isinstance(cost, tinyrnn.ProfileResult) and cost.ok
    assert cost.cpu == "cortex-m4" and cost.measured.startswith("tag_step")
    assert cost.cycles_per_step >= cost.instructions_per_step > 0
    data = _json_round_trip(cost)
    assert data["instruction_mix"] == cost.details["instruction_mix"]  # details at top level

    page = tinyrnn.report(root / "m.pt2", root / "q8", x, output=tmp_path / "rep",
                          board="mps2-an386", progress=False)
    assert isinstance(page, tinyrnn.ReportResult)
    assert set(page.figures) == {"traces", "error_histogram", "layer_sqnr", "memory"}
    for path in page.figures.values():
        assert path.parent == tmp_path / "rep" and path.read_bytes()[:4] == b"\x89PNG"
    assert page.html.exists() and page.markdown.exists()
    # the report profiled the same build independently: the same counts
    assert page.profile == {k: v for k, v in data.items() if k != "qemu_check"}
    host = tinyrnn.run_host(root / "q8", x).outputs[0]
    error = float(np.max(np.abs(host.astype(np.float64) - expected)))
    assert page.outputs[0].max_abs_error == pytest.approx(error, rel=1e-6, abs=1e-9)
    assert page.table.splitlines()[2].startswith(f"| out0 | sequence | {expected.shape} | ")
    assert _json_round_trip(page)["figures"]["traces"] == str(tmp_path / "rep" / "traces.png")
    printed = _cli(capsys, "profile", root / "q8", "--board", "mps2-an386")
    assert re.search(rf"instructions / step\s+{cost.instructions_per_step:,}\n", printed)
    assert re.search(rf"cycles / step\s+{cost.cycles_per_step:,} \(estimate", printed)


def test_package(setup, tmp_path):
    made = tinyrnn.package(setup["root"] / "f32", form="cmake", out=tmp_path / "lib",
                           inputs=setup["x"])
    assert isinstance(made, tinyrnn.PackageResult) and made.form == "cmake"
    on_disk = sorted(str(p.relative_to(made.directory)) for p in made.directory.rglob("*")
                     if p.is_file())
    assert list(made.files) == on_disk and "CMakeLists.txt" in on_disk
    assert _json_round_trip(made)["directory"] == str(tmp_path / "lib")


BAD = [
    ("verify-tolerance", lambda r, x: tinyrnn.verify(r / "m.pt2", r / "f32", x, tolerance=-1),
     r"--tolerance must be >= 0, not -1"),
    ("run-host-shape", lambda r, x: tinyrnn.run_host(r / "f32", x[:, :, :2]),
     r"input in0 \(x\) has shape \(3, 7, 2\); expected \(B, T, 3\)"),
    ("run-host-type", lambda r, x: tinyrnn.run_host(r / "f32", {"x": x}),
     r"inputs must be a \.npy/\.npz path, an array or tensor, or a list/tuple of them .* "
     r"not dict"),
    ("run-host-missing-file", lambda r, x: tinyrnn.run_host(r / "f32", r / "none.npy"),
     r"input file \S+none\.npy does not exist"),
    ("build-board", lambda r, x: tinyrnn.build(r / "f32", board="esp32"),
     r"unknown board 'esp32'"),
    ("run-timeout", lambda r, x: tinyrnn.run(r / "f32", x, board="mps2-an386", timeout=0),
     r"--timeout must be > 0, not 0"),
    ("run-not-emulated", lambda r, x: tinyrnn.run(r / "f32", x, board="nucleo-f446re"),
     r"board nucleo-f446re is not emulated"),
    ("profile-no-core", lambda r, x: tinyrnn.profile(r / "f32"),
     r"say which core to profile for"),
    ("report-board", lambda r, x: tinyrnn.report(r / "m.pt2", r / "f32", x, board="pico2",
                                                 output=r / "never"),
     r"unknown board 'pico2'"),
    ("package-form", lambda r, x: tinyrnn.package(r / "f32", form="npm", out=r / "never"),
     r"unknown"),
]


@pytest.mark.parametrize("call,message", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_raises_tinyrnn_error(setup, call, message):
    with pytest.raises(tinyrnn.TinyRNNError, match=message):
        call(setup["root"], setup["x"])
    assert not (setup["root"] / "never").exists()


def test_float32_ignores_calibration_with_a_warning(setup, tmp_path):
    model, x = setup["model"], torch.from_numpy(setup["x"])
    with pytest.warns(tinyrnn.CalibrationIgnoredWarning, match="float32 has no ranges"):
        tinyrnn.export(model, x, tmp_path / "with", format="float32", calibration=x * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tinyrnn.TinyRNNWarning)
        tinyrnn.export(model, x, tmp_path / "without", format="float32")
    assert issubclass(tinyrnn.CalibrationIgnoredWarning, UserWarning)
    for name in ("model.h", "model.c", "model.json"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" /
                                                          name).read_bytes()
