"""Real data for tests and benchmarks: the UEA JapaneseVowels speaker-recognition set and
small recurrent classifiers trained on it in seconds.

JapaneseVowels (loaded offline through ``aeon``, which ships it) has 270 training and 370 test
utterances of 7 to 29 frames of 12 LPC cepstrum coefficients, from 9 speakers. Sequences
are standardized per feature with the training set's statistics and pre-padded with zeros
to a common length, so a classifier that reads the last time step sees every real frame.
Everything here is deterministic for a given seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import TinyRNNError

FEATURES = 12
CLASSES = 9
PAD_TO = 29  # the longest utterance of either split


@dataclass(frozen=True)
class SequenceSet:
    """Pre-padded sequences ``x`` (N, T, F) float32, integer labels ``y`` (N,), true lengths."""

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray


def _load_split(split: str) -> tuple[list[np.ndarray], np.ndarray]:
    try:
        from aeon.datasets import load_classification
    except ImportError:
        raise TinyRNNError(
            "JapaneseVowels needs the aeon package (pip install 'tinyrnn[test]')"
        ) from None
    series, labels = load_classification("JapaneseVowels", split=split)
    return [np.asarray(s, dtype=np.float64).T for s in series], np.asarray(labels).astype(int) - 1


def japanese_vowels(pad_to: int = PAD_TO) -> tuple[SequenceSet, SequenceSet]:
    """(train, test), standardized with the training frames' mean and std, pre-padded."""
    train, y_train = _load_split("train")
    test, y_test = _load_split("test")
    frames = np.concatenate(train)
    mean, std = frames.mean(axis=0), frames.std(axis=0)

    def pack(seqs: list[np.ndarray], y: np.ndarray) -> SequenceSet:
        x = np.zeros((len(seqs), pad_to, FEATURES), dtype=np.float32)
        for i, s in enumerate(seqs):
            s = ((s - mean) / std)[-pad_to:]
            x[i, pad_to - len(s):] = s
        return SequenceSet(x, y, np.array([min(len(s), pad_to) for s in seqs]))

    return pack(train, y_train), pack(test, y_test)


class SequenceClassifier(nn.Module):
    """batch_first LSTM or GRU -> Linear on the last step (logits)."""

    def __init__(self, cell: str, hidden: int = 32, features: int = FEATURES,
                 classes: int = CLASSES):
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = cls(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def train_classifier(cell: str, data: SequenceSet, hidden: int = 32, epochs: int = 60,
                     seed: int = 0) -> tuple[SequenceClassifier, float]:
    """Train a :class:`SequenceClassifier` with Adam; returns it (in eval mode) and seconds."""
    torch.manual_seed(seed)
    model = SequenceClassifier(cell, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), 32):
            idx = order[k:k + 32]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), time.perf_counter() - start


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))
