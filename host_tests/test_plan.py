"""The lowering's decisions on their own: each requantization fold at the edges of its proven
bounds, each kernel family's weight layout, and the buffer planner.

The folds are checked against Python integers (the rule ``rshift_round(acc * M, n)``), never
against earlier outputs; the layouts against the matrices they were made from. The plan as a
whole is checked against the reference over the whole test table in quant_table.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyrnn.backend.v6masm import V6MUnitKernel
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.numerics import helpers as nm
from tinyrnn.numerics.folds import Fold32, Fold64, Rescale, fold_side, sum_fits_int32
from tinyrnn.passes.layout import (
    SXTB16_ORDER,
    decode_mve_stream,
    decode_stream,
    decode_v6m_layout,
    direction_stream,
    mve_stream,
)
from tinyrnn.passes.lower import lower


def _rule(acc: int, m: int, n: int) -> int:
    """rshift_round(acc * M, n), exactly, on Python integers."""
    return (acc * m + (1 << (n - 1))) >> n if n > 0 else acc * m


def _edges(bound: int, rng: np.random.Generator, count: int = 200) -> list[int]:
    """The ends of [-bound, bound], values around 0 and random ones."""
    fixed = [v for v in (-bound, -bound + 1, -1, 0, 1, bound - 1, bound) if abs(v) <= bound]
    return fixed + [int(v) for v in rng.integers(-bound, bound + 1, count)]


def _random_side(rng, G: int, rows: int, acc_bits: int, shifts) -> tuple:
    mults = [rng.integers(2**14, 2**15, rows) for _ in range(G)]
    shift = [rng.choice(shifts, rows) for _ in range(G)]
    top = 2**31 - 1 if acc_bits == 32 else 2**46
    bounds = [rng.integers(1, top, rows) for _ in range(G)]
    return bounds, mults, shift


@pytest.mark.parametrize("seed", range(6))
def test_fold32_is_the_rule_at_the_edges_of_its_bound(seed):
    """32-bit sums: c * acc + mmulr(acc, k) is rshift_round(acc * M, n) for every accumulator
    the bound allows, and every intermediate fits int32."""
    rng = np.random.default_rng(seed)
    found = 0
    for _ in range(40):
        G, rows = int(rng.integers(1, 5)), 3
        bounds, mults, shifts = _random_side(rng, G, rows, 32, np.arange(0, 33))
        bounds = [b >> int(rng.integers(0, 31)) for b in bounds]  # from tiny to full range
        fold = fold_side(bounds, mults, shifts, 32)
        if not isinstance(fold, Fold32):
            assert isinstance(fold, Rescale)
            # refused only when some row's fold could leave int32
            full = [[int(m) << (32 - int(n)) for m, n in zip(mults[g], shifts[g])]
                    for g in range(G)]
            c = [[(f + (1 << 31)) >> 32 for f in row] for row in full]
            assert any(abs(c[g][r]) * int(bounds[g][r]) >= 2**31
                       or (int(bounds[g][r]) * int(mults[g][r]) >> int(shifts[g][r])) + 1 >= 2**31
                       for g in range(G) for r in range(rows))
            continue
        found += 1
        for g in range(G):
            for r in range(rows):
                k, c, m, n = (int(fold.k[r, g]), int(fold.c[r, g]), int(mults[g][r]),
                              int(shifts[g][r]))
                assert -(2**31) <= k < 2**31
                for acc in _edges(int(bounds[g][r]), rng, 50):
                    assert abs(c * acc) < 2**31
                    got = c * acc + int(nm.mmulr(np.array([acc]), np.array([k]))[0])
                    assert got == _rule(acc, m, n), (acc, m, n)
                    assert abs(got) <= int(fold.bound[r, g])
    assert found, "no Fold32 among the random sides"


@pytest.mark.parametrize("seed", range(4))
def test_fold64_is_the_rule_at_the_edges_of_its_bound(seed):
    """64-bit sums with n >= 17: mmulr64(acc, M * 2**(32 - n)) is the rule (exact modulo 2**32
    because the result fits int32, which the bound proves)."""
    rng = np.random.default_rng(100 + seed)
    found = 0
    for _ in range(40):
        G, rows = int(rng.integers(1, 5)), 3
        bounds, mults, shifts = _random_side(rng, G, rows, 64, np.arange(17, 33))
        bounds = [b >> int(rng.integers(0, 20)) for b in bounds]
        fold = fold_side(bounds, mults, shifts, 64)
        if not isinstance(fold, Fold64):
            assert isinstance(fold, Rescale)
            assert any((int(bounds[g][r]) * int(mults[g][r]) >> int(shifts[g][r])) + 1 >= 2**31
                       for g in range(G) for r in range(rows))
            continue
        found += 1
        for g in range(G):
            for r in range(rows):
                k, m, n = int(fold.k[r, g]), int(mults[g][r]), int(shifts[g][r])
                accs = np.array(_edges(int(bounds[g][r]), rng, 50), dtype=np.int64)
                got = nm.mmulr64(accs, np.full(accs.size, k))
                assert got.tolist() == [_rule(int(a), m, n) for a in accs]
                assert np.abs(got).max() <= int(fold.bound[r, g])
    assert found


def test_shifts_past_32_and_64_bit_multipliers_stay_int64():
    bounds, mults = [np.array([1000])], [np.array([20000])]
    assert isinstance(fold_side(bounds, mults, [np.array([33])], 32), Rescale)
    assert isinstance(fold_side(bounds, mults, [np.array([14])], 64), Rescale)  # M * 2**18 >= 2**32
    assert isinstance(fold_side(bounds, mults, [np.array([20])], 64), Fold64)


def test_two_folded_sides_sum_in_int32_only_when_proven():
    rng = np.random.default_rng(7)
    m, n = [np.array([30000])], [np.array([20])]
    small = fold_side([np.array([2**20])], m, n, 32)
    big = fold_side([np.array([2**31 - 1])], m, [np.array([14])], 32)
    assert isinstance(small, Fold32) and sum_fits_int32(small, small, 0)
    assert not sum_fits_int32(small, fold_side([np.array([2**31 - 1])], m, [np.array([0])], 32), 0)
    assert isinstance(big, Rescale) and not sum_fits_int32(small, big, 0)
    # the int32 chain mmlar(ah, kh, ch * ah + mmlar(ax, kx, cx * ax)) at the bounds' corners
    kx, cx = int(small.k[0, 0]), int(small.c[0, 0])
    for ax in _edges(2**20, rng, 100):
        for ah in (-(2**20), 2**20, 0, 12345):
            x_term = nm.mmlar(np.array([ax]), np.array([kx]), np.array([cx * ax]))
            total = nm.mmlar(np.array([ah]), np.array([kx]), cx * ah + x_term)
            assert int(total[0]) == _rule(ax, 30000, 20) + _rule(ah, 30000, 20)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize(("G", "x_cols", "h_cols"), [(4, 3, 16), (3, 5, 7), (1, 1, 9), (4, 8, 8)])
def test_the_c_and_dsp_layout_holds_each_weight_once(G, x_cols, h_cols, bits):
    rng = np.random.default_rng(G * 100 + x_cols)
    top = 2 ** (bits - 1)
    wx = rng.integers(-top + 1, top, (5, G, x_cols))
    wh = rng.integers(-top + 1, top, (5, G, h_cols))
    stream = direction_stream([wx[:, g] for g in range(G)], [wh[:, g] for g in range(G)], bits)
    assert stream.shape == (5, 4 * G * (-(-x_cols // 4) + -(-h_cols // 4)))
    back_x, back_h = decode_stream(stream, G, x_cols, h_cols, bits)
    assert np.array_equal(back_x, wx) and np.array_equal(back_h, wh)
    assert np.count_nonzero(stream) == np.count_nonzero(wx) + np.count_nonzero(wh)  # pads are 0


@pytest.mark.parametrize(("G", "x_cols", "h_cols"),
                         [(4, 3, 16), (3, 9, 7), (1, 8, 17), (4, 64, 64)])
def test_the_mve_layout_holds_each_weight_once(G, x_cols, h_cols):
    """Per unit and chunk of 8 columns, each row's 8 weights in column order (one vector load),
    the last chunk padded with zeros."""
    rng = np.random.default_rng(G * 10 + h_cols)
    wx = rng.integers(-127, 128, (3, G, x_cols))
    wh = rng.integers(-127, 128, (3, G, h_cols))
    stream = mve_stream([wx[:, g] for g in range(G)], [wh[:, g] for g in range(G)])
    assert stream.shape == (3, 8 * G * (-(-x_cols // 8) + -(-h_cols // 8)))
    # the second 8 weights: row 1's first chunk; for G = 1 (x_cols = 8), the h part's first
    second_row = wx[0, 1, :8] if G > 1 else wh[0, 0, :8]
    assert list(stream[0, 8:16]) == list(np.pad(second_row, (0, 8 - len(second_row))))
    back_x, back_h = decode_mve_stream(stream, G, x_cols, h_cols)
    assert np.array_equal(back_x, wx) and np.array_equal(back_h, wh)
    assert np.count_nonzero(stream) == np.count_nonzero(wx) + np.count_nonzero(wh)  # pads are 0


def test_sxtb16_order_gives_the_column_pairs():
    """Within a word of int8 weights, SXTB16 takes bytes 0 and 2 and SXTB16 ROR 8 bytes 1 and 3:
    the layout puts columns (0, 1) and (2, 3) there, the pairs of the two activation words."""
    columns = np.array([[[10, 11, 12, 13]]])  # one unit, one gate, 4 columns
    word = direction_stream([columns[:, 0]], [np.zeros((1, 4), np.int64)], 8)[0, :4]
    assert list(SXTB16_ORDER) == [0, 2, 1, 3]
    assert (word[0], word[2]) == (10, 11) and (word[1], word[3]) == (12, 13)


@pytest.mark.parametrize("kernel", [V6MUnitKernel(G, nx, nh, -(-nx // 4) * 4, True, False)
                                    for G, nx, nh in [(4, 3, 16), (3, 5, 7), (1, 1, 2),
                                                      (1, 65, 64), (2, 9, 17), (3, 200, 3)]],
                         ids=lambda k: k.name("m"))
def test_the_v6m_layout_holds_each_weight_once(kernel):
    rng = np.random.default_rng(kernel.nx * 7 + kernel.G)
    wx = rng.integers(-127, 128, (4, kernel.G, kernel.nx))
    wh = rng.integers(-127, 128, (4, kernel.G, kernel.nh))
    data = kernel.layout(wx, wh)
    positions = [p for part in (0, 1) for row in range(kernel.G)
                 for p in kernel.positions(part, row)]
    assert len(set(positions)) == len(positions) and max(positions) < kernel.unit_bytes
    back_x, back_h = decode_v6m_layout(kernel, data)
    assert np.array_equal(back_x, wx) and np.array_equal(back_h, wh)
    assert np.count_nonzero(data) == np.count_nonzero(wx) + np.count_nonzero(wh)


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 8, batch_first=True)
        self.a = torch.nn.Linear(8, 6)
        self.b = torch.nn.Linear(6, 5)

    def forward(self, x):
        y, _ = self.rnn(x)
        return torch.softmax(self.b(torch.relu(self.a(y))), dim=-1)


def test_the_planner_shares_scratch_only_between_values_that_do_not_overlap():
    """A per-step head: each Linear writes a buffer its input is not in, each activation works
    in place; the cell's working memory is reused by the head once the cell has run."""
    torch.manual_seed(0)
    model = _Head().eval()
    ir = read_program(capture(model, (torch.zeros(1, 4, 3),)))
    plan = lower(ir, "m")
    step = plan.schedule.step
    kinds = [op.kind for op in step]
    assert kinds == ["cell", "dense", "activation", "dense", "activation"]
    cell, dense_a, relu, dense_b, softmax = step
    assert dense_a.args[1].buffer != dense_a.args[0].buffer
    assert relu.args[0] == relu.args[1] == dense_a.args[1]
    assert dense_b.args[1].buffer != dense_b.args[0].buffer
    assert softmax.args[0] == softmax.args[1]
    xh = next(a for a, prm in zip(cell.args, plan.function(cell.fn).params) if prm.name == "xh")
    assert dense_a.args[1].buffer == xh.buffer  # the cell's xh, free again
    scratch = {b.name: b.size for b in plan.buffers if b.scratch}
    assert len(scratch) == 2 and scratch[xh.buffer] >= 3 + 8
