"""The MVE kernels' instruction sequences (tinyrnn/backend/mveasm.py), checked symbolically;
test_boards.py runs them on the emulated Cortex-M55 against the host build, bit for bit."""

from __future__ import annotations

import re

import pytest

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
