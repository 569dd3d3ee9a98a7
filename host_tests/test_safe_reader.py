"""tinyrnn's own .pt2 reader against torch: the tensors, example inputs and graph it reads equal
what torch saved; unsupported nodes are named by module; dynamic shapes get a clear message;
verify runs at any batch and length (the reference is rebuilt from the IR, not run from the
archive)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import tinyrnn
import tinyrnn.frontend.reader
from models import Case, build, flat_numpy
from tinyrnn.cli import main
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.pt2 import read_archive
from tinyrnn.frontend.reader import archive_bytes, capture, read_program, trace
from tinyrnn.frontend.safezip import SafeZip, ZipLimits
from tinyrnn.frontend.tensorfile import (
    SCALAR_TYPES,
    flatten_tensors,
    read_tensor_file,
    strided_array,
)


@pytest.mark.parametrize("case", [
    Case("lstm_proj", True, 2, False, True, True),
    Case("gru", False, 3, True, False, True),
    Case("rnn_relu", True, 1, True, True, False),
], ids=lambda c: c.id)
def test_weights_and_example_inputs_equal_what_torch_saved(case):
    model, args = build(case)
    program = capture(model, args)
    for name, tensor in model.state_dict().items():
        got = program.weights[name]
        assert got.dtype == np.float32 and np.array_equal(got, tensor.numpy()), name
    expected = flat_numpy(args)
    assert len(program.example_inputs) == len(expected)
    for got, want in zip(program.example_inputs, expected):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_the_in_process_api_reads_through_the_same_reader(monkeypatch, tmp_path):
    """tinyrnn.export saves the captured program into memory and reads it back with the
    archive reader; torch's loader is not involved."""
    seen = []
    real = tinyrnn.frontend.reader.read_archive

    def spy(data, what):
        seen.append(what)
        return real(data, what)

    monkeypatch.setattr(tinyrnn.frontend.reader, "read_archive", spy)
    monkeypatch.setattr(torch.export, "load", None)  # any call would fail
    model, args = build(Case("lstm", False, 1, True, True, False))
    tinyrnn.export(model, args, tmp_path, format="float32")
    assert seen == ["the captured program"]


@pytest.mark.parametrize("protocol", [2, 4])
def test_tensor_files_read_as_torch_wrote_them(protocol):
    """torch.save files of several dtypes, views and nestings, read by the opcode walker."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=gen)
    value = (
        (base, base[1:4, ::2], base.t(), torch.arange(7, dtype=torch.int64)),
        {"half": base.half(), "double": base.double()[2],
         "bf16": base.to(torch.bfloat16), "mask": base > 0,
         "nested": [torch.zeros(0, 3), (torch.tensor(3.5),)]},
    )
    buf = io.BytesIO()
    torch.save(value, buf, pickle_protocol=protocol)
    got = flatten_tensors(read_tensor_file(buf.getvalue(), "test"), "test")
    want = [t for t in torch.utils._pytree.tree_leaves(value)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        expected = (w.float() if w.dtype == torch.bfloat16 else w).numpy()
        assert g.shape == expected.shape and g.dtype == expected.dtype
        assert np.array_equal(g, expected)


def test_strided_arrays_equal_torch_as_strided():
    rng = np.random.default_rng(3)
    storage = torch.arange(200, dtype=torch.float32)
    raw = storage.numpy().tobytes()
    for _ in range(200):
        ndim = int(rng.integers(0, 4))
        sizes = [int(v) for v in rng.integers(0, 5, ndim)]
        strides = [int(v) for v in rng.integers(0, 9, ndim)]
        last = sum((n - 1) * s for n, s in zip(sizes, strides) if n)
        offset = int(rng.integers(0, max(1, 200 - last)))
        if min(sizes, default=1) > 0 and offset + last >= 200:
            continue
        want = torch.as_strided(storage, sizes, strides, offset).numpy()
        got = strided_array(raw, SCALAR_TYPES[7], sizes, strides, offset, "t")
        assert np.array_equal(got, want), (sizes, strides, offset)
    with pytest.raises(TinyRNNError, match="reaches element 200"):
        strided_array(raw, SCALAR_TYPES[7], [2, 3], [100, 1], 98, "t")


def test_zip_limits_apply_to_the_total_before_inflating():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k in range(3):
            z.writestr(f"root/e{k}", bytes(600))
    with pytest.raises(TinyRNNError, match="more than 0 MiB uncompressed"):
        SafeZip(buf.getvalue(), "t", ZipLimits(max_total_bytes=1500))
    assert SafeZip(buf.getvalue(), "t", ZipLimits(max_total_bytes=1800)).read("e2") == bytes(600)


class Encoder(nn.Module):
    """A Conv1d front-end that shortens the sequence (not supported) feeding an LSTMCell loop
    over its output."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1, padding_mode="circular"),
                                     nn.ReLU())
        self.decoder = nn.Module()
        self.decoder.rnn = nn.LSTMCell(4, 8)

    def forward(self, x):
        y = self.encoder(x)
        h, c = torch.zeros(x.shape[0], 8), torch.zeros(x.shape[0], 8)
        for t in range(y.shape[2]):
            h, c = self.decoder.rnn(y[:, :, t], (h, c))
        return h


def test_unsupported_nodes_name_their_module_and_source_line():
    """The conv's circular padding is named with its module path, type and source line. The
    cell loop reads the conv's output, a value already reported, so it is not listed again
    (the cell loop itself is supported; host_tests/test_cells.py groups repeats in a whole
    model)."""
    with pytest.raises(TinyRNNError) as info:
        read_program(capture(Encoder(), (torch.randn(2, 4, 10),)))
    text = str(info.value)
    assert "uses 1 operation(s)" in text
    assert "aten.pad.default (" in text and "padding_mode='circular' is not supported" in text
    assert ") at encoder.0 (Conv1d), " in text
    assert "test_safe_reader.py" in text and "y = self.encoder(x)" in text
    assert "lstm_cell" not in text


def test_a_dynamic_batch_gets_a_clear_message(tmp_path, capsys):
    model, args = build(Case("gru", False, 1, True, True, False))
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, args, dynamic_shapes={"x": {0: batch}})
    torch.export.save(exported, str(tmp_path / "dyn.pt2"))
    assert main(["export", str(tmp_path / "dyn.pt2"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "symbolic (dynamic) dimensions" in err and "export with static example shapes" in err
    assert "any batch size and sequence length at run time" in err
    assert "verify works at any length" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_verify_runs_at_any_batch_and_length(tmp_path, capsys):
    """The archive was exported with batch 3 and 9 steps; verify takes 5 x 31 and 1 x 2."""
    case = Case("lstm", False, 2, False, True, True)
    model, args = build(case)
    (tmp_path / "m.pt2").write_bytes(archive_bytes(trace(model, args)))
    assert main(["export", str(tmp_path / "m.pt2"), "--out", str(tmp_path / "c"), "--format",
                 "float32"]) == 0
    rng = np.random.default_rng(5)
    for batch, steps in ((5, 31), (1, 2)):
        arrays = [rng.normal(size=(steps, batch, 5)),
                  0.5 * rng.normal(size=(2, batch, 7)), 0.5 * rng.normal(size=(2, batch, 7))]
        np.savez(tmp_path / "x.npz", **{f"in{i}": a.astype(np.float32)
                                        for i, a in enumerate(arrays)})
        capsys.readouterr()
        assert main(["verify", str(tmp_path / "m.pt2"), str(tmp_path / "c"), "--input",
                     str(tmp_path / "x.npz")]) == 0
        out = capsys.readouterr().out
        assert f"out0 ({steps}, {batch}, 7)" in out and out.rstrip().endswith("PASS")


def test_read_archive_takes_what_torch_export_save_writes():
    """The entries torch writes are exactly those the reader accepts (no unknown entry)."""
    model, args = build(Case("rnn_tanh", False, 1, True, True, False))
    data = archive_bytes(trace(model, args))
    program = read_archive(data, "mem")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = {n.split("/", 1)[1] for n in z.namelist()}
    assert {"models/model.json", "data/sample_inputs/model.pt", "archive_format"} <= names
    assert [n.target for n in program.graph.nodes] == ["aten.zeros.default",
                                                      "aten.rnn_tanh.input"]
