"""The classic torch documentation examples, a composite classifier, and the frontend's
reading of torch's conventions (torch -> IR, exact arrays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tinyrnn
from models import flat_numpy, torch_run
from tinyrnn.api import FORMATS
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.ir import Dense, GRULayer, LSTMLayer, SelectStep
from tinyrnn.targets.host import load_many


class Classic(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, state):
        return self.rnn(x, state)


class Composite(nn.Module):
    """batch_first LSTM -> Linear on the last step -> softmax."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=2, batch_first=True)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        out, _ = self.lstm(x)
        return torch.softmax(self.fc(out[:, -1, :]), dim=1)


class LastHidden(nn.Module):
    """The common h_n[-1] head, with a relu MLP and log_softmax."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 10, num_layers=2)
        self.fc1 = nn.Linear(10, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        _, h = self.gru(x)
        return torch.log_softmax(self.fc2(torch.relu(self.fc1(h[-1]))), dim=-1)


class SequenceHead(nn.Module):
    """A per-step head on a bidirectional GRU (denoising style), sigmoid output."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 6, bidirectional=True, batch_first=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        y, _ = self.gru(x)
        return torch.sigmoid(self.out(y))


def _cases():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    lstm = Classic(nn.LSTM(5, 6, 2))
    gru = Classic(nn.GRU(5, 6, 2))
    rnn = Classic(nn.RNN(5, 6, 2))
    return {
        # the examples of torch's nn.LSTM / nn.GRU / nn.RNN documentation
        "lstm_doc": (
            lstm,
            (
                torch.randn(1, 3, 5, generator=gen),
                (torch.randn(2, 3, 6, generator=gen), torch.randn(2, 3, 6, generator=gen)),
            ),
        ),
        "gru_doc": (
            gru,
            (torch.randn(4, 3, 5, generator=gen), torch.randn(2, 3, 6, generator=gen)),
        ),
        "rnn_doc": (
            rnn,
            (torch.randn(4, 3, 5, generator=gen), torch.randn(2, 3, 6, generator=gen)),
        ),
        "composite": (Composite(), (torch.randn(4, 11, 6, generator=gen),)),
        "last_hidden": (LastHidden(), (torch.randn(8, 3, 4, generator=gen),)),
        "sequence_head": (SequenceHead(), (torch.randn(2, 7, 3, generator=gen),)),
    }


CASES = _cases()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    for name, (model, args) in CASES.items():
        tinyrnn.export(model.eval(), args, root / name, name=name, format="float32")
    return dict(zip(CASES, load_many([root / name for name in CASES])))


@pytest.mark.parametrize("name", list(CASES))
def test_equals_torch(name, compiled):
    model, args = CASES[name]
    expected = torch_run(model, args)
    got = compiled[name].run(*flat_numpy(args))
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def test_streaming_composite_gives_the_per_step_head(compiled):
    """NAME_step yields the head applied at every step; its last value equals the run."""
    model, (x,) = CASES["composite"]
    c = compiled["composite"]
    for b in range(x.shape[0]):
        state = c.new_state()
        steps = [c.step(state, x[b, t].numpy()) for t in range(x.shape[1])]
        with torch.no_grad():
            prefix = model(x[b : b + 1, :5])[0].numpy()
        np.testing.assert_allclose(steps[4], prefix, atol=1e-6)
        np.testing.assert_array_equal(steps[-1], c.run(x[b : b + 1].numpy())[0][0])


def test_ir_reads_torch_gate_order_exactly():
    """torch packs LSTM gates i,f,g,o and GRU r,z,n; the IR names and slices them."""
    lstm_model, args = CASES["lstm_doc"]
    ir = read_program(capture(lstm_model, args))
    first = ir.layers[0]
    assert isinstance(first, LSTMLayer) and [g.name for g in first.directions[0].gates] == list(
        "ifgo"
    )
    rnn = lstm_model.rnn
    for k, gate in enumerate(first.directions[0].gates):
        rows = slice(6 * k, 6 * (k + 1))
        np.testing.assert_array_equal(gate.w_x.data, rnn.weight_ih_l0.detach().numpy()[rows])
        np.testing.assert_array_equal(gate.w_h.data, rnn.weight_hh_l0.detach().numpy()[rows])
        folded = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy()[rows]
        (acc,) = gate.accumulators
        assert acc.name == gate.name
        np.testing.assert_allclose(acc.bias.data, folded, atol=1e-7)
        assert (
            gate.w_x.source
            == f"rnn.weight_ih_l0[{rows.start}:{rows.stop}] "
            + ("input gate", "forget gate", "cell gate", "output gate")[k]
        )

    gru_model, args = CASES["gru_doc"]
    ir = read_program(capture(gru_model, args))
    layer = ir.layers[1]
    assert isinstance(layer, GRULayer) and layer.layer == 1
    n = layer.directions[0].gates[2]
    assert n.name == "n"
    # the reset gate multiplies W_hn h + b_hn alone: two accumulators, biases not folded
    nx, nh = n.accumulators
    assert (nx.name, nh.name) == ("n", "nh") and nx.w_h is None and nh.w_x is None
    np.testing.assert_array_equal(nx.bias.data, gru_model.rnn.bias_ih_l1.detach().numpy()[12:18])
    np.testing.assert_array_equal(nh.bias.data, gru_model.rnn.bias_hh_l1.detach().numpy()[12:18])


def test_ir_of_a_head():
    ir = read_program(capture(*CASES["last_hidden"]))
    kinds = [type(layer).__name__ for layer in ir.layers]
    assert kinds == [
        "GRULayer",
        "GRULayer",
        "SelectStep",
        "Dense",
        "Activation",
        "Dense",
        "Activation",
    ]
    assert isinstance(ir.layers[2], SelectStep) and ir.layers[2].index == -1
    assert isinstance(ir.layers[3], Dense) and ir.layers[3].name == "fc1"


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_is_byte_identical_twice(tmp_path, fmt):
    """Every file of every format: the C, the header, the assembly kernels, the manifest."""
    model, args = CASES["composite"]
    for folder in ("a", "b"):
        tinyrnn.export(model, args, tmp_path / folder, name="m", format=fmt,
                       calibration=args if fmt != "float32" else None)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert {"m.c", "m.h", "m.json"} <= set(files)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_generated_c_documents_its_weights(tmp_path):
    model, args = CASES["lstm_doc"]
    tinyrnn.export(model, args, tmp_path, name="doc", format="float32")
    source = (tmp_path / "doc.c").read_text()
    assert source.startswith("/* Generated by tinyrnn")
    assert "weights sha256:" in source.splitlines()[1]
    # comments are wrapped at 120 columns: compare their text with the line breaks taken out
    comments = " ".join(line.strip().lstrip("/*").strip() for line in source.splitlines())
    assert "rnn.weight_ih_l1[6:12] forget gate | rnn.weight_hh_l1[6:12] forget gate" in comments
    assert "malloc" not in source
    # every array of numbers is const: no mutable static data
    for line in source.splitlines():
        if line.startswith("static") and "[" in line and "(" not in line:
            assert line.startswith("static const"), line
