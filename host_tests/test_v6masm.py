"""The ARMv6-M unit kernels (tinyrnn/backend/v6masm.py), run on an emulated Cortex-M0.

Each kernel is assembled the way NAME_kernels.S holds it (its macro and .rept blocks,
-mcpu=cortex-m0) and called under unicorn on random and extreme
integers; its sums must equal numpy's, and it must keep the AAPCS contract (r4-r11 and sp
restored, nothing written outside acc). The end-to-end check, the whole model on the micro:bit
under QEMU against the host build, is test_boards.py and the large models below.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import unicorn
from unicorn import arm_const

from models import assert_board_equals_host
from tinyrnn.backend.render import _asm_lines
from tinyrnn.backend.v6masm import UNROLL_SIZE, UNROLL_SPEED, V6MUnitKernel
from tinyrnn.passes.layout import padded

CODE, DATA, STOP = 0x0000_0000, 0x2000_0000, 0x0F00_0000

# G, nx, nh, bx, bh: every row count; one column, odd columns (padding, the Elman cell's
# 2-column steps), loops with and without a remainder, parts of very different lengths.
KERNELS = [
    V6MUnitKernel(G, nx, nh, padded(nx), bx, bh)
    for G, nx, nh, bx, bh in [
        (4, 1, 1, True, True), (4, 5, 7, False, True), (4, 64, 64, True, False),
        (4, 37, 130, True, True), (3, 5, 7, True, True), (3, 64, 64, False, False),
        (3, 200, 3, True, False), (2, 9, 17, False, True), (1, 5, 7, True, True),
        (1, 1, 2, False, False), (1, 65, 64, True, True), (1, 3, 300, False, True),
    ]
]


def _compile(kernel: V6MUnitKernel, unroll: int, work: Path) -> bytes:
    """The kernel as NAME_kernels.S holds it (its macro, .rept blocks), assembled for the
    Cortex-M0 and linked at address 0: raw code bytes."""
    lines = [".syntax unified", ".thumb"]
    for name, body in kernel.macros().items():
        lines += [f".macro {name}", *body, ".endm"]
    lines += [".global kernel", ".type kernel, %function", ".thumb_func", "kernel:"]
    lines += _asm_lines(kernel.assembly(unroll))
    (work / "k.S").write_text("\n".join(lines) + "\n")
    flags = ["-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"]
    for cmd in (["arm-none-eabi-gcc", *flags, "-c", "k.S", "-o", "k.o"],
                ["arm-none-eabi-ld", "-Ttext=0", "-e", "kernel", "k.o", "-o", "k.elf"],
                ["arm-none-eabi-objcopy", "-O", "binary", "k.elf", "k.bin"]):
        result = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    return (work / "k.bin").read_bytes()


def _run(code: bytes, kernel: V6MUnitKernel, w: np.ndarray, xh: np.ndarray,
         bx: np.ndarray | None, bh: np.ndarray | None) -> tuple[np.ndarray, int]:
    """acc[0..2G) of one call, and the instructions it ran; checks the AAPCS contract."""
    uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB)
    uc.ctl_set_cpu_model(arm_const.UC_CPU_ARM_CORTEX_M0)
    uc.mem_map(CODE, 1 << 20)
    uc.mem_map(DATA, 1 << 20)
    uc.mem_map(STOP, 0x1000)
    uc.mem_write(CODE, code)
    G = kernel.G
    at = {"w": DATA + 0x1001, "xh": DATA + 0x40000, "acc": DATA + 0x50000,
          "bx": DATA + 0x50100, "bh": DATA + 0x50200}  # w deliberately odd: bytes only
    uc.mem_write(at["w"], w.astype("<i1").tobytes())
    uc.mem_write(at["xh"], xh.astype("<i2").tobytes())
    guard = np.full(2 * G + 8, 0x5A5A5A5A, dtype="<u4")
    uc.mem_write(at["acc"] - 16, guard.tobytes())
    for name, b in (("bx", bx), ("bh", bh)):
        if b is not None:
            uc.mem_write(at[name], b.astype("<i4").tobytes())
    sp = DATA + 0x80000
    uc.mem_write(sp, np.array([at["bh"] if bh is not None else 0], "<u4").tobytes())
    args = (at["w"], at["xh"], at["acc"], at["bx"] if bx is not None else 0)
    for k, value in enumerate(args):
        uc.reg_write(getattr(arm_const, f"UC_ARM_REG_R{k}"), value)
    saved = {k: 0x1111_1111 * k for k in range(4, 12)}
    for k, value in saved.items():
        uc.reg_write(getattr(arm_const, f"UC_ARM_REG_R{k}"), value)
    uc.reg_write(arm_const.UC_ARM_REG_SP, sp)
    uc.reg_write(arm_const.UC_ARM_REG_LR, STOP | 1)
    count = [0]

    def on_code(uc, address, size, user):
        count[0] += 1

    uc.hook_add(unicorn.UC_HOOK_CODE, on_code)
    uc.emu_start(CODE | 1, STOP, count=10_000_000)
    assert uc.reg_read(arm_const.UC_ARM_REG_PC) == STOP
    assert uc.reg_read(arm_const.UC_ARM_REG_SP) == sp
    for k, value in saved.items():
        assert uc.reg_read(getattr(arm_const, f"UC_ARM_REG_R{k}")) == value, f"r{k} not kept"
    out = np.frombuffer(uc.mem_read(at["acc"] - 16, 4 * len(guard)), "<u4")
    assert (out[:4] == guard[:4]).all() and (out[4 + 2 * G:] == guard[4 + 2 * G:]).all()
    return out[4:4 + 2 * G].view("<i4").astype(np.int64), count[0] - 1


def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((v + 2**31) % 2**32) - 2**31


def _case(kernel: V6MUnitKernel, rng: np.random.Generator, extreme: bool):
    G, nx, nh = kernel.G, kernel.nx, kernel.nh
    units = 3
    wx = rng.integers(-128, 128, (units, G, nx))
    wh = rng.integers(-128, 128, (units, G, nh))
    xh = rng.integers(-2**15, 2**15, padded(nx) + padded(nh))  # padding: any value
    if extreme:  # the largest products, every sign
        wx[0], wh[0], wx[1, 0] = -128, -128, 127
        xh[:] = -2**15
        xh[1::3] = 2**15 - 1
    bx = rng.integers(-2**30, 2**30, (units, G)) if kernel.bx else None
    bh = rng.integers(-2**30, 2**30, (units, G)) if kernel.bh else None
    return wx, wh, xh, bx, bh


@pytest.mark.parametrize("unroll", [UNROLL_SPEED, UNROLL_SIZE], ids=["speed", "size"])
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name("m"))
def test_unit_kernel_sums_exactly(kernel: V6MUnitKernel, unroll: int, tmp_path):
    code = _compile(kernel, unroll, tmp_path)
    rng = np.random.default_rng(kernel.G * 1000 + kernel.nx + 7 * kernel.nh)
    hoff = kernel.hoff
    for extreme in (False, True):
        wx, wh, xh, bx, bh = _case(kernel, rng, extreme)
        stream = kernel.layout(wx, wh)
        assert stream.shape == (wx.shape[0], kernel.unit_bytes)
        for j in range(wx.shape[0]):
            got, count = _run(code, kernel, stream[j], xh, None if bx is None else bx[j],
                              None if bh is None else bh[j])
            sx = wx[j] @ xh[:kernel.nx] + (0 if bx is None else bx[j])
            sh = wh[j] @ xh[hoff:hoff + kernel.nh] + (0 if bh is None else bh[j])
            want = _wrap32(np.concatenate([sx, sh]))
            first = np.flatnonzero(got != want)
            assert first.size == 0, (f"unit {j}, sum {first[0]}: {got[first[0]]} != "
                                     f"{want[first[0]]} (extreme={extreme})")
        macs = kernel.G * (kernel.nx + kernel.nh)
        if unroll == UNROLL_SPEED and macs >= 4 * 128:
            assert count / macs < 3 + 2 / kernel.G + 0.2, count / macs


def test_layout_puts_each_weight_once():
    """Every weight of every row lands at its own byte; the rest is zero."""
    for kernel in KERNELS:
        G, nx, nh = kernel.G, kernel.nx, kernel.nh
        ids = np.arange(1, 1 + G * (nx + nh)).reshape(1, G, nx + nh)
        stream = kernel.layout(ids[:, :, :nx], ids[:, :, nx:])
        assert sorted(stream[stream != 0].tolist()) == ids.ravel().tolist()


# ---------------------------------------------------------------------------------------------
# Whole models large enough for the kernels' loops, on the micro:bit (Cortex-M0) under QEMU


# Sizes that run the kernel's loops in whole models, every G
LARGE = [("lstm", 37, 70, True, "w8a16"), ("gru", 64, 33, False, "w8a16"),
         ("rnn", 65, 64, True, "w8a16")]


def test_large_models_on_microbit_equal_host(tmp_path):
    assert_board_equals_host("microbit", LARGE, tmp_path, "_v6m_unit")
