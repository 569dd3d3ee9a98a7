"""Frontend: a program (the restricted graph of :mod:`tinyrnn.frontend.graph`) -> the IR
(:class:`tinyrnn.ir.Model`).

Programs come from ``.pt2`` archives read by :mod:`tinyrnn.frontend.pt2`, which executes nothing
from the file. A model in memory is captured with torch.export, saved into memory with
``torch.export.save`` and read back by the same reader, so both paths meet at one graph form.

The graph is read node by node. Values are tracked by what they mean for the generated C
(the data path's sequence or vector, a recurrent module's h_n/c_n, an initial state); every
node that cannot be expressed is collected, and one :class:`TinyRNNError` lists them all with
the module they belong to and the user's source line.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cells import cell_spec
from ..errors import TinyRNNError
from ..ir import (
    Activation,
    Dense,
    Direction,
    GRULayer,
    InputSpec,
    Layer,
    LSTMLayer,
    Model,
    OutputSpec,
    RecurrentLayer,
    RNNLayer,
    SelectStep,
    StateGroup,
    Tensor,
    split_gates,
)
from .graph import GraphError, Node, TensorRef
from .pt2 import Program, read_archive
from .pt2 import load as load_archive
from .safezip import printable

_RECURRENT = {
    "aten.lstm.input": "lstm",
    "aten.gru.input": "gru",
    "aten.rnn_tanh.input": "rnn_tanh",
    "aten.rnn_relu.input": "rnn_relu",
}
_ELEMENTWISE = {
    "aten.relu.default": "relu",
    "aten.tanh.default": "tanh",
    "aten.sigmoid.default": "sigmoid",
}
_LAST_AXIS = {
    "aten.softmax.int": "softmax",
    "aten._softmax.default": "softmax",
    "aten.log_softmax.int": "log_softmax",
    "aten._log_softmax.default": "log_softmax",
}
_DROPOUT = {"aten.dropout.default", "aten.feature_dropout.default", "aten.alpha_dropout.default"}
_IDENTITY = {
    *_DROPOUT,
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.contiguous.default",
}
_VIEWS = {
    "aten.view.default",
    "aten.reshape.default",
    "aten._unsafe_view.default",
    "aten.flatten.using_ints",
    "aten.squeeze.dim",
    "aten.squeeze.dims",
    "aten.squeeze.default",
    "aten.unsqueeze.default",
}
_ZEROS = {"aten.zeros.default", "aten.zeros_like.default", "aten.new_zeros.default"}
_SELECT = {"aten.select.int", "aten.slice.Tensor"}
_KNOWN = {
    *_RECURRENT, *_ELEMENTWISE, *_LAST_AXIS, *_IDENTITY, *_VIEWS, *_ZEROS, *_SELECT,
    "aten.linear.default", "aten.transpose.int",
}
MAX_LAYERS = 64


# ---------------------------------------------------------------------------------------------
# Programs: from a file (untrusted) or from a model in memory


def load_program(path: str | Path) -> Program:
    """Read an archive written by ``torch.export.save`` without executing anything from it."""
    return load_archive(path)


def trace(model: torch.nn.Module, example_inputs: tuple) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (in eval mode, so dropout is off)."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # torch notes that nn.RNN's flat weight list is re-assigned while tracing: harmless
            warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned")
            return torch.export.export(model, example_inputs)
    except Exception as exc:
        raise TinyRNNError(
            f"torch.export could not capture the model ({type(exc).__name__}): {exc}"
        ) from None
    finally:
        model.train(was_training)


def archive_bytes(exported: torch.export.ExportedProgram) -> bytes:
    """The ``.pt2`` archive of a program, as ``torch.export.save`` writes it, in memory."""
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    return buffer.getvalue()


def from_exported(exported: torch.export.ExportedProgram) -> Program:
    """A program captured in this process, saved into memory and read back by the archive
    reader: the in-process API and the file path share one code path."""
    return read_archive(archive_bytes(exported), "the captured program")


def capture(model: torch.nn.Module, example_inputs: tuple) -> Program:
    """Capture ``model`` with torch.export and read it as tinyrnn reads any archive."""
    return from_exported(trace(model, example_inputs))


# ---------------------------------------------------------------------------------------------
# What a graph value means


@dataclass(frozen=True)
class _Data:
    """The data path's value after ``depth`` IR layers: a sequence or one vector per sample."""

    depth: int
    features: int
    shape: tuple[int, ...]
    batch_axis: int
    time_axis: int | None  # None for a vector


@dataclass(frozen=True)
class _Input:
    index: int  # position among the user inputs


@dataclass(frozen=True)
class _Recurrent:
    group: int


@dataclass(frozen=True)
class _State:
    group: int
    role: str  # "h_n" or "c_n"


@dataclass(frozen=True)
class _Zeros:
    pass


_FAILED = object()  # the value of a node already reported; its users are not reported again


@dataclass(frozen=True)
class _Const:
    name: str
    tensor: np.ndarray


@dataclass(frozen=True)
class _Problem:
    target: str
    why: str
    node: Node | None


def _user_line(node: Node | None) -> str:
    """The user's own source line from the node's stack trace (not torch's internals)."""
    lines = (node.stack_trace if node else "").strip().splitlines()
    best = ""
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("File ") and "/torch/" not in text:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            code = "" if code.startswith("File ") else code
            best = f"{text.removeprefix('File ')}: {code}".strip().rstrip(":")
    return printable(best, 240) if best else "(no source line recorded)"


def describe_problems(problems: list[_Problem]) -> list[str]:
    """One line per (operation, reason, module): repeats are counted, not listed again."""
    groups: dict[tuple[str, str, str], list[_Problem]] = {}
    for problem in problems:
        module = problem.node.module if problem.node else None
        key = (problem.target, problem.why, module.path if module else "")
        groups.setdefault(key, []).append(problem)
    lines = []
    for (target, why, path), members in groups.items():
        first = members[0].node
        count = f" x {len(members)}" if len(members) > 1 else ""
        where = [f"{path} ({first.module.short_type})"] if first and first.module else []
        where.append(_user_line(first))
        lines.append(f"{target}{count} ({why}) at {', '.join(where)}")
    return lines


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _is_int(value: Any) -> bool:
    return type(value) is int


class _Reader:
    """Walks one program's graph and builds the IR."""

    def __init__(self, program: Program, max_seq_len: int | None):
        self.program = program
        self.graph = program.graph
        self.max_seq_len = max_seq_len
        self.values: dict[str, Any] = {}
        self.producer: dict[str, Node] = {}
        self.layers: list[Layer] = []
        self.groups: list[StateGroup] = []
        self.group_inputs: dict[int, tuple[int, ...]] = {}  # group -> user input indices
        self.problems: list[_Problem] = []
        self.bad_weights: list[str] = []
        self.inputs: dict[int, InputSpec] = {}
        self.x_index: int | None = None
        self.seq_len = 0

    # -- helpers -------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.tensors[name].shape

    def out_shape(self, node: Node) -> tuple[int, ...]:
        return self.shape(node.outputs[0]) if node.outputs and node.outputs[0] else ()

    def set(self, node: Node, value: Any) -> None:
        """The value of the node's (first) output."""
        if node.outputs and node.outputs[0] is not None:
            self.values[node.outputs[0]] = value

    def value(self, arg: Any) -> Any:
        return self.values.get(arg.name) if isinstance(arg, TensorRef) else None

    def fail(self, node: Node, why: str) -> None:
        self.problems.append(_Problem(node.target, why, node))
        for out in node.outputs:
            if out is not None:
                self.values[out] = _FAILED

    def shape_is(self, node: Node, name: str | None, expected: tuple[int, ...]) -> bool:
        """Whether the shape the archive records for ``name`` is the one the weights imply;
        if not, the node is reported (a crafted or damaged archive)."""
        if name is None or self.shape(name) == tuple(expected):
            return True
        self.fail(node, f"the archive records shape {list(self.shape(name))} for {name} "
                        f"where the model computes {list(expected)}")
        return False

    def const(self, arg: Any) -> _Const | None:
        value = self.value(arg)
        return value if isinstance(value, _Const) else None

    def current(self, node: Node, arg: Any) -> _Data | None:
        """The data value ``arg`` if it is the data path's latest value, else record why not."""
        value = self.value(arg)
        if not isinstance(value, _Data):
            self.fail(node, "its input is not the model's sequence data")
            return None
        if value.depth != len(self.layers):
            self.fail(node, "branches off the data path at an earlier layer")
            return None
        return value

    # -- the walk ------------------------------------------------------------------------------
    def read(self) -> Model:
        user_inputs = list(self.graph.user_inputs)
        for spec in self.graph.inputs:
            if spec.kind == "user":
                self.values[spec.name] = _Input(user_inputs.index(spec.name))
                continue
            array = np.asarray(self.program.weights[spec.target], dtype=np.float64)
            if not np.all(np.isfinite(array)):
                self.bad_weights.append(spec.target)
            self.values[spec.name] = _Const(spec.target, array)
        for node in self.graph.nodes:
            for out in node.outputs:
                if out is not None:
                    self.producer[out] = node
            self.call(node)
        outputs = self.read_outputs(self.graph.outputs)
        if self.bad_weights:
            raise TinyRNNError(
                "the model has NaN or Inf weights in: " + ", ".join(sorted(self.bad_weights))
                + ". Fix the training run or the checkpoint before exporting."
            )
        if self.problems:
            listing = "\n  - ".join(describe_problems(self.problems))
            raise TinyRNNError(
                f"the model uses {len(self.problems)} operation(s) tinyrnn cannot export:\n"
                f"  - {listing}\n"
                "Supported: nn.LSTM/GRU/RNN (any options), Linear, taking one time step, "
                "relu/tanh/sigmoid/softmax/log_softmax, dropout, and views that move no data."
            )
        if self.x_index is None:
            raise TinyRNNError("the model has no recurrent layer reading a model input")
        inputs = []
        for i in range(len(user_inputs)):
            if i not in self.inputs:
                raise TinyRNNError(
                    f"forward argument {i} ({user_inputs[i]}) is not used as the sequence or "
                    "an initial state; tinyrnn models take (x) or (x, h0) or (x, (h0, c0))"
                )
            inputs.append(self.inputs[i])
        state_groups = [g for g in self.group_inputs]
        if len(state_groups) > 1:
            raise TinyRNNError(
                "more than one recurrent module takes an initial state from the forward's "
                "arguments; tinyrnn supports initial states for one module"
            )
        return Model(
            layers=tuple(self.layers),
            groups=tuple(self.groups),
            inputs=tuple(inputs),
            outputs=outputs,
            input_size=self.inputs[self.x_index].features,
            max_seq_len=self.max_seq_len or self.seq_len,
            state_group=state_groups[0] if state_groups else 0,
        )

    def call(self, node: Node) -> None:
        target = node.target
        if target in _KNOWN and any(self.values.get(n) is _FAILED for n in node.tensor_inputs):
            for out in node.outputs:  # fed by a reported node: one report is enough
                if out is not None:
                    self.values[out] = _FAILED
            return
        try:
            self.dispatch(node)
        except GraphError as exc:  # a supported operation missing an argument
            self.fail(node, f"malformed: {exc}")

    def dispatch(self, node: Node) -> None:
        target = node.target
        if target in _RECURRENT:
            self.recurrent(node, _RECURRENT[target])
        elif target in _ZEROS:
            self.set(node, _Zeros())
        elif target == "aten.linear.default":
            self.linear(node)
        elif target in _ELEMENTWISE:
            self.activation(node, _ELEMENTWISE[target])
        elif target in _LAST_AXIS:
            data = self.value(node.first())
            dim = node.arg("dim")
            if not _is_int(dim) or (isinstance(data, _Data)
                                    and dim not in (-1, len(data.shape) - 1)):
                self.fail(node, f"softmax over dim {dim}; only the feature (last) axis works")
            else:
                self.activation(node, _LAST_AXIS[target])
        elif target in _IDENTITY:
            if target in _DROPOUT and node.arg("train", False) is not False:
                self.fail(node, "dropout in training mode; export the model in eval()")
                return
            value = self.value(node.first())
            if isinstance(value, _Data) and not self.shape_is(node, node.outputs[0],
                                                               value.shape):
                return
            self.set(node, value)
        elif target in _VIEWS:
            self.view(node)
        elif target in _SELECT:
            self.select(node)
        elif target == "aten.transpose.int":
            self.transpose(node)
        else:
            self.fail(node, "unsupported operation")

    def recurrent(self, node: Node, cell: str) -> None:
        # all four ops share one signature
        x, hx, params = node.arg("input"), node.arg("hx"), node.arg("params")
        has_biases, num_layers = node.arg("has_biases"), node.arg("num_layers")
        train, bidi, batch_first = (node.arg("train"), node.arg("bidirectional"),
                                    node.arg("batch_first"))
        if not (isinstance(x, TensorRef) and isinstance(params, tuple)
                and all(type(v) is bool for v in (has_biases, train, bidi, batch_first))
                and _is_int(num_layers) and 1 <= num_layers <= MAX_LAYERS):
            self.fail(node, "arguments of an unexpected form")
            return
        if train:
            self.fail(node, "recurrent layer in training mode; export the model in eval()")
            return
        consts = [self.const(p) for p in params]
        if any(c is None for c in consts):
            self.fail(node, "recurrent weights that are computed, not parameters")
            return
        directions = 2 if bidi else 1
        per_dir, rest = divmod(len(params), num_layers * directions)
        expected = (4, 5) if has_biases else (2, 3)
        if rest or per_dir not in (expected if cell == "lstm" else expected[:1]):
            self.fail(node, f"{len(params)} weight tensors for {num_layers} layer(s) and "
                            f"{directions} direction(s)")
            return
        # the sequence input: a model input, or the data path
        source = self.value(x)
        shape = self.shape(x.name)
        if len(shape) != 3:
            self.fail(node, "unbatched input; pass a batch dimension (e.g. x.unsqueeze(1))")
            return
        batch_axis, time_axis = (0, 1) if batch_first else (1, 0)
        if isinstance(source, _Input):
            if self.x_index is not None and self.x_index != source.index:
                self.fail(node, "a second model input used as a sequence")
                return
            if self.layers:
                self.fail(node, "the model input feeds a layer after other layers")
                return
            self.x_index = source.index
            self.seq_len = shape[time_axis]
            self.inputs[source.index] = InputSpec(
                "x", shape, batch_axis, time_axis, features=shape[2]
            )
        else:
            data = self.current(node, x)
            if data is None:
                return
            if data.time_axis is None or (data.batch_axis, data.time_axis) != (
                batch_axis,
                time_axis,
            ):
                self.fail(node, "its input's batch/time layout does not match batch_first")
                return
        # the weights, per layer and direction
        built: list[RecurrentLayer] = []
        input_size = shape[2]
        for layer_index in range(num_layers):
            dirs = []
            for d in range(directions):
                chunk = consts[(layer_index * directions + d) * per_dir:][:per_dir]
                why = _weight_shapes(cell, chunk, has_biases, input_size)
                if why:
                    self.fail(node, f"weights of layer {layer_index}: {why}")
                    return
                dirs.append(self.direction(cell, chunk, has_biases, reverse=d == 1))
            hidden = dirs[0].gates[0].w_x.shape[0]
            if any(d.gates[0].w_x.shape[0] != hidden or
                   _proj(d) != _proj(dirs[0]) for d in dirs):
                self.fail(node, f"the directions of layer {layer_index} differ in size")
                return
            common = dict(
                module=consts[0].name.rsplit(".", 1)[0] if "." in consts[0].name else "",
                layer=layer_index,
                input_size=input_size,
                hidden_size=hidden,
                directions=tuple(dirs),
            )
            if cell == "lstm":
                layer: RecurrentLayer = LSTMLayer(**common, proj_size=_proj(dirs[0]))
            elif cell == "gru":
                layer = GRULayer(**common)
            else:
                layer = RNNLayer(**common, nonlinearity="relu" if cell == "rnn_relu" else "tanh")
            built.append(layer)
            input_size = layer.output_size
        group_index = len(self.groups)
        first = len(self.layers)
        self.layers.extend(built)
        top = built[-1]
        self.groups.append(
            StateGroup(
                module=top.module,
                layers=tuple(range(first, len(self.layers))),
                cell=top.kind,
                state_size=top.state_size,
                hidden_size=top.hidden_size,
                rows=num_layers * directions,
            )
        )
        self.initial_state(node, cell, hx, group_index)
        outs = list(node.outputs) + [None] * 3
        sequence = list(shape)
        sequence[2] = top.output_size
        batch = shape[batch_axis]
        if not (self.shape_is(node, outs[0], tuple(sequence))
                and self.shape_is(node, outs[1], (num_layers * directions, batch,
                                                  top.state_size))
                and (cell != "lstm" or self.shape_is(node, outs[2], (
                    num_layers * directions, batch, top.hidden_size)))):
            return
        if outs[0] is not None:
            self.values[outs[0]] = _Data(len(self.layers), top.output_size,
                                         self.shape(outs[0]), batch_axis, time_axis)
        for out, role in ((outs[1], "h_n"), (outs[2], "c_n")):
            if out is not None:
                self.values[out] = _State(group_index, role)

    def direction(
        self, cell: str, chunk: list[_Const], has_biases: bool, reverse: bool
    ) -> Direction:
        w_ih, w_hh = chunk[0], chunk[1]
        b_ih = chunk[2] if has_biases else None
        b_hh = chunk[3] if has_biases else None
        w_hr = chunk[-1] if cell == "lstm" and len(chunk) in (3, 5) else None
        proj = self.tensor_of(w_hr, None, "projection") if w_hr is not None else None

        def whole(const: _Const | None) -> Tensor | None:
            return Tensor(const.tensor, const.name) if const is not None else None

        return split_gates(cell, reverse, whole(w_ih), whole(w_hh), whole(b_ih), whole(b_hh),
                           proj)

    @staticmethod
    def tensor_of(const: _Const, rows: slice | None, title: str) -> Tensor:
        data = const.tensor if rows is None else const.tensor[rows]
        source = const.name if rows is None else f"{const.name}[{rows.start}:{rows.stop}]"
        return Tensor(np.ascontiguousarray(data), f"{source} {title}".rstrip())

    def initial_state(self, node: Node, cell: str, hx: Any, group: int) -> None:
        parts = list(hx) if isinstance(hx, tuple) else [hx]
        if len(parts) != (2 if cell == "lstm" else 1) or not all(
                isinstance(p, TensorRef) for p in parts):
            self.fail(node, "an initial state of an unexpected form")
            return
        values = [self.value(p) for p in parts]
        if all(isinstance(v, _Zeros) for v in values):
            return
        if not all(isinstance(v, _Input) for v in values):
            self.fail(node, "initial state that is neither a model input nor zeros")
            return
        info = self.groups[group]
        roles = ("h0", "c0") if cell == "lstm" else ("h0",)
        widths = (info.state_size, info.hidden_size)
        x_shape = self.inputs[self.x_index].torch_shape if self.x_index is not None else ()
        batch = x_shape[self.inputs[self.x_index].batch_axis] if x_shape else None
        for part, role, width in zip(parts, roles, widths):
            shape = self.shape(part.name)
            if shape != (info.rows, batch, width):
                self.fail(node, f"initial state {role} of shape {list(shape)}; expected "
                                f"{[info.rows, batch, width]}")
                return
        for part, value, role, width in zip(parts, values, roles, widths):
            shape = self.shape(part.name)
            self.inputs[value.index] = InputSpec(role, shape, batch_axis=1,
                                                 size=info.rows * width)
        self.group_inputs[group] = tuple(v.index for v in values)

    def linear(self, node: Node) -> None:
        x, weight, bias = node.arg("input"), node.arg("weight"), node.arg("bias", None)
        data = self.current(node, x)
        if data is None:
            return
        w = self.const(weight)
        b = self.const(bias) if bias is not None else None
        if w is None or (bias is not None and b is None):
            self.fail(node, "Linear with weights that are not parameters")
            return
        if (w.tensor.ndim != 2 or w.tensor.shape[1] != data.features
                or (b is not None and b.tensor.shape != (w.tensor.shape[0],))):
            self.fail(node, f"Linear weights of shape {list(w.tensor.shape)} for "
                            f"{data.features} input features")
            return
        if not self.shape_is(node, node.outputs[0] if node.outputs else None,
                             data.shape[:-1] + (w.tensor.shape[0],)):
            return
        name = w.name.removesuffix(".weight")
        layer = Dense(
            name=name,
            weight=self.tensor_of(w, None, ""),
            bias=self.tensor_of(b, None, "") if b is not None else None,
        )
        self.layers.append(layer)
        self.set(node, replace(
            data, depth=len(self.layers), features=layer.out_features, shape=self.out_shape(node)
        ))

    def activation(self, node: Node, kind: str) -> None:
        data = self.current(node, node.first())
        if data is None or not self.shape_is(node, node.outputs[0] if node.outputs else None,
                                             data.shape):
            return
        self.layers.append(Activation(kind, data.features))  # type: ignore[arg-type]
        self.set(node, replace(data, depth=len(self.layers)))

    def view(self, node: Node) -> None:
        value = self.value(node.first())
        shape = self.out_shape(node)
        if isinstance(value, _Data) and shape:
            same = _squeezed(shape) == _squeezed(value.shape) and shape[-1] == value.features
            if same and value.time_axis is None:
                batch = value.shape[value.batch_axis]
                axes = [i for i, d in enumerate(shape) if d == batch]
                if axes:
                    self.set(node, replace(value, shape=shape, batch_axis=axes[0]))
                    return
            if shape == value.shape:
                self.set(node, value)
                return
            self.fail(node, f"a view from {list(value.shape)} to {list(shape)} moves data")
            return
        self.fail(node, "a view of a value other than the data path")

    def transpose(self, node: Node) -> None:
        value = self.value(node.first())
        dims = [node.arg("dim0"), node.arg("dim1")]
        if (isinstance(value, _Data) and value.time_axis is not None
                and all(_is_int(d) and -3 <= d < 3 for d in dims)
                and sorted(d % 3 for d in dims) == [0, 1]):
            swapped = (value.shape[1], value.shape[0], *value.shape[2:])
            if not self.shape_is(node, node.outputs[0] if node.outputs else None, swapped):
                return
            self.set(node, replace(
                value,
                shape=self.out_shape(node),
                batch_axis=value.time_axis,
                time_axis=value.batch_axis,
            ))
            return
        self.fail(node, "a transpose other than swapping the batch and time axes")

    def select(self, node: Node) -> None:
        value = self.value(node.first())
        dim = node.arg("dim", 0)
        if isinstance(value, _State):
            self.select_state(node, value)
            return
        if not isinstance(value, _Data) or value.time_axis is None:
            self.fail(node, "indexing something other than the sequence's time axis")
            return
        ndim = len(value.shape)
        if not _is_int(dim) or not -ndim <= dim < ndim or dim % ndim != value.time_axis:
            self.fail(node, "indexing an axis other than time")
            return
        length = value.shape[value.time_axis]
        if node.target == "aten.select.int":
            index = node.arg("index")
            if not _is_int(index) or not -length <= index < length:
                self.fail(node, f"time step {index} of a sequence of {length}")
                return
        else:  # slice: only a one-step slice, e.g. y[:, -1:]
            start, end = node.arg("start", None), node.arg("end", None)
            step = node.arg("step", 1)
            if not (all(v is None or _is_int(v) for v in (start, end)) and _is_int(step)
                    and step >= 1):
                self.fail(node, "a slice of an unexpected form")
                return
            rng = range(length)[slice(start, end, step)]
            if len(rng) != 1 or step != 1:
                self.fail(node, "a slice of more than one time step")
                return
            index = rng[0] - length if start is not None and start < 0 else rng[0]
        if self.current(node, node.first()) is None:
            return
        picked = list(value.shape)
        if node.target == "aten.select.int":
            del picked[value.time_axis]
        else:
            picked[value.time_axis] = 1
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, tuple(picked)):
            return
        self.layers.append(SelectStep(index, value.features))
        shape = self.out_shape(node)
        batch = value.shape[value.batch_axis]
        axes = [i for i, d in enumerate(shape) if d == batch]
        if not axes:
            self.fail(node, "a time step whose batch axis cannot be found")
            return
        self.set(node, _Data(len(self.layers), value.features, shape, axes[0], None))

    def select_state(self, node: Node, value: _State) -> None:
        """h_n[-1] of a unidirectional top layer equals its output at the last step."""
        group = self.groups[value.group]
        top = self.layers[group.layers[-1]]
        index = node.arg("index", None) if node.target == "aten.select.int" else None
        is_last = index in (-1, group.rows - 1) and _is_int(index) and node.arg("dim", 0) == 0
        if (
            value.role == "h_n"
            and is_last
            and isinstance(top, RecurrentLayer)
            and top.num_directions == 1
            and top is self.layers[-1]
        ):
            batch = self.shape(node.first().name)[1]
            if not self.shape_is(node, node.outputs[0] if node.outputs else None,
                                 (batch, top.output_size)):
                return
            self.layers.append(SelectStep(-1, top.output_size))
            self.set(node, _Data(len(self.layers), top.output_size, self.out_shape(node), 0,
                                 None))
            return
        self.fail(
            node,
            "indexing h_n/c_n; only h_n[-1] of a unidirectional last layer is supported "
            "(use output[:, -1] instead)",
        )

    def fail_output(self, name: str, why: str) -> None:
        node = self.producer.get(name)
        if node is not None:
            self.fail(node, why)
        else:
            self.problems.append(_Problem(f"output {name}", why, None))

    def read_outputs(self, names: tuple[str, ...]) -> tuple[OutputSpec, ...]:
        outputs = []
        for out in names:
            value = self.values.get(out)
            if value is _FAILED:
                continue
            shape = self.shape(out)
            if isinstance(value, _Data):
                if value.depth != len(self.layers):
                    self.fail_output(out, "returns an intermediate value of the data path")
                    continue
                if value.time_axis is not None:
                    outputs.append(
                        OutputSpec(
                            "sequence",
                            shape,
                            value.batch_axis,
                            value.time_axis,
                            features=value.features,
                        )
                    )
                else:
                    outputs.append(
                        OutputSpec("vector", shape, value.batch_axis, features=value.features)
                    )
            elif isinstance(value, _State):
                group = self.groups[value.group]
                width = group.state_size if value.role == "h_n" else group.hidden_size
                outputs.append(
                    OutputSpec(
                        value.role,  # type: ignore[arg-type]
                        shape,
                        batch_axis=1,
                        size=group.rows * width,
                        group=value.group,
                    )
                )
            else:
                self.fail_output(out, "an unsupported output")
        return tuple(outputs)


def _proj(direction: Direction) -> int:
    return direction.w_proj.shape[0] if direction.w_proj is not None else 0


def _weight_shapes(cell: str, chunk: list[_Const], has_biases: bool, input_size: int) -> str:
    """Why one direction's weights do not fit the cell, or "" when they do."""
    gates = cell_spec(cell).G
    w_ih, w_hh = chunk[0].tensor, chunk[1].tensor
    if w_ih.ndim != 2 or w_ih.shape[0] % gates or w_ih.shape[0] == 0:
        return f"{chunk[0].name} has shape {list(w_ih.shape)}"
    hidden = w_ih.shape[0] // gates
    if w_ih.shape[1] != input_size:
        return f"{chunk[0].name} takes {w_ih.shape[1]} inputs, not {input_size}"
    proj = chunk[-1].tensor if cell == "lstm" and len(chunk) in (3, 5) else None
    if proj is not None and (proj.ndim != 2 or proj.shape[1] != hidden or proj.shape[0] < 1):
        return f"{chunk[-1].name} has shape {list(proj.shape)}"
    state = proj.shape[0] if proj is not None else hidden
    if w_hh.shape != (gates * hidden, state):
        return f"{chunk[1].name} has shape {list(w_hh.shape)}"
    if has_biases and any(c.tensor.shape != (gates * hidden,) for c in chunk[2:4]):
        return "a bias of the wrong shape"
    return ""


def read_program(program: Program, max_seq_len: int | None = None) -> Model:
    """Turn a program into the IR, or raise one error listing every problem."""
    return _Reader(program, max_seq_len).read()
