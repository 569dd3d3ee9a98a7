"""torch -> IR: every case of the table read into the IR, compared array by array with the torch
module's parameters (exact: the frontend only slices and adds), and the IR's interface with the
forward's arguments and results."""

from __future__ import annotations

import numpy as np
import pytest

from models import CELLS, Case, captured, table
from tinyrnn.cells import cell_spec
from tinyrnn.frontend.reader import read_program
from tinyrnn.ir import GRULayer, LSTMLayer, RNNLayer

CASES = table()
KINDS = {"rnn_tanh": (RNNLayer, "rnn_tanh"), "rnn_relu": (RNNLayer, "rnn_relu"),
         "lstm": (LSTMLayer, "lstm"), "lstm_proj": (LSTMLayer, "lstm"), "gru": (GRULayer, "gru")}


def _param(module, name: str) -> np.ndarray:
    """A parameter as the IR holds it: float64 (the folded biases are summed in float64)."""
    return getattr(module, name).detach().double().numpy()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_ir_holds_the_torch_weights_exactly(case: Case):
    model, args, program = captured(case)
    ir = read_program(program)
    rnn = model.rnn
    cls, kind = KINDS[case.cell]
    spec = cell_spec(kind)
    assert [type(layer) for layer in ir.layers] == [cls] * case.layers
    for k, layer in enumerate(ir.layers):
        assert (layer.kind, layer.module, layer.layer) == (kind, "rnn", k)
        assert layer.num_directions == (2 if case.bidirectional else 1)
        H = case.hidden
        P = 4 if case.cell == "lstm_proj" else H
        assert (layer.hidden_size, layer.state_size, layer.projected) == (H, P, P != H)
        expected_input = case.input_size if k == 0 else P * layer.num_directions
        assert layer.input_size == expected_input
        for d, direction in enumerate(layer.directions):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            assert direction.reverse == (d == 1)
            w_ih, w_hh = _param(rnn, "weight_ih" + suffix), _param(rnn, "weight_hh" + suffix)
            assert [g.name for g in direction.gates] == list(spec.gate_names)
            for g, (gate, gspec) in enumerate(zip(direction.gates, spec.gates)):
                rows = slice(g * H, (g + 1) * H)
                title = f" {gspec.title}" if gspec.title else ""
                assert [a.name for a in gate.accumulators] == list(gspec.accumulators)
                np.testing.assert_array_equal(gate.w_x.data, w_ih[rows])
                np.testing.assert_array_equal(gate.w_h.data, w_hh[rows])
                assert gate.w_x.source == f"rnn.weight_ih{suffix}[{rows.start}:{rows.stop}]{title}"
                assert gate.w_h.source == f"rnn.weight_hh{suffix}[{rows.start}:{rows.stop}]{title}"
                if not case.bias:
                    assert all(a.bias is None for a in gate.accumulators)
                    continue
                b_ih, b_hh = _param(rnn, "bias_ih" + suffix), _param(rnn, "bias_hh" + suffix)
                if gspec.split:  # GRU n: W_in x + b_in, and W_hn h + b_hn that r multiplies
                    nx, nh = gate.accumulators
                    assert nx.w_h is None and nh.w_x is None
                    np.testing.assert_array_equal(nx.bias.data, b_ih[rows])
                    np.testing.assert_array_equal(nh.bias.data, b_hh[rows])
                else:
                    (acc,) = gate.accumulators
                    np.testing.assert_array_equal(acc.bias.data, b_ih[rows] + b_hh[rows])
            if layer.projected:
                np.testing.assert_array_equal(direction.w_proj.data, _param(rnn, "weight_hr"
                                                                              + suffix))
            else:
                assert direction.w_proj is None


@pytest.mark.parametrize("case", CASES[::7], ids=[c.id for c in CASES[::7]])
def test_ir_interface_follows_the_forward(case: Case):
    """Inputs (x, h0, c0 in order), outputs (the sequence, h_n, c_n) and the state group."""
    _, args, program = captured(case)
    ir = read_program(program)
    roles = ["x"] + (["h0", "c0"] if case.initial_state and case.cell.startswith("lstm")
                     else ["h0"] if case.initial_state else [])
    assert [spec.role for spec in ir.inputs] == roles
    x_shape = tuple(args[0].shape)
    assert ir.inputs[0].torch_shape == x_shape and ir.input_size == case.input_size
    assert (ir.inputs[0].batch_axis, ir.inputs[0].time_axis) == ((0, 1) if case.batch_first
                                                                  else (1, 0))
    lstm = case.cell.startswith("lstm")
    assert [o.role for o in ir.outputs] == ["sequence", "h_n"] + (["c_n"] if lstm else [])
    dirs = 2 if case.bidirectional else 1
    P = 4 if case.cell == "lstm_proj" else case.hidden
    assert ir.outputs[0].features == P * dirs
    assert ir.outputs[1].size == case.layers * dirs * P
    group = ir.groups[0]
    assert group.rows == case.layers * dirs and group.layers == tuple(range(case.layers))


def test_the_table_covers_every_cell_direction_and_projection():
    assert {c.cell for c in CASES} == set(CELLS)
    assert {(c.cell, c.bidirectional) for c in CASES} == {(cell, b) for cell in CELLS
                                                           for b in (False, True)}
