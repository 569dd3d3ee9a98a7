"""Recurrent cells (nn.LSTMCell/GRUCell/RNNCell) in the forms tinyrnn reads, their nn.LSTM/GRU/
RNN equivalents, forms it refuses, and a plain rebuild of Silero VAD's structure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CELL_KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
INPUT, HIDDEN, OUT = 5, 6, 3


def make_cell(kind: str, input_size: int, hidden: int, bias: bool = True) -> nn.Module:
    if kind == "lstm":
        return nn.LSTMCell(input_size, hidden, bias=bias)
    if kind == "gru":
        return nn.GRUCell(input_size, hidden, bias=bias)
    return nn.RNNCell(input_size, hidden, bias=bias, nonlinearity=kind[4:])


def call_cell(kind: str, cell: nn.Module, x_t, state: tuple) -> tuple:
    """One step: the state as a tuple, (h, c) for LSTM cells, (h,) otherwise."""
    if kind == "lstm":
        return cell(x_t, state)
    return (cell(x_t, state[0]),)


@dataclass(frozen=True)
class Form:
    """How a cell is used: a step module, or a Python loop over time."""

    kind: str
    form: str  # "step", "loop", "loop_last" (head on the last h), "loop_h0", "loop_tf",
    # "stacked" (two cells, the second reading the first's h at each step; x.unbind(1))
    bias: bool = True

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.form}" + ("" if self.bias else "-nobias")

    @property
    def state_count(self) -> int:
        return 2 if self.kind == "lstm" else 1


class StepModule(nn.Module):
    """forward(x_t, h[, c]) -> (fc(h), h[, c]): one step, the state in and out."""

    def __init__(self, f: Form):
        super().__init__()
        self.kind = f.kind
        self.cell = make_cell(f.kind, INPUT, HIDDEN, f.bias)
        self.fc = nn.Linear(HIDDEN, OUT)

    def forward(self, x_t, *state):
        state = call_cell(self.kind, self.cell, x_t, state)
        return (self.fc(state[0]), *state)


class LoopModule(nn.Module):
    """A Python loop over time: torch.export unrolls it into one cell call per step."""

    def __init__(self, f: Form):
        super().__init__()
        self.kind, self.form = f.kind, f.form
        self.cell = make_cell(f.kind, INPUT, HIDDEN, f.bias)
        if f.form == "stacked":
            self.cell2 = make_cell(f.kind, HIDDEN, HIDDEN, f.bias)
        self.fc = nn.Linear(HIDDEN, OUT)

    def forward(self, x, *h0):
        time_axis = 0 if self.form == "loop_tf" else 1
        batch = x.shape[1 - time_axis]
        zeros = tuple(torch.zeros(batch, HIDDEN) for _ in range(1 + (self.kind == "lstm")))
        state, below = h0 or zeros, zeros
        outs = []
        for t, x_t in enumerate(x.unbind(1) if self.form == "stacked"
                               else range(x.shape[time_axis])):
            if self.form == "stacked":
                below = call_cell(self.kind, self.cell, x_t, below)
                state = call_cell(self.kind, self.cell2, below[0], state)
            else:
                x_t = x[t] if time_axis == 0 else x[:, t]
                state = call_cell(self.kind, self.cell, x_t, state)
            outs.append(state[0])
        if self.form == "loop_last":
            return torch.softmax(self.fc(state[0]), dim=-1)
        return (self.fc(torch.stack(outs, time_axis)), *state)


def build(f: Form, batch: int = 3, steps: int = 6, seed: int = 0) -> tuple[nn.Module, tuple]:
    """The module with seeded weights and example inputs in its forward's form."""
    torch.manual_seed(seed + sum(map(ord, f.id)))
    module = (StepModule(f) if f.form == "step" else LoopModule(f)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    state = tuple(0.5 * torch.randn(batch, HIDDEN, generator=gen) for _ in range(f.state_count))
    if f.form == "step":
        return module, (torch.randn(batch, INPUT, generator=gen), *state)
    shape = (steps, batch, INPUT) if f.form == "loop_tf" else (batch, steps, INPUT)
    x = torch.randn(*shape, generator=gen)
    return module, ((x, *state) if f.form == "loop_h0" else (x,))


def sequence_inputs(f: Form, batch: int, steps: int, seed: int) -> list[np.ndarray]:
    """Inputs in the form the exported C (run-host, verify) takes: x as a sequence, then the
    states (B, H) for forms that take them."""
    rng = np.random.default_rng(seed)
    shape = (steps, batch, INPUT) if f.form == "loop_tf" else (batch, steps, INPUT)
    arrays = [rng.normal(size=shape).astype(np.float32)]
    if f.form in ("step", "loop_h0"):
        arrays += [(0.5 * rng.normal(size=(batch, HIDDEN))).astype(np.float32)
                   for _ in range(f.state_count)]
    return arrays


def torch_sequence(f: Form, module: nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """What torch computes on ``arrays``: a step module is iterated over the sequence with its
    state carried, its outputs stacked on the time axis and its last state returned."""
    tensors = [torch.from_numpy(a) for a in arrays]
    with torch.no_grad():
        if f.form != "step":
            out = module(*tensors)
            return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
        x, state = tensors[0], tuple(tensors[1:])
        ys = []
        for t in range(x.shape[1]):
            y, *new = module(x[:, t], *state)
            ys.append(y)
            state = tuple(new)
        return [torch.stack(ys, 1).numpy(), *(s.numpy() for s in state)]


class Equivalent(nn.Module):
    """The nn.LSTM/GRU/RNN model computing what a cell form computes, with the cell's weights."""

    def __init__(self, f: Form, cell: nn.Module, fc: nn.Linear, cell2: nn.Module | None = None):
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU}.get(f.kind, nn.RNN)
        kw = {} if f.kind in ("lstm", "gru") else {"nonlinearity": f.kind[4:]}
        self.form = f.form
        cells = [cell] + ([cell2] if cell2 is not None else [])
        self.rnn = cls(INPUT, HIDDEN, num_layers=len(cells), bias=f.bias,
                       batch_first=f.form != "loop_tf", **kw)
        self.fc = fc
        with torch.no_grad():
            for layer, one in enumerate(cells):
                for name in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if f.bias
                                                          else ()):
                    getattr(self.rnn, f"{name}_l{layer}").copy_(getattr(one, name))

    def forward(self, x):
        out, _ = self.rnn(x)
        if self.form == "loop_last":
            return torch.softmax(self.fc(out[:, -1]), dim=-1)
        return self.fc(out)


def equivalent_example(f: Form) -> torch.Tensor:
    return torch.randn(4, 3, INPUT) if f.form == "loop_tf" else torch.randn(3, 4, INPUT)


# ---------------------------------------------------------------------------------------------
# Forms tinyrnn refuses, each with the rewrite it suggests


class PerStepWeights(nn.Module):
    """A different cell at every step (a ModuleList): not one recurrent layer."""

    def __init__(self, steps: int = 4):
        super().__init__()
        self.cells = nn.ModuleList(nn.GRUCell(INPUT, HIDDEN) for _ in range(steps))

    def forward(self, x):
        h = torch.zeros(x.shape[0], HIDDEN)
        for t, cell in enumerate(self.cells):
            h = cell(x[:, t], h)
        return h


class ResetMidLoop(nn.Module):
    """The state starts again from zeros halfway through the sequence."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(INPUT, HIDDEN)

    def forward(self, x):
        h = torch.zeros(x.shape[0], HIDDEN)
        for t in range(x.shape[1]):
            if t == 2:
                h = torch.zeros(x.shape[0], HIDDEN)
            h = self.cell(x[:, t], h)
        return h


class PerStepHead(nn.Module):
    """A head applied inside the loop, on every step's h."""

    def __init__(self):
        super().__init__()
        self.cell = nn.RNNCell(INPUT, HIDDEN)
        self.fc = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        h = torch.zeros(x.shape[0], HIDDEN)
        ys = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            ys.append(self.fc(h))
        return torch.stack(ys, 1)


class PartialLoop(nn.Module):
    """The loop skips the last step of x."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(INPUT, HIDDEN)

    def forward(self, x):
        h = c = torch.zeros(x.shape[0], HIDDEN)
        for t in range(x.shape[1] - 1):
            h, c = self.cell(x[:, t], (h, c))
        return h


class StatesOutOfOrder(nn.Module):
    """A step module returning (y, c, h) for the inputs (x_t, h, c)."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(INPUT, HIDDEN)

    def forward(self, x_t, h, c):
        h, c = self.cell(x_t, (h, c))
        return h, c, h


# ---------------------------------------------------------------------------------------------
# Silero VAD's 16 kHz branch, rebuilt from plain modules with random weights (issue 12)


class STFT(nn.Module):
    """A conv1d with a fixed (258, 1, 256) basis, stride 128, over the reflect-padded frame."""

    def __init__(self):
        super().__init__()
        self.register_buffer("forward_basis_buffer", torch.randn(258, 1, 256))

    def forward(self, x):
        x = nn.functional.pad(x, (0, 64), mode="reflect").unsqueeze(1)
        spec = nn.functional.conv1d(x, self.forward_basis_buffer, stride=128)
        real, imag = spec[:, :129], spec[:, 129:]
        return torch.sqrt(real ** 2 + imag ** 2)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.reparam_conv = nn.Conv1d(cin, cout, 3, stride=stride, padding=1)
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.reparam_conv(x))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTMCell(128, 128)
        self.decoder = nn.Sequential(nn.Dropout(0.1), nn.ReLU(), nn.Conv1d(128, 1, 1),
                                     nn.Sigmoid())

    def forward(self, x, h, c):
        h, c = self.rnn(x.squeeze(-1), (h, c))
        return self.decoder(h.unsqueeze(-1)), h, c


class SileroStructure(nn.Module):
    """forward(x (B, 576), h, c) -> (probability (B, 1), h, c) for one 32 ms frame."""

    def __init__(self):
        super().__init__()
        self.stft = STFT()
        self.encoder = nn.Sequential(Block(129, 128, 1), Block(128, 64, 2), Block(64, 64, 2),
                                     Block(64, 128, 1))
        self.decoder = Decoder()

    def forward(self, x, h, c):
        y, h, c = self.decoder(self.encoder(self.stft(x)), h, c)
        return y.squeeze(1).mean(1, keepdim=True), h, c
