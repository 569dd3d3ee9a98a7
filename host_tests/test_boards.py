"""Exported models cross-compiled for the Cortex-M boards and run under QEMU.

Needs arm-none-eabi-gcc (with newlib) and qemu-system-arm, which tools/setup.sh installs.
To keep CI short, every model of RUNS is linked into ONE image per board, and each emulated
board runs once; the tests then pick their model's outputs out of that run. The
reference is the same C compiled on the host (tinyrnn.targets.host), which test_float_table.py
checks against torch.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import tinyrnn
from models import Case, assert_board_equals_host, build, flat_numpy
from tinyrnn.api import FORMATS
from tinyrnn.backend.dspasm import UNROLL_SPEED, part_unroll
from tinyrnn.cli import main as cli_main
from tinyrnn.errors import TinyRNNError
from tinyrnn.io import assemble_outputs, split_inputs
from tinyrnn.passes.layout import padded
from tinyrnn.targets import cross
from tinyrnn.targets.boards import list_boards, load_board, load_board_file
from tinyrnn.targets.host import load_many

EMULATED = [board.name for board in list_boards() if board.qemu_machine]
NO_FPU_NO_DSP = ["microbit", "mps2-an385"]  # Cortex-M0 and Cortex-M3

# cell, bidirectional, layers, batch_first, bias, initial state: every cell kind, both
# directions, stacks of 1-3 layers, both layouts, with and without initial state.
BOARD_CASES = [
    Case("rnn_tanh", False, 1, True, True, False),
    Case("rnn_relu", True, 2, False, True, True),
    Case("lstm", False, 2, True, True, True),
    Case("lstm", True, 1, False, False, False),
    Case("lstm_proj", True, 2, True, True, True),
    Case("gru", False, 3, False, True, True),
    Case("gru", True, 2, True, False, False),
]
# Every format the exporter offers, in the same image; float32 may differ from the host
# build by the last bits of libm's expf/tanhf, integer formats must match exactly.
RUNS = [(case, fmt) for fmt in FORMATS for case in BOARD_CASES]
RUN_IDS = [f"{fmt}-{case.id}" for case, fmt in RUNS]


def tolerance(fmt: str) -> float:
    return 1e-6 if fmt == "float32" else 0.0


def model_name(case: Case, fmt: str) -> str:
    return f"{case.name}_{fmt}"


# Distinctive mnemonics of the DSP extension (ARMv7E-M), absent from ARMv6-M and ARMv7-M.
# (Plain smlal/smull/umlal are base ARMv7-M and allowed on the M3.)
DSP = re.compile(
    r"^(smla(dx?|[bt][bt]|w[bt]|l[bt][bt]|ldx?)|smlsl?d\w*|smuad\w*|smusd\w*|smm(la|ls|ul)\w*"
    r"|smul[bt][bt]|smulw[bt]"
    r"|[su]xtab16|[su]xtb16|sxta[bh]|uxta[bh]|[su]sat16|q(d?add|d?sub)\w*|[us]h?(add|sub)(8|16)"
    r"|[us]q(add|sub)(8|16)|[us]h?(asx|sax)|[us]q(asx|sax)|usada?8|pkh(bt|tb)|sel)$")


# ---------------------------------------------------------------------------------------------
# One image per board, shared by all tests of this file


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Every (case, format) exported into its own folder: model name -> folder."""
    root = tmp_path_factory.mktemp("board_models")
    folders = {}
    for case, fmt in RUNS:
        model, args = build(case)
        name = model_name(case, fmt)
        tinyrnn.export(model, args, root / name, format=fmt, name=name)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="module")
def host_outputs(exported) -> dict[str, list[np.ndarray]]:
    """The host build's outputs for every model, in torch layout: model name -> outputs."""
    compiled = load_many([exported[model_name(case, fmt)] for case, fmt in RUNS])
    return {model_name(case, fmt): c.run(*flat_numpy(build(case)[1]))
            for (case, fmt), c in zip(RUNS, compiled)}


@pytest.fixture(scope="module")
def board_run(exported, tmp_path_factory):
    """board name -> (firmware, QEMU run) of the image holding every model; built once each."""
    done: dict[str, tuple[cross.Firmware, cross.QemuRun]] = {}

    def get(name: str) -> tuple[cross.Firmware, cross.QemuRun]:
        if name not in done:
            jobs = []
            for case, fmt in RUNS:
                model = cross.ExportedModel.load(exported[model_name(case, fmt)])
                samples = split_inputs(model.interface, flat_numpy(build(case)[1]))
                jobs.append(cross.ModelInputs(model, tuple(samples)))
            firmware = cross.build(jobs, load_board(name), tmp_path_factory.mktemp(name))
            done[name] = (firmware, cross.run_qemu(firmware, timeout=60))
        return done[name]

    return get


# ---------------------------------------------------------------------------------------------
# Results


@pytest.mark.parametrize(("case", "fmt"), RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("board", EMULATED)
def test_board_equals_host(board: str, case: Case, fmt: str, board_run, host_outputs):
    firmware, result = board_run(board)
    index = RUNS.index((case, fmt))
    interface = firmware.jobs[index].model.interface
    got = assemble_outputs(interface, result.outputs[index], case.seq_len)
    expected = host_outputs[model_name(case, fmt)]
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, f"out{k}"
        np.testing.assert_allclose(g, e, rtol=0, atol=tolerance(fmt),
                                   err_msg=f"out{k} of {fmt} {case.id} on {board}")


@pytest.mark.parametrize("board", EMULATED)
def test_image_fits_and_reports_sizes(board: str, board_run):
    firmware, result = board_run(board)
    sizes = firmware.sizes
    assert sizes.flash_used <= firmware.board.flash.length
    assert sizes.ram_static + sizes.heap <= firmware.board.ram.length
    assert sizes.weights > 0 and sizes.model_code > 0 and sizes.state > 0
    assert 0 < result.stack_peak < firmware.board.stack_size
    assert f"board {board}" in sizes.format()


@pytest.mark.parametrize("board", NO_FPU_NO_DSP)
def test_no_dsp_or_fpu_instructions_without_them(board: str, board_run):
    """M0/M3 images hold no DSP or FPU instruction, and float math goes through soft float."""
    firmware, _ = board_run(board)
    listing = subprocess.run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn",
                              str(firmware.elf)], capture_output=True, text=True, check=True)
    mnemonics = set()
    for line in listing.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and re.match(r"^\s*[0-9a-f]+:$", fields[0]):
            mnemonics.add(fields[1].split(".")[0].strip())
    assert mnemonics, "objdump printed no instruction"
    assert sorted(m for m in mnemonics if DSP.match(m)) == []
    assert sorted(m for m in mnemonics if m.startswith("v")) == []
    # soft float: libgcc's routines (objdump may show an alias, __mulsf3 for __aeabi_fmul)
    assert re.search(r"\bbl\s+[0-9a-f]+ <__(aeabi_fmul|mulsf3)>", listing.stdout)
    assert re.search(r"\bbl\s+[0-9a-f]+ <__(aeabi_fadd|addsf3)>", listing.stdout)


MVE_BOARDS = ["mps3-an547"]  # Cortex-M55: the MVE kernels win over the DSP assembly
DSP_BOARDS = [b for b in EMULATED if b not in NO_FPU_NO_DSP + MVE_BOARDS]


@pytest.mark.parametrize("board", MVE_BOARDS)
def test_mve_boards_run_the_helium_kernels(board: str, board_run):
    """On the Cortex-M55 the w8a16 and w16a16 recurrent layers go through the MVE kernels
    (inlined: VMLADAVA.S16 for 32-bit sums, VMLALDAVA.S16 for 64-bit ones, widening VLDRB.S16
    loads of int8 weights), so test_board_equals_host checks them bit for bit, and no DSP
    assembly unit kernel is linked."""
    firmware, _ = board_run(board)
    listing = subprocess.run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn", "-m",
                              "armv8.1-m.main", str(firmware.elf)], capture_output=True, text=True,
                             check=True)
    # objdump prints VMLADAVA as its alias VMLAVA, VMLALDAVA as VMLALVA
    for mnemonic in ("vmlava.s16", "vmlalva.s16", "vldrb.s16", "vctp.16"):
        assert re.search(rf"\b{re.escape(mnemonic)}\b", listing.stdout), mnemonic
    assert not re.search(r"^[0-9a-f]+ <\w+_unit\d", listing.stdout, re.M)


@pytest.mark.parametrize("board", DSP_BOARDS)
def test_dsp_boards_run_the_assembly_unit_kernels(board: str, board_run):
    """On the DSP cores the w8a16 and w16a16 recurrent layers go through the generated
    SMLAD/SMLALD unit kernels (so test_board_equals_host above checks them bit for bit), one
    per cell shape."""
    firmware, _ = board_run(board)
    listing = subprocess.run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn",
                              str(firmware.elf)], capture_output=True, text=True, check=True)
    bodies = re.findall(r"^[0-9a-f]+ <(\w+_unit(\d)(_w16)?_x\d+_h\d+\w*)>:\n(.*?)(?:\n\n|\Z)",
                        listing.stdout, re.M | re.S)
    for wide, mac in (("", "smlad"), ("_w16", "smlald")):
        kernels = [(name, body) for name, _, w, body in bodies if w == wide]
        gates = {int(g) for _, g, w, _ in bodies if w == wide}
        assert gates == {1, 3, 4}, f"unit kernels{wide} for G in {sorted(gates)}"
        for name, body in kernels:
            assert re.search(rf"\b{mac}\b", body), name
            assert ("sxtb16" in body) == (wide == ""), name
    called = set(re.findall(r"\bbl\s+[0-9a-f]+ <(\w+_unit\d(?:_w16)?_x\d+_h\d+\w*)>",
                            listing.stdout))
    assert called == {name for name, _, _, _ in bodies}


# Sizes that run the unit kernels' counted loops (two or more iterations of 8 groups of 4
# columns, with and without a rest), a part whose offset needs MOVW (I = 520 at 16 bits), and
# every G; the small BOARD_CASES only reach the straight-line code. The int8 kernels compute
# 4 units per call, in straight code GRU and RNN units in passes of 2 and 4 units
# (dspasm.PASS_UNITS): H = 35 leaves a last call of a pass and a single unit (GRU 64/35),
# H = 30 one of two single units (RNN 40/30), H = 33 one unit in the loops (GRU 96/33).
LARGE_DSP = [("lstm", 64, 96, True, "w8a16"), ("lstm", 37, 70, False, "w16a16"),
             ("gru", 64, 35, False, "w8a16"), ("gru", 96, 33, True, "w8a16"),
             ("gru", 40, 72, True, "w16a16"), ("rnn", 40, 30, True, "w8a16"),
             ("rnn", 65, 64, True, "w8a16"), ("lstm", 520, 8, True, "w16a16")]


@pytest.mark.parametrize("board", ["mps2-an386", "mps3-an547"])
def test_large_models_run_the_dsp_kernel_loops_bit_exact(board, tmp_path):
    # the speed build's loops: 2+ iterations with and without a rest, in x parts and h parts
    parts = []
    for k, i, h, _, fmt in LARGE_DSP:
        bits = 8 if fmt == "w8a16" else 16
        for n in (i, h):
            groups = padded(n) // 4
            parts.append((k, divmod(groups, part_unroll(groups, UNROLL_SPEED, bits))))
    assert {(k, rest > 0) for k, (it, rest) in parts if it >= 2} >= \
        {("lstm", False), ("lstm", True), ("gru", False), ("gru", True), ("rnn", True)}
    assert_board_equals_host(board, LARGE_DSP, tmp_path, "_unit")


@pytest.mark.parametrize("flags", [["-marm", "-mcpu=cortex-a7", "-mfloat-abi=soft"],
                                   ["-mthumb", "-mcpu=cortex-m23"]], ids=["arm-a7", "m23"])
@pytest.mark.parametrize("fmt", ["w8a16", "w16a16"])
def test_other_arm_builds_compile_with_the_c_kernels(exported, tmp_path, flags, fmt):
    """The assembly is Thumb code for M-profile cores: an ARM-state build of a DSP core and an
    ARMv8-M Baseline build compile cleanly and keep the C kernels."""
    name = model_name(BOARD_CASES[2], fmt)  # a stacked LSTM
    obj = tmp_path / "m.o"
    subprocess.run([cross.GCC, *flags, *cross.CFLAGS, "-c", str(exported[name] / f"{name}.c"),
                    "-o", str(obj)], check=True, capture_output=True, text=True)
    symbols = subprocess.run([cross.GCC.replace("gcc", "nm"), str(obj)], check=True,
                             capture_output=True, text=True).stdout
    assert "_step" in symbols and "_unit" not in symbols


# ---------------------------------------------------------------------------------------------
# clang: the same C and assembly built with clang --target=arm-none-eabi for every core family

CLANG_BOARDS = {"cortex-m0": "microbit", "cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500",
                "cortex-m33": "mps2-an505", "cortex-m55": "mps3-an547"}
# a lean subset of RUNS: stacked, bidirectional and Elman layers in both integer formats (the
# DSP and ARMv6-M assembly kernels, the folds), and one float32 model
CLANG_RUNS = [(case, fmt) for case in (BOARD_CASES[2], BOARD_CASES[6], BOARD_CASES[1])
              for fmt in ("w8a16", "w16a16")] + [(BOARD_CASES[4], "float32")]


@pytest.fixture(scope="module")
def clang_run(exported, tmp_path_factory):
    """board -> (firmware, QEMU run) of one clang-built image holding every CLANG_RUNS model."""
    done: dict[str, tuple[cross.Firmware, cross.QemuRun]] = {}

    def get(name: str) -> tuple[cross.Firmware, cross.QemuRun]:
        if name not in done:
            jobs = []
            for case, fmt in CLANG_RUNS:
                model = cross.ExportedModel.load(exported[model_name(case, fmt)])
                samples = split_inputs(model.interface, flat_numpy(build(case)[1]))
                jobs.append(cross.ModelInputs(model, tuple(samples)))
            firmware = cross.build(jobs, load_board(name), tmp_path_factory.mktemp(f"clang-{name}"),
                                   compiler="clang")
            done[name] = (firmware, cross.run_qemu(firmware, timeout=60))
        return done[name]

    return get


@pytest.mark.parametrize("core", list(CLANG_BOARDS))
def test_clang_builds_run_equal_to_the_gcc_builds(core: str, clang_run, board_run):
    """Every core: the clang image (C and NAME_kernels.S assembled by clang) runs under QEMU and
    gives the gcc image's outputs, bit for bit for the integer formats; the assembly kernels of
    the core's family are in it."""
    board = CLANG_BOARDS[core]
    firmware, result = clang_run(board)
    _, gcc_result = board_run(board)
    for k, (case, fmt) in enumerate(CLANG_RUNS):
        expected = gcc_result.outputs[RUNS.index((case, fmt))]
        for s, (got_sample, want_sample) in enumerate(zip(result.outputs[k], expected)):
            for out, (g, e) in enumerate(zip(got_sample, want_sample)):
                np.testing.assert_allclose(g, e, rtol=0, atol=tolerance(fmt),
                                           err_msg=f"{fmt} {case.id} sample {s} out{out} on {core}")
    symbols = subprocess.run([cross.GCC.replace("gcc", "nm"), str(firmware.elf)], check=True,
                             capture_output=True, text=True).stdout
    if core == "cortex-m55":  # the inlined MVE kernels
        listing = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main",
                                  str(firmware.elf)], check=True, capture_output=True,
                                 text=True).stdout
        assert re.search(r"\bvmlava\.s16\b", listing), "no MVE kernel in the clang M55 image"
        return
    marker = "_v6m_unit" if core == "cortex-m0" else "_unit"
    assert re.search(rf"\bT \w+{marker}\d", symbols), f"no assembly unit kernel in the {core} image"


# ---------------------------------------------------------------------------------------------
# Failures a user can meet


def test_too_big_for_microbit_fails_before_linking(tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(16, 160).eval()           # 4 * 160 * (16 + 160) floats: 440 KiB
    x = torch.randn(4, 1, 16)
    tinyrnn.export(lstm, (x,), tmp_path / "big", name="big", format="float32")
    model = cross.ExportedModel.load(tmp_path / "big")
    job = cross.ModelInputs(model, tuple(split_inputs(model.interface, [x.numpy()])))
    work = tmp_path / "work"
    with pytest.raises(TinyRNNError) as error:
        cross.build([job], load_board("microbit"), work)
    message = str(error.value)
    assert "'big' does not fit board microbit" in message
    assert re.search(r"needs 4\d\d\.\d KiB of flash .*weights 4\d\d\.\d KiB", message)
    assert "the board has 256.0 KiB" in message
    assert not (work / "app.map").exists(), "the size check must come before linking"


def test_fault_exits_with_status_and_names_function(exported, tmp_path):
    """A model that traps: the fault handler exits with 243 and the report names the function."""
    source_dir = exported[model_name(*RUNS[0])]
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in source_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    name = model_name(*RUNS[0])
    c_file = broken / f"{name}.c"
    code, count = re.subn(rf"(\nint {name}_run\([^)]*\)\n{{\n)", r"\1    __builtin_trap();\n",
                          c_file.read_text())
    assert count == 1, "could not find the definition of NAME_run to break"
    c_file.write_text(code)
    model = cross.ExportedModel.load(broken)
    firmware = cross.build([cross.ModelInputs(model, (model.zero_sample(),))],
                           load_board("mps2-an385"), tmp_path / "work")
    with pytest.raises(TinyRNNError, match=rf"HardFault at pc 0x[0-9a-f]{{8}} in {name}_run\+"):
        cross.run_qemu(firmware, timeout=30)


def test_unknown_board_lists_known_ones():
    with pytest.raises(TinyRNNError, match=r"unknown board 'nucleo-f999'; known boards: .*mps2"):
        load_board("nucleo-f999")


def test_every_board_file_is_valid():
    boards = list_boards()
    assert {"mps2-an385", "mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547", "microbit",
            "nucleo-f446re", "nucleo-l476rg", "nucleo-h743zi", "nrf52840-dk",
            "rpi-pico"} <= {b.name for b in boards}
    assert all(b.qemu_machine or b.pyocd_target for b in boards)


def test_board_file_mistakes_are_all_named(tmp_path):
    text = load_board("mps2-an386").path.read_text().replace("stack_size", "stack_bytes")
    path = tmp_path / "mps2-an386.toml"
    path.write_text(text)
    with pytest.raises(TinyRNNError) as error:
        load_board_file(path)
    message = str(error.value)
    assert "missing field 'stack_size'" in message and "unknown field 'stack_bytes'" in message


def test_board_file_fpu_and_flags_checked(tmp_path):
    text = (load_board("mps2-an386").path.read_text()
            .replace('fpu = "fpv4-sp-d16"', 'fpu = "fpv5-d16"')
            .replace("clock_hz = 25_000_000", "clock_hz = -1"))
    path = tmp_path / "mps2-an386.toml"
    path.write_text(text)
    with pytest.raises(TinyRNNError) as error:
        load_board_file(path)
    message = str(error.value)
    assert "fpu 'fpv5-d16' does not exist on cortex-m4" in message
    assert "cpu_flags lack '-mfpu=fpv5-d16'" in message
    assert "'clock_hz' must be a positive integer" in message


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_run_writes_what_run_host_writes(exported, tmp_path, capsys):
    case, fmt = RUNS[2]                          # stacked LSTM with (h0, c0)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, **{f"in{i}": a for i, a in enumerate(flat_numpy(build(case)[1]))})
    folder = str(exported[model_name(case, fmt)])
    assert cli_main(["run-host", folder, "--input", str(inputs),
                     "--output", str(tmp_path / "host.npz")]) == 0
    assert cli_main(["run", folder, "--board", "mps2-an386", "--input", str(inputs),
                     "--output", str(tmp_path / "board.npz")]) == 0
    assert "stack used" in capsys.readouterr().out
    with np.load(tmp_path / "host.npz") as host, np.load(tmp_path / "board.npz") as board:
        assert host.files == board.files
        for name in host.files:
            np.testing.assert_allclose(board[name], host[name], rtol=0, atol=tolerance(fmt))


def test_cli_boards_and_build(exported, tmp_path, capsys):
    assert cli_main(["boards"]) == 0
    listing = capsys.readouterr().out
    assert "qemu -M mps2-an505" in listing and "pyocd --target stm32f446retx" in listing
    elf = tmp_path / "app.elf"
    folder = str(exported[model_name(*RUNS[0])])
    assert cli_main(["build", folder, "--board", "nucleo-f446re", "-o", str(elf)]) == 0
    assert elf.is_file() and "weights" in capsys.readouterr().out


def test_cli_flash_dry_run_and_user_errors(exported, tmp_path, capsys, monkeypatch):
    folder = str(exported[model_name(*RUNS[0])])
    elf = tmp_path / "app.elf"
    assert cli_main(["flash", folder, "--board", "nrf52840-dk", "-o", str(elf),
                     "--dry-run"]) == 0
    expected = f"{cross.PYOCD} flash --no-wait --target nrf52840 {elf}"
    assert capsys.readouterr().out.strip() == expected
    for board, message in [("mps2-an385", "has no pyocd_target"),
                           ("rpi-pico", "second-stage bootloader")]:
        assert cli_main(["flash", folder, "--board", board, "-o", str(elf), "--dry-run"]) == 2
        assert message in capsys.readouterr().err
    # pyOCD is installed (a dependency) and CI has no probe: a clear error, exit 2
    assert cli_main(["flash", folder, "--board", "nrf52840-dk", "-o", str(elf)]) == 2
    assert "no debug probe found: connect nrf52840-dk" in capsys.readouterr().err
    monkeypatch.setattr(cross, "PYOCD", "pyocd-not-installed-here")
    assert cli_main(["flash", folder, "--board", "nrf52840-dk", "-o", str(elf)]) == 2
    assert "pyocd-not-installed-here was not found on PATH" in capsys.readouterr().err
    assert cli_main(["run", folder, "--board", "nucleo-h743zi", "--input", str(elf),
                     "--output", str(tmp_path / "y.npz")]) == 2
    assert "board nucleo-h743zi is not emulated; run on one of" in capsys.readouterr().err
