"""The MVE kernels' instruction sequences (tinyrnn/backend/mveasm.py), checked symbolically;
test_boards.py runs them on the emulated Cortex-M55 against the host build, bit for bit. The
recurrent loops' Helium vector statements run on the emulated Cortex-M55 against the
bit-exact reference."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tinyrnn.backend.mveasm import MveKernel

KERNELS = [MveKernel(G, bits, acc) for G in (1, 2, 3, 4) for bits in (8, 16) for acc in (32, 64)]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name("m"))
def test_each_row_multiplies_its_own_weights(kernel: MveKernel) -> None:
    """Walking a chunk: each row's MAC reads the vector register that row's load wrote, and
    no load overwrites a register before its row's MAC read it; row r adds into sum r."""
    for lines in (kernel.rows(), kernel.tail()[3:]):
        holds: dict[str, int] = {}  # vector register -> row whose weights it holds
        loaded = 0
        done = []
        for line in lines:
            load = re.match(r"vldr[bh]\.s16 (q\d), \[%\[w\]\], #(\d+)$", line)
            mac = re.match(r"vml(?:a|al)dava\.s16 (?:%\[a(\d)\]|%Q\[a(\d)\], %R\[a\d\]), "
                           r"(q\d), q0$", line)
            if load:
                assert holds.get(load.group(1)) is None, f"{line}: overwrites unread weights"
                assert int(load.group(2)) == kernel.bits
                holds[load.group(1)] = loaded
                loaded += 1
            else:
                assert mac, line
                row = int(mac.group(1) or mac.group(2))
                assert holds.pop(mac.group(3)) == row
                done.append(row)
        assert done == list(range(kernel.G))


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name("m"))
def test_sum_registers_suit_the_instruction(kernel: MveKernel) -> None:
    """VMLADAVA needs an even register, VMLALDAVA the even register of an even/odd pair; r7
    (the Thumb frame pointer at -O0) and the pair partners are never shared."""
    numbers = [int(r[1:]) for r in kernel.registers]
    taken = numbers + ([n + 1 for n in numbers] if kernel.acc == 64 else [])
    assert all(n % 2 == 0 for n in numbers) and 7 not in taken
    assert len(set(taken)) == len(taken)
    assert kernel.loop()[0].startswith("wls lr,") and kernel.loop()[-2:] == ["le lr, 1b", "2:"]
    assert kernel.tail()[:3] == ["vctp.16 %[rest]", "vpst", "vldrht.s16 q0, [%[v]]"]


# ---------------------------------------------------------------------------------------------
# The vector statements of the recurrent loops (passes/lower.py: _vector_stage), on the M55


class _Layer(nn.Module):
    """One recurrent layer, its weights scaled up so that pre-activations reach the tables'
    ends and the saturations."""

    def __init__(self, kind: str, i: int, h: int, bias: bool, **options) -> None:
        super().__init__()
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](
            i, h, batch_first=True, bias=bias, **options)
        with torch.no_grad():
            for p in self.rnn.parameters():
                p.mul_(3.0)

    def forward(self, x):
        return self.rnn(x)[0]


# (kind, input, hidden, bias, options): unit counts below, at and past a block of 4
VECTOR_CASES = [("lstm", 6, 5, True, {}), ("lstm", 4, 8, False, {}),
                ("lstm", 5, 7, True, {"proj_size": 3}), ("gru", 9, 7, True, {}),
                ("gru", 3, 4, False, {}), ("rnn", 5, 6, True, {}),
                ("rnn", 3, 9, True, {"nonlinearity": "relu"})]


def test_vector_statements_equal_the_reference_on_the_m55(tmp_path: Path) -> None:
    """w8a16 LSTM, GRU and RNN layers whose unit loops run in Helium vectors on the M55 (4
    units per block, a last partial block predicated), fed inputs beyond their calibration
    (saturating) from a non-zero state: every output of the QEMU mps3-an547 run equals the
    bit-exact numpy reference."""
    from quant_cases import first_mismatch, reference_model, reference_run
    from tinyrnn.api import export_program
    from tinyrnn.frontend.reader import from_exported, trace
    from tinyrnn.io import assemble_outputs, split_inputs
    from tinyrnn.targets import cross
    from tinyrnn.targets.boards import load_board

    steps = 10
    jobs, expected = [], []
    for k, (kind, i, h, bias, options) in enumerate(VECTOR_CASES):
        torch.manual_seed(100 + k)
        model = _Layer(kind, i, h, bias, **options).eval()
        example = torch.randn(1, steps, i)
        program = from_exported(trace(model, (example,)))
        name = f"v{k}_{kind}"
        manifest = export_program(program, tmp_path / name, name=name, format="w8a16",
                                  calibration=[0.5 * torch.randn(4, steps, i).numpy()])
        source = (tmp_path / name / f"{name}.c").read_text()
        assert "tr_v_" in source, f"{name}: no vector statements"
        x = 3.0 * torch.randn(2, steps, i).numpy()
        exported = cross.ExportedModel.load(tmp_path / name)
        jobs.append(cross.ModelInputs(exported, tuple(split_inputs(exported.interface, [x]))))
        _, floats = reference_run(reference_model(program, manifest), exported.interface,
                                  [x])[:2]
        expected.append(floats)
    firmware = cross.build(jobs, load_board("mps3-an547"), tmp_path / "image")
    result = cross.run_qemu(firmware, timeout=60)
    for k, want in enumerate(expected):
        got = assemble_outputs(firmware.jobs[k].model.interface, result.outputs[k], steps)
        for g, e in zip(got, want, strict=True):
            assert np.array_equal(g, e), f"{VECTOR_CASES[k]}: {first_mismatch(g, e)}"
