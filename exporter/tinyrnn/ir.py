"""The intermediate representation: what the model computes, with torch's conventions settled.

The frontend turns a torch.export graph into a :class:`Model`; passes (quantization) turn a
Model into a Model; the renderer turns a Model into C text. Every class here is a frozen
dataclass with typed fields, one per layer kind.

Conventions settled here, once:
- A torch recurrent module with ``num_layers`` layers becomes one IR layer per torch layer;
  each holds one :class:`Direction` (or two when bidirectional: forward first, then reverse).
- Gates are split and named: LSTM ``i, f, g, o``; GRU ``r, z, n``; RNN ``h``. Each gate holds
  its input weights, recurrent weights and one folded bias ``b_ih + b_hh`` except the GRU
  ``n`` gate, which keeps ``b_hn`` apart because torch applies the reset gate to
  ``W_hn h + b_hn``.
- Every array remembers the torch tensor and slice it came from (:class:`Tensor.source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

CellKind = Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]
ActivationKind = Literal["relu", "tanh", "sigmoid", "softmax", "log_softmax"]

GATE_NAMES: dict[str, tuple[str, ...]] = {
    "lstm": ("i", "f", "g", "o"),
    "gru": ("r", "z", "n"),
    "rnn_tanh": ("h",),
    "rnn_relu": ("h",),
}

GATE_TITLES = {
    "i": "input gate",
    "f": "forget gate",
    "g": "cell gate",
    "o": "output gate",
    "r": "reset gate",
    "z": "update gate",
    "n": "new gate",
    "h": "",
}


@dataclass(frozen=True, eq=False)
class Tensor:
    """A constant array and where it came from (e.g. ``lstm.weight_ih_l0[6:12]``)."""

    data: np.ndarray
    source: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(frozen=True, eq=False)
class Gate:
    """One gate of one direction: pre = w_x @ x + w_h @ h + bias (+ GRU n: r * (w_h h + b_h))."""

    name: str
    w_x: Tensor  # (H, input_size)
    w_h: Tensor  # (H, state_size)
    bias: Tensor | None  # (H,) b_ih + b_hh folded; GRU n gate: b_in only
    bias_h: Tensor | None = None  # GRU n gate only: b_hn, inside the reset product


@dataclass(frozen=True, eq=False)
class Direction:
    """The weights of one direction of one recurrent layer."""

    reverse: bool
    gates: tuple[Gate, ...]
    w_proj: Tensor | None = None  # LSTM proj_size > 0: (P, H)


@dataclass(frozen=True, eq=False)
class RecurrentLayer:
    """Fields shared by the recurrent layer kinds; one torch layer (index ``layer``)."""

    module: str  # torch module path, e.g. "encoder.lstm"
    layer: int  # index inside the torch module
    input_size: int
    hidden_size: int
    directions: tuple[Direction, ...]

    @property
    def num_directions(self) -> int:
        return len(self.directions)

    @property
    def state_size(self) -> int:
        """Size of h as fed back and output (proj_size for projected LSTMs)."""
        return self.hidden_size

    @property
    def output_size(self) -> int:
        return self.state_size * self.num_directions


@dataclass(frozen=True, eq=False)
class LSTMLayer(RecurrentLayer):
    proj_size: int = 0

    @property
    def kind(self) -> CellKind:
        return "lstm"

    @property
    def state_size(self) -> int:
        return self.proj_size or self.hidden_size


@dataclass(frozen=True, eq=False)
class GRULayer(RecurrentLayer):
    @property
    def kind(self) -> CellKind:
        return "gru"


@dataclass(frozen=True, eq=False)
class RNNLayer(RecurrentLayer):
    nonlinearity: Literal["tanh", "relu"] = "tanh"

    @property
    def kind(self) -> CellKind:
        return "rnn_relu" if self.nonlinearity == "relu" else "rnn_tanh"


@dataclass(frozen=True, eq=False)
class Dense:
    """y = weight @ x + bias, applied to every time step of a sequence or to a vector."""

    name: str
    weight: Tensor  # (out, in)
    bias: Tensor | None

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True)
class Activation:
    """An element-wise (relu, tanh, sigmoid) or last-axis (softmax, log_softmax) function."""

    kind: ActivationKind
    features: int


@dataclass(frozen=True)
class SelectStep:
    """Take one time step of the sequence (``index`` may be negative: -1 is the last)."""

    index: int
    features: int


Layer = LSTMLayer | GRULayer | RNNLayer | Dense | Activation | SelectStep


@dataclass(frozen=True)
class StateGroup:
    """The layers of one torch recurrent module, in order; its h_n/c_n gather their states."""

    module: str
    layers: tuple[int, ...]  # indices into Model.layers
    cell: CellKind
    state_size: int  # per (layer, direction) row of h_n
    hidden_size: int  # per row of c_n (LSTM)
    rows: int  # num_layers * num_directions


@dataclass(frozen=True)
class InputSpec:
    """One argument of the torch forward (after flattening nested tuples)."""

    role: Literal["x", "h0", "c0"]
    torch_shape: tuple[int, ...]  # a step module's x: (B, 1, I), the iterated form's shape
    batch_axis: int  # h0/c0: 1 for torch's (rows, B, H), 0 for a cell's (B, H)
    time_axis: int | None = None  # x only
    features: int = 0  # x only
    size: int = 0  # h0/c0: floats per sample


@dataclass(frozen=True)
class OutputSpec:
    """One value the torch forward returns (after flattening nested tuples)."""

    role: Literal["sequence", "vector", "h_n", "c_n"]
    torch_shape: tuple[int, ...]
    batch_axis: int
    time_axis: int | None = None  # sequence only
    features: int = 0  # sequence/vector
    size: int = 0  # h_n/c_n: floats per sample; (rows, B, H) or a cell's (B, H)
    group: int = -1  # h_n/c_n: index into Model.groups


@dataclass(frozen=True, eq=False)
class Model:
    """A whole model: the layers along the data path, in order, and the forward's interface."""

    layers: tuple[Layer, ...]
    groups: tuple[StateGroup, ...]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    input_size: int
    max_seq_len: int
    state_group: int  # the group NAME_set_state loads (the one taking h0, else 0)
    source_lines: tuple[str, ...] = field(default=())
    step_module: bool = False
    """The torch forward is ONE step of a cell, ``forward(x_t, *state) -> (*y, *state)``
    (docs/c-api.md, "Step modules"). The IR describes it iterated over a sequence: x is
    ``(B, T, I)`` (``torch_shape`` ``(B, 1, I)``), each y a sequence ``(B, T, F)``, the states
    ``(B, H)`` in and out; the forward's own x_t is ``(B, I)``."""

    @property
    def recurrent(self) -> tuple[RecurrentLayer, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, RecurrentLayer))

    @property
    def bidirectional(self) -> bool:
        return any(layer.num_directions == 2 for layer in self.recurrent)

    @property
    def selects(self) -> bool:
        return any(isinstance(layer, SelectStep) for layer in self.layers)

    @property
    def step_output_size(self) -> int:
        """Features of the data path's final value at one step."""
        size = self.input_size
        for layer in self.layers:
            if isinstance(layer, RecurrentLayer):
                size = layer.output_size
            elif isinstance(layer, Dense):
                size = layer.out_features
        return size
