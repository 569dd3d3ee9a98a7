"""The intermediate representation: what the model computes, with torch's conventions settled.

The frontend turns a torch.export graph into a :class:`Model`; passes (quantization) turn a
Model into a Model; the renderer turns a Model into C text. Every class here is a frozen
dataclass with typed fields, one per layer kind.

Conventions settled here, once:
- A torch recurrent module with ``num_layers`` layers becomes one IR layer per torch layer;
  each holds one :class:`Direction` (or two when bidirectional: forward first, then reverse).
- Gates are split and named as :data:`tinyrnn.cells.CELLS` says: LSTM ``i, f, g, o``; GRU
  ``r, z, n``; RNN ``h``. Each gate holds its accumulators: one exact sum
  ``W_x x + W_h h + b`` with the folded bias ``b_ih + b_hh``, or, for a split gate (GRU ``n``,
  where torch applies the reset gate to ``W_hn h + b_hn``), two: ``n = W_in x + b_in`` and
  ``nh = W_hn h + b_hn``. Later stages never split a gate by its name.
- Every array remembers the torch tensor and slice it came from (:class:`Tensor.source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .cells import CellSpec, cell_spec

CellKind = Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]
ActivationKind = Literal["relu", "tanh", "sigmoid", "softmax", "log_softmax", "relu6",
                         "hardtanh", "leaky_relu", "hardsigmoid", "hardswish", "abs", "square",
                         "sqrt"]


@dataclass(frozen=True, eq=False)
class Tensor:
    """A constant array and where it came from (e.g. ``lstm.weight_ih_l0[6:12]``)."""

    data: np.ndarray
    source: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(frozen=True, eq=False)
class Accumulator:
    """One exact sum of a gate: ``bias + w_x @ x + w_h @ h`` (a split gate's sums read one of
    x and h each)."""

    name: str  # the gate's name; a split gate's h sum is named gate + "h" (GRU "nh")
    w_x: Tensor | None  # (H, input_size)
    w_h: Tensor | None  # (H, state_size)
    bias: Tensor | None  # (H,): b_ih + b_hh folded; a split gate: b_in (x sum), b_hn (h sum)


@dataclass(frozen=True, eq=False)
class Gate:
    """One gate of one direction and its accumulators (see the module doc)."""

    name: str
    accumulators: tuple[Accumulator, ...]

    @property
    def w_x(self) -> Tensor:
        return next(a.w_x for a in self.accumulators if a.w_x is not None)

    @property
    def w_h(self) -> Tensor:
        return next(a.w_h for a in self.accumulators if a.w_h is not None)

    @property
    def tensors(self) -> list[Tensor]:
        """Its arrays in a fixed order: the weights, then the biases."""
        weights = [t for a in self.accumulators for t in (a.w_x, a.w_h) if t is not None]
        return weights + [a.bias for a in self.accumulators if a.bias is not None]


@dataclass(frozen=True, eq=False)
class Direction:
    """The weights of one direction of one recurrent layer."""

    reverse: bool
    gates: tuple[Gate, ...]
    w_proj: Tensor | None = None  # LSTM proj_size > 0: (P, H)

    @property
    def accumulators(self) -> tuple[Accumulator, ...]:
        """Every accumulator in gate order (LSTM i f g o, GRU r z n nh, RNN h)."""
        return tuple(a for g in self.gates for a in g.accumulators)

    def accumulator(self, name: str) -> Accumulator:
        return next(a for a in self.accumulators if a.name == name)


def _rows(tensor: Tensor, rows: slice, title: str) -> Tensor:
    return Tensor(np.ascontiguousarray(tensor.data[rows]),
                  f"{tensor.source}[{rows.start}:{rows.stop}] {title}".rstrip())


def split_gates(kind: str, reverse: bool, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None, w_proj: Tensor | None = None) -> Direction:
    """One direction from torch's packed tensors (``weight_ih_lK`` etc., whole, with their
    names as sources): the gate rows cut in torch's order and named, biases folded except in a
    split gate."""
    spec = cell_spec(kind)
    hidden = w_ih.shape[0] // spec.G
    gates = []
    for k, gate in enumerate(spec.gates):
        rows = slice(k * hidden, (k + 1) * hidden)
        w_x, w_h = _rows(w_ih, rows, gate.title), _rows(w_hh, rows, gate.title)
        bx = bh = bias = None
        if b_ih is not None and b_hh is not None:
            if gate.split:
                bx, bh = _rows(b_ih, rows, gate.title), _rows(b_hh, rows, gate.title)
            else:
                bias = Tensor(b_ih.data[rows] + b_hh.data[rows],
                              f"{b_ih.source}[{rows.start}:{rows.stop}] + "
                              f"{b_hh.source}[{rows.start}:{rows.stop}] {gate.title}".rstrip())
        if gate.split:
            name_x, name_h = gate.accumulators
            accs = (Accumulator(name_x, w_x, None, bx), Accumulator(name_h, None, w_h, bh))
        else:
            accs = (Accumulator(gate.name, w_x, w_h, bias),)
        gates.append(Gate(gate.name, accs))
    return Direction(reverse=reverse, gates=tuple(gates), w_proj=w_proj)


@dataclass(frozen=True, eq=False)
class RecurrentLayer:
    """Fields shared by the recurrent layer kinds; one torch layer (index ``layer``)."""

    module: str  # torch module path, e.g. "encoder.lstm"
    layer: int  # index inside the torch module
    input_size: int
    hidden_size: int
    directions: tuple[Direction, ...]

    @property
    def spec(self) -> CellSpec:
        """The cell's row of :data:`tinyrnn.cells.CELLS`."""
        return cell_spec(self.kind)  # type: ignore[attr-defined]

    @property
    def projected(self) -> bool:
        """Whether h is a projection of the cell's output (LSTM proj_size > 0)."""
        return self.state_size != self.hidden_size

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
    diagonal: bool = False
    """Only the diagonal of ``weight`` may be non-zero (a BatchNorm or ``x * c`` with no layer
    to fold into): ``y[j] = weight[j, j] x[j] + bias[j]``, F multiplies instead of F x F."""

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


class _ConvGeometry:
    """The shape arithmetic a Conv1d over time and a Conv1d over a frame's positions share
    (both have ``weight``, ``stride``, ``dilation``, ``groups``, ``pad_left``, ``pad_right``)."""

    weight: Tensor
    stride: int
    dilation: int
    groups: int
    pad_left: int
    pad_right: int

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel(self) -> int:
        return self.weight.shape[2]

    @property
    def length_rule(self) -> tuple[int, int]:
        """``(add, stride)``: ``steps`` input steps give ``(steps + add) // stride + 1`` output
        steps (torch's formula), none when ``steps + add < 0``."""
        span = self.dilation * (self.kernel - 1) + 1
        return self.pad_left + self.pad_right - span, self.stride

    @property
    def changes_length(self) -> bool:
        """Whether the output length differs from the input's (stride > 1, or padding other
        than ``span - 1`` in total)."""
        return self.length_rule != (0, 1)

    def out_steps(self, steps: int) -> int:
        """The output length for ``steps`` input steps (torch's formula; 0 for none)."""
        add, stride = self.length_rule
        return (steps + add) // stride + 1 if steps + add >= 0 else 0


@dataclass(frozen=True, eq=False)
class Conv1d(_ConvGeometry):
    """``y[o, t] = bias[o] + sum_{c, k} weight[o, c, k] * xpad[g(o) * C/groups + c,
    t * stride + k * dilation]`` over a whole sequence, torch's cross-correlation; ``xpad`` is x
    with ``pad_left`` and ``pad_right`` zero steps around it (``padding='same'`` settled into
    the two numbers here). The data path stays (T, channels) per sample: the (B, C, T) view the
    torch forward gives the conv is a layout, not a layer."""

    name: str  # torch module path, e.g. "encoder.0"
    weight: Tensor  # (out_channels, in_channels // groups, kernel)
    bias: Tensor | None  # (out_channels,)
    stride: int
    dilation: int
    groups: int
    pad_left: int
    pad_right: int



@dataclass(frozen=True, eq=False)
class Embedding:
    """``nn.Embedding`` reading the model input: x has ONE feature per step, a token id (an
    integer in ``[0, num_embeddings)``), and ``y = weight[id]``, the id's row. Only the first
    layer reads token ids (docs/c-api.md, "Token ids")."""

    name: str  # torch module path, e.g. "emb"
    weight: Tensor  # (num_embeddings, embedding_dim)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def features(self) -> int:
        """embedding_dim: the floats per step of the output."""
        return self.weight.shape[1]


@dataclass(frozen=True)
class Activation:
    """An element-wise (relu, tanh, sigmoid, relu6, hardtanh, leaky_relu, hardsigmoid,
    hardswish, abs, square, sqrt) or last-axis (softmax, log_softmax) function.

    relu6 and hardtanh clamp to ``[low, high]`` (relu6: ``[0, 6]``); leaky_relu is ``x`` for
    ``x >= 0``, else ``slope * x``; hardsigmoid is ``clamp(x / 6 + 1/2, 0, 1)`` and hardswish
    ``x * hardsigmoid(x)``, as torch defines them."""

    kind: ActivationKind
    features: int
    low: float = 0.0
    high: float = 0.0
    slope: float = 0.0
    reads: tuple[int, ...] = ()  # an earlier value than the previous one, see reads()


@dataclass(frozen=True)
class SelectStep:
    """Take one time step of the sequence (``index`` may be negative: -1 is the last)."""

    index: int
    features: int


@dataclass(frozen=True)
class PoolTime:
    """The mean, sum or maximum over the whole time axis, kept as a sequence of ONE step (as
    ``AdaptiveAvgPool1d(1)`` or ``mean(dim, keepdim=True)`` give it); the frontend follows it
    with ``SelectStep(0)`` to make the vector ``mean(dim)`` gives."""

    kind: Literal["mean", "sum", "max"]
    features: int


@dataclass(frozen=True)
class PoolWindow:
    """``MaxPool1d`` / ``AvgPool1d`` over the time axis of a sequence (T, features): output step
    ``t`` reduces input steps ``t * stride - pad ... t * stride - pad + kernel - 1`` (those inside
    the sequence; torch's formula for the length, no ``ceil_mode``, dilation 1). ``avg`` divides
    the sum by ``kernel`` (``count_include_pad``) or by the steps inside the sequence."""

    kind: Literal["max", "avg"]
    features: int
    kernel: int
    stride: int
    pad: int  # steps of padding on each side (torch: at most kernel // 2)
    count_include_pad: bool = True
    name: str = ""  # torch module path, when the pooling is a module

    @property
    def length_rule(self) -> tuple[int, int]:
        """``(add, stride)`` as :attr:`Conv1d.length_rule`."""
        return 2 * self.pad - self.kernel, self.stride

    @property
    def changes_length(self) -> bool:
        return self.length_rule != (0, 1)

    def out_steps(self, steps: int) -> int:
        add, stride = self.length_rule
        return (steps + add) // stride + 1 if steps + add >= 0 else 0


@dataclass(frozen=True)
class PadTime:
    """Padding of the time axis of a whole sequence (T, features) -> (T + left + right,
    features): ``constant`` (with ``value``), ``reflect`` (the edge step not repeated; torch
    needs ``left, right < T``) or ``replicate``. A zero pad that a Conv1d reads is folded into
    the conv's own padding instead (no layer)."""

    mode: Literal["constant", "reflect", "replicate"]
    value: float
    left: int
    right: int
    features: int
    name: str = ""

    @property
    def length_rules(self) -> tuple[tuple[int, int], ...]:
        """The ``(add, stride)`` rules of the output length. Reflect takes two: the first,
        ``T - p`` with ``p = max(left, right)``, makes the C refuse (``ERR_SEQ_LEN``) a
        sequence of ``T <= p`` steps, which torch refuses too; the second gives
        ``T + left + right``."""
        if self.mode == "reflect":
            p = max(self.left, self.right)
            return (-p - 1, 1), (self.left + self.right + p - 1, 1)
        return ((self.left + self.right - 1, 1),)

    def out_steps(self, steps: int) -> int:
        if self.mode == "reflect" and steps <= max(self.left, self.right):
            return 0
        return steps + self.left + self.right if steps > 0 else 0


def length_rules(layer: Layer) -> tuple[tuple[int, int], ...]:
    """The ``(add, stride)`` rules (``T' = (T + add) // stride + 1``, none when ``T + add < 0``)
    by which ``layer`` changes the sequence's length, applied in order; () when it keeps it."""
    if isinstance(layer, PadTime):
        return layer.length_rules
    if isinstance(layer, (Conv1d, PoolWindow)) and layer.changes_length:
        return (layer.length_rule,)
    return ()


@dataclass(frozen=True)
class Binary:
    """``y = a + b`` or ``a * b`` element-wise over two data-path values of one shape (a
    residual). ``reads`` are the two values' indices (see :func:`reads`)."""

    kind: Literal["add", "mul"]
    features: int
    reads: tuple[int, int]


@dataclass(frozen=True)
class Concat:
    """``torch.cat`` of data-path values along the channel (feature) axis: the
    values ``reads`` (indices, see :func:`reads`) of ``sizes`` features each, in order."""

    reads: tuple[int, ...]
    sizes: tuple[int, ...]
    length: int = 1  # a frame's positions: each part is (length, size) position-major

    @property
    def features(self) -> int:
        return sum(self.sizes) * self.length


@dataclass(frozen=True)
class ChannelSlice:
    """Channels ``start:stop`` of the previous value (``x[:, a:b]`` of a (B, C, T) value or
    ``x[..., a:b]`` of a (B, T, C) one)."""

    start: int
    stop: int
    in_features: int  # channels
    reads: tuple[int] = (0,)  # the value sliced (see :func:`reads`)
    length: int = 1  # a frame's positions: the value is (length, in_features) position-major

    @property
    def features(self) -> int:
        return (self.stop - self.start) * self.length


@dataclass(frozen=True, eq=False)
class FrameConv1d(_ConvGeometry):
    """A Conv1d over the samples of ONE step's frame (a step module's ``x_t`` viewed as
    ``(B, C, L)``), not over time: ``y[o, p] = bias[o] + sum_{c, k} weight[o, c, k] *
    xpad[c, p * stride + k * dilation]`` with ``pad_left``/``pad_right`` zeros. A frame
    value is stored per step as (L, C), position-major (as a sequence is (T, C)), so it is a
    :class:`Conv1d` over a sequence of L steps."""

    name: str
    weight: Tensor  # (out_channels, in_channels // groups, kernel)
    bias: Tensor | None
    stride: int
    dilation: int
    groups: int
    pad_left: int
    pad_right: int
    length: int  # L, the positions of the input frame

    @property
    def out_length(self) -> int:
        return self.out_steps(self.length)

    @property
    def features(self) -> int:
        """Floats per step of the output frame (L_out, O)."""
        return self.out_length * self.out_channels


@dataclass(frozen=True)
class FramePad:
    """Padding of the positions of one step's frame (C, L): ``constant`` (with ``value``),
    ``reflect`` or ``replicate``, ``left`` and ``right`` positions."""

    mode: Literal["constant", "reflect", "replicate"]
    value: float
    left: int
    right: int
    channels: int
    length: int
    reads: tuple[int, ...] = ()  # an earlier value than the previous one, see reads()

    @property
    def features(self) -> int:
        return (self.length + self.left + self.right) * self.channels


@dataclass(frozen=True)
class Carry:
    """A step module's carried value (not a recurrent state), e.g. Silero VAD's 64 samples of
    context: a forward argument after ``x_t`` that the forward returns updated. The layer's
    output is the value at the start of the step (zeros after NAME_reset); at the end of each
    step the value :attr:`Model.carries` names replaces it."""

    features: int


@dataclass(frozen=True)
class Hypot:
    """``y = sqrt(a**2 + b**2)`` element-wise over two values (``reads``), e.g. an STFT's
    magnitude. The frontend never makes it: the quantizer writes ``sqrt(a**2 + b**2)`` of two
    channel slices of one value so (:func:`tinyrnn.passes.quantize.fuse_magnitudes`), so that
    the sum of squares stays exact in 32 bits instead of being rounded to int16."""

    features: int
    reads: tuple[int, int]


Layer = (LSTMLayer | GRULayer | RNNLayer | Dense | Conv1d | Activation | SelectStep | PoolTime
         | Binary | Concat | ChannelSlice | FrameConv1d | FramePad | Carry | Hypot | PoolWindow
         | PadTime | Embedding)


def reads(layers: tuple[Layer, ...] | list[Layer], index: int) -> tuple[int, ...]:
    """The values layer ``index`` reads. Values are numbered along the data path: value 0 is
    the model input x, value k + 1 the output of layer k. A layer reads the previous value
    (``(index,)``) unless it names others (:class:`Binary`, :class:`Concat`,
    :class:`ChannelSlice`, :class:`Hypot`, ...)."""
    return getattr(layers[index], "reads", ()) or (index,)


def value_width(layers: tuple[Layer, ...] | list[Layer], input_size: int, value: int) -> int:
    """Features per step of value ``value`` (numbered as :func:`reads` says)."""
    if value == 0:
        return input_size
    layer = layers[value - 1]
    if isinstance(layer, RecurrentLayer):
        return layer.output_size
    if isinstance(layer, Dense):
        return layer.out_features
    if isinstance(layer, Conv1d):
        return layer.out_channels
    return layer.features


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

    role: Literal["x", "h0", "c0", "carry"]
    torch_shape: tuple[int, ...]  # a step module's x: (B, 1, I), the iterated form's shape
    batch_axis: int  # h0/c0: 1 for torch's (rows, B, H), 0 for a cell's (B, H)
    time_axis: int | None = None  # x only
    features: int = 0  # x only
    size: int = 0  # h0/c0: floats per sample
    vocab: int = 0  # x only: x holds token ids in 0..vocab-1 (an Embedding reads it), else 0


@dataclass(frozen=True)
class OutputSpec:
    """One value the torch forward returns (after flattening nested tuples)."""

    role: Literal["sequence", "vector", "h_n", "c_n", "carry_n"]
    torch_shape: tuple[int, ...]
    batch_axis: int
    time_axis: int | None = None  # sequence only
    features: int = 0  # sequence/vector
    size: int = 0  # h_n/c_n: floats per sample; (rows, B, H) or a cell's (B, H)
    group: int = -1  # h_n/c_n: index into Model.groups; carry_n: index into Model.carries


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
    carries: tuple[tuple[int, int], ...] = ()
    """A step module's carried values: (the :class:`Carry` layer's index, the value that
    replaces it at the end of each step), in the order of the forward's arguments."""
    step_module: bool = False
    """The torch forward is ONE step of a cell, ``forward(x_t, *state) -> (*y, *state)``
    (docs/c-api.md, "Step modules"). The IR describes it iterated over a sequence: x is
    ``(B, T, I)`` (``torch_shape`` ``(B, 1, I)``), each y a sequence ``(B, T, F)``, the states
    ``(B, H)`` in and out; the forward's own x_t is ``(B, I)``."""

    @property
    def vocab(self) -> int:
        """The number of token ids when x holds token ids (the first layer is an
        :class:`Embedding`), else 0."""
        first = self.layers[0] if self.layers else None
        return first.num_embeddings if isinstance(first, Embedding) else 0

    @property
    def recurrent(self) -> tuple[RecurrentLayer, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, RecurrentLayer))

    @property
    def bidirectional(self) -> bool:
        return any(layer.num_directions == 2 for layer in self.recurrent)

    @property
    def convolves(self) -> bool:
        """Whether a layer is a Conv1d over time: NAME_run runs layer-major over whole
        sequences (NAME_step streams only when every conv is causal, passes/stream.py)."""
        return any(isinstance(layer, Conv1d) for layer in self.layers)

    @property
    def windows(self) -> bool:
        """Whether a layer reads a window of steps or pads the time axis (a PoolWindow, a
        PadTime): no streaming NAME_step."""
        return any(isinstance(layer, (PoolWindow, PadTime)) for layer in self.layers)

    def out_steps(self, steps: int) -> int:
        """The length of the data path's sequence after its last layer for ``steps`` input
        steps: each length-changing layer applies torch's formula (0: no output)."""
        for layer in self.layers:
            if isinstance(layer, (Conv1d, PoolWindow, PadTime)) and steps > 0:
                steps = layer.out_steps(steps)
        return max(steps, 0)

    @property
    def length_rules(self) -> tuple[tuple[int, int], ...]:
        """The ``(add, stride)`` rules of every length-changing layer, in order (see
        :func:`length_rules`)."""
        return tuple(rule for layer in self.layers for rule in length_rules(layer))

    @property
    def pools(self) -> bool:
        """Whether a layer reduces the whole time axis (a PoolTime): no streaming NAME_step."""
        return any(isinstance(layer, PoolTime) for layer in self.layers)

    @property
    def selects(self) -> bool:
        return any(isinstance(layer, SelectStep) for layer in self.layers)

    @property
    def step_output_size(self) -> int:
        """Features of the data path's final value at one step."""
        return value_width(self.layers, self.input_size, len(self.layers))
