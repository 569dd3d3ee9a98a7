"""Test models and the case table shared by the host tests (cases are data)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru")


@dataclass(frozen=True)
class Case:
    cell: str
    bidirectional: bool
    layers: int
    batch_first: bool
    bias: bool
    initial_state: bool
    input_size: int = 5
    hidden: int = 7
    seq_len: int = 9
    batch: int = 3

    @property
    def id(self) -> str:
        return "-".join([
            self.cell,
            "bi" if self.bidirectional else "uni",
            f"L{self.layers}",
            "bf" if self.batch_first else "tf",
            "bias" if self.bias else "nobias",
            "h0" if self.initial_state else "zero",
        ])

    @property
    def name(self) -> str:
        return "m_" + self.id.replace("-", "_")

    @property
    def seed(self) -> int:
        return sum(ord(c) * (i + 1) for i, c in enumerate(self.id)) % 100_000


def table() -> list[Case]:
    """cell x direction x layers x batch_first x bias x initial state."""
    return [
        Case(cell, bidi, layers, bf, bias, init)
        for cell, bidi, layers, bf, bias, init in itertools.product(
            CELLS, (False, True), (1, 2, 3), (True, False), (True, False), (False, True)
        )
    ]


def recurrent_module(cell: str, input_size: int, hidden: int, proj: int, **kw) -> nn.Module:
    """torch's module for one of CELLS (``kw``: num_layers, bias, batch_first, bidirectional)."""
    if cell.startswith("lstm"):
        return nn.LSTM(input_size, hidden, proj_size=proj if cell == "lstm_proj" else 0, **kw)
    if cell == "gru":
        return nn.GRU(input_size, hidden, **kw)
    return nn.RNN(input_size, hidden, nonlinearity=cell[4:], **kw)


class Recurrent(nn.Module):
    """One torch recurrent module returning what it returns, optionally given initial state."""

    def __init__(self, case: Case):
        super().__init__()
        self.rnn = recurrent_module(case.cell, case.input_size, case.hidden, 4,
                                    num_layers=case.layers, bias=case.bias,
                                    batch_first=case.batch_first,
                                    bidirectional=case.bidirectional)

    def forward(self, x, state=None):  # noqa: D401 - torch signature
        return self.rnn(x, state)


def build(case: Case) -> tuple[nn.Module, tuple]:
    """The module with its seeded weights, and example inputs in the forward's form."""
    torch.manual_seed(case.seed)
    model = Recurrent(case).eval()
    gen = torch.Generator().manual_seed(case.seed + 1)
    shape = (case.batch, case.seq_len, case.input_size)
    if not case.batch_first:
        shape = (case.seq_len, case.batch, case.input_size)
    x = torch.randn(*shape, generator=gen)
    if not case.initial_state:
        return model, (x,)
    rows = case.layers * (2 if case.bidirectional else 1)
    h_size = 4 if case.cell == "lstm_proj" else case.hidden
    h0 = 0.5 * torch.randn(rows, case.batch, h_size, generator=gen)
    if case.cell.startswith("lstm"):
        c0 = 0.5 * torch.randn(rows, case.batch, case.hidden, generator=gen)
        return model, (x, (h0, c0))
    return model, (x, h0)


_CAPTURED: dict[str, tuple] = {}  # case id -> (model, args, program)
_TRACED: dict[str, object] = {}  # case id -> torch.export.ExportedProgram


def captured(case: Case) -> tuple[nn.Module, tuple, object]:
    """The model, its example inputs and their program as tinyrnn reads it (torch.export,
    saved in memory, read by the archive reader), captured once per test session: the float,
    quantized and IR tests share them, across pytest-xdist's worker processes too (see
    :func:`_shared_archive`)."""
    if case.id not in _CAPTURED:
        from tinyrnn.frontend.reader import read_captured

        model, args = build(case)
        _CAPTURED[case.id] = (model, args, read_captured(_shared_archive(case)))
    return _CAPTURED[case.id]


def traced(case: Case):
    """The torch.export ExportedProgram behind :func:`captured`, traced once in this process
    (the tests that call it run the ExportedProgram itself)."""
    if case.id not in _TRACED:
        from tinyrnn.frontend.reader import trace

        _TRACED[case.id] = trace(*build(case))
    return _TRACED[case.id]


SHARED_CAPTURES = "TINYRNN_TEST_CAPTURES"
"""The environment variable naming the folder where one test session's workers share their
captured archives (set by host_tests/conftest.py for the session)."""


def _shared_archive(case: Case) -> bytes:
    """The archive of ``case``'s capture (:func:`traced`, saved): read from the session's shared
    folder when a worker process already wrote it, else traced here and written there (under a
    per-case lock, so two workers never trace the same case at once). torch.export is
    deterministic over the case's seeded model, and only this session's own archives are read
    back (the folder is made and deleted by the session), so sharing changes what a test sees
    no more than tracing again would; it saves a trace (0.15 to 0.45 s) per case and reader."""
    import fcntl
    import os
    from pathlib import Path

    from tinyrnn.frontend.reader import archive_bytes

    folder = os.environ.get(SHARED_CAPTURES)
    if not folder:
        return archive_bytes(traced(case))
    path = Path(folder) / f"{case.id}.pt2"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path.read_bytes()
        data = archive_bytes(traced(case))
        part = path.with_suffix(".part")
        part.write_bytes(data)
        part.replace(path)
        return data


def flat_numpy(args) -> list[np.ndarray]:
    """Flatten nested tuples of tensors into numpy arrays in order (the in0, in1 contract)."""
    flat, _ = torch.utils._pytree.tree_flatten(args)
    return [t.detach().numpy() for t in flat]


def torch_run(model: nn.Module, args: tuple) -> list[np.ndarray]:
    with torch.no_grad():
        return flat_numpy(model(*args))


# ---------------------------------------------------------------------------------------------
# Single recurrent layers run on an emulated board against the host build


class SingleLayer(nn.Module):
    """One batch-first LSTM/GRU/RNN layer returning its output sequence."""

    def __init__(self, kind: str, input_size: int, hidden: int, bias: bool):
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cls(input_size, hidden, batch_first=True, bias=bias)

    def forward(self, x):
        return self.rnn(x)[0]


def assert_board_equals_host(board: str, layers: list[tuple[str, int, int, bool, str]],
                             tmp_path, kernel_marker: str) -> None:
    """Export each (kind, input, hidden, bias, format) layer, link them all into one image for
    ``board``, run it under QEMU and require every output equal to the host build, bit for bit.
    Each generated C file must contain ``kernel_marker`` (the kernel under test)."""
    import tinyrnn
    from tinyrnn.io import assemble_outputs, split_inputs
    from tinyrnn.targets import cross
    from tinyrnn.targets.boards import load_board
    from tinyrnn.targets.host import load_many

    steps = 5
    jobs, inputs, folders = [], [], []
    for kind, i, h, bias, fmt in layers:
        torch.manual_seed(i + h)
        model = SingleLayer(kind, i, h, bias).eval()
        x = torch.randn(2, steps, i)
        name = f"{kind}_{i}_{h}_{fmt}"
        tinyrnn.export(model, (x,), tmp_path / name, format=fmt, name=name)
        assert kernel_marker in (tmp_path / name / f"{name}.c").read_text(), name
        folders.append(tmp_path / name)
        inputs.append([x.numpy()])
        exported = cross.ExportedModel.load(tmp_path / name)
        jobs.append(cross.ModelInputs(exported, tuple(split_inputs(exported.interface,
                                                                   inputs[-1]))))
    firmware = cross.build(jobs, load_board(board), tmp_path / "image")
    result = cross.run_qemu(firmware, timeout=60)
    for k, compiled in enumerate(load_many(folders)):
        expected = compiled.run(*inputs[k])
        got = assemble_outputs(firmware.jobs[k].model.interface, result.outputs[k], steps)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e, err_msg=str(layers[k]))
