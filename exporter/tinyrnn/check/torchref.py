"""The float reference of ``verify`` and ``report``: the IR rebuilt with torch's own modules.

Each IR layer becomes the torch module that computes it: a recurrent layer an ``nn.LSTM``,
``nn.GRU`` or ``nn.RNN`` of one layer (both directions when bidirectional, ``proj_size`` for a
projected LSTM), a Dense layer an ``nn.Linear``, an activation its torch function, a
``SelectStep`` an index on the time axis. The modules are loaded with the model's weights as
the IR holds them, so nothing stored in the archive (graph code, guards) ever runs, and any
batch size and sequence length works.

The IR folds ``b_ih + b_hh`` into one bias per gate (GRU ``n`` keeps ``b_hn`` apart); the
rebuilt module gets the folded bias as ``bias_ih`` and zeros as ``bias_hh``, which moves the
float32 rounding of the gate sums by at most an ulp or so against the original module. The
test against ``ExportedProgram.module()`` over the whole case table bounds the difference.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import TinyRNNError
from ..io import assemble_outputs
from ..ir import (
    Activation,
    Binary,
    Carry,
    ChannelSlice,
    Concat,
    Conv1d,
    Dense,
    Direction,
    Embedding,
    FrameConv1d,
    FramePad,
    Gate,
    GRULayer,
    LSTMLayer,
    Model,
    PadTime,
    PoolTime,
    PoolWindow,
    RecurrentLayer,
    SelectStep,
    reads,
)
from .simulate import batch_from_arrays, carry_sequence, split_state


def _rows(parts: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def recurrent_module(layer: RecurrentLayer) -> nn.Module:
    """One batch-first torch module computing ``layer`` with its weights."""
    bias = any(a.bias is not None for d in layer.directions for a in d.accumulators)
    kw = dict(num_layers=1, bias=bias, batch_first=True,
              bidirectional=layer.num_directions == 2)
    if isinstance(layer, LSTMLayer):
        module: nn.Module = nn.LSTM(layer.input_size, layer.hidden_size,
                                    proj_size=layer.proj_size, **kw)
    elif isinstance(layer, GRULayer):
        module = nn.GRU(layer.input_size, layer.hidden_size, **kw)
    else:
        module = nn.RNN(layer.input_size, layer.hidden_size,
                        nonlinearity=layer.kind.removeprefix("rnn_"), **kw)
    with torch.no_grad():
        for d, direction in enumerate(layer.directions):
            suffix = "_l0_reverse" if d == 1 else "_l0"
            for name, value in _direction_weights(direction, bias).items():
                getattr(module, name + suffix).copy_(value)
    return module.eval()


def _direction_weights(direction: Direction, bias: bool) -> dict[str, torch.Tensor]:
    gates = direction.gates
    out = {
        "weight_ih": _rows([g.w_x.data for g in gates]),
        "weight_hh": _rows([g.w_h.data for g in gates]),
    }
    if bias:  # a gate of one accumulator holds b_ih + b_hh; a split gate b_in and b_hn
        def part(gate: Gate, side: str) -> np.ndarray:
            acc = next((a for a in gate.accumulators if getattr(a, side) is not None), None)
            if acc is None or acc.bias is None or (side == "w_h" and len(gate.accumulators) == 1):
                return np.zeros(gate.w_x.shape[0])
            return acc.bias.data

        out["bias_ih"] = _rows([part(g, "w_x") for g in gates])
        out["bias_hh"] = _rows([part(g, "w_h") for g in gates])
    if direction.w_proj is not None:
        out["weight_hr"] = torch.from_numpy(direction.w_proj.data.astype(np.float32))
    return out


def _conv1d(layer: Conv1d, value: torch.Tensor) -> torch.Tensor:
    """An ``nn.Conv1d`` on the (B, T, C) data path: (B, C, T) for the module and back."""
    conv = nn.Conv1d(layer.in_channels, layer.out_channels, layer.kernel, stride=layer.stride,
                     dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(layer.weight.data.astype(np.float32)))
        if layer.bias is not None:
            conv.bias.copy_(torch.from_numpy(layer.bias.data.astype(np.float32)))
    padded = nn.functional.pad(value.transpose(1, 2), (layer.pad_left, layer.pad_right))
    return conv(padded).transpose(1, 2)


def _window(layer: PoolWindow | PadTime, value: torch.Tensor) -> torch.Tensor:
    """``nn.MaxPool1d`` / ``nn.AvgPool1d`` / ``F.pad`` on the (B, T, C) data path."""
    x = value.transpose(1, 2)
    if isinstance(layer, PadTime):
        fill = {"value": layer.value} if layer.mode == "constant" else {}
        y = nn.functional.pad(x, (layer.left, layer.right), mode=layer.mode, **fill)
    elif layer.kind == "max":
        y = nn.MaxPool1d(layer.kernel, layer.stride, layer.pad)(x)
    else:
        y = nn.AvgPool1d(layer.kernel, layer.stride, layer.pad,
                         count_include_pad=layer.count_include_pad)(x)
    return y.transpose(1, 2)


def _head(layer: Dense | Conv1d | Activation | PoolTime | PoolWindow | PadTime | Embedding,
          value: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, Embedding):  # value: (B, T, 1) token ids as floats (exact)
        embedding = nn.Embedding.from_pretrained(
            torch.from_numpy(layer.weight.data.astype(np.float32)))
        return embedding(value[..., 0].long())
    if isinstance(layer, Conv1d):
        return _conv1d(layer, value)
    if isinstance(layer, (PoolWindow, PadTime)):
        return _window(layer, value)
    if isinstance(layer, PoolTime):
        if layer.kind == "max":
            return torch.amax(value, dim=1, keepdim=True)
        return (torch.mean if layer.kind == "mean" else torch.sum)(value, dim=1, keepdim=True)
    if isinstance(layer, Dense):
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(layer.weight.data.astype(np.float32)))
            if layer.bias is not None:
                linear.bias.copy_(torch.from_numpy(layer.bias.data.astype(np.float32)))
        return linear(value)
    F = nn.functional
    functions = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                 "softmax": lambda v: torch.softmax(v, dim=-1),
                 "log_softmax": lambda v: torch.log_softmax(v, dim=-1),
                 "relu6": F.relu6, "hardtanh": lambda v: F.hardtanh(v, layer.low, layer.high),
                 "leaky_relu": lambda v: F.leaky_relu(v, layer.slope),
                 "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish, "abs": torch.abs,
                 "square": torch.square, "sqrt": torch.sqrt}
    return functions[layer.kind](value)


def _combine(layer: Binary | Concat | ChannelSlice | FrameConv1d | FramePad,
             parts: list[torch.Tensor]) -> torch.Tensor:
    if isinstance(layer, Binary):
        return torch.add(*parts) if layer.kind == "add" else torch.mul(*parts)
    lead = parts[0].shape[:-1]
    if isinstance(layer, Concat):
        return torch.cat([p.reshape(*lead, layer.length, -1) for p in parts],
                         dim=-1).reshape(*lead, -1)
    if isinstance(layer, ChannelSlice):
        return parts[0].reshape(*lead, layer.length, -1)[..., layer.start:layer.stop].reshape(
            *lead, -1)
    # a frame (L, C) per step -> torch's (N, C, L)
    frames = parts[0].reshape(-1, layer.length, parts[0].shape[-1] // layer.length)
    frames = frames.transpose(1, 2)
    if isinstance(layer, FramePad):
        fill = {"value": layer.value} if layer.mode == "constant" else {}
        out = nn.functional.pad(frames, (layer.left, layer.right), mode=layer.mode, **fill)
    else:
        conv = nn.Conv1d(layer.in_channels, layer.out_channels, layer.kernel,
                         stride=layer.stride, dilation=layer.dilation, groups=layer.groups,
                         bias=layer.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(layer.weight.data.astype(np.float32)))
            if layer.bias is not None:
                conv.bias.copy_(torch.from_numpy(layer.bias.data.astype(np.float32)))
        out = conv(nn.functional.pad(frames, (layer.pad_left, layer.pad_right)))
    return out.transpose(1, 2).reshape(*lead, -1)


def run(model: Model, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs on ``arrays`` (the forward's arguments in torch layout, any batch and
    length), computed by torch modules built from the IR; returned in torch layout."""
    batch = batch_from_arrays(model, arrays)
    steps = batch.x.shape[1]
    initial: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
    if batch.h0 is not None:
        hs = split_state(model, batch.h0, 0)
        cs = split_state(model, batch.c0, 1) if batch.c0 is not None else {}
        initial = {key: (h,) + ((cs[key],) if key in cs else ()) for key, h in hs.items()}
    finals: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
    value = torch.from_numpy(batch.x)
    values = [value]  # by value index (ir.reads)
    carried: dict[int, torch.Tensor] = {}  # a Carry layer's value after the last step
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            if isinstance(layer, Carry):
                def apply(j: int, parts: list[torch.Tensor]) -> torch.Tensor:
                    other = model.layers[j]
                    if isinstance(other, (Binary, Concat, ChannelSlice, FrameConv1d,
                                          FramePad)):
                        return _combine(other, parts)
                    return _head(other, parts[0])  # type: ignore[arg-type]
                value, carried[index] = carry_sequence(
                    model, index, values[0], apply, lambda shape: torch.zeros(shape),
                    lambda parts: torch.cat(parts, dim=1))
            elif isinstance(layer, (Binary, Concat, ChannelSlice, FrameConv1d,
                                    FramePad)):
                value = _combine(layer, [values[k] for k in reads(model.layers, index)])
            elif isinstance(layer, RecurrentLayer):
                value, finals_of = _run_recurrent(layer, index, value, initial)
                finals.update(finals_of)
            elif isinstance(layer, SelectStep):
                if not -steps <= layer.index < steps:
                    raise TinyRNNError(
                        f"the model takes time step {layer.index} but the input has {steps}")
                value = value[:, layer.index]
            else:
                value = _head(layer, values[reads(model.layers, index)[0]])
            values.append(value)
    outputs = []
    for spec in model.outputs:
        if spec.role in ("sequence", "vector"):
            outputs.append(value.numpy())
        elif spec.role == "carry_n":
            outputs.append(carried[model.carries[spec.group][0]].numpy())
        else:
            group = model.groups[spec.group]
            k = 0 if spec.role == "h_n" else 1
            outputs.append(np.concatenate(
                [finals[(i, d)][k].numpy() for i in group.layers
                 for d in range(model.layers[i].num_directions)], axis=1))
    per_sample = [[np.reshape(o[b], -1) for o in outputs] for b in range(batch.size)]
    interface = {"outputs": [
        {k: (list(v) if k == "torch_shape" else v) for k, v in vars(spec).items()}
        for spec in model.outputs]}
    return assemble_outputs(interface, per_sample, steps)


def _run_recurrent(layer: RecurrentLayer, index: int, value: torch.Tensor,
                   initial: dict[tuple[int, int], tuple[np.ndarray, ...]]
                   ) -> tuple[torch.Tensor, dict[tuple[int, int], tuple[torch.Tensor, ...]]]:
    module = recurrent_module(layer)
    dirs = range(layer.num_directions)
    state = None
    if (index, 0) in initial:
        parts = [torch.from_numpy(np.stack([initial[(index, d)][k] for d in dirs])
                                  .astype(np.float32))
                 for k in range(len(initial[(index, 0)]))]
        state = tuple(parts) if isinstance(layer, LSTMLayer) else parts[0]
    with warnings.catch_warnings():
        # torch notes that oneDNN has no projected LSTM and uses its own kernel: not news
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
        out, final = module(value, state)
    final = final if isinstance(final, tuple) else (final,)
    return out, {(index, d): tuple(f[d] for f in final) for d in dirs}
