"""The command line: the public run-host/verify contract and clear errors on bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from tinyrnn.cli import main


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x, state):
        y, (h, c) = self.lstm(x, state)
        return self.fc(y), (h, c)


class Unsupported(nn.Module):
    """Two operations tinyrnn cannot export, on two source lines."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1, padding_mode="circular")

    def forward(self, x):
        y, _ = self.gru(x)
        z = torch.cumsum(y, dim=0)
        return self.conv(y.permute(1, 2, 0)), z


def _save(model: nn.Module, args: tuple, path) -> None:
    torch.export.save(torch.export.export(model.eval(), args), str(path))


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(3)
    args = (torch.randn(2, 6, 4), (torch.randn(1, 2, 8), torch.randn(1, 2, 8)))
    _save(Tagger(), args, root / "tagger.pt2")
    np.savez(
        root / "in.npz",
        in0=np.random.default_rng(0).normal(size=(2, 6, 4)).astype(np.float32),
        in1=np.zeros((1, 2, 8), np.float32),
        in2=np.ones((1, 2, 8), np.float32) * 0.1,
    )
    assert (
        main(
            [
                "export",
                str(root / "tagger.pt2"),
                "--out",
                str(root / "c"),
                "--name",
                "tagger",
                "--format",
                "float32",
            ]
        )
        == 0
    )
    return root


def test_run_host_writes_the_forward_outputs_in_order(tagger):
    out = tagger / "out.npz"
    assert (
        main(
            ["run-host", str(tagger / "c"), "--input", str(tagger / "in.npz"), "--output", str(out)]
        )
        == 0
    )
    program = torch.export.load(str(tagger / "tagger.pt2"))  # our own file, in the test
    inputs = np.load(tagger / "in.npz")
    with torch.no_grad():
        y, (h, c) = program.module()(
            torch.from_numpy(inputs["in0"]),
            (torch.from_numpy(inputs["in1"]), torch.from_numpy(inputs["in2"])),
        )
    got = np.load(out)
    assert sorted(got.files) == ["out0", "out1", "out2"]
    for name, expected in zip(("out0", "out1", "out2"), (y, h, c)):
        np.testing.assert_allclose(got[name], expected.numpy(), atol=1e-5)


def test_verify_passes_and_prints_errors(tagger, capsys):
    assert (
        main(
            [
                "verify",
                str(tagger / "tagger.pt2"),
                str(tagger / "c"),
                "--input",
                str(tagger / "in.npz"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "out0 (2, 6, 3): max abs error" in text and "PASS" in text


def test_verify_catches_a_corrupted_weight(tagger, tmp_path, capsys):
    """A C file whose weights differ from the model's must fail verify with exit status 1."""
    bad = tmp_path / "c"
    bad.mkdir()
    for f in (tagger / "c").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    source = (bad / "tagger.c").read_text()
    marker = "tagger_dense1_b[3] = { /* fc.bias, float32 */\n    "
    assert marker in source
    start = source.index(marker) + len(marker)
    end = source.index(",", start)
    (bad / "tagger.c").write_text(source[:start] + "1.5e+00f" + source[end:])
    assert (
        main(["verify", str(tagger / "tagger.pt2"), str(bad), "--input", str(tagger / "in.npz")])
        == 1
    )
    assert "FAIL" in capsys.readouterr().out


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_unsupported_layers_are_all_listed_with_source_lines(tmp_path, capsys):
    _save(Unsupported(), (torch.randn(5, 2, 4),), tmp_path / "bad.pt2")
    err = _error(capsys, ["export", str(tmp_path / "bad.pt2"), "--out", str(tmp_path / "c")])
    assert "2 operation(s)" in err
    assert "aten.cumsum" in err and "torch.cumsum(y, dim=0)" in err
    assert "aten.pad" in err and "padding_mode='circular' is not supported" in err
    assert "self.conv(y.permute(1, 2, 0))" in err
    assert not (tmp_path / "c").exists()


def test_not_an_archive(tmp_path, capsys):
    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"this is not a zip file")
    assert "is not a torch.export archive" in _error(
        capsys, ["export", str(bogus), "--out", str(tmp_path / "c")]
    )


def test_plain_state_dict_is_not_an_archive(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(nn.LSTM(2, 3).state_dict(), path)
    assert "is not a torch.export archive" in _error(
        capsys, ["export", str(path), "--out", str(tmp_path / "c")]
    )


def test_missing_file(tmp_path, capsys):
    assert "does not exist" in _error(
        capsys, ["export", str(tmp_path / "nope.pt2"), "--out", str(tmp_path / "c")]
    )


def test_nan_weights(tmp_path, capsys):
    model = Tagger()
    with torch.no_grad():
        model.lstm.weight_hh_l0[3, 2] = float("nan")
        model.fc.bias[0] = float("inf")
    args = (torch.randn(2, 6, 4), (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))
    _save(model, args, tmp_path / "nan.pt2")
    err = _error(capsys, ["export", str(tmp_path / "nan.pt2"), "--out", str(tmp_path / "c")])
    assert "NaN or Inf" in err and "lstm.weight_hh_l0" in err and "fc.bias" in err


def test_wrong_input_shape(tagger, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 6, 5), np.float32))
    err = _error(
        capsys,
        [
            "run-host",
            str(tagger / "c"),
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npz"),
        ],
    )
    assert "takes 3 input(s)" in err
    np.savez(
        tmp_path / "x.npz",
        in0=np.zeros((2, 6, 5), np.float32),
        in1=np.zeros((1, 2, 8), np.float32),
        in2=np.zeros((1, 2, 8), np.float32),
    )
    err = _error(
        capsys,
        [
            "run-host",
            str(tagger / "c"),
            "--input",
            str(tmp_path / "x.npz"),
            "--output",
            str(tmp_path / "y.npz"),
        ],
    )
    assert "in0 (x) has shape (2, 6, 5); expected (B, T, 4)" in err


def test_bad_name(tmp_path, capsys):
    model = Tagger()
    _save(
        model,
        (torch.randn(2, 6, 4), (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))),
        tmp_path / "m.pt2",
    )
    assert "not usable as a C identifier" in _error(
        capsys, ["export", str(tmp_path / "m.pt2"), "--out", str(tmp_path / "c"), "--name", "1x"]
    )


def test_a_real_process_exits_nonzero_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyrnn",
            "export",
            str(tmp_path / "missing.pt2"),
            "--out",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr
