"""Real data: a small LSTM and a small GRU trained on JapaneseVowels (9 speakers, 12 LPC
features) keep their predictions in w8a16: >= 98% agreement with torch float on the 370 test
utterances and at most 1 point of accuracy lost. Calibrated on the training set."""

from __future__ import annotations

import aeon  # noqa: F401  (the test extra; a missing aeon must fail, not skip)
import numpy as np
import pytest
import torch

from tinyrnn.api import export_program
from tinyrnn.datasets import accuracy, japanese_vowels, train_classifier
from tinyrnn.frontend.reader import capture
from tinyrnn.targets.host import load_many

CELLS = ("lstm", "gru")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("jv")
    train, test = japanese_vowels()
    models, dirs = {}, []
    for cell in CELLS:
        model, _ = train_classifier(cell, train)
        program = capture(model, (torch.from_numpy(train.x[:2]),))
        export_program(program, root / cell, name=f"jv_{cell}", format="w8a16",
                       calibration=train.x)
        models[cell] = model
        dirs.append(root / cell)
    return test, models, dict(zip(CELLS, load_many(dirs)))


@pytest.mark.parametrize("cell", CELLS)
def test_w8a16_keeps_the_predictions(cell, trained):
    test, models, compiled = trained
    with torch.no_grad():
        logits_torch = models[cell](torch.from_numpy(test.x)).numpy()
    (logits_c,) = compiled[cell].run(test.x)
    acc_torch = accuracy(logits_torch, test.y)
    acc_c = accuracy(logits_c, test.y)
    agree = float(np.mean(logits_torch.argmax(1) == logits_c.argmax(1)))
    print(f"\nJapaneseVowels {cell}: accuracy torch {acc_torch:.2%}, C w8a16 {acc_c:.2%}, "
          f"agreement {agree:.2%}")
    assert acc_torch > 0.9, "the float model should have learned the task"
    assert agree >= 0.98
    assert acc_c >= acc_torch - 0.01
