"""tinyrnn profile / report: the mechanics (repeatability, scaling, the QEMU cross-check, the
report's contents), not timings.

Needs arm-none-eabi-gcc (with newlib) and qemu-system-arm, which tools/setup.sh installs, and
the unicorn, capstone and matplotlib packages (dependencies and the test extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tinyrnn
from tinyrnn.errors import TinyRNNError
from tinyrnn.targets import costs, emulator, profile_image, qemucheck
from tinyrnn.targets import profile as prof

JSON_KEYS = ("cpu", "instructions_per_step", "cycles_per_step", "macs_per_step",
             "macs_per_cycle", "flash_code_bytes", "flash_weights_bytes", "ram_state_bytes",
             "ram_scratch_bytes", "stack_bytes")


class Cell(nn.Module):
    def __init__(self, kind: str, input_size: int, hidden: int, bidirectional: bool = False,
                 head: int = 0) -> None:
        super().__init__()
        kinds: dict[str, type[nn.Module]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
        self.rnn = kinds[kind](input_size, hidden, batch_first=True,
                               bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), head) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1]) if self.head is not None else y


def _export(root: Path, name: str, model: nn.Module, input_size: int, steps: int = 8) -> Path:
    torch.manual_seed(0)
    out = root / name
    tinyrnn.export(model.eval(), torch.zeros(1, steps, input_size), out, format="float32",
                   name=name)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("profile")
    built = {}
    for name, model, size in [
        ("lstm16", lambda: Cell("lstm", 16, 16), 16),
        ("lstm32", lambda: Cell("lstm", 32, 32), 32),
        ("gru_head", lambda: Cell("gru", 6, 12, head=3), 6),
        ("bigru", lambda: Cell("gru", 4, 6, bidirectional=True), 4),
    ]:
        torch.manual_seed(0)
        built[name] = _export(root, name, model(), size)
    return built


# ---------------------------------------------------------------------------------------------
# Pure parts


def test_macs_from_the_manifest() -> None:
    lstm = {"kind": "lstm", "input_size": 6, "hidden_size": 32, "state_size": 32,
            "directions": 1}
    proj = dict(lstm, state_size=8)
    gru = {"kind": "gru", "input_size": 12, "hidden_size": 32, "state_size": 32,
           "directions": 2}
    dense = {"kind": "dense", "in_features": 64, "out_features": 5}
    assert prof.layer_macs(lstm) == 4 * 32 * (6 + 32)
    assert prof.layer_macs(proj) == 4 * 32 * (6 + 8) + 8 * 32
    assert prof.layer_macs(gru) == 2 * 3 * 32 * (12 + 32)
    manifest = {"layers": [gru, {"kind": "select_step", "index": -1}, dense]}
    assert prof.macs_per_step(manifest) == prof.layer_macs(gru) + 320
    assert prof.macs_per_step(manifest, steps=8) == prof.layer_macs(gru) + 320 / 8
    assert prof.lower_bound_cycles("lstm", 64, 64) == 4 * 64 * 128 / 0.8


def _decode(code: bytes) -> list[costs.Instruction]:
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    md.detail = True
    return [costs.classify(i) for i in md.disasm(code, 0x1000)]


def test_cost_table_rules() -> None:
    # ldr r0,[r1]; ldr r2,[r3]; smlad r0,r1,r2,r0; push {r4-r7,lr}; vfma.f32 s0,s1,s2; pop {r4,pc}
    code = bytes.fromhex("0868" "1a68" "21fb0200" "f0b5" "a0ee810a" "10bd")
    insns = _decode(code)
    assert [i.cls for i in insns] == ["load", "load", "dsp", "store_multiple", "fp_mac",
                                      "load_multiple"]
    assert [i.cycles for i in insns] == [2, 2, 1, 6, 3, 3]
    assert insns[-1].writes_pc and not insns[-1].conditional
    block = costs.make_block(insns)
    # the second LDR pipelines (-1), the POP {pc} is a taken branch (+2)
    assert block.cycles == 2 + 1 + 1 + 6 + 3 + 3 + costs.TAKEN_BRANCH_CYCLES
    # cbz r0, 1f is conditional and ends a block that may fall through
    cbz = _decode(bytes.fromhex("00b1"))
    assert cbz[0].cls == "branch" and cbz[0].conditional
    assert costs.make_block(cbz).ends_conditional


def test_docs_show_the_cost_table() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs" / "profiling.md"
    assert costs.cost_table_markdown() in docs.read_text(encoding="utf-8")


def test_unknown_and_unsupported_cores() -> None:
    with pytest.raises(TinyRNNError, match="m0, m0plus, m3, m4, m7, m33"):
        costs.resolve_core("cortex-m99")
    with pytest.raises(TinyRNNError, match="no Cortex-M55.*counts its instructions under QEMU"):
        costs.resolve_core("m55")
    assert costs.resolve_core("M4").name == "cortex-m4"
    assert costs.resolve_core("m0+").name == "cortex-m0plus"


# ---------------------------------------------------------------------------------------------
# Emulated profiles


def test_counts_repeat_exactly(models: dict[str, Path]) -> None:
    first = prof.profile(models["gru_head"], cpu="cortex-m4").to_json()
    second = prof.profile(models["gru_head"], cpu="m4").to_json()
    assert first == second
    assert all(key in first for key in JSON_KEYS)
    assert first["cycles_per_step"] > first["instructions_per_step"] > 0
    assert first["macs_per_step"] == 3 * 12 * (6 + 12) + 12 * 3
    assert first["macs_per_cycle"] == pytest.approx(first["macs_per_step"]
                                                    / first["cycles_per_step"], abs=1e-4)
    assert sum(first["cycle_mix"].values()) == first["cycles_per_step"]
    assert first["ram_state_bytes"] + first["ram_scratch_bytes"] == first["state_struct_bytes"]
    assert first["flash_weights_bytes"] >= 4 * (3 * 12 * 18 + 12 * 3)
    assert first["stack_bytes"] > 0 and first["ram_hidden_static_bytes"] == 0


def test_emulated_outputs_match_the_host(models: dict[str, Path], tmp_path: Path) -> None:
    """The emulated calls see the right arguments and data: NAME_run's outputs under unicorn
    (three outputs: two arguments on the stack) equal the same C compiled for the host."""
    from tinyrnn.targets import cross, host
    from tinyrnn.targets.boards import load_board

    class Full(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(5, 7, num_layers=2, batch_first=True)

        def forward(self, x: torch.Tensor) -> tuple:
            return self.rnn(x)

    torch.manual_seed(0)
    directory = tmp_path / "full"
    tinyrnn.export(Full().eval(), torch.zeros(1, 8, 5), directory, format="float32",
                   name="full")
    model = cross.ExportedModel.load(directory)
    image = profile_image.build_image(model, load_board("mps2-an386"), tmp_path / "image")
    emu = emulator.Emulator(image, costs.CORES["cortex-m4"])
    x = prof.deterministic_input(prof.RUN_STEPS, 5)
    emu.write("tinyrnn_profile_x", x)
    lengths = model.output_lengths(prof.RUN_STEPS)
    base = emu.address("tinyrnn_profile_out")
    outs = [base + 4 * sum(lengths[:k]) for k in range(len(lengths))]
    state = emu.address("tinyrnn_profile_state")
    emu.call("full_reset", state)
    status, _ = emu.call("full_run", state, emu.address("tinyrnn_profile_x"), prof.RUN_STEPS,
                         *outs)
    assert status == 0 and len(outs) == 3
    got = emu.read("tinyrnn_profile_out", np.float32, sum(lengths))
    expected = np.concatenate(host.load(directory).run_sample({"x": x}))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # newlib vs glibc expf


@pytest.mark.parametrize("cpu", ["cortex-m0", "cortex-m7", "cortex-m33"])
def test_other_cores(models: dict[str, Path], cpu: str) -> None:
    result = prof.profile(models["gru_head"], cpu=cpu, measure_run=False).to_json()
    assert result["cpu"] == cpu and result["instructions_per_step"] > 0
    if cpu == "cortex-m33":
        assert result["cycles_per_step"] is not None
    else:
        assert result["cycles_per_step"] is None and result["macs_per_cycle"] is None
        assert "instruction count only" in result["cycles_note"]


def test_doubling_the_size_grows_the_step(models: dict[str, Path]) -> None:
    small = prof.profile(models["lstm16"], cpu="m4", measure_run=False)
    large = prof.profile(models["lstm32"], cpu="m4", measure_run=False)
    assert large.macs_per_step == 4 * small.macs_per_step
    assert 2.5 <= large.instructions_per_step / small.instructions_per_step <= 4.5
    assert small.cycles_per_step is not None and large.cycles_per_step is not None
    assert 2.5 <= large.cycles_per_step / small.cycles_per_step <= 4.5
    assert 3.0 <= large.flash_weights_bytes / small.flash_weights_bytes <= 4.5


def test_bidirectional_models_count_a_run(models: dict[str, Path]) -> None:
    result = prof.profile(models["bigru"], cpu="m4")
    data = result.to_json()
    assert result.bidirectional and "_run over 8 steps" in result.measured
    assert data["instructions_per_step"] == round(data["instructions_per_run"] / 8)
    assert data["macs_per_step"] == 2 * 3 * 6 * (4 + 6)


def test_unicorn_agrees_with_qemu_systick(models: dict[str, Path]) -> None:
    check = qemucheck.qemu_cross_check(models["gru_head"], "mps2-an386")
    assert check.instructions_per_tick == pytest.approx(40.0, rel=0.01)  # 25 MHz, 1 ns/insn
    assert check.empty_ticks <= 1
    assert check.ticks > 10
    assert check.agrees, (check.qemu_instructions, check.unicorn_instructions)


def test_qemu_step_counting_agrees_with_unicorn_on_an_m4(tmp_path: Path) -> None:
    """The M55's method (tinyrnn.targets.qemucount: SysTick under QEMU -icount across 32 steps)
    run on an M4 board, where unicorn counts the same image's step too: they agree within the
    spread of per-step counts of an integer model (the 32 steps see different inputs)."""
    from tinyrnn.targets import cross
    from tinyrnn.targets.boards import load_board

    torch.manual_seed(0)
    calibration = torch.randn(4, 12, 8, generator=torch.Generator().manual_seed(0))
    tinyrnn.export(Cell("lstm", 8, 16).eval(), torch.zeros(1, 8, 8), tmp_path / "q",
                   format="w8a16", name="q", calibration=calibration)
    image = profile_image.build_image(cross.ExportedModel.load(tmp_path / "q"),
                                      load_board("mps2-an386"), tmp_path / "image")
    qemu = prof.measure_qemu(image)
    unicorn = prof.measure(image, costs.resolve_core("m4"), warmup=3, measure_run=False)
    assert "-icount shift=0" in qemu.details["method"]
    assert qemu.instructions_per_step == pytest.approx(unicorn.instructions_per_step, rel=0.01)


def test_m55_profile_counts_under_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    torch.manual_seed(0)
    calibration = torch.randn(4, 12, 8, generator=torch.Generator().manual_seed(0))
    tinyrnn.export(Cell("gru", 8, 16).eval(), torch.zeros(1, 8, 8), tmp_path / "g",
                   format="w16a16", name="g", calibration=calibration)
    parser = argparse.ArgumentParser()
    prof.register_cli(parser.add_subparsers())
    args = parser.parse_args(["profile", str(tmp_path / "g"), "--cpu", "m55", "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [key for key in JSON_KEYS if key not in data] == []
    assert (data["cpu"], data["board"], data["cycles_per_step"]) == ("cortex-m55", "mps3-an547",
                                                                      None)
    assert data["macs_per_step"] == 3 * 16 * (8 + 16)
    assert data["macs_per_instruction"] == round(data["macs_per_step"]
                                                 / data["instructions_per_step"], 4)
    assert "-icount" in data["method"] and data["qemu_ticks"] > 0
    assert data["instructions_per_step_q"] > 0  # the int16 API, counted the same way
    tinyrnn.export(Cell("gru", 4, 6, bidirectional=True).eval(), torch.zeros(1, 8, 4),
                   tmp_path / "bi", format="w8a16", name="bi", calibration=torch.randn(2, 8, 4))
    with pytest.raises(TinyRNNError, match="bidirectional"):
        prof.profile(tmp_path / "bi", cpu="cortex-m55")


def test_cli_json(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    prof.register_cli(parser.add_subparsers())
    args = parser.parse_args(["profile", str(models["gru_head"]), "--cpu", "m4", "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [key for key in JSON_KEYS if key not in data] == []
    with pytest.raises(TinyRNNError, match="--cpu cortex-m4"):
        prof.profile(models["gru_head"])


# ---------------------------------------------------------------------------------------------
# Report


def test_fixed_point_profiles_the_int16_api_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Cell("lstm", 8, 16).eval()
    calibration = torch.randn(4, 12, 8, generator=torch.Generator().manual_seed(0))
    tinyrnn.export(model, torch.zeros(1, 8, 8), tmp_path / "q", format="w8a16", name="q",
                   calibration=calibration)
    data = prof.profile(tmp_path / "q", cpu="m4").to_json()
    assert data["format"] == "w8a16"
    assert 0 < data["instructions_per_step_q"] <= data["instructions_per_step"]
    assert data["cycles_per_step_q"] <= data["cycles_per_step"]
    assert data["instruction_mix"].get("dsp", 0) > 0  # the M4 build uses DSP instructions
    assert data["flash_weights_bytes"] >= 4 * 16 * (8 + 16)  # int8 weights, then tables


@pytest.mark.parametrize("fmt", ["float32", "w8a16"])
def test_report_holds_its_plots_and_numbers(models: dict[str, Path], tmp_path: Path,
                                            fmt: str) -> None:
    from tinyrnn.check.report import make_report

    torch.manual_seed(0)
    model = Cell("gru", 6, 12, head=3).eval()
    program = torch.export.export(model, (torch.zeros(1, 8, 6),))
    archive = tmp_path / "m.pt2"
    torch.export.save(program, archive)
    exported = tmp_path / "out"
    x = np.random.default_rng(0).standard_normal((4, 8, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    extra = {"calibration": torch.from_numpy(x)} if fmt != "float32" else {}
    tinyrnn.export(model, torch.zeros(1, 8, 6), exported, format=fmt, name="m", **extra)

    result = make_report(archive, exported, tmp_path / "x.npy", tmp_path / "report",
                         board="mps2-an386", progress=False)
    names = {p.name for p in result.images}
    assert {"traces.png", "error_histogram.png", "memory.png"} <= names
    for image in result.images:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = result.markdown.read_text(encoding="utf-8")
    for name in names:
        assert f"({name})" in page
    cost = result.numbers["profile"]
    assert f"{cost['instructions_per_step']:,}" in page
    assert f"{cost['cycles_per_step']:,}" in page
    assert "SQNR" in page and "Per-layer SQNR" in page and "PASS" in page
    if fmt == "float32":
        assert "Not available for float32" in page
    else:
        assert "layer_sqnr.png" in names and "layer 0: gru" in page
    assert result.numbers["outputs"][0]["agreement"] == 1.0
    html = result.html.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(result.images)
    assert "<table>" in html
