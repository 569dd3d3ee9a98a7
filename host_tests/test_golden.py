"""IR -> C: five exports compared with reviewed golden files (host_tests/golden/NAME/).

A change of the generated C shows up here as a diff to review. When the change is intended,
re-run with ``TINYRNN_UPDATE_GOLDEN=1`` to rewrite the golden files, read the diff
(``git diff host_tests/golden``) and commit it with the change that caused it.

The models have seeded weights and calibration data, so their exports are the same on every
machine with the same torch; what they compute is checked against the reference and torch
elsewhere (the tables), not here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import tinyrnn
from tinyrnn.example import GestureLSTM

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TINYRNN_UPDATE_GOLDEN") == "1"


class _Sequence(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def _gesture():
    torch.manual_seed(1)
    return GestureLSTM(), "w8a16", 3


def _lstm_w8():
    torch.manual_seed(2)
    return _Sequence(nn.LSTM(5, 8, num_layers=2, batch_first=True)), "w8a16", 5


def _bigru_w8():
    torch.manual_seed(3)
    return _Sequence(nn.GRU(4, 6, batch_first=True, bidirectional=True)), "w8a16", 4


def _rnn_relu_w16():
    torch.manual_seed(4)
    return _Sequence(nn.RNN(5, 8, nonlinearity="relu", batch_first=True)), "w16a16", 5


def _lstm_proj_f32():
    torch.manual_seed(5)
    return _Sequence(nn.LSTM(5, 8, proj_size=3, batch_first=True)), "float32", 5


MODELS: dict[str, Callable[[], tuple[nn.Module, str, int]]] = {
    "gesture": _gesture, "lstm_w8": _lstm_w8, "bigru_w8": _bigru_w8,
    "rnn_relu_w16": _rnn_relu_w16, "lstm_proj_f32": _lstm_proj_f32,
}


def export(name: str, out: Path) -> dict[str, str]:
    """Export golden model ``name`` into ``out``; its generated C, assembly and header files."""
    model, fmt, features = MODELS[name]()
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 6, features, generator=gen)
    calibration = torch.randn(8, 12, features, generator=gen) if fmt != "float32" else None
    tinyrnn.export(model.eval(), (x,), out, name=name, format=fmt, calibration=calibration)
    return {p.name: p.read_text() for p in sorted(out.iterdir()) if p.suffix in (".c", ".h", ".S")}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_generated_files_equal_the_reviewed_golden_files(name: str, tmp_path: Path):
    produced = export(name, tmp_path)
    folder = GOLDEN / name
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            if stale.name not in produced:
                stale.unlink()
        for filename, text in produced.items():
            (folder / filename).write_text(text)
    expected = {p.name: p.read_text() for p in sorted(folder.iterdir())} if folder.is_dir() else {}
    assert sorted(produced) == sorted(expected), (
        f"host_tests/golden/{name} holds {sorted(expected)}, the export writes {sorted(produced)}")
    for filename, text in produced.items():
        assert text == expected[filename], (
            f"{filename} differs from host_tests/golden/{name}/{filename}; if the change is "
            "intended, run with TINYRNN_UPDATE_GOLDEN=1 and review `git diff host_tests/golden`")
