"""The float32 unit kernels of NAME_kernels.S (tinyrnn/backend/fpuasm.py) on the emulated cores
with an FPU: large float32 layers, whose sizes reach every code path of the generator (counted
loops of blocks, a rest of blocks, the last groups of a block, the last 1-3 columns, every G,
parts with and without biases), run under QEMU on the Cortex-M4F (mps2-an386) and Cortex-M7
(mps2-an500), compared with torch at the float32 table's tolerance and with the host build.
(test_boards.py runs the small float32 cases of its table on every emulated core too.)

Needs arm-none-eabi-gcc (with newlib) and qemu-system-arm, which tools/setup.sh installs.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import torch

import tinyrnn
from models import SingleLayer
from tinyrnn.backend.fpuasm import FloatUnitKernel
from tinyrnn.io import assemble_outputs, split_inputs
from tinyrnn.targets import cross
from tinyrnn.targets.boards import load_board
from tinyrnn.targets.host import load_many

TOL = 1e-5  # test_float_table.py's tolerance against torch
HOST_TOL = 1e-6  # test_boards.py's float32 tolerance against the host build (libm's last bits)
STEPS = 5

# (kind, input, hidden, bias): LSTM 64 + 64 columns (two loop iterations of 2 blocks of 3
# groups, then a block, then 1 group), GRU 37 + 70 (a 1-column and a 2-column tail), Elman
# 65 + 33 (a tail of 1 after 16 and 8 groups), LSTM 6 + 9 (straight-line code only), GRU 64 +
# 33 without biases (no bias on either part).
LAYERS = [("lstm", 64, 64, True), ("gru", 37, 70, True), ("rnn", 65, 33, True),
          ("lstm", 6, 9, True), ("gru", 64, 33, False)]


def test_layers_reach_every_path_of_the_generator():
    seen = set()
    for kind, i, h, bias in LAYERS:
        G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
        kernel = FloatUnitKernel(G, i, h, bias, bias)
        text = "\n".join(str(line) for line in kernel.assembly(2))
        seen |= {("loop", bool(re.search(r"^1:$", text, re.M))),
                 ("tail", bool(i % 4 or h % 4)), ("bias", bias), ("G", G),
                 ("rest", any(n // 4 % kernel.b for n in (i, h)))}
    assert seen >= {("loop", True), ("loop", False), ("tail", True), ("tail", False),
                    ("rest", True),
                    ("bias", True), ("bias", False), ("G", 1), ("G", 3), ("G", 4)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every layer exported in float32, with its input and torch's output."""
    root = tmp_path_factory.mktemp("fpu_layers")
    out = []
    for kind, i, h, bias in LAYERS:
        torch.manual_seed(i + h)
        model = SingleLayer(kind, i, h, bias).eval()
        x = torch.randn(2, STEPS, i)
        name = f"{kind}_{i}_{h}_f32"
        tinyrnn.export(model, (x,), root / name, format="float32", name=name)
        with torch.no_grad():
            expected = model(x).numpy()
        out.append((name, root / name, x.numpy(), expected))
    return out


@pytest.fixture(scope="module")
def host_outputs(exported):
    """The host build's outputs (the portable C kernels), one build for every layer."""
    return [c.run(x)[0] for (_, _, x, _), c in zip(exported,
                                                   load_many([f for _, f, _, _ in exported]))]


def test_host_build_keeps_the_c_kernel_and_equals_torch(exported, host_outputs):
    for (name, folder, _, expected), got in zip(exported, host_outputs):
        source = (folder / f"{name}.c").read_text()
        assert f"{name}_fpu" in source and f"{name}_mac" in source, name
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, err_msg=name)


@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500"])
def test_fpu_kernels_on_the_board_equal_torch(board, exported, host_outputs, tmp_path):
    jobs = []
    for _, folder, x, _ in exported:
        model = cross.ExportedModel.load(folder)
        jobs.append(cross.ModelInputs(model, tuple(split_inputs(model.interface, [x]))))
    firmware = cross.build(jobs, load_board(board), tmp_path / "image")
    listing = subprocess.run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn",
                              str(firmware.elf)], capture_output=True, text=True, check=True)
    result = cross.run_qemu(firmware, timeout=60)
    for k, (name, _, _, expected) in enumerate(exported):
        # the step calls the assembly kernel, and the portable C kernel is not compiled
        assert re.search(rf"\bbl\s+[0-9a-f]+ <{name}_fpu\d_x\d+_h\d+\w*>", listing.stdout), name
        assert f"<{name}_mac" not in listing.stdout, name
        got = assemble_outputs(firmware.jobs[k].model.interface, result.outputs[k], STEPS)
        np.testing.assert_allclose(got[0], expected, rtol=0, atol=TOL,
                                   err_msg=f"{name} on {board} against torch")
        np.testing.assert_allclose(got[0], host_outputs[k], rtol=0, atol=HOST_TOL,
                                   err_msg=f"{name} on {board} against the host build")
    bodies = re.findall(r"^[0-9a-f]+ <(\w+_fpu\d_x\d+_h\d+\w*)>:\n(.*?)(?:\n\n|\Z)",
                        listing.stdout, re.M | re.S)
    assert len(bodies) == len(LAYERS)
    for name, body in bodies:
        assert re.search(r"\bvldmia\b", body) and re.search(r"\bvmul\.f32\b", body), name


def test_sigmoid_in_c_equals_its_numpy_spec_and_torch(tmp_path):
    """The float32 exports' sigmoid (no libm: 2^n e^r, tinyrnn.numerics.helpers.sigmoid_f)
    compiled for the host equals its numpy spec bit for bit, on random inputs and at the edges
    (the clamps, NaN, infinities, subnormal results), and stays within its stated relative
    error of torch's float64 sigmoid down to SIGMOID_LOW."""
    import cffi

    from tinyrnn.backend.render import helpers_source
    from tinyrnn.numerics.helpers import (
        SIGMOID_HIGH,
        SIGMOID_LOW,
        SIGMOID_MAX_RELATIVE_ERROR,
        sigmoid_f,
    )
    from tinyrnn.targets.host import CFLAGS

    source = ("#include <math.h>\n#include <stdint.h>\n#include <string.h>\n"
              + helpers_source(["sigmoid"], prefix="t_", P="T")
              + "\nvoid w_sigmoid(const float *x, float *y, int n)\n{\n    int k;\n"
              "    for (k = 0; k < n; ++k) y[k] = t_sigmoid(x[k]);\n}\n")
    (tmp_path / "s.c").write_text(source)
    subprocess.run(["gcc", *CFLAGS, "-fPIC", "-shared", "s.c", "-o", "libs.so", "-lm"],
                   cwd=tmp_path, check=True, capture_output=True, text=True)
    ffi = cffi.FFI()
    ffi.cdef("void w_sigmoid(const float *x, float *y, int n);")
    lib = ffi.dlopen(str(tmp_path / "libs.so"))
    rng = np.random.default_rng(14)
    edges = np.array([SIGMOID_LOW, np.nextafter(SIGMOID_LOW, np.float32(-1)),
                      np.nextafter(SIGMOID_LOW, np.float32(1)), -88.72, -88.0, -87.33, -100.0,
                      SIGMOID_HIGH, np.nextafter(SIGMOID_HIGH, np.float32(0)), 16.5, 0.0, -0.0,
                      0.3465, -0.3466, 1e-30, -1e-30, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38],
                     dtype=np.float32)
    x = np.concatenate([edges, (rng.standard_normal(200_000) * 8).astype(np.float32),
                        rng.uniform(-89, 18, 200_000).astype(np.float32)])
    y = np.zeros_like(x)
    lib.w_sigmoid(ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y), x.size)
    want = sigmoid_f(x)
    assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), \
        f"first difference at x = {x[np.argmax(y.view(np.uint32) != want.view(np.uint32))]!r}"
    inside = (x >= SIGMOID_LOW) & np.isfinite(x)
    exact = torch.sigmoid(torch.from_numpy(x[inside].astype(np.float64))).numpy()
    assert np.abs(y[inside] / exact - 1).max() <= SIGMOID_MAX_RELATIVE_ERROR
    assert np.isnan(y[np.isnan(x)]).all() and y[x == -np.inf].tolist() == [0.0] \
        and y[x == np.inf].tolist() == [1.0]
