"""The table tests' "nothing unused" check (host_tests/c_checks.py) is live: it checks many
exports as one translation unit, so these tests plant unused code in one export among others
and expect each compiler family to name it, in that export's own file and line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import tinyrnn
from c_checks import compiler_warnings
from tinyrnn.backend.render import HELPER_PREFIX


class _Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.GRU(3, 4, batch_first=True)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A float32 and a w8a16 export of one small tagger, and a copy of the w8a16 one under
    another name: three sources that share every helper name."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("c_checks")
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32))
    model = _Tagger().eval()
    tinyrnn.export(model, x, root / "f32", format="float32", name="f32")
    tinyrnn.export(model, x, root / "q8", format="w8a16", name="q8", calibration=x)
    tinyrnn.export(model, x, root / "q8b", format="w8a16", name="q8b", calibration=x)
    return [root / name / f"{name}.c" for name in ("f32", "q8", "q8b")]


def _plant(source, code: str) -> int:
    """Insert ``code`` after the source's first system #include (outside every #if); returns
    the line it starts on."""
    lines = source.read_text().splitlines(keepends=True)
    at = next(k for k, line in enumerate(lines) if line.startswith("#include <")) + 1
    source.write_text("".join(lines[:at]) + code + "".join(lines[at:]))
    return at + 1


def test_clean_exports_have_no_warnings(exports):
    assert compiler_warnings(exports) == []


def test_an_unused_helper_and_macro_are_named_in_their_own_file(exports, tmp_path):
    """One export defines a helper and calls it; another defines the same helper and leaves it
    unused, and an unused macro: the check reports the second file's helper (clang, on every
    target) and its macro (clang and gcc), at the planted lines, and nothing in the first."""
    used, unused = tmp_path / "used", tmp_path / "unused"
    shutil.copytree(exports[1].parent, used)
    shutil.copytree(exports[2].parent, unused)
    helper = f"{HELPER_PREFIX}planted_probe"
    _plant(used / "q8.c", f"static int {helper}(int x) {{ return x + 1; }}\n"
                          f"int q8_planted_caller(int x);\n"
                          f"int q8_planted_caller(int x) {{ return {helper}(x); }}\n")
    line = _plant(unused / "q8b.c", f"static int {helper}(int x) {{ return x + 1; }}\n"
                                    "#define Q8B_PLANTED_MACRO 1\n")
    found = compiler_warnings([exports[0], used / "q8.c", unused / "q8b.c"])
    assert not [w for w in found if str(used) in w], found
    for target in ("host", "cortex-m0", "cortex-m4", "cortex-m55"):
        assert any(f"clang {target}: {unused / 'q8b.c'}:{line}:" in w and helper in w
                   for w in found), (target, found)
        assert any(f"clang {target}: {unused / 'q8b.c'}:{line + 1}:" in w  # clang: no name
                   and "[-Wunused-macros]" in w for w in found), (target, found)
        assert any(f"gcc {target}: {unused / 'q8b.c'}:{line + 1}:" in w
                   and "Q8B_PLANTED_MACRO" in w for w in found), (target, found)
