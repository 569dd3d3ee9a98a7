"""Frontend: a torch.export graph -> the IR (:class:`tinyrnn.ir.Model`).

The graph is read node by node. Values are tracked by what they mean for the generated C
(the data path's sequence or vector, a recurrent module's h_n/c_n, an initial state); every
node that cannot be expressed is collected, and one :class:`TinyRNNError` lists them all with
the user's source line.
"""

from __future__ import annotations

import contextlib
import operator
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import TinyRNNError
from .ir import (
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

aten = torch.ops.aten

_RECURRENT = {
    aten.lstm.input: "lstm",
    aten.gru.input: "gru",
    aten.rnn_tanh.input: "rnn_tanh",
    aten.rnn_relu.input: "rnn_relu",
}
_ELEMENTWISE = {
    aten.relu.default: "relu",
    aten.tanh.default: "tanh",
    aten.sigmoid.default: "sigmoid",
}
_LAST_AXIS = {
    aten.softmax.int: "softmax",
    aten._softmax.default: "softmax",
    aten.log_softmax.int: "log_softmax",
    aten._log_softmax.default: "log_softmax",
}
_IDENTITY = {
    aten.dropout.default,
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.contiguous.default,
    aten.feature_dropout.default,
    aten.alpha_dropout.default,
}
_VIEWS = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.flatten.using_ints,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.unsqueeze.default,
}
_ZEROS = {aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default}
_KNOWN = {
    *_RECURRENT, *_ELEMENTWISE, *_LAST_AXIS, *_IDENTITY, *_VIEWS, *_ZEROS,
    operator.getitem, aten.linear.default, aten.select.int, aten.slice.Tensor,
    aten.transpose.int,
}


# ---------------------------------------------------------------------------------------------
# Loading archives without executing code from them


@contextlib.contextmanager
def _no_code_execution() -> Iterator[None]:
    """Make torch.export.load refuse anything that would unpickle arbitrary objects.

    torch.export.load falls back to ``torch.load(weights_only=False)`` and ``pickle.loads`` for
    some payloads; inside this context those raise instead, so a crafted archive cannot run
    code. Plain tensors and the JSON graph load as usual.
    """
    real_load = torch.load
    real_pickle_load_obj = torch._C._pickle_load_obj
    package = __import__("torch.export.pt2_archive._package", fromlist=["pickle"])

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refusing to unpickle a Python object from a model file")

    class _SafePickle:
        loads = staticmethod(refuse)
        UnpicklingError = pickle.UnpicklingError

    torch.load = safe_load  # type: ignore[assignment]
    torch._C._pickle_load_obj = refuse  # type: ignore[attr-defined]
    saved_pickle = package.pickle
    package.pickle = _SafePickle  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.load = real_load  # type: ignore[assignment]
        torch._C._pickle_load_obj = real_pickle_load_obj  # type: ignore[attr-defined]
        package.pickle = saved_pickle  # type: ignore[attr-defined]


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """Load an archive written by ``torch.export.save``, without executing code from it."""
    path = Path(path)
    if not path.exists():
        raise TinyRNNError(f"model file {path} does not exist")
    if not path.is_file():
        raise TinyRNNError(f"model path {path} is not a file")
    try:
        with _no_code_execution():
            program = torch.export.load(str(path))
    except pickle.UnpicklingError as exc:
        raise TinyRNNError(
            f"{path} contains pickled Python objects, which tinyrnn does not load (they could "
            f"run code): {exc}. Export a plain nn.Module with torch.export.export and save it "
            "with torch.export.save."
        ) from None
    except Exception as exc:  # torch raises many types for a malformed archive
        raise TinyRNNError(
            f"{path} is not a torch.export archive ({type(exc).__name__}: {exc}). Create one "
            "with: torch.export.save(torch.export.export(model.eval(), example_inputs), "
            "'model.pt2')"
        ) from None
    return program


def capture(model: torch.nn.Module, example_inputs: tuple) -> torch.export.ExportedProgram:
    """Capture ``model`` with torch.export (in eval mode, so dropout is off)."""
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


def _user_line(node: torch.fx.Node) -> str:
    """The user's own source line from the node's stack trace (not torch's internals)."""
    trace = node.meta.get("stack_trace") or ""
    lines = trace.strip().splitlines()
    best = ""
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("File ") and "/torch/" not in text:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            best = f"{text.removeprefix('File ')}: {code}".strip()
    return best or "(no source line recorded)"


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        val = val[0]
    if val is None or not hasattr(val, "shape"):
        return ()
    try:
        return tuple(int(d) for d in val.shape)
    except TypeError:  # symbolic sizes
        raise TinyRNNError(
            f"node {node.name} has a dynamic shape; export with static example shapes "
            "(tinyrnn's C handles any sequence length at run time anyway)"
        ) from None


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


class _Reader:
    """Walks one exported graph and builds the IR."""

    def __init__(self, program: torch.export.ExportedProgram, max_seq_len: int | None):
        self.program = program
        self.max_seq_len = max_seq_len
        self.values: dict[torch.fx.Node, Any] = {}
        self.layers: list[Layer] = []
        self.groups: list[StateGroup] = []
        self.group_inputs: dict[int, tuple[int, ...]] = {}  # group -> user input indices
        self.problems: list[str] = []
        self.bad_weights: list[str] = []
        self.inputs: dict[int, InputSpec] = {}
        self.x_index: int | None = None
        self.seq_len = 0

    # -- helpers -------------------------------------------------------------------------------
    def fail(self, node: torch.fx.Node, why: str) -> None:
        self.problems.append(f"{node.target} ({why}) at {_user_line(node)}")
        self.values[node] = _FAILED

    def const(self, node: Any) -> _Const | None:
        value = self.values.get(node) if isinstance(node, torch.fx.Node) else None
        return value if isinstance(value, _Const) else None

    def current(self, node: torch.fx.Node, arg: Any) -> _Data | None:
        """The data value ``arg`` if it is the data path's latest value, else record why not."""
        value = self.values.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(value, _Data):
            self.fail(node, "its input is not the model's sequence data")
            return None
        if value.depth != len(self.layers):
            self.fail(node, "branches off the data path at an earlier layer")
            return None
        return value

    # -- the walk ------------------------------------------------------------------------------
    def read(self) -> Model:
        sig = self.program.graph_signature
        state = {**self.program.state_dict, **self.program.constants}
        by_placeholder: dict[str, str] = {
            **sig.inputs_to_parameters,
            **sig.inputs_to_buffers,
            **sig.inputs_to_lifted_tensor_constants,
        }
        user_inputs = list(sig.user_inputs)
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node.name in by_placeholder:
                    fqn = by_placeholder[node.name]
                    array = state[fqn].detach().cpu().to(torch.float64).numpy()
                    if not np.all(np.isfinite(array)):
                        self.bad_weights.append(fqn)
                    self.values[node] = _Const(fqn, array)
                elif node.name in user_inputs:
                    self.values[node] = _Input(user_inputs.index(node.name))
                else:
                    self.fail(node, "an input tinyrnn does not understand")
            elif node.op == "call_function":
                self.call(node)
            elif node.op == "output":
                outputs = self.read_outputs(node)
        if self.bad_weights:
            raise TinyRNNError(
                "the model has NaN or Inf weights in: " + ", ".join(sorted(self.bad_weights))
                + ". Fix the training run or the checkpoint before exporting."
            )
        if self.problems:
            listing = "\n  - ".join(self.problems)
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

    def call(self, node: torch.fx.Node) -> None:
        target = node.target
        args = node.args
        known = target in _KNOWN
        if known and any(self.values.get(n) is _FAILED for n in node.all_input_nodes):
            self.values[node] = _FAILED  # fed by a reported node: one report is enough
            return
        if target in _RECURRENT:
            self.recurrent(node, _RECURRENT[target])
        elif target is operator.getitem:
            self.getitem(node)
        elif target in _ZEROS:
            self.values[node] = _Zeros()
        elif target == aten.linear.default:
            self.linear(node)
        elif target in _ELEMENTWISE:
            self.activation(node, _ELEMENTWISE[target])
        elif target in _LAST_AXIS:
            data = self.values.get(args[0])
            dim = args[1]
            if isinstance(data, _Data) and dim not in (-1, len(data.shape) - 1):
                self.fail(node, f"softmax over dim {dim}; only the feature (last) axis works")
            else:
                self.activation(node, _LAST_AXIS[target])
        elif target in _IDENTITY:
            if target in (aten.dropout.default, aten.feature_dropout.default) and args[2]:
                self.fail(node, "dropout in training mode; export the model in eval()")
            self.values[node] = self.values.get(args[0])
        elif target in _VIEWS:
            self.view(node)
        elif target in (aten.select.int, aten.slice.Tensor):
            self.select(node)
        elif target == aten.transpose.int:
            self.transpose(node)
        else:
            self.fail(node, "unsupported operation")

    def recurrent(self, node: torch.fx.Node, cell: str) -> None:
        # all four ops share one signature
        x, hx, params, has_biases, num_layers, _dropout, train, bidi, batch_first = node.args
        if train:
            self.fail(node, "recurrent layer in training mode; export the model in eval()")
            return
        consts = [self.const(p) for p in params]
        if any(c is None for c in consts):
            self.fail(node, "recurrent weights that are computed, not parameters")
            return
        # the sequence input: a model input, or the data path
        source = self.values.get(x)
        shape = _shape(x)
        if len(shape) != 3:
            self.fail(node, "unbatched input; pass a batch dimension (e.g. x.unsqueeze(1))")
            return
        batch_axis, time_axis = (0, 1) if batch_first else (1, 0)
        if isinstance(source, _Input):
            if self.x_index is not None and self.x_index != source.index:
                self.fail(node, "a second model input used as a sequence")
                return
            self.x_index = source.index
            self.seq_len = shape[time_axis]
            self.inputs[source.index] = InputSpec(
                "x", shape, batch_axis, time_axis, features=shape[2]
            )
            if self.layers:
                self.fail(node, "the model input feeds a layer after other layers")
                return
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
        directions = 2 if bidi else 1
        per_dir = len(params) // (num_layers * directions)
        group_layers = []
        group_index = len(self.groups)
        input_size = shape[2]
        for layer_index in range(num_layers):
            dirs = []
            for d in range(directions):
                chunk = consts[(layer_index * directions + d) * per_dir:][:per_dir]
                dirs.append(self.direction(cell, chunk, has_biases, reverse=d == 1))
            hidden = dirs[0].gates[0].w_x.shape[0]
            common = dict(
                module=consts[0].name.rsplit(".", 1)[0] if "." in consts[0].name else "",
                layer=layer_index,
                input_size=input_size,
                hidden_size=hidden,
                directions=tuple(dirs),
            )
            if cell == "lstm":
                proj = dirs[0].w_proj.shape[0] if dirs[0].w_proj is not None else 0
                layer: RecurrentLayer = LSTMLayer(**common, proj_size=proj)
            elif cell == "gru":
                layer = GRULayer(**common)
            else:
                layer = RNNLayer(**common, nonlinearity="relu" if cell == "rnn_relu" else "tanh")
            group_layers.append(len(self.layers))
            self.layers.append(layer)
            input_size = layer.output_size
        top = self.layers[-1]
        assert isinstance(top, RecurrentLayer)
        self.groups.append(
            StateGroup(
                module=top.module,
                layers=tuple(group_layers),
                cell=top.kind,
                state_size=top.state_size,
                hidden_size=top.hidden_size,
                rows=num_layers * directions,
            )
        )
        self.initial_state(node, cell, hx, group_index)
        self.values[node] = _Recurrent(group_index)

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

    def initial_state(self, node: torch.fx.Node, cell: str, hx: Any, group: int) -> None:
        parts = list(hx) if isinstance(hx, (list, tuple)) else [hx]
        values = [self.values.get(p) for p in parts]
        if all(isinstance(v, _Zeros) for v in values):
            return
        if not all(isinstance(v, _Input) for v in values):
            self.fail(node, "initial state that is neither a model input nor zeros")
            return
        roles = ("h0", "c0") if cell == "lstm" else ("h0",)
        for part, value, role in zip(parts, values, roles):
            shape = _shape(part)
            self.inputs[value.index] = InputSpec(
                role, shape, batch_axis=1, size=int(np.prod(shape)) // shape[1]
            )
        self.group_inputs[group] = tuple(v.index for v in values)

    def getitem(self, node: torch.fx.Node) -> None:
        source = self.values.get(node.args[0])
        index = node.args[1]
        if not isinstance(source, _Recurrent):
            self.fail(node, "indexing a value other than a recurrent layer's result")
            return
        if index == 0:
            top = self.layers[self.groups[source.group].layers[-1]]
            shape = _shape(node)
            batch_axis, time_axis = (0, 1) if shape and self._batch_first(node) else (1, 0)
            if top is not self.layers[-1]:
                self.values[node] = None
                return
            self.values[node] = _Data(
                len(self.layers), top.output_size, shape, batch_axis, time_axis
            )
        else:
            self.values[node] = _State(source.group, "h_n" if index == 1 else "c_n")

    @staticmethod
    def _batch_first(node: torch.fx.Node) -> bool:
        rnn = node.args[0]
        return bool(rnn.args[-1])

    def linear(self, node: torch.fx.Node) -> None:
        x, weight = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        data = self.current(node, x)
        if data is None:
            return
        w = self.const(weight)
        b = self.const(bias) if bias is not None else None
        if w is None or (bias is not None and b is None):
            self.fail(node, "Linear with weights that are not parameters")
            return
        name = w.name.removesuffix(".weight")
        layer = Dense(
            name=name,
            weight=self.tensor_of(w, None, ""),
            bias=self.tensor_of(b, None, "") if b is not None else None,
        )
        self.layers.append(layer)
        self.values[node] = replace(
            data, depth=len(self.layers), features=layer.out_features, shape=_shape(node)
        )

    def activation(self, node: torch.fx.Node, kind: str) -> None:
        data = self.current(node, node.args[0])
        if data is None:
            return
        self.layers.append(Activation(kind, data.features))  # type: ignore[arg-type]
        self.values[node] = replace(data, depth=len(self.layers))

    def view(self, node: torch.fx.Node) -> None:
        value = self.values.get(node.args[0])
        shape = _shape(node)
        if isinstance(value, _Data):
            same = _squeezed(shape) == _squeezed(value.shape) and shape[-1] == value.features
            if same and value.time_axis is None:
                batch = value.shape[value.batch_axis]
                axes = [i for i, d in enumerate(shape) if d == batch]
                if axes:
                    self.values[node] = replace(value, shape=shape, batch_axis=axes[0])
                    return
            if shape == value.shape:
                self.values[node] = value
                return
            self.fail(node, f"a view from {list(value.shape)} to {list(shape)} moves data")
            return
        self.fail(node, "a view of a value other than the data path")

    def transpose(self, node: torch.fx.Node) -> None:
        value = self.values.get(node.args[0])
        dims = sorted(d % 3 for d in node.args[1:3])
        if isinstance(value, _Data) and value.time_axis is not None and dims == [0, 1]:
            self.values[node] = replace(
                value,
                shape=_shape(node),
                batch_axis=value.time_axis,
                time_axis=value.batch_axis,
            )
            return
        self.fail(node, "a transpose other than swapping the batch and time axes")

    def select(self, node: torch.fx.Node) -> None:
        value = self.values.get(node.args[0])
        dim = node.args[1]
        if isinstance(value, _State):
            self.select_state(node, value)
            return
        if not isinstance(value, _Data) or value.time_axis is None:
            self.fail(node, "indexing something other than the sequence's time axis")
            return
        ndim = len(value.shape)
        if dim % ndim != value.time_axis:
            self.fail(node, "indexing an axis other than time")
            return
        if node.target == aten.select.int:
            index = int(node.args[2])
        else:  # slice: only a one-step slice, e.g. y[:, -1:]
            start = node.args[2] if len(node.args) > 2 else None
            end = node.args[3] if len(node.args) > 3 else None
            step = node.args[4] if len(node.args) > 4 else 1
            length = value.shape[value.time_axis]
            rng = range(length)[slice(start, end, step)]
            if len(rng) != 1 or step != 1:
                self.fail(node, "a slice of more than one time step")
                return
            index = rng[0] - length if start is not None and start < 0 else rng[0]
        if self.current(node, node.args[0]) is None:
            return
        self.layers.append(SelectStep(index, value.features))
        shape = _shape(node)
        batch = value.shape[value.batch_axis]
        batch_axis = [i for i, d in enumerate(shape) if d == batch][0]
        self.values[node] = _Data(len(self.layers), value.features, shape, batch_axis, None)

    def select_state(self, node: torch.fx.Node, value: _State) -> None:
        """h_n[-1] of a unidirectional top layer equals its output at the last step."""
        group = self.groups[value.group]
        top = self.layers[group.layers[-1]]
        index = node.args[2] if node.target == aten.select.int else None
        is_last = index in (-1, group.rows - 1) and node.args[1] == 0
        if (
            value.role == "h_n"
            and is_last
            and isinstance(top, RecurrentLayer)
            and top.num_directions == 1
            and top is self.layers[-1]
        ):
            self.layers.append(SelectStep(-1, top.output_size))
            shape = _shape(node)
            self.values[node] = _Data(len(self.layers), top.output_size, shape, 0, None)
            return
        self.fail(
            node,
            "indexing h_n/c_n; only h_n[-1] of a unidirectional last layer is supported "
            "(use output[:, -1] instead)",
        )

    def read_outputs(self, node: torch.fx.Node) -> tuple[OutputSpec, ...]:
        outputs = []
        for out in node.args[0]:
            value = self.values.get(out)
            if value is _FAILED:
                continue
            shape = _shape(out)
            if isinstance(value, _Data):
                if value.depth != len(self.layers):
                    self.fail(out, "returns an intermediate value of the data path")
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
                self.fail(out if isinstance(out, torch.fx.Node) else node, "an unsupported output")
        return tuple(outputs)


def read_program(
    program: torch.export.ExportedProgram, max_seq_len: int | None = None
) -> Model:
    """Turn an exported program into the IR, or raise one error listing every problem."""
    return _Reader(program, max_seq_len).read()
