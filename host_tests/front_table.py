"""The scaffolding of the front-end layer tables (test_frontops.py, test_frontgaps.py): a module
built from a case's modules and forward, the inputs, and the whole table exported and compiled
in one host module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinyrnn.api import export_program
from tinyrnn.frontend.reader import capture
from tinyrnn.targets.host import load_many


class Net(nn.Module):
    """The modules of a case and its forward (a function of the module and x, (B, T, 4))."""

    def __init__(self, build: Callable[[], dict], forward: Callable):
        super().__init__()
        for name, module in build().items():
            setattr(self, name, module)
        self.fn = forward

    def forward(self, x):
        return self.fn(self, x)


def x_of(batch: int, steps: int, seed: int) -> np.ndarray:
    """Normal inputs of 4 features, (B, T, 4) float32."""
    return np.random.default_rng(seed).normal(size=(batch, steps, 4)).astype(np.float32)


def torch_out(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def build_table(cases: Sequence, steps: int) -> dict:
    """``{case.id: (module, program)}``: each case's module (seeded by ``case.seed``) in eval
    mode and its capture at ``steps`` steps."""
    out = {}
    for case in cases:
        torch.manual_seed(case.seed)
        module = Net(case.build, case.forward).eval()
        out[case.id] = module, capture(module, (torch.from_numpy(x_of(2, steps, case.seed)),))
    return out


def compile_table(cases: Sequence, built: dict, root: Path, prefix: str, steps: int) -> dict:
    """``{(case.id, format): compiled}``: every case in each of its ``formats``, exported (the
    integer formats calibrated on 32 sequences) and compiled in one host module."""
    keys, dirs = [], []
    for k, case in enumerate(cases):
        for fmt in case.formats:
            folder = root / f"{prefix}{k}_{fmt}"
            export_program(built[case.id][1], folder, name=f"{prefix}{k}_{fmt}", format=fmt,
                           calibration=x_of(32, steps, 1000 + k) if fmt != "float32" else None)
            keys.append((case.id, fmt))
            dirs.append(folder)
    return dict(zip(keys, load_many(dirs)))
