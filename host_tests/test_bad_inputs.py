"""Bad input to every command: exit status 2 with a clear ``error: ...`` message (or, where
the input is acceptable but risky, exit 0 with a warning), never a traceback, and nothing
partial in the output location.

Cases are data: one table (:data:`ROWS`), one row per case, run in-process through
``tinyrnn.cli.main`` (fast); the rows marked ``process`` also run as a real process, to prove
that stderr carries no traceback. Each row gets a fresh folder ``{work}``; the test compares a
snapshot of that folder (every path and its bytes) before and after the command: a failed
command must leave it exactly as it was (no output, no half-written file, no staging folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tinyrnn.cli import main
from tinyrnn.outputs import STAGE_PREFIX


class Tiny(nn.Module):
    """batch_first LSTM 3->8 and a Linear head on the last step."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


class Wide(nn.Module):
    """A bidirectional GRU 3->32 returning its sequence: sequence buffers grow with T."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 32, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.gru(x)[0]


@dataclass(frozen=True)
class Row:
    """One bad input: the command (``{name}`` fields filled by :func:`_fill`), the exit status,
    a regular expression the message must match, and how ``{work}`` is prepared."""

    id: str
    argv: tuple[str, ...]
    code: int
    message: str
    setup: str = ""
    process: bool = False  # also run it as a real process
    needs_non_root: bool = False  # root writes into read-only folders


X = ("--input", "{x}")
ROWS = [
    # ---- export: model files, names, output folders, numbers, calibration data
    Row("export-missing-model", ("export", "{work}/missing.pt2", "--out", "{out}"), 2,
        r"model file \S*missing\.pt2 does not exist"),
    Row("export-empty-model", ("export", "{empty_pt2}", "--out", "{out}"), 2, r"empty\.pt2"),
    Row("export-text-model", ("export", "{text_pt2}", "--out", "{out}"), 2, r"text\.pt2"),
    Row("export-truncated-model", ("export", "{trunc_pt2}", "--out", "{out}"), 2,
        r"trunc\.pt2"),
    Row("export-name-trailing-newline", ("export", "{tiny}", "--out", "{out}", "--name",
                                         "tiny\n"), 2,
        r"model name 'tiny\\n' is not usable as a C identifier prefix"),
    Row("export-name-_Bool", ("export", "{tiny}", "--out", "{out}", "--name", "_Bool"), 2,
        r"'_Bool' is not usable .* starts with an underscore", process=True),
    Row("export-name-__x", ("export", "{tiny}", "--out", "{out}", "--name", "__x"), 2,
        r"'__x' is not usable .* starts with an underscore"),
    Row("export-name-restrict", ("export", "{tiny}", "--out", "{out}", "--name", "restrict"), 2,
        r"'restrict' is not usable .* reserved word of C"),
    Row("export-name-inline", ("export", "{tiny}", "--out", "{out}", "--name", "inline"), 2,
        r"'inline' is not usable .* reserved word of C"),
    Row("export-name-digit-first", ("export", "{tiny}", "--out", "{out}", "--name", "9lives"), 2,
        r"'9lives' is not usable as a C identifier prefix"),
    Row("export-name-500-chars", ("export", "{tiny}", "--out", "{out}", "--name", "n" * 500), 2,
        r"has 500 characters; the limit is 64"),
    Row("export-name-harness-prefix", ("export", "{tiny}", "--out", "{out}", "--name",
                                       "tinyrnn_x"), 2, r"harnesses name their own symbols"),
    Row("export-out-is-a-file", ("export", "{tiny}", "--out", "{out}"), 2,
        r"--out \S+ is a file, not a folder", setup="out_is_file"),
    Row("export-out-under-a-file", ("export", "{tiny}", "--out", "{out}/sub"), 2,
        r"--out \S+/out/sub is inside \S+/out, which is a file", setup="out_is_file"),
    Row("export-out-in-proc", ("export", "{tiny}", "--out", "/proc/tinyrnn-test/out"), 2,
        r"cannot write --out /proc/tinyrnn-test/out"),
    Row("export-out-read-only", ("export", "{tiny}", "--out", "{work}/ro/out"), 2,
        r"folder \S+/ro is not writable", setup="read_only", needs_non_root=True),
    Row("export-model-c-is-a-folder", ("export", "{tiny}", "--out", "{out}"), 2,
        r"out/model\.c is a folder", setup="model_c_is_a_folder"),
    Row("export-max-seq-len-0", ("export", "{tiny}", "--out", "{out}", "--max-seq-len", "0"), 2,
        r"--max-seq-len must be >= 1 and <= 2147483647, not 0"),
    Row("export-max-seq-len-2**31", ("export", "{tiny}", "--out", "{out}", "--max-seq-len",
                                     "2147483648"), 2, r"<= 2147483647, not 2147483648"),
    Row("export-max-seq-len-huge-scratch", ("export", "{wide}", "--out", "{out}", "--format",
                                            "float32", "--max-seq-len", "2147483647"), 2,
        r"needs two sequence buffers of 2147483647 steps x 64 features .* the limit is 16 MiB"),
    Row("export-calibration-batch-0", ("export", "{tiny}", "--out", "{out}", "--calibration",
                                       "{x_batch0}"), 2, r"in0 \(x\) has batch size 0"),
    Row("export-calibration-nan", ("export", "{tiny}", "--out", "{out}", "--calibration",
                                   "{x_nan}"), 2, r"not finite in float32; the first is nan"),
    Row("export-calibration-1e300", ("export", "{tiny}", "--out", "{out}", "--calibration",
                                     "{x_1e300}"), 2,
        r"not finite in float32; the first is 1e\+300 \(beyond float32's range\)"),
    Row("export-calibration-int-dtype", ("export", "{tiny}", "--out", "{out}", "--calibration",
                                         "{x_int}"), 2, r"has dtype int32; expected floating"),
    Row("export-calibration-npz-keys", ("export", "{tiny}", "--out", "{out}", "--calibration",
                                        "{keys_npz}"), 2, r"holds arrays \['x'\]; an input "
                                                          r"\.npz must hold in0, in1"),
    # ---- export: per-layer formats (--layer-format NAME=FORMAT)
    Row("export-layer-format-unknown-name", ("export", "{tiny}", "--out", "{out}",
                                             "--layer-format", "encoder=w16a16"), 2,
        r"'encoder' names no layer of the model\. The layers with weights are 'lstm' \(LSTM\), "
        r"'fc' \(Linear\)"),
    Row("export-layer-format-w4a16", ("export", "{tiny}", "--out", "{out}", "--layer-format",
                                      "fc=w4a16"), 2,
        r"--layer-format fc=w4a16: unknown format 'w4a16'; a layer of an integer export takes "
        r"w8a16 or w16a16"),
    Row("export-layer-format-float32-layer", ("export", "{tiny}", "--out", "{out}",
                                              "--layer-format", "fc=float32"), 2,
        r"a float32 layer inside a w8a16 model is not supported .* give the layer w16a16"),
    Row("export-layer-format-in-float32", ("export", "{tiny}", "--out", "{out}", "--format",
                                           "float32", "--layer-format", "lstm=w16a16"), 2,
        r"per-layer formats apply to the integer exports, and this one is float32"),
    Row("export-layer-format-no-equals", ("export", "{tiny}", "--out", "{out}",
                                          "--layer-format", "fc"), 2,
        r"--layer-format 'fc': write NAME=FORMAT"),
    Row("export-layer-format-twice", ("export", "{tiny}", "--out", "{out}", "--layer-format",
                                      "fc=w16a16", "--layer-format", "fc=w8a16"), 2,
        r"--layer-format gives 'fc' two formats \(w16a16 and w8a16\)"),
    Row("export-calibration-float32", ("export", "{tiny}", "--out", "{out}", "--format",
                                       "float32", "--calibration", "{x}"), 0,
        r"warning: --calibration \(calibration= in the API\) applies to the integer formats "
        r"\(w8a16, w16a16\); float32 has no ranges to calibrate, so it is ignored"),
    Row("export-calibration-all-zero", ("export", "{tiny}", "--out", "{out}", "--calibration",
                                        "{x_zero}"), 0,
        r"warning: the calibration data has a single value in x \(in0\) feature\(s\) "
        r"0 \(always 0\), 1 \(always 0\), 2 \(always 0\) over all its 8 sequence\(s\) x 5 "
        r"step\(s\) \(every feature: the data is constant\)"),
    Row("export-calibration-constant-feature", ("export", "{tiny}", "--out", "{out}",
                                                "--calibration", "{x_const1}"), 0,
        r"warning: the calibration data has a single value in x \(in0\) feature\(s\) 1 "
        r"\(always 0\.5\) over all"),
    Row("export-format-unknown", ("export", "{tiny}", "--out", "{out}", "--format", "int4"), 2,
        r"argument --format: invalid choice: 'int4'"),
    # ---- run-host: input files, shapes, values, the export folder, the output file
    Row("run-host-batch-0", ("run-host", "{f32}", "--input", "{x_batch0}", "--output",
                             "{out}.npz"), 2, r"input in0 \(x\) has batch size 0"),
    Row("run-host-T-0", ("run-host", "{f32}", "--input", "{x_t0}", "--output", "{out}.npz"), 2,
        r"input x has zero time steps"),
    Row("run-host-rank-2", ("run-host", "{f32}", "--input", "{x_rank2}", "--output",
                            "{out}.npz"), 2,
        r"input in0 \(x\) has shape \(5, 3\); expected \(B, T, 3\)"),
    Row("run-host-4-features", ("run-host", "{f32}", "--input", "{x_feat4}", "--output",
                                "{out}.npz"), 2,
        r"input in0 \(x\) has shape \(2, 5, 4\); expected \(B, T, 3\)"),
    Row("run-host-nan", ("run-host", "{f32}", "--input", "{x_nan}", "--output", "{out}.npz"), 2,
        r"in0 \(x\) has 1 value\(s\) that are not finite in float32; the first is nan \(NaN\) "
        r"at sample 1, step 2"),
    Row("run-host-inf", ("run-host", "{f32}", "--input", "{x_inf}", "--output", "{out}.npz"), 2,
        r"the first is -inf \(Inf\)"),
    Row("run-host-float64-1e300", ("run-host", "{f32}", "--input", "{x_1e300}", "--output",
                                   "{out}.npz"), 2,
        r"the first is 1e\+300 \(beyond float32's range\)", process=True),
    Row("run-host-w8a16-beyond-int16-saturates", ("run-host", "{q8}", "--input", "{x_1e30}",
                                                  "--output", "{out}.npz"), 0,
        r"wrote \S+out\.npz: out0 \(2, 2\)"),
    Row("run-host-int-dtype", ("run-host", "{f32}", "--input", "{x_int}", "--output",
                               "{out}.npz"), 2, r"has dtype int32; expected floating point"),
    Row("run-host-missing-input", ("run-host", "{f32}", "--input", "{work}/none.npy",
                                   "--output", "{out}.npz"), 2,
        r"input file \S+none\.npy does not exist"),
    Row("run-host-empty-npy", ("run-host", "{f32}", "--input", "{empty_npy}", "--output",
                               "{out}.npz"), 2, r"empty\.npy is not a \.npy or \.npz file"),
    Row("run-host-text-npy", ("run-host", "{f32}", "--input", "{text_npy}", "--output",
                              "{out}.npz"), 2,
        r"text\.npy is not a \.npy or \.npz file \(no \.npy header or \.npz archive; tinyrnn "
        r"never unpickles a file\)"),
    Row("run-host-truncated-npy", ("run-host", "{f32}", "--input", "{trunc_npy}", "--output",
                                   "{out}.npz"), 2, r"trunc\.npy is not a \.npy or \.npz file"),
    Row("run-host-truncated-npz", ("run-host", "{f32}", "--input", "{trunc_npz}", "--output",
                                   "{out}.npz"), 2, r"trunc\.npz is not a \.npy or \.npz file"),
    Row("run-host-npz-keys", ("run-host", "{f32}", "--input", "{keys_npz}", "--output",
                              "{out}.npz"), 2, r"an input \.npz must hold in0, in1"),
    Row("run-host-npz-two-inputs", ("run-host", "{f32}", "--input", "{two_npz}", "--output",
                                    "{out}.npz"), 2,
        r"the model takes 1 input\(s\) \(x\) but 2 were given"),
    Row("run-host-output-is-a-folder", ("run-host", "{f32}", *X, "--output", "{out}.npz"), 2,
        r"--output \S+out\.npz is a folder", setup="npz_is_folder"),
    Row("run-host-output-in-proc", ("run-host", "{f32}", *X, "--output", "/proc/tinyrnn/y.npz"),
        2, r"cannot write --output /proc/tinyrnn/y\.npz: "),
    Row("run-host-output-missing-folder", ("run-host", "{f32}", *X, "--output",
                                           "{work}/new/sub/y.npz"), 0,
        r"wrote \S+/new/sub/y\.npz: out0 \(2, 2\)"),
    Row("run-host-dir-missing", ("run-host", "{work}/nowhere", *X, "--output", "{out}.npz"), 2,
        r"nowhere is not a directory"),
    Row("run-host-dir-empty", ("run-host", "{out}", *X, "--output", "{work}/y.npz"), 2,
        r"should hold exactly one exported model .* found 0", setup="out_is_folder"),
    Row("run-host-manifest-tampered", ("run-host", "{work}/c", *X, "--output", "{out}.npz"), 2,
        r"tiny\.json does not match tiny\.h: the manifest's name, format, interface or "
        r"c_interface differs .* re-export", setup="tampered_manifest"),
    Row("run-host-c-interface-tampered", ("run-host", "{work}/c", *X, "--output",
                                          "{out}.npz"), 2,
        r"tiny\.json does not match tiny\.h: .* re-export", setup="tampered_c_interface"),
    Row("run-host-manifest-not-json", ("run-host", "{work}/c", *X, "--output", "{out}.npz"), 2,
        r"tiny\.json is not valid JSON", setup="manifest_not_json"),
    Row("run-host-header-without-binding", ("run-host", "{work}/c", *X, "--output",
                                            "{out}.npz"), 2,
        r"tiny\.h carries no interface sha256 .* re-export", setup="header_without_binding"),
    # ---- verify
    Row("verify-batch-0", ("verify", "{tiny}", "{f32}", "--input", "{x_batch0}"), 2,
        r"in0 \(x\) has batch size 0"),
    Row("verify-nan", ("verify", "{tiny}", "{f32}", "--input", "{x_nan}"), 2,
        r"not finite in float32; the first is nan"),
    Row("verify-tolerance-nan", ("verify", "{tiny}", "{f32}", *X, "--tolerance", "nan"), 2,
        r"--tolerance must be a finite number, not nan"),
    Row("verify-tolerance-negative", ("verify", "{tiny}", "{f32}", *X, "--tolerance", "-1"), 2,
        r"--tolerance must be >= 0, not -1"),
    Row("verify-truncated-model", ("verify", "{trunc_pt2}", "{f32}", *X), 2, r"trunc\.pt2"),
    Row("verify-tampered-manifest", ("verify", "{tiny}", "{work}/c", *X), 2,
        r"tiny\.json does not match tiny\.h", setup="tampered_manifest"),
    # ---- example
    Row("example-out-is-a-file", ("example", "--out", "{out}"), 2,
        r"--out \S+ is a file, not a folder", setup="out_is_file"),
    Row("example-unknown-board", ("example", "--out", "{out}", "--board", "stm32-nope"), 2,
        r"unknown board 'stm32-nope'; known boards: microbit"),
    # ---- boards
    Row("boards-extra-argument", ("boards", "--all"), 2, r"unrecognized arguments: --all"),
    # ---- build
    Row("build-unknown-board", ("build", "{f32}", "--board", "esp32", "-o", "{out}.elf"), 2,
        r"unknown board 'esp32'"),
    Row("build-output-is-a-folder", ("build", "{f32}", "--board", "mps2-an386", "-o", "{out}"),
        2, r"-o \S+out is a folder", setup="out_is_folder"),
    Row("build-output-in-proc", ("build", "{f32}", "--board", "mps2-an386", "-o",
                                 "/proc/tinyrnn/app.elf"), 2,
        r"cannot write -o /proc/tinyrnn/app\.elf: "),
    Row("build-input-nan", ("build", "{f32}", "--board", "mps2-an386", "--input", "{x_nan}",
                            "-o", "{out}.elf"), 2, r"not finite in float32"),
    Row("build-too-big-for-board", ("build", "{big}", "--board", "microbit", "-o",
                                    "{out}.elf"), 2, r"does not fit board microbit"),
    Row("build-tampered-manifest", ("build", "{work}/c", "--board", "mps2-an386", "-o",
                                    "{out}.elf"), 2, r"tiny\.json does not match tiny\.h",
        setup="tampered_manifest"),
    # ---- run (QEMU)
    Row("run-timeout-0", ("run", "{f32}", "--board", "mps2-an386", *X, "--output", "{out}.npz",
                          "--timeout", "0"), 2, r"--timeout must be > 0, not 0"),
    Row("run-timeout-negative", ("run", "{f32}", "--board", "mps2-an386", *X, "--output",
                                 "{out}.npz", "--timeout", "-5"), 2,
        r"--timeout must be > 0, not -5"),
    Row("run-timeout-nan", ("run", "{f32}", "--board", "mps2-an386", *X, "--output",
                            "{out}.npz", "--timeout", "nan"), 2,
        r"--timeout must be a finite number, not nan"),
    Row("run-board-not-emulated", ("run", "{f32}", "--board", "nucleo-f446re", *X, "--output",
                                   "{out}.npz"), 2, r"board nucleo-f446re is not emulated"),
    Row("run-batch-0", ("run", "{f32}", "--board", "mps2-an386", "--input", "{x_batch0}",
                        "--output", "{out}.npz"), 2, r"in0 \(x\) has batch size 0"),
    # ---- flash --dry-run
    Row("flash-board-without-probe", ("flash", "{f32}", "--board", "mps2-an386", "--dry-run",
                                      "-o", "{out}.elf"), 2,
        r"board mps2-an386 has no pyocd_target, so it cannot be flashed"),
    Row("flash-unknown-board", ("flash", "{f32}", "--board", "nrf9999", "--dry-run"), 2,
        r"unknown board 'nrf9999'"),
    Row("flash-output-is-a-folder", ("flash", "{f32}", "--board", "nucleo-f446re", "--dry-run",
                                     "-o", "{out}"), 2, r"-o \S+out is a folder",
        setup="out_is_folder"),
    # ---- profile
    Row("profile-unknown-cpu", ("profile", "{f32}", "--cpu", "cortex-m99"), 2,
        r"unknown core 'cortex-m99'; choose one of m0"),
    Row("profile-m55-check", ("profile", "{f32}", "--cpu", "m55", "--qemu-check"), 2,
        r"count already comes from QEMU: leave --qemu-check out"),
    Row("profile-no-core", ("profile", "{f32}"), 2, r"say which core to profile for"),
    Row("profile-cpu-differs-from-board", ("profile", "{f32}", "--cpu", "m4", "--board",
                                           "mps2-an385"), 2,
        r"--cpu m4 differs from board mps2-an385's core cortex-m3"),
    Row("profile-tampered-manifest", ("profile", "{work}/c", "--cpu", "m4"), 2,
        r"tiny\.json does not match tiny\.h", setup="tampered_manifest"),
    # ---- report
    Row("report-output-is-a-file", ("report", "{tiny}", "{f32}", *X, "-o", "{out}"), 2,
        r"-o \S+ is a file, not a folder", setup="out_is_file"),
    Row("report-unknown-board", ("report", "{tiny}", "{f32}", *X, "-o", "{out}", "--board",
                                 "pico2"), 2, r"unknown board 'pico2'"),
    Row("report-nan-input", ("report", "{tiny}", "{f32}", "--input", "{x_nan}", "-o", "{out}"),
        2, r"not finite in float32"),
    Row("report-tampered-manifest", ("report", "{tiny}", "{work}/c", *X, "-o", "{out}"), 2,
        r"tiny\.json does not match tiny\.h", setup="tampered_manifest"),
]


# ---------------------------------------------------------------------------------------------
# The files the rows refer to


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Models, exports and input files, shared by the rows (which never write here)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    tiny = root / "tiny.pt2"
    torch.export.save(torch.export.export(Tiny().eval(), (torch.randn(2, 5, 3),)), str(tiny))
    wide = root / "wide.pt2"
    torch.export.save(torch.export.export(Wide().eval(), (torch.randn(1, 5, 3),)), str(wide))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    paths = {"tiny": tiny, "wide": wide}

    def save(key: str, array: np.ndarray) -> None:
        paths[key] = root / f"{key}.npy"
        np.save(paths[key], array)

    save("x", x)
    save("x_batch0", np.zeros((0, 5, 3), np.float32))
    save("x_t0", np.zeros((2, 0, 3), np.float32))
    save("x_rank2", x[0])
    save("x_feat4", rng.normal(size=(2, 5, 4)).astype(np.float32))
    bad = x.copy()
    bad[1, 2, 0] = np.nan
    save("x_nan", bad)
    bad = x.copy()
    bad[0, 4, 1] = -np.inf
    save("x_inf", bad)
    big = x.astype(np.float64)
    big[0, 0, 0] = 1e300  # finite in float64, inf in float32
    save("x_1e300", big)
    save("x_int", np.ones((2, 5, 3), np.int32))
    save("x_1e30", x * np.float32(1e30))  # finite in float32, far beyond any int16 format
    save("x_zero", np.zeros((8, 5, 3), np.float32))
    const = rng.normal(size=(8, 5, 3)).astype(np.float32)
    const[:, :, 1] = 0.5
    save("x_const1", const)
    paths["keys_npz"] = root / "keys.npz"
    np.savez(paths["keys_npz"], x=x)
    paths["two_npz"] = root / "two.npz"
    np.savez(paths["two_npz"], in0=x, in1=x)
    paths["trunc_npz"] = root / "trunc.npz"
    paths["trunc_npz"].write_bytes(paths["two_npz"].read_bytes()[:200])
    for kind, data in (("empty", b""), ("text", b"not an array, just some words\n"),
                       ("trunc", paths["x"].read_bytes()[:100])):
        paths[f"{kind}_npy"] = root / f"{kind}.npy"
        paths[f"{kind}_npy"].write_bytes(data)
    for kind, data in (("empty", b""), ("text", b"import os; os.system('true')\n"),
                       ("trunc", tiny.read_bytes()[: tiny.stat().st_size * 3 // 5])):
        paths[f"{kind}_pt2"] = root / f"{kind}.pt2"
        paths[f"{kind}_pt2"].write_bytes(data)
    for key, argv in (("f32", ["--format", "float32", "--name", "tiny"]),
                      ("q8", ["--format", "w8a16", "--name", "tiny", "--calibration",
                              str(paths["x"])]),
                      ("big", ["--format", "float32", "--name", "wide", "--max-seq-len", "200"])):
        paths[key] = root / key
        model = wide if key == "big" else tiny
        assert main(["export", str(model), "--out", str(paths[key]), *argv]) == 0
    for path in root.rglob("*"):  # the rows must not write here
        path.chmod(path.stat().st_mode & ~0o222)
    return paths


def _prepare(setup: str, work: Path, files: dict[str, Path]) -> None:
    """Put into ``work`` what a row needs."""
    if setup == "out_is_file":
        (work / "out").write_text("a file the user keeps\n")
    elif setup == "out_is_folder":
        (work / "out").mkdir()
    elif setup == "npz_is_folder":
        (work / "out.npz").mkdir()
    elif setup == "read_only":
        (work / "ro").mkdir()
        (work / "ro").chmod(0o555)
    elif setup == "model_c_is_a_folder":
        (work / "out" / "model.c").mkdir(parents=True)
        (work / "out" / "model.json").write_text("{}\n")  # an old file that must survive
    elif setup:
        shutil.copytree(files["f32"], work / "c")
        for path in (work / "c").iterdir():
            path.chmod(0o644)
        manifest = work / "c" / "tiny.json"
        if setup == "tampered_manifest":  # buffers sized from this would overflow the C's
            data = json.loads(manifest.read_text())
            data["interface"]["input_size"] = 300
            data["interface"]["outputs"][0]["features"] = 4000
            manifest.write_text(json.dumps(data))
        elif setup == "tampered_c_interface":  # a source outside the export, bigger buffers
            data = json.loads(manifest.read_text())
            data["c_interface"]["sources"] = ["../../evil.c"]
            data["c_interface"]["functions"][0]["args"][-1]["length"] = {"per_step": 0,
                                                                           "fixed": 4000}
            manifest.write_text(json.dumps(data))
        elif setup == "manifest_not_json":
            manifest.write_text('{"name": "tiny", ')
        elif setup == "header_without_binding":
            header = work / "c" / "tiny.h"
            header.write_text("".join(line for line in header.read_text().splitlines(True)
                                      if "interface sha256" not in line))
        else:
            raise AssertionError(f"unknown setup {setup!r}")


def _fill(argv: tuple[str, ...], work: Path, files: dict[str, Path]) -> list[str]:
    fields = {key: str(path) for key, path in files.items()}
    fields.update(work=str(work), out=str(work / "out"))
    return [arg.format(**fields) for arg in argv]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


MESSAGES: dict[str, tuple[int, str]] = {}


@pytest.fixture(scope="module", autouse=True)
def message_table():
    """After the module: the table of cases, exit statuses and first lines (shown with -s)."""
    yield
    if MESSAGES:
        print("\n| case | exit | first line of the message |\n|---|---|---|")
        for row in ROWS:
            if row.id in MESSAGES:
                code, line = MESSAGES[row.id]
                print(f"| {row.id} | {code} | `{line}` |")


def _in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, files, tmp_path, capsys):
    if row.needs_non_root and os.geteuid() == 0:
        pytest.skip("root may write into read-only folders; the /proc rows cover root")
    work = tmp_path / "work"
    work.mkdir()
    _prepare(row.setup, work, files)
    before = _snapshot(work)
    code, out, err = _in_process(_fill(row.argv, work, files), capsys)
    text = err if code else err + out
    lines = [line for line in text.splitlines() if line.strip()]
    first = next((line for line in lines if "error" in line or "warning" in line), "")
    MESSAGES[row.id] = (code, first or (lines[0] if lines else ""))
    assert code == row.code, f"exit status {code}, expected {row.code}:\n{err}{out}"
    assert re.search(row.message, text, re.DOTALL), f"message does not match:\n{text}"
    assert "Traceback" not in text, text
    if code:
        assert err.startswith(("error: ", "usage: ")), err
        assert _snapshot(work) == before, "a failed command changed its output location"
    else:  # accepted: the outputs are complete, and no staging folder is left
        assert not [p for p in work.rglob(f"{STAGE_PREFIX}*")]
        for written in work.rglob("*.npz"):
            assert sorted(np.load(written).files) == ["out0"]
        if row.argv[0] == "export":  # the C interface's files (integer formats: + .S)
            api = json.loads((work / "out" / "model.json").read_text())["c_interface"]
            assert api["header"] == "model.h" and api["sources"][0] == "model.c"
            assert sorted(p.name for p in (work / "out").iterdir()) == sorted(
                [api["header"], *api["sources"], "model.json"])


PROCESS_ROWS = [row for row in ROWS if row.process]


@pytest.mark.parametrize("row", PROCESS_ROWS, ids=[row.id for row in PROCESS_ROWS])
def test_bad_input_in_a_real_process(row: Row, files, tmp_path):
    """The same rows as a real ``tinyrnn`` process: status 2, one clean error, no traceback
    from Python, torch or its logger on stderr."""
    work = tmp_path / "work"
    work.mkdir()
    _prepare(row.setup, work, files)
    before = _snapshot(work)
    done = subprocess.run([sys.executable, "-m", "tinyrnn", *_fill(row.argv, work, files)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == row.code, done.stderr
    assert re.search(row.message, done.stderr, re.DOTALL), done.stderr
    assert "Traceback" not in done.stderr and 'File "' not in done.stderr, done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        done.stderr.strip()], f"more than the one error line:\n{done.stderr}"
    assert _snapshot(work) == before


def test_a_failure_while_moving_files_into_place_puts_everything_back(tmp_path, monkeypatch):
    """tinyrnn.outputs: if a rename fails half-way (after NAME.h replaced the old one), the old
    files come back and no staging folder is left."""
    from tinyrnn import outputs
    from tinyrnn.errors import TinyRNNError

    target = tmp_path / "out"
    target.mkdir()
    (target / "m.h").write_text("old header\n")
    (target / "m.c").write_text("old source\n")
    before = _snapshot(target)
    real_rename = os.rename
    calls = []

    def failing_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 4:  # 1st file: old aside, new in; 2nd: old aside, new in fails
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(outputs.os, "rename", failing_rename)
    with pytest.raises(TinyRNNError, match="No space left on device; nothing was changed"):
        outputs.write_files(target, {"m.h": "new header\n", "m.c": "new source\n"})
    assert len(calls) >= 4
    assert _snapshot(target) == before


def test_names_that_differ_only_in_case_are_refused_together(files, tmp_path):
    """NAME_OK, NAME_H: two models named tiny and TINY cannot share a host module or an
    image; both builders say so before compiling."""
    from tinyrnn.errors import TinyRNNError
    from tinyrnn.targets import cross
    from tinyrnn.targets.boards import load_board
    from tinyrnn.targets.host import load_many

    other = tmp_path / "TINY"
    assert main(["export", str(files["tiny"]), "--out", str(other), "--format", "float32",
                 "--name", "TINY"]) == 0
    with pytest.raises(TinyRNNError, match="differ in more than letter case"):
        load_many([files["f32"], other])
    models = [cross.ExportedModel.load(d) for d in (files["f32"], other)]
    jobs = [cross.ModelInputs(m, (m.zero_sample(),)) for m in models]
    with pytest.raises(TinyRNNError, match="differ in more than letter case; TINY, tiny clash"):
        cross.build(jobs, load_board("mps2-an386"), tmp_path / "image")
