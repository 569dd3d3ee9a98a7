"""Run an IR model in numpy: the float64 simulation of what torch computes, and the walk over
layers that the integer reference (:mod:`tinyrnn.check.reference`) shares with it.

Both simulations walk the IR the same way (:func:`walk`): layer by layer over whole sequences,
each direction of a recurrent layer over its time order, the head (Dense, activations) on every
step or on the selected step. The generated C goes time-major for unidirectional models; the
values are the same, because a layer's step ``t`` depends only on its input at ``t`` and its own
state. Arrays are batched: a sequence is ``(B, T, F)``, a vector ``(B, F)``.

The float simulation serves calibration (the observed ranges of every quantity that gets a
calibrated format) and the per-layer report of ``tinyrnn verify``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import TinyRNNError
from ..io import split_inputs
from ..ir import (
    Activation,
    Binary,
    Carry,
    ChannelSlice,
    Concat,
    Conv1d,
    Dense,
    Embedding,
    FrameConv1d,
    FramePad,
    Hypot,
    LSTMLayer,
    Model,
    PadTime,
    PoolTime,
    PoolWindow,
    RecurrentLayer,
    RNNLayer,
    SelectStep,
    reads,
)
from ..numerics import helpers as fp

State = tuple[np.ndarray, ...]  # (h,) or (h, c), each (B, size)


@dataclass(frozen=True)
class Batch:
    """The forward's arguments as per-sample C buffers stacked over the batch.

    ``x``: ``(B, T, I)``; ``h0``/``c0``: ``(B, rows * size)`` in torch's row order, or None.
    """

    x: np.ndarray
    h0: np.ndarray | None = None
    c0: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.x.shape[0]


def model_interface(model: Model) -> dict:
    """The part of the manifest's ``interface`` that :func:`tinyrnn.io.split_inputs` reads."""
    return dict(forward_inputs=[
        {k: (list(v) if k == "torch_shape" else v) for k, v in vars(spec).items()}
        for spec in model.inputs
    ])


def batch_from_arrays(model: Model, arrays: Sequence[np.ndarray], what: str = "input") -> Batch:
    """Check the forward's arguments (torch layout) against the model and stack them."""
    try:
        samples = split_inputs(model_interface(model), list(arrays))
    except TinyRNNError as exc:
        raise TinyRNNError(f"{what}: {exc}") from None
    lengths = {s["x"].shape[0] for s in samples}
    assert len(lengths) == 1
    x = np.stack([s["x"] for s in samples]).astype(np.float32)
    h0 = np.stack([s["h0"] for s in samples]) if "h0" in samples[0] else None
    c0 = np.stack([s["c0"] for s in samples]) if "c0" in samples[0] else None
    return Batch(x, h0, c0)


def state_rows(model: Model) -> list[tuple[int, int]]:
    """``(layer index, direction)`` of each row of the state group's h0/c0, in torch order."""
    group = model.groups[model.state_group]
    return [(index, d) for index in group.layers
            for d in range(model.layers[index].num_directions)]


class Numerics(Protocol):
    """What one simulation computes per layer (float64 or integers)."""

    def cell(self, index: int, direction: int, x_t: np.ndarray, state: State
             ) -> tuple[np.ndarray, State]: ...

    def head(self, index: int, value: np.ndarray) -> np.ndarray: ...

    def zero_state(self, index: int, batch: int) -> State: ...

    def initial_state(self, batch: Batch) -> dict[tuple[int, int], State]: ...

    def combine(self, index: int, parts: list[np.ndarray]) -> np.ndarray: ...


MULTI = (Binary, Concat, ChannelSlice, FrameConv1d, FramePad, Hypot)
"""The layers :meth:`Numerics.combine` runs: over several values, or over a step's frame."""


@dataclass
class Trace:
    """What one run produced: the model's outputs, every layer's output, the final states."""

    outputs: list[np.ndarray]  # per OutputSpec: (B, T, F), (B, F) or (B, size)
    layers: list[np.ndarray]  # per IR layer: its output, (B, T, F) or (B, F)
    finals: dict[tuple[int, int], State]

    def per_sample(self) -> list[list[np.ndarray]]:
        """Flat per-sample output buffers, as the C writes them (for io.assemble_outputs)."""
        return [[np.reshape(o[b], -1) for o in self.outputs]
                for b in range(self.outputs[0].shape[0])]


def walk(model: Model, numerics: Numerics, batch: Batch, x: np.ndarray,
         all_steps: bool = False) -> Trace:
    """Run ``model`` with ``numerics`` on ``x`` (``(B, T, I)``, already in the numerics' units).

    ``all_steps``: apply the layers after a SelectStep to every step instead (what
    ``NAME_step`` returns at each step).
    """
    value = x
    size, steps = x.shape[0], x.shape[1]
    init = numerics.initial_state(batch)
    layer_outputs: list[np.ndarray] = []
    finals: dict[tuple[int, int], State] = {}
    carried: dict[int, np.ndarray] = {}  # a Carry layer's value after the last step
    for index, layer in enumerate(model.layers):
        read = [([x] + layer_outputs)[k] for k in reads(model.layers, index)]
        if isinstance(layer, Carry):
            def apply(j: int, parts: list[np.ndarray]) -> np.ndarray:
                if isinstance(model.layers[j], MULTI):
                    return numerics.combine(j, parts)
                return numerics.head(j, parts[0])
            value, carried[index] = carry_sequence(
                model, index, x, apply, lambda shape: np.zeros(shape, x.dtype),
                lambda parts: np.concatenate(parts, axis=1))
        elif isinstance(layer, MULTI):
            value = numerics.combine(index, read)
        elif isinstance(layer, RecurrentLayer):
            outs = []
            for d, direction in enumerate(layer.directions):
                state = init.get((index, d)) or numerics.zero_state(index, size)
                ys: list[np.ndarray] = [np.empty(0)] * steps
                order = range(steps - 1, -1, -1) if direction.reverse else range(steps)
                for t in order:
                    ys[t], state = numerics.cell(index, d, value[:, t], state)
                outs.append(np.stack(ys, axis=1))
                finals[(index, d)] = state
            value = np.concatenate(outs, axis=2)
        elif isinstance(layer, SelectStep):
            if not all_steps:
                if not -steps <= layer.index < steps:
                    raise TinyRNNError(
                        f"the model takes time step {layer.index} but the input has {steps}"
                    )
                value = value[:, layer.index]
        else:
            value = numerics.head(index, read[0])
            if isinstance(layer, (Conv1d, PoolWindow, PadTime)):  # may change the length
                steps = value.shape[1]
        layer_outputs.append(value)
    outputs = []
    for spec in model.outputs:
        if spec.role in ("sequence", "vector"):
            outputs.append(value)
        elif spec.role == "carry_n":
            outputs.append(carried[model.carries[spec.group][0]])
        else:
            group = model.groups[spec.group]
            k = 0 if spec.role == "h_n" else 1
            outputs.append(np.concatenate(
                [finals[(i, d)][k] for i in group.layers
                 for d in range(model.layers[i].num_directions)], axis=1))
    return Trace(outputs, layer_outputs, finals)


def carry_sequence(model: Model, index: int, x: Any, apply: Callable[[int, list], Any],
                   zeros: Callable[[tuple[int, ...]], Any], cat: Callable[[list], Any]
                   ) -> tuple[Any, Any]:
    """The value of the Carry layer ``index`` at the start of every step, ``(B, T, F)`` from
    zeros, and after the last step ``(B, F)``: the layers between it and its new value (per-step
    functions, which the frontend checked) run step by step; ``x`` is ``(B, T, I)``, numpy or
    torch (``apply(j, parts)`` runs layer j, ``zeros`` and ``cat`` on axis 1 build arrays)."""
    new = dict(model.carries)[index]
    carry = zeros((x.shape[0], 1, model.layers[index].features))  # type: ignore[union-attr]
    starts = []
    for t in range(x.shape[1]):
        local = {0: x[:, t:t + 1], index + 1: carry}
        for j in range(index + 1, new):
            local[j + 1] = apply(j, [local[k] for k in reads(model.layers, j)])
        starts.append(carry)
        carry = local[new]
    return cat(starts), carry[:, 0]


def combine(layer: Binary | Concat | ChannelSlice | FrameConv1d | FramePad | Hypot,
            parts: list[np.ndarray], fill: float | int | None = None) -> np.ndarray:
    """A layer over several values (or a channel slice, a frame layer), on the last
    (feature) axis; ``fill``: a constant pad's value (default: the layer's own)."""
    if isinstance(layer, Binary):
        return parts[0] + parts[1] if layer.kind == "add" else parts[0] * parts[1]
    if isinstance(layer, Hypot):
        return np.sqrt(parts[0] * parts[0] + parts[1] * parts[1])
    lead = parts[0].shape[:-1]
    if isinstance(layer, Concat):
        return np.concatenate([p.reshape(*lead, layer.length, -1) for p in parts],
                              axis=-1).reshape(*lead, -1)
    if isinstance(layer, ChannelSlice):
        return parts[0].reshape(*lead, layer.length, -1)[..., layer.start:layer.stop].reshape(
            *lead, -1)
    frames = parts[0].reshape(-1, layer.length, parts[0].shape[-1] // layer.length)
    if isinstance(layer, FramePad):
        mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[layer.mode]
        value = layer.value if fill is None else fill
        extra = {"constant_values": value} if layer.mode == "constant" else {}
        out = np.pad(frames, ((0, 0), (layer.left, layer.right), (0, 0)), mode=mode, **extra)
        return out.reshape(*lead, -1)
    return conv1d_float(layer, frames).reshape(*lead, -1)  # a frame is a short sequence


def split_state(model: Model, flat: np.ndarray, k: int) -> dict[tuple[int, int], np.ndarray]:
    """Cut ``(B, rows * size)`` h0 (k=0) or c0 (k=1) into ``{(layer, direction): (B, size)}``."""
    out, offset = {}, 0
    for index, d in state_rows(model):
        layer = model.layers[index]
        width = layer.state_size if k == 0 else layer.hidden_size
        out[(index, d)] = flat[:, offset:offset + width]
        offset += width
    return out


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


class FloatNumerics:
    """float64 arithmetic on the IR's float weights: what torch computes.

    Records, per LSTM layer, the largest ``|c|`` (overall and per unit) and (with a
    projection) ``|o * tanh(c)|`` seen, for calibration.
    """

    def __init__(self, model: Model):
        self.model = model
        self.max_cell: dict[int, float] = {}
        self.unit_cell: dict[int, np.ndarray] = {}
        self.max_projected: dict[int, float] = {}

    def zero_state(self, index: int, batch: int) -> State:
        layer = self.model.layers[index]
        h = np.zeros((batch, layer.state_size))
        if isinstance(layer, LSTMLayer):
            return h, np.zeros((batch, layer.hidden_size))
        return (h,)

    def initial_state(self, batch: Batch) -> dict[tuple[int, int], State]:
        if batch.h0 is None:
            return {}
        hs = split_state(self.model, batch.h0.astype(np.float64), 0)
        if batch.c0 is None:
            return {key: (h,) for key, h in hs.items()}
        cs = split_state(self.model, batch.c0.astype(np.float64), 1)
        for (index, _), c in cs.items():
            self._record_cell(index, c)
        return {key: (h, cs[key]) for key, h in hs.items()}

    def _record_cell(self, index: int, c: np.ndarray) -> None:
        if not c.size:
            return
        units = np.abs(c).max(axis=0)
        self.max_cell[index] = max(self.max_cell.get(index, 0.0), float(units.max()))
        seen = self.unit_cell.get(index)
        self.unit_cell[index] = units if seen is None else np.maximum(seen, units)

    def cell(self, index: int, direction: int, x_t: np.ndarray, state: State
             ) -> tuple[np.ndarray, State]:
        layer = self.model.layers[index]
        d = layer.directions[direction]
        h = state[0]
        pre = {}
        for a in d.accumulators:  # x part, h part, then the bias
            v = 0.0
            if a.w_x is not None:
                v = x_t @ a.w_x.data.T
            if a.w_h is not None:
                v = v + h @ a.w_h.data.T
            pre[a.name] = v + a.bias.data if a.bias is not None else v
        if isinstance(layer, LSTMLayer):
            c = _sigmoid(pre["f"]) * state[1] + _sigmoid(pre["i"]) * np.tanh(pre["g"])
            h_new = _sigmoid(pre["o"]) * np.tanh(c)
            if d.w_proj is not None:
                peak = float(np.abs(h_new).max())
                self.max_projected[index] = max(self.max_projected.get(index, 0.0), peak)
                h_new = h_new @ d.w_proj.data.T
            self._record_cell(index, c)
            return h_new, (h_new, c)
        if isinstance(layer, RNNLayer):
            v = pre["h"]
            h_new = np.maximum(v, 0.0) if layer.nonlinearity == "relu" else np.tanh(v)
            return h_new, (h_new,)
        r, z = _sigmoid(pre["r"]), _sigmoid(pre["z"])  # GRU
        n = np.tanh(pre["n"] + r * pre["nh"])
        h_new = (1.0 - z) * n + z * h
        return h_new, (h_new,)

    def combine(self, index: int, parts: list[np.ndarray]) -> np.ndarray:
        return combine(self.model.layers[index], parts)  # type: ignore[arg-type]

    def head(self, index: int, value: np.ndarray) -> np.ndarray:
        layer = self.model.layers[index]
        if isinstance(layer, Dense):
            y = value @ layer.weight.data.T
            return y + layer.bias.data if layer.bias is not None else y
        if isinstance(layer, Conv1d):
            return conv1d_float(layer, value)
        if isinstance(layer, PoolTime):
            reduce = {"mean": np.mean, "sum": np.sum, "max": np.max}[layer.kind]
            return reduce(value, axis=1, keepdims=True)
        if isinstance(layer, PoolWindow):
            return pool_window_float(layer, value)
        if isinstance(layer, PadTime):
            return pad_time_float(layer, value)
        if isinstance(layer, Embedding):  # value: (B, T, 1) token ids
            return fp.embedding_rows(layer.weight.data, value[..., 0])
        assert isinstance(layer, Activation)
        if layer.kind == "relu":
            return np.maximum(value, 0.0)
        if layer.kind == "tanh":
            return np.tanh(value)
        if layer.kind == "sigmoid":
            return _sigmoid(value)
        if layer.kind in POINTWISE:
            return POINTWISE[layer.kind](layer, value)
        shifted = value - value.max(axis=-1, keepdims=True)
        log_sum = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return np.exp(shifted - log_sum) if layer.kind == "softmax" else shifted - log_sum


POINTWISE = {
    "relu6": lambda a, v: np.clip(v, a.low, a.high),
    "hardtanh": lambda a, v: np.clip(v, a.low, a.high),
    "leaky_relu": lambda a, v: np.where(v < 0, v * a.slope, v),
    "hardsigmoid": lambda a, v: np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "hardswish": lambda a, v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "abs": lambda a, v: np.abs(v),
    "square": lambda a, v: v * v,
    "sqrt": lambda a, v: np.sqrt(v),
}
"""The element-wise activations beyond relu/tanh/sigmoid, in float64 (as torch defines them)."""


def conv1d_taps(layer: Conv1d | FrameConv1d, x: np.ndarray) -> np.ndarray:
    """The taps each output step of ``layer`` reads from ``x`` (B, T, C): (B, T_out, kernel, C),
    zeros where a tap falls in the padding (torch's formula for T_out)."""
    batch, steps, _ = x.shape
    out_steps = layer.out_steps(steps)
    if out_steps < 1:
        span = layer.dilation * (layer.kernel - 1) + 1
        raise TinyRNNError(f"{layer.name}: a Conv1d of span {span} over {steps} steps "
                           f"(padding {layer.pad_left} + {layer.pad_right}) gives no output")
    padded = np.pad(x, ((0, 0), (layer.pad_left, layer.pad_right), (0, 0)))
    last = layer.stride * (out_steps - 1) + 1
    return np.stack([padded[:, k * layer.dilation:k * layer.dilation + last:layer.stride]
                     for k in range(layer.kernel)], axis=2)


def conv1d_float(layer: Conv1d | FrameConv1d, x: np.ndarray) -> np.ndarray:
    """torch's Conv1d (cross-correlation) on ``x`` (B, T, C) in float64 -> (B, T_out, O)."""
    taps = conv1d_taps(layer, x)
    cin, cout = layer.weight.shape[1], layer.out_channels // layer.groups
    y = np.zeros(taps.shape[:2] + (layer.out_channels,))
    for g in range(layer.groups):
        w = layer.weight.data[g * cout:(g + 1) * cout]
        for k in range(layer.kernel):
            y[:, :, g * cout:(g + 1) * cout] += taps[:, :, k, g * cin:(g + 1) * cin] @ w[:, :, k].T
    return y + layer.bias.data if layer.bias is not None else y


def check_window(layer: PoolWindow, steps: int) -> None:
    if layer.out_steps(steps) < 1:
        raise TinyRNNError(f"a {layer.kind} pooling of kernel {layer.kernel} over {steps} steps "
                           f"(padding {layer.pad}) gives no output")


def check_pad(layer: PadTime, steps: int) -> None:
    if layer.out_steps(steps) < 1:
        raise TinyRNNError(f"reflect padding by {max(layer.left, layer.right)} steps of a "
                           f"sequence of {steps}: it takes at least "
                           f"{max(layer.left, layer.right) + 1}")


def pool_window_float(layer: PoolWindow, x: np.ndarray) -> np.ndarray:
    """torch's MaxPool1d / AvgPool1d over the time axis of ``x`` (B, T, F) in float64."""
    check_window(layer, x.shape[1])
    windows = fp.pool_windows(x.shape[1], layer.kernel, layer.stride, layer.pad)
    if layer.kind == "max":
        return np.stack([x[:, lo:hi].max(axis=1) for lo, hi in windows], axis=1)
    return np.stack([x[:, lo:hi].sum(axis=1) / (layer.kernel if layer.count_include_pad
                                                 else hi - lo) for lo, hi in windows], axis=1)


def pad_time_float(layer: PadTime, x: np.ndarray) -> np.ndarray:
    """torch's F.pad of the time axis of ``x`` (B, T, F)."""
    check_pad(layer, x.shape[1])
    widths = ((0, 0), (layer.left, layer.right), (0, 0))
    if layer.mode == "constant":
        return np.pad(x, widths, constant_values=layer.value)
    return np.pad(x, widths, mode="reflect" if layer.mode == "reflect" else "edge")


def run_float(model: Model, batch: Batch, all_steps: bool = False
              ) -> tuple[Trace, FloatNumerics]:
    """The float64 simulation of ``model`` on ``batch``; returns the trace and the numerics
    (whose ``max_cell`` holds the largest ``|c|`` per LSTM layer)."""
    numerics = FloatNumerics(model)
    trace = walk(model, numerics, batch, batch.x.astype(np.float64), all_steps)
    return trace, numerics
