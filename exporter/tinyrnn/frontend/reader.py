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
    GRULayer,
    InputSpec,
    Layer,
    LSTMLayer,
    Model,
    OutputSpec,
    PadTime,
    PoolTime,
    PoolWindow,
    RecurrentLayer,
    RNNLayer,
    SelectStep,
    StateGroup,
    Tensor,
    split_gates,
)
from ..ir import reads as ir_reads
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
    "aten.relu6.default": "relu6",
    "aten.hardtanh.default": "hardtanh",
    "aten.leaky_relu.default": "leaky_relu",
    "aten.hardsigmoid.default": "hardsigmoid",
    "aten.hardswish.default": "hardswish",
    "aten.abs.default": "abs",
    "aten.square.default": "square",
    "aten.sqrt.default": "sqrt",
}
_SCALAR_OPS = {"aten.mul.Tensor", "aten.mul.Scalar", "aten.add.Tensor", "aten.add.Scalar",
               "aten.sub.Tensor", "aten.sub.Scalar", "aten.rsub.Scalar", "aten.div.Tensor",
               "aten.div.Scalar", "aten.pow.Tensor_Scalar"}
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
_CELLS = {
    "aten.lstm_cell.default": "lstm",
    "aten.gru_cell.default": "gru",
    "aten.rnn_tanh_cell.default": "rnn_tanh",
    "aten.rnn_relu_cell.default": "rnn_relu",
}
_ZEROS = {"aten.zeros.default", "aten.zeros_like.default", "aten.new_zeros.default"}
_SELECT = {"aten.select.int", "aten.slice.Tensor"}
_CONV = {"aten.conv1d.default", "aten.conv1d.padding"}
_BATCH_NORM = {"aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"}
_POOL_TIME = {"aten.mean.dim": "mean", "aten.sum.dim_IntList": "sum", "aten.amax.default": "max",
              "aten.adaptive_avg_pool1d.default": "mean"}
_BINARY = {"aten.add.Tensor": "add", "aten.mul.Tensor": "mul"}
_CAT = {"aten.cat.default", "aten.concat.default", "aten.concatenate.default"}
_PAD = "aten.pad.default"
_POOL_WINDOW = {"aten.max_pool1d.default": "max", "aten.avg_pool1d.default": "avg"}
_PAD_MODES = ("constant", "reflect", "replicate")
_EMBEDDING = "aten.embedding.default"
MAX_VOCAB = 2**24
"""Token ids are floats at the C API's float functions: exact integers up to 2**24."""
_KNOWN = {
    *_RECURRENT, *_CELLS, *_ELEMENTWISE, *_LAST_AXIS, *_IDENTITY, *_VIEWS, *_ZEROS, *_SELECT,
    *_CONV, *_BATCH_NORM, *_SCALAR_OPS, *_POOL_TIME, *_BINARY, *_CAT, _PAD, *_POOL_WINDOW,
    "aten.linear.default", "aten.transpose.int", "aten.permute.default", "aten.stack.default",
    "aten.unbind.int",
}
_DATA_OPS = {*_ELEMENTWISE, *_LAST_AXIS, *_IDENTITY, *_VIEWS, *_SELECT, *_CONV, *_BATCH_NORM,
             *_SCALAR_OPS, *_POOL_TIME, _PAD, *_POOL_WINDOW,
             "aten.linear.default", "aten.transpose.int", "aten.permute.default"}
_CELL_HINT = {"lstm": "(h, c) = cell(x[:, t], (h, c))", "gru": "h = cell(x[:, t], h)",
              "rnn_tanh": "h = cell(x[:, t], h)", "rnn_relu": "h = cell(x[:, t], h)"}
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
    return read_captured(archive_bytes(exported))


def read_captured(data: bytes) -> Program:
    """The archive of a program captured in this process (:func:`archive_bytes`), read as
    any archive is."""
    return read_archive(data, "the captured program")


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
    channels_first: bool = False  # (B, C, T): a Conv1d's view; otherwise the features are last
    length: int = 0  # a frame (B, C, L) of one step: L positions of ``features`` channels,
    # stored (L, C) position-major; 0 for a sequence or a plain vector

    @property
    def width(self) -> int:
        """Floats per step."""
        return self.features * max(self.length, 1)


@dataclass(frozen=True)
class _Input:
    index: int  # position among the user inputs


@dataclass(frozen=True)
class _InputView:
    """A transpose or permute of the model input x (3-d): ``axes[k]`` is the input axis that
    the view's axis k shows. Only a Conv1d reads it, as (B, C, T)."""

    index: int
    axes: tuple[int, int, int]


def _moved(axes: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    """Where each role sits after ``permute(dims)``: ``axes`` are positions, one per role."""
    return tuple(dims.index(a) for a in axes)


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


@dataclass(frozen=True)
class _XStep:
    """``x[:, t]`` (or ``x[t]``) of the model input x: one time step of the sequence."""

    index: int  # the user input
    t: int
    batch_axis: int
    time_axis: int
    shape: tuple[int, ...]  # x's shape


@dataclass
class _Chain:
    """The calls of one cell (nn.LSTMCell/GRUCell/RNNCell) along time: ONE recurrent layer.

    A loop unrolled by torch.export calls the cell once per step with the same weights and
    the previous step's state; a step module calls it once (``step_module``)."""

    node: Node  # its first call
    group: int
    layer: int  # index into the layers
    weights: tuple[str, ...]  # the parameters' names: the same cell at every step
    module: str  # the cell's module path and type, for messages
    step_module: bool
    source: Any  # what step 0 read: an _XStep, or an _Cell of the chain below; None for a step
    steps: int = 1
    closed_by: str = ""  # why no further step may follow (its h was used as data)
    selected: Any = None  # the _Data of the last step's h, once something used it as data
    stacked: int = 0  # steps of the chain gathered by torch.stack
    broken: bool = False  # a later call of the cell was reported: no more about this chain


@dataclass(frozen=True)
class _Cell:
    """The h or c a cell call returned at step ``t`` of a chain."""

    chain: int
    t: int
    role: str  # "h" or "c"


@dataclass(frozen=True)
class _TimePad:
    """Zero padding of the time axis of ``source`` (a (B, C, T) value or the model input),
    which the Conv1d reading it folds into its own padding."""

    source: Any  # the padded tensor's TensorRef
    left: int
    right: int
    node: Any = None  # the pad's node: a reader other than a Conv1d makes it a PadTime layer


@dataclass(frozen=True)
class _Stacked:
    """``torch.stack`` of data-path values of one shape on a new axis ``dim`` next to their
    channel axis: a ``Concat`` once a view merges the two axes (see :meth:`_Reader.view`)."""

    values: tuple[Any, ...]  # the stacked _Data, in order
    dim: int  # the new axis in the stacked shape


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


def _suggestion(node: Node, weights: dict[str, np.ndarray]) -> str:
    """A rewrite that tinyrnn supports, for an unsupported operation that has one."""
    module = node.module
    if node.target == "aten.pad.default" and module is not None and module.short_type == "Conv1d":
        mode = node.arg("mode", "constant")
        return (f"; Conv1d padding_mode={mode!r} is not supported: use padding_mode='zeros' "
                "(the default)")
    if node.target in ("aten.max_pool1d_with_indices.default",
                       "aten.adaptive_max_pool1d.default"):
        return ("; MaxPool1d(return_indices=True) and AdaptiveMaxPool1d are not supported: use "
                "MaxPool1d without indices, or y.amax(dim) over the time axis to pool the whole "
                "sequence into one vector")
    if node.target in ("aten.embedding_renorm_.default", "aten.embedding_renorm.default"):
        return ("; nn.Embedding(max_norm=...) renormalizes the rows it looks up at every call "
                "(it changes the weight): not supported; renormalize the weight once before "
                "export and use max_norm=None")
    if node.target in ("aten.mm.default", "aten.matmul.default", "aten.addmm.default"):
        return "; a product with a weight matrix is nn.Linear"
    return ""


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
        self.chains: list[_Chain] = []
        self.step_module = False
        self.cell_outputs: dict[str, _Cell] = {}
        self.weight_shapes: dict[str, tuple[int, ...]] = {}
        self.carry_of: dict[int, int] = {}  # user input -> its Carry layer
        self.carries: list[tuple[int, int]] = []

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
            self.weight_shapes[spec.name] = array.shape
        for node in self.graph.nodes:
            for out in node.outputs:
                if out is not None:
                    self.producer[out] = node
            self.call(node)
        self.unfolded_pads(self.graph.outputs)  # a zero pad returned as it is
        outputs = self.read_outputs(self.graph.outputs)
        self.check_chains()
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
                "Supported: nn.LSTM/GRU/RNN (any options), nn.LSTMCell/GRUCell/RNNCell (a step "
                "module or a loop over time, see docs/c-api.md), nn.Embedding over a model "
                "input of token ids, Conv1d, Linear, taking one "
                "time step, relu/tanh/sigmoid/softmax/log_softmax/relu6/hardtanh/leaky_relu/"
                "hardsigmoid/hardswish/abs/square/sqrt, BatchNorm1d (folded), x * c, x + c, "
                "mean/sum/amax over time and AdaptiveAvgPool1d(1), MaxPool1d/AvgPool1d and "
                "constant/reflect/replicate padding of the time axis, dropout, in "
                "float32 the add/mul of two values of one shape (residuals), channel slices and "
                "cat on the channel axis, per-frame convs and pads in a step module, transposes "
                "between (B, T, C) "
                "and (B, C, T), and views that move no data."
            )
        if self.x_index is None:
            raise TinyRNNError("the model has no recurrent layer reading a model input")
        if not self.groups:
            raise TinyRNNError(
                "the model has no recurrent layer (nn.LSTM/GRU/RNN or a cell); tinyrnn exports "
                "recurrent models, optionally behind Conv1d layers and followed by a head")
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
            carries=tuple(self.carries),
            step_module=self.step_module,
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
        if target not in _CONV:
            self.unfolded_pads(node.tensor_inputs)
        if target in _BINARY and self.two_values(node):
            self.binary(node, _BINARY[target])
            return
        if target == "aten.mean.dim" and self.over_ones(node):
            self.mean(node)
            return
        if target in _DATA_OPS and not self.cell_as_data(node, node.first()):
            return
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
            if not _is_int(dim) or (isinstance(data, _Data) and (
                    data.channels_first or dim not in (-1, len(data.shape) - 1))):
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
        elif target in ("aten.transpose.int", "aten.permute.default"):
            self.transpose(node)
        elif target in _CONV:
            self.conv1d(node)
        elif target in _BATCH_NORM:
            self.batch_norm(node)
        elif target in _SCALAR_OPS:
            self.scalar_op(node)
        elif target in _POOL_TIME:
            self.pool_time(node, _POOL_TIME[target])
        elif target in _CELLS:
            self.cell(node, _CELLS[target])
        elif target == "aten.stack.default":
            self.stack(node)
        elif target == "aten.unbind.int":
            self.unbind(node)
        elif target in _CAT:
            self.concat(node)
        elif target == _PAD:
            self.pad(node)
        elif target in _POOL_WINDOW:
            self.pool_window(node, _POOL_WINDOW[target])
        elif target == _EMBEDDING:
            self.embedding(node)
        else:
            self.fail(node, "unsupported operation" + _suggestion(node, self.weight_shapes))

    # -- cells: a step module, or a loop over time that torch.export unrolled ------------------
    def cell_as_data(self, node: Node, arg: Any) -> bool:
        """Where ``arg`` is a cell's h, make it the data path's value: a step module's output
        at this step, or a loop's last step (a SelectStep(-1) after the layer). False when
        that is impossible (reported)."""
        value = self.value(arg)
        if not isinstance(value, _Cell):
            return True
        chain = self.chains[value.chain]
        hidden = self.layers[chain.layer].output_size
        if value.role != "h":
            self.fail(node, f"uses the cell state c of {chain.module} as data; the layer's "
                            "output is h")
            return False
        if chain.step_module:
            self.values[arg.name] = _Data(chain.layer + 1, hidden, self.shape(arg.name), 0,
                                          None)
            return True
        if value.t != chain.steps - 1:
            self.fail(node, f"uses h of step {value.t} of {chain.module} after step "
                            f"{chain.steps - 1} ran; only the last step's h can feed "
                            "other layers")
            return False
        if chain.selected is None:
            if chain.layer + 1 != len(self.layers):
                self.fail(node, "branches off the data path at an earlier layer")
                return False
            self.layers.append(SelectStep(-1, hidden))
            chain.selected = _Data(len(self.layers), hidden, self.shape(arg.name), 0, None)
            chain.closed_by = f"h of step {value.t} feeds {node.target} ({node.name})"
        self.values[arg.name] = chain.selected
        return True

    def cell(self, node: Node, cell: str) -> None:
        """One call of nn.LSTMCell/GRUCell/RNNCell: the first step of a new chain (a loop's
        step 0, a step module's only step) or the next step of the chain it continues."""
        x, hx = node.arg("input"), node.arg("hx")
        params = [node.arg("w_ih"), node.arg("w_hh"), node.arg("b_ih", None),
                  node.arg("b_hh", None)]
        parts = list(hx) if isinstance(hx, tuple) else [hx]
        if (not isinstance(x, TensorRef) or len(parts) != (2 if cell == "lstm" else 1)
                or not all(isinstance(p, TensorRef) for p in parts)
                or (params[2] is None) != (params[3] is None)):
            self.fail(node, "arguments of an unexpected form")
            return
        has_biases = params[2] is not None
        consts = [self.const(p) for p in params if p is not None]
        if any(c is None for c in consts):
            self.fail(node, "cell weights that are computed, not parameters")
            return
        weights = tuple(c.name for c in consts)
        module = self.module_text(node)
        # a cell output keeps its meaning even where it also fed a layer as data
        states = [self.cell_outputs.get(p.name) or self.value(p) for p in parts]
        source = self.cell_outputs.get(x.name) or self.value(x)
        previous = [v for v in states if isinstance(v, _Cell)]
        if previous:
            self.next_step(node, cell, source, states, weights, module)
            return
        # the first step of a chain
        again = [c for c in self.chains if c.weights == weights]
        if isinstance(source, _XStep) and source.t != 0 and again:
            again[-1].broken = True
            self.fail(node, f"{module} starts again from a zero state at step {source.t} "
                            "(a state reset inside the loop); the C carries the state over "
                            "the whole sequence: call NAME_reset between sequences instead")
            return
        if isinstance(source, _XStep):
            if source.t != 0:
                self.fail(node, f"the loop's first step reads x at step {source.t}; read x "
                                "in order from step 0: for t in range(T): "
                                + _CELL_HINT[cell])
                return
            input_size, batch = source.shape[2], source.shape[source.batch_axis]
        elif isinstance(source, _Cell) and source.role == "h" and source.t == 0:
            below = self.chains[source.chain]
            if below.step_module or below.layer != len(self.layers) - 1:
                self.fail(node, "its input is another cell's h that is not the layer below "
                                "at the same step")
                return
            input_size = self.layers[below.layer].output_size
            batch = self.shape(x.name)[0]
        elif (isinstance(source, _Data) and self.step_module and source.time_axis is None
              and source.depth == len(self.layers) and len(self.shape(x.name)) == 2
              and not self.chains):
            # a step module's frame front-end feeds the cell: x_t -> ... -> (B, I)
            input_size, batch = source.width, self.shape(x.name)[0]
        elif isinstance(source, _Input) and len(self.shape(x.name)) == 2:
            if self.chains or self.layers:
                self.fail(node, "a second model input used as a step's input")
                return
            input_size, batch = self.shape(x.name)[1], self.shape(x.name)[0]
        else:
            self.fail(node, "its input is neither x[:, t] of a model input x (a loop over "
                            "time) nor a model input x_t of shape (B, I) (a step module: "
                            "forward(x_t, h, c) -> (y, h, c))")
            return
        front_end = isinstance(source, _Data)
        if (isinstance(source, _Input) or front_end) and not all(
                isinstance(v, _Input) for v in states):
            self.fail(node, "a step module takes its state as forward arguments and returns "
                            "the new state: forward(x_t, h, c) -> (y, h, c) (LSTMCell) or "
                            "forward(x_t, h) -> (y, h)")
            return
        if not (all(isinstance(v, _Zeros) for v in states)
                or all(isinstance(v, _Input) for v in states)):
            self.fail(node, "an initial state that is neither model inputs nor zeros")
            return
        why = _weight_shapes(cell, consts, has_biases, input_size)
        if why:
            self.fail(node, f"weights of {module}: {why}")
            return
        direction = self.direction(cell, consts, has_biases, reverse=False)
        hidden = direction.gates[0].w_x.shape[0]
        name = consts[0].name
        common = dict(module=name.rsplit(".", 1)[0] if "." in name else "", layer=0,
                      input_size=input_size, hidden_size=hidden, directions=(direction,))
        if cell == "lstm":
            layer: RecurrentLayer = LSTMLayer(**common)
        elif cell == "gru":
            layer = GRULayer(**common)
        else:
            layer = RNNLayer(**common, nonlinearity="relu" if cell == "rnn_relu" else "tanh")
        if not all(self.shape_is(node, out, (batch, hidden)) for out in node.outputs):
            return
        if isinstance(source, (_XStep, _Input)):
            index = source.index
            if self.x_index is not None and self.x_index != index:
                self.fail(node, "a second model input used as a sequence")
                return
            if self.layers:
                self.fail(node, "the model input feeds a layer after other layers")
                return
            self.x_index = index
            if isinstance(source, _XStep):
                self.seq_len = source.shape[source.time_axis]
                self.inputs[index] = InputSpec("x", source.shape, source.batch_axis,
                                               source.time_axis, features=input_size)
            else:
                self.step_module = True
                self.seq_len = 1
                self.inputs[index] = InputSpec("x", (batch, 1, input_size), 0, 1,
                                               features=input_size)
        group = len(self.groups)
        self.layers.append(layer)
        self.groups.append(StateGroup(module=layer.module, layers=(len(self.layers) - 1,),
                                      cell=layer.kind, state_size=hidden, hidden_size=hidden,
                                      rows=1))
        if isinstance(states[0], _Input):
            for part, value, role in zip(parts, states, ("h0", "c0")):
                if self.shape(part.name) != (batch, hidden):
                    self.fail(node, f"the state {role} has shape "
                                    f"{list(self.shape(part.name))}; a cell's state is "
                                    f"{[batch, hidden]} (B, H)")
                    return
                self.inputs[value.index] = InputSpec(role, (batch, hidden), batch_axis=0,
                                                     size=hidden)
            self.group_inputs[group] = tuple(v.index for v in states)
        self.chains.append(_Chain(node, group, len(self.layers) - 1, weights, module,
                                  step_module=isinstance(source, _Input) or front_end,
                                  source=None if isinstance(source, (_Input, _Data))
                                  else source))
        self.set_cell_outputs(node, len(self.chains) - 1, 0)

    def next_step(self, node: Node, cell: str, source: Any, states: list[Any],
                  weights: tuple[str, ...], module: str) -> None:
        """A cell call fed by an earlier call's state: the chain's next step, or a problem."""
        first = states[0]
        chain = self.chains[first.chain] if isinstance(first, _Cell) else None
        t = chain.steps if chain else 0
        roles = ("h", "c")[:len(states)]
        if chain is not None:  # whatever is wrong with this call, it is reported once
            chain.broken = True
        if chain is None or any(not isinstance(v, _Cell) or v.chain != first.chain
                                or v.role != role for v, role in zip(states, roles)):
            self.fail(node, f"its state is not the (h, c) of one earlier step of the cell; "
                            f"carry it as {_CELL_HINT[cell]}")
            return
        if chain.step_module:
            self.fail(node, "a step module calls its cell once; for a sequence, export the "
                            "step module and call NAME_step per step (or NAME_run)")
            return
        if weights != chain.weights:
            self.fail(node, f"step {t} runs {module} while step 0 ran {chain.module}: a loop "
                            "with other weights at each step (e.g. a ModuleList of cells) is "
                            "not one recurrent layer; use one cell for every step")
            return
        if any(v.t != t - 1 for v in states):
            self.fail(node, f"step {t} starts from the state of step {first.t}, not of the "
                            f"step before; carry the state from step to step: "
                            f"{_CELL_HINT[cell]}")
            return
        if chain.closed_by:
            self.fail(node, f"step {t} runs after {chain.closed_by}: a per-step head (e.g. "
                            "fc(h) inside the loop) is not supported; collect the steps with "
                            "torch.stack(outs, 1) and apply the head to the stacked sequence, "
                            "or apply it to the last h after the loop")
            return
        below = chain.source
        expected = (isinstance(source, _XStep) and isinstance(below, _XStep)
                    and (source.index, source.time_axis) == (below.index, below.time_axis)
                    and source.t == t) or (
            isinstance(source, _Cell) and isinstance(below, _Cell)
            and source.chain == below.chain and source.role == "h" and source.t == t)
        if not expected:
            got = f"step {source.t} of x" if isinstance(source, _XStep) else "another value"
            self.fail(node, f"step {t} of {chain.module} reads {got}; a loop must feed step t "
                            f"the input's step t, in order: for t in range(T): "
                            f"{_CELL_HINT[cell]}")
            return
        hidden = self.layers[chain.layer].hidden_size
        batch = self.shape(node.outputs[0])[0] if node.outputs and node.outputs[0] else 0
        if not all(self.shape_is(node, out, (batch, hidden)) for out in node.outputs):
            return
        chain.steps += 1
        chain.broken = False
        self.set_cell_outputs(node, first.chain, t)

    def set_cell_outputs(self, node: Node, chain: int, t: int) -> None:
        for out, role in zip(node.outputs, ("h", "c")):
            if out is not None:
                self.values[out] = self.cell_outputs[out] = _Cell(chain, t, role)

    def module_text(self, node: Node) -> str:
        module = node.module
        return f"{module.path} ({module.short_type})" if module else "the cell"

    def stack(self, node: Node) -> None:
        """``torch.stack(outs, dim)`` of a loop's h at every step so far: the layer's output
        sequence."""
        tensors, dim = node.arg("tensors"), node.arg("dim", 0)
        values = ([self.cell_outputs.get(t.name) or self.value(t) for t in tensors]
                  if isinstance(tensors, tuple) and all(isinstance(t, TensorRef) for t in tensors)
                  else [])
        if values and not any(isinstance(v, _Cell) for v in values) and _is_int(dim):
            self.stack_channels(node, tensors, dim)
            return
        if not values or not all(isinstance(v, _Cell) for v in values):
            self.fail(node, "unsupported operation (tinyrnn stacks a loop's cell outputs h "
                            "over time, or data-path values next to their channel axis)")
            return
        chain = self.chains[values[0].chain]
        out_shape = self.out_shape(node)
        if (chain.step_module or any(v.chain != values[0].chain or v.role != "h"
                                     for v in values)
                or [v.t for v in values] != list(range(len(values)))):
            self.fail(node, "stacks values other than the h of one cell at steps 0, 1, ...; "
                            "return a step module's state as separate values (y, h, c)")
            return
        if not _is_int(dim) or len(out_shape) != 3 or dim % 3 not in (0, 1):
            self.fail(node, f"stacks the steps on dim {dim}; stack them on the time axis "
                            "(1 for batch-first, 0 for time-first)")
            return
        if chain.layer + 1 != len(self.layers):
            self.fail(node, "branches off the data path at an earlier layer")
            return
        time_axis = dim % 3
        chain.stacked = len(values)
        self.set(node, _Data(len(self.layers), self.layers[chain.layer].output_size,
                             out_shape, 1 - time_axis, time_axis))

    def stack_channels(self, node: Node, tensors: tuple, dim: int) -> None:
        """``torch.stack(values, dim)`` of data-path values of one shape and layout, with the
        new axis just before or just after their channel axis: a pending value that the view
        merging the two axes makes a Concat (before: ``cat``; after: the channels
        interleaved, ``y[c * K + k] = values[k][c]``)."""
        values = []
        for tensor in tensors:
            value = self.data_value(node, tensor)
            if value is None:
                return
            values.append(value)
        first = values[0]
        ndim = len(first.shape) + 1
        axis = self.channel_axis(first)
        if any((v.shape, v.channels_first, v.time_axis, v.batch_axis, v.length)
               != (first.shape, first.channels_first, first.time_axis, first.batch_axis,
                   first.length) for v in values) or first.length:
            self.fail(node, "stack of values of different shapes or layouts")
            return
        if not -ndim <= dim < ndim or dim % ndim not in (axis, axis + 1):
            self.fail(node, f"stack on dim {dim}; tinyrnn stacks data-path values next to "
                            f"their channel axis (dim {axis} or {axis + 1}), then flattens "
                            "the two")
            return
        shape = list(first.shape)
        shape.insert(dim % ndim, len(values))
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, tuple(shape)):
            return
        self.set(node, _Stacked(tuple(values), dim % ndim))

    def stacked_view(self, node: Node, stacked: _Stacked, shape: tuple[int, ...]) -> None:
        """A view of a :class:`_Stacked` value that merges the new axis with the channel
        axis: a Concat layer (float32)."""
        first = stacked.values[0]
        axis = self.channel_axis(first)
        k = len(stacked.values)
        merged = list(first.shape)
        merged[axis] *= k
        if tuple(shape) != tuple(merged):
            self.fail(node, f"a view of stacked values to {list(shape)}; tinyrnn merges the "
                            f"stacked axis with the channel axis, giving {merged}")
            return
        c = first.features
        if stacked.dim == axis:  # (K, C) -> K * C: one part after the other
            layer = Concat(tuple(v.depth for v in stacked.values), (c,) * k)
        else:  # (C, K) -> C * K: the channels interleaved
            layer = Concat(tuple(v.depth for v in stacked.values), (1,) * k, c)
        self.layers.append(layer)
        self.set(node, replace(first, depth=len(self.layers), features=c * k,
                               shape=tuple(shape)))

    def unbind(self, node: Node) -> None:
        """``x.unbind(1)`` (``for x_t in x.unbind(1)``): the steps of the model input."""
        value, dim = self.value(node.first()), node.arg("dim", 0)
        shape = self.shape(node.first().name) if isinstance(node.first(), TensorRef) else ()
        if not (isinstance(value, _Input) and len(shape) == 3 and _is_int(dim)
                and dim % 3 in (0, 1) and len(node.outputs) == shape[dim % 3]):
            self.fail(node, "unbinding something other than a model input's time axis")
            return
        time_axis = dim % 3
        for t, out in enumerate(node.outputs):
            if out is not None:
                self.values[out] = _XStep(value.index, t, 1 - time_axis, time_axis, shape)

    def check_chains(self) -> None:
        """Every loop covers the whole sequence, and a stack gathers every step."""
        for chain in self.chains:
            if chain.step_module or chain.broken:
                continue
            if chain.steps != self.seq_len:
                self.fail(chain.node, f"the loop over {chain.module} runs {chain.steps} of the "
                                      f"{self.seq_len} steps of x; run the cell over every "
                                      "step (the C runs it over all T)")
            elif chain.stacked and chain.stacked != chain.steps:
                self.fail(chain.node, f"torch.stack gathers {chain.stacked} of the "
                                      f"{chain.steps} steps of {chain.module}; stack every "
                                      "step")

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
        if data.channels_first:
            self.fail(node, "a Linear over the time axis of a (B, C, T) value; transpose it "
                            "to (B, T, C) first (x.transpose(1, 2))")
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
        value = self.value(node.first())
        earlier = isinstance(value, _Data) and value.depth < len(self.layers)
        data = self.data_value(node, node.first()) if earlier else self.current(
            node, node.first())
        if data is None or not self.shape_is(node, node.outputs[0] if node.outputs else None,
                                             data.shape):
            return
        options: dict[str, float] = {}
        if kind == "relu6":
            options = dict(low=0.0, high=6.0)
        elif kind == "hardtanh":
            low, high = node.arg("min_val", -1.0), node.arg("max_val", 1.0)
            if not (type(low) in (int, float) and type(high) in (int, float) and low < high
                    and np.isfinite([low, high]).all()):
                self.fail(node, f"hardtanh bounds {low!r}, {high!r}; tinyrnn needs finite "
                                "min_val < max_val")
                return
            options = dict(low=float(low), high=float(high))
        elif kind == "leaky_relu":
            slope = node.arg("negative_slope", 0.01)
            if type(slope) not in (int, float) or not np.isfinite(slope):
                self.fail(node, f"leaky_relu with negative_slope {slope!r}")
                return
            options = dict(slope=float(slope))
        self.layers.append(Activation(kind, data.width,  # type: ignore[arg-type]
                                      reads=(data.depth,) if earlier else (), **options))
        self.set(node, replace(data, depth=len(self.layers)))

    def pool_time(self, node: Node, kind: str) -> None:
        """The mean, sum or max over the whole time axis (``y.mean(1)``, ``y.sum(dim=1)``,
        ``y.amax(1)``, ``AdaptiveAvgPool1d(1)`` of (B, C, T)): a sequence becomes a vector, as
        taking one step does (a PoolTime layer, then SelectStep(0))."""
        data = self.current(node, node.first())
        if data is None:
            return
        if data.time_axis is None:
            self.fail(node, f"a {kind} over an axis longer than 1 of a value that has no "
                            "time axis (tinyrnn reduces the time axis only)")
            return
        ndim = len(data.shape)
        if node.target == "aten.adaptive_avg_pool1d.default":
            size = node.arg("output_size")
            if size not in ((1,), 1) or not data.channels_first:
                self.fail(node, f"AdaptiveAvgPool1d({size!r}) of a value of shape "
                                f"{list(data.shape)}; tinyrnn reads AdaptiveAvgPool1d(1) of "
                                "(B, C, T) (the mean over time)")
                return
            dims: Any = (data.time_axis,)
            keep = True
        else:
            dims = node.arg("dim", None)
            dims = (dims,) if _is_int(dims) else dims
            keep = node.arg("keepdim", False)
            if node.arg("dtype", None) is not None:
                self.fail(node, f"{kind} with a dtype")
                return
        if not (isinstance(dims, tuple) and len(dims) == 1 and _is_int(dims[0])
                and -ndim <= dims[0] < ndim and dims[0] % ndim == data.time_axis
                and type(keep) is bool):
            what = "the time axis and the batch" if dims in (None, ()) else f"dim {dims!r}"
            self.fail(node, f"a {kind} over {what} of a value of shape {list(data.shape)}; "
                            f"tinyrnn reduces the time axis only (dim {data.time_axis})")
            return
        shape = list(data.shape)
        if keep:
            shape[data.time_axis] = 1
        else:
            del shape[data.time_axis]
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, tuple(shape)):
            return
        self.layers.append(PoolTime(kind, data.features))  # type: ignore[arg-type]
        self.layers.append(SelectStep(0, data.features))
        batch = data.batch_axis - (0 if keep or data.batch_axis < data.time_axis else 1)
        self.set(node, _Data(len(self.layers), data.features, tuple(shape), batch, None))

    def scalar_op(self, node: Node) -> None:
        """``x * c``, ``x + c``, ``x - c``, ``c - x``, ``x / c`` with a number ``c`` (an affine
        map: folded into a Linear or Conv1d before it, see :meth:`affine`), ``x * x`` and
        ``x ** 2`` (square), ``x ** 0.5`` (sqrt)."""
        target = node.target
        other = node.arg("exponent") if target == "aten.pow.Tensor_Scalar" else node.arg("other")
        x = node.first()
        if target == "aten.pow.Tensor_Scalar":
            kinds = {2: "square", 0.5: "sqrt", 1: None}
            if type(other) not in (int, float) or other not in kinds:
                self.fail(node, f"x ** {other!r}; tinyrnn reads the powers 2 (square) and 0.5 "
                                "(sqrt)")
            elif kinds[other] is None:
                data = self.current(node, x)
                if data is not None:
                    self.set(node, data)
            else:
                self.activation(node, kinds[other])  # type: ignore[arg-type]
            return
        if (target == "aten.mul.Tensor" and isinstance(other, TensorRef)
                and isinstance(x, TensorRef) and other.name == x.name):
            self.activation(node, "square")
            return
        if type(other) not in (int, float) or not np.isfinite(other):
            self.fail(node, "unsupported operation (tinyrnn reads this operation with a "
                            "number, e.g. x * 0.5 or x + 1, or as x * x)")
            return
        if "alpha" in dict(node.args) and node.arg("alpha") != 1:
            self.fail(node, f"{target} with alpha {node.arg('alpha')!r}")
            return
        data = self.current(node, x)
        if data is None or not self.shape_is(node, node.outputs[0] if node.outputs else None,
                                             data.shape):
            return
        c = float(other)
        op = target.split(".")[1]
        if op == "div" and c == 0:
            self.fail(node, "a division by zero")
            return
        scale, shift = {"mul": (c, 0.0), "add": (1.0, c), "sub": (1.0, -c),
                        "rsub": (-1.0, c), "div": (1.0 / (c or 1.0), 0.0)}[op]
        what = {"mul": f"x * {c!r}", "add": f"x + {c!r}", "sub": f"x - {c!r}",
                "rsub": f"{c!r} - x", "div": f"x / {c!r}"}[op]
        n = data.features
        self.affine(node, data, what, np.full(n, scale), np.full(n, shift),
                    f"s = {scale!r} ({what})", f"+ {shift!r} ({what})")

    def batch_norm(self, node: Node) -> None:  # noqa: C901 - one check per argument
        """``nn.BatchNorm1d`` in eval mode: ``y = (x - mean) / sqrt(var + eps) * weight + bias``
        per channel (axis 1 of its input: (B, C, T) or (B, C)), an affine map folded into the
        layer before it (:meth:`affine`)."""
        names = ("weight", "bias", "running_mean", "running_var")
        refs = [node.arg(n, None) for n in names]
        consts = [self.const(r) if r is not None else None for r in refs]
        if any(r is not None and c is None for r, c in zip(refs, consts)):
            self.fail(node, "a BatchNorm with parameters that are computed, not stored")
            return
        weight, bias, mean, var = consts
        if mean is None or var is None:
            self.fail(node, "a BatchNorm without running statistics (track_running_stats=False "
                            "normalizes with each batch's own statistics); tinyrnn folds the "
                            "running mean and variance of eval()")
            return
        if node.target == "aten.batch_norm.default" and node.arg("training", False) is not False:
            self.fail(node, "BatchNorm in training mode; export the model in eval()")
            return
        eps = node.arg("eps")
        if type(eps) not in (int, float) or not 0 <= eps < 1:
            self.fail(node, f"a BatchNorm with eps {eps!r}")
            return
        data = self.current(node, node.first())
        if data is None:
            return
        if not (data.channels_first or (data.time_axis is None and len(data.shape) == 2
                                        and data.batch_axis == 0)):
            self.fail(node, f"a BatchNorm over axis 1 of a value of shape {list(data.shape)}, "
                            "which is not its features; BatchNorm1d reads (B, C, T) or (B, C): "
                            "apply it as bn(y.transpose(1, 2)).transpose(1, 2)")
            return
        channels = data.features
        if any(c is not None and c.tensor.shape != (channels,) for c in consts):
            self.fail(node, f"BatchNorm statistics that are not {channels} per-channel values")
            return
        if np.any(var.tensor + eps <= 0):
            self.fail(node, f"a BatchNorm whose running_var + eps is not positive "
                            f"({var.name})")
            return
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, data.shape):
            return
        bn = mean.name.removesuffix(".running_mean")
        scale = 1.0 / np.sqrt(var.tensor + eps)
        what = f"1 / sqrt({var.name} + {eps!r})"
        if weight is not None:
            scale, what = scale * weight.tensor, f"{weight.name} / sqrt({var.name} + {eps!r})"
        shift = -mean.tensor * scale
        shift_what = f"- {mean.name} * s"
        if bias is not None:
            shift, shift_what = shift + bias.tensor, f"+ {bias.name} {shift_what}"
        self.affine(node, data, bn, scale, shift, f"s = {what}", shift_what)

    def affine(self, node: Node, data: _Data, name: str, scale: np.ndarray, shift: np.ndarray,
               scale_what: str, shift_what: str) -> None:
        """``y = scale * x + shift`` per channel of the data path's current value: folded into
        the layer that computed it when that is a Linear or a Conv1d (only its weights change,
        in every format), else a Dense layer with the diagonal weights ``diag(scale)``. The
        value before the fold becomes an intermediate value: nothing may read it any more."""
        last = self.layers[-1] if self.layers else None
        if isinstance(last, (Dense, Conv1d)):
            self.layers[-1] = _fold(last, scale, shift, f"{name}: {scale_what}", shift_what)
            for key, value in self.values.items():
                if isinstance(value, _Data) and value.depth == len(self.layers):
                    self.values[key] = replace(value, depth=-1)
            self.set(node, replace(data, shape=self.out_shape(node)))
            return
        self.layers.append(Dense(
            name=name,
            weight=Tensor(np.diag(scale), f"diag(s), {scale_what}"),
            bias=Tensor(np.asarray(shift, dtype=np.float64), f"{shift_what.lstrip('+ ')}"),
            diagonal=True,
        ))
        self.set(node, replace(data, depth=len(self.layers), shape=self.out_shape(node)))

    def view(self, node: Node) -> None:
        value = self.value(node.first())
        shape = self.out_shape(node)
        if isinstance(value, _Stacked):
            self.stacked_view(node, value, shape)
            return
        if isinstance(value, _Input) and self.x_index is None:
            value = self.step_input(node, value, node.first()) or value
        if (isinstance(value, _Data) and value.time_axis is None and value.batch_axis == 0
                and len(shape) in (2, 3) and shape[0] == value.shape[0]
                and (value.length <= 1 or value.features == 1)
                and (len(shape) == 2 or 1 in shape[1:])
                and int(np.prod(shape[1:])) == value.width):
            # one step's vector, or a frame of one channel or one position: (B, N), (B, 1, N)
            # and (B, N, 1) hold the same floats in the same order
            self.set(node, _Data(value.depth, value.width, shape, 0, None))
            return
        if isinstance(value, _Data) and value.channels_first and shape != value.shape:
            self.fail(node, f"a view of a (B, C, T) value from {list(value.shape)} to "
                            f"{list(shape)}; transpose it to (B, T, C) first")
            return
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
        """``transpose`` or ``permute`` of a 3-d sequence: batch and time swapped, or the
        channels moved between last and the middle of (B, C, T) (a Conv1d's layout), or the
        same on the model input x, which a Conv1d then reads."""
        value = self.value(node.first())
        dims = self.permutation(node)
        out = node.outputs[0] if node.outputs else None
        if dims is None:
            self.fail(node, f"{node.target} with dims of an unexpected form")
            return
        if isinstance(value, _Input) and isinstance(node.first(), TensorRef):
            if len(self.shape(node.first().name)) == 3:
                self.set(node, _InputView(value.index, dims))
                return
        if isinstance(value, _InputView):
            self.set(node, _InputView(value.index, tuple(value.axes[d] for d in dims)))
            return
        if isinstance(value, _Data) and value.time_axis is not None and len(value.shape) == 3:
            channel = 1 if value.channels_first else 2
            batch, time, channel = _moved((value.batch_axis, value.time_axis, channel), dims)
            shape = tuple(value.shape[d] for d in dims)
            if channel == 2 or (batch, channel, time) == (0, 1, 2):
                if not self.shape_is(node, out, shape):
                    return
                self.set(node, replace(value, shape=shape, batch_axis=batch, time_axis=time,
                                       channels_first=channel == 1))
                return
        self.fail(node, "a transpose other than swapping the batch and time axes or moving "
                        "the channels between (B, T, C) and (B, C, T)")

    def permutation(self, node: Node) -> tuple[int, int, int] | None:
        """The dims of a 3-d transpose or permute as a permutation, or None."""
        if node.target == "aten.permute.default":
            dims = node.arg("dims")
            if not (isinstance(dims, tuple) and len(dims) == 3 and all(map(_is_int, dims))):
                return None
            perm = tuple(d % 3 for d in dims)
        else:
            d0, d1 = node.arg("dim0"), node.arg("dim1")
            if not (_is_int(d0) and _is_int(d1) and -3 <= d0 < 3 and -3 <= d1 < 3):
                return None
            order = [0, 1, 2]
            order[d0 % 3], order[d1 % 3] = order[d1 % 3], order[d0 % 3]
            perm = tuple(order)
        return perm if sorted(perm) == [0, 1, 2] else None  # type: ignore[return-value]

    def conv1d(self, node: Node) -> None:  # noqa: C901 - one check per option
        """``nn.Conv1d`` (``aten.conv1d``) on a (B, C, T) value: the model input x (as given or
        transposed/permuted) or the data path moved to (B, C, T)."""
        x, weight, bias = node.arg("input"), node.arg("weight"), node.arg("bias", None)
        stride, padding = node.arg("stride", (1,)), node.arg("padding", (0,))
        dilation, groups = node.arg("dilation", (1,)), node.arg("groups", 1)
        w = self.const(weight)
        b = self.const(bias) if bias is not None else None
        if w is None or (bias is not None and b is None):
            self.fail(node, "a Conv1d with weights that are not parameters")
            return
        single = [v[0] if isinstance(v, tuple) and len(v) == 1 else v
                  for v in (stride, dilation)]
        if not all(_is_int(v) and v >= 1 for v in single) or not _is_int(groups) or groups < 1:
            self.fail(node, "a Conv1d with stride, dilation or groups of an unexpected form")
            return
        stride, dilation = single
        if w.tensor.ndim != 3 or w.tensor.shape[0] % groups or min(w.tensor.shape) < 1:
            self.fail(node, f"Conv1d weights of shape {list(w.tensor.shape)} for {groups} "
                            "group(s)")
            return
        out_ch, in_per_group, kernel = w.tensor.shape
        if b is not None and b.tensor.shape != (out_ch,):
            self.fail(node, f"a Conv1d bias of shape {list(b.tensor.shape)}")
            return
        span = dilation * (kernel - 1)
        if padding == "same":
            pad_left, pad_right = span // 2, span - span // 2
        elif padding == "valid":
            pad_left = pad_right = 0
        elif isinstance(padding, tuple) and len(padding) == 1 and _is_int(padding[0]) \
                and padding[0] >= 0:
            pad_left = pad_right = padding[0]
        else:
            self.fail(node, f"Conv1d padding {padding!r}; tinyrnn reads an int, 'same' or "
                            "'valid'")
            return
        frame = self.frame_of(self.value(x), self.shape(x.name)) if isinstance(
            x, TensorRef) else None
        if frame is not None:
            self.frame_conv(node, self.value(x), frame, w, b, stride, dilation, groups,
                            pad_left, pad_right)
            return
        # the input: (B, C, T), perhaps zero-padded on the time axis first (folded here)
        padded = self.value(x)
        if isinstance(padded, _TimePad):
            pad_left, pad_right = pad_left + padded.left, pad_right + padded.right
            x = padded.source
        source = self.value(x)
        in_shape = self.shape(x.name) if isinstance(x, TensorRef) else ()
        if len(in_shape) != 3:
            self.fail(node, "a Conv1d on an unbatched input; pass (B, C, T)")
            return
        if isinstance(source, (_Input, _InputView)):
            if not self.take_input(node, source):
                return
            batch = in_shape[0]
        else:
            data = self.current(node, x)
            if data is None:
                return
            if not data.channels_first:
                self.fail(node, "a Conv1d on a (B, T, C) value; it reads (B, C, T): "
                                "transpose first (x.transpose(1, 2))")
                return
            batch = in_shape[0]
        if in_shape[1] != in_per_group * groups:
            self.fail(node, f"Conv1d weights of shape {list(w.tensor.shape)} with {groups} "
                            f"group(s) for {in_shape[1]} input channels")
            return
        layer = Conv1d(
            name=w.name.removesuffix(".weight"),
            weight=self.tensor_of(w, None, ""),
            bias=self.tensor_of(b, None, "") if b is not None else None,
            stride=stride, dilation=dilation, groups=groups, pad_left=pad_left,
            pad_right=pad_right,
        )
        steps = in_shape[2]
        out_steps = layer.out_steps(steps)
        if out_steps < 1:
            self.fail(node, f"a Conv1d that gives no output step from the {steps} steps it "
                            f"reads (stride {stride}, padding {padding!r}, kernel {kernel}, "
                            f"dilation {dilation})")
            return
        if not self.shape_is(node, node.outputs[0] if node.outputs else None,
                             (batch, out_ch, out_steps)):
            return
        self.layers.append(layer)
        self.set(node, _Data(len(self.layers), out_ch, self.out_shape(node), 0, 2,
                             channels_first=True))

    def embedding(self, node: Node) -> None:
        """``nn.Embedding`` over a model input of token ids (B, T): the first layer, and x
        becomes one feature per step, the id (docs/c-api.md, "Token ids"). ``padding_idx``,
        ``scale_grad_by_freq`` and ``sparse`` only change training; ``max_norm`` is its own
        node (``embedding_renorm_``), refused by name."""
        weight, ids = node.arg("weight"), node.arg("indices")
        w = self.const(weight)
        source = self.value(ids)
        if w is None or w.tensor.ndim != 2:
            self.fail(node, "an Embedding whose weight is not a (num_embeddings, "
                            "embedding_dim) parameter")
            return
        if not isinstance(source, _Input):
            self.fail(node, "an Embedding whose token ids are computed; tinyrnn reads token "
                            "ids only as a model input (a forward argument of (B, T) int64)")
            return
        if self.x_index is not None or self.layers:
            self.fail(node, "the model input feeds a layer after other layers")
            return
        shape = self.shape(ids.name)
        dtype = self.graph.tensors[ids.name].dtype.name
        if len(shape) != 2 or not dtype.startswith(("int", "uint")):
            self.fail(node, f"token ids of shape {list(shape)} and dtype {dtype}; tinyrnn reads "
                            "token ids as (B, T) integers (batch first)")
            return
        vocab, dim = w.tensor.shape
        if vocab > MAX_VOCAB:
            self.fail(node, f"an Embedding of {vocab} token ids; the C takes ids as floats, "
                            f"exact up to {MAX_VOCAB}")
            return
        if not self.shape_is(node, node.outputs[0] if node.outputs else None,
                             shape + (dim,)):
            return
        self.layers.append(Embedding(w.name.removesuffix(".weight"),
                                     self.tensor_of(w, None, "")))
        self.x_index, self.seq_len = source.index, shape[1]
        self.inputs[source.index] = InputSpec("x", shape, 0, 1, features=1, vocab=vocab)
        self.set(node, _Data(1, dim, self.out_shape(node), 0, 1))

    def take_input(self, node: Node, source: _Input | _InputView) -> bool:
        """The model input x, read as (B, C, T) by the first layer (a Conv1d, a pooling window
        or a padding of the time axis): x's spec recorded; False (reported) after a layer."""
        axes = source.axes if isinstance(source, _InputView) else (0, 1, 2)
        if self.x_index is not None or self.layers:
            self.fail(node, "the model input feeds a layer after other layers")
            return False
        x_shape = self.shape(self.graph.user_inputs[source.index])
        self.x_index = source.index
        self.seq_len = x_shape[axes[2]]
        self.inputs[source.index] = InputSpec("x", x_shape, axes[0], axes[2],
                                              features=x_shape[axes[1]])
        return True

    def time_major(self, node: Node, arg: Any, what: str) -> _Data | None:
        """The (B, C, T) value ``arg`` that a pooling window or a padding of the time axis
        reads: the model input x (as given or transposed/permuted), or the latest data-path
        value moved to (B, C, T)."""
        source = self.value(arg)
        shape = self.shape(arg.name) if isinstance(arg, TensorRef) else ()
        if len(shape) != 3:
            self.fail(node, f"{what} of a value of shape {list(shape)}; tinyrnn reads (B, C, T)")
            return None
        if isinstance(source, (_Input, _InputView)):
            if not self.take_input(node, source):
                return None
            return _Data(0, shape[1], shape, 0, 2, channels_first=True)
        data = self.current(node, arg)
        if data is None:
            return None
        if not data.channels_first or data.time_axis != 2 or data.length:
            self.fail(node, f"{what} of a (B, T, C) value; it reads (B, C, T): transpose first "
                            "(x.transpose(1, 2))")
            return None
        return data

    def pool_window(self, node: Node, kind: str) -> None:  # noqa: C901 - one check per option
        """``nn.MaxPool1d`` / ``nn.AvgPool1d`` (``F.max_pool1d`` / ``F.avg_pool1d``) over the
        time axis of a (B, C, T) value: a :class:`PoolWindow` layer (it changes the length)."""
        what = "MaxPool1d" if kind == "max" else "AvgPool1d"

        def one(value: Any, default: int | None) -> int | None:
            if value in ((), []) and default is not None:
                return default
            value = value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value
            return value if _is_int(value) else None

        kernel = one(node.arg("kernel_size"), None)
        stride = one(node.arg("stride", ()), kernel or 1)
        pad = one(node.arg("padding", 0), 0)
        dilation = one(node.arg("dilation", 1), 1) if kind == "max" else 1
        ceil_mode = node.arg("ceil_mode", False)
        include = node.arg("count_include_pad", True) if kind == "avg" else True
        if None in (kernel, stride, pad, dilation) or kernel < 1 or stride < 1 or pad < 0 \
                or type(ceil_mode) is not bool or type(include) is not bool:
            self.fail(node, f"a {what} with kernel, stride or padding of an unexpected form")
            return
        if dilation != 1:
            self.fail(node, f"{what} with dilation {dilation}; tinyrnn pools windows of "
                            "consecutive steps (dilation 1)")
            return
        if ceil_mode and stride != 1:
            self.fail(node, f"{what} with ceil_mode=True and stride {stride}; tinyrnn computes "
                            "torch's floor formula for the length (ceil_mode=False)")
            return
        if 2 * pad > kernel:
            self.fail(node, f"{what} with padding {pad} beyond half its kernel {kernel}")
            return
        data = self.time_major(node, node.first(), what)
        if data is None:
            return
        module = node.module
        layer = PoolWindow(kind, data.features, kernel, stride, pad,  # type: ignore[arg-type]
                           include, module.path if module is not None else "")
        steps = data.shape[2]
        out_steps = layer.out_steps(steps)
        if out_steps < 1:
            self.fail(node, f"a {what} of kernel {kernel} (padding {pad}) that gives no output "
                            f"step from the {steps} steps it reads")
            return
        out = (data.shape[0], data.features, out_steps)
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, out):
            return
        self.layers.append(layer)
        self.set(node, _Data(len(self.layers), data.features, out, 0, 2, channels_first=True))

    def pad_time(self, node: Node, arg: Any, mode: str, fill: Any, pads: tuple[int, int]
                 ) -> _Data | None:
        """A padding of the time axis of a whole (B, C, T) sequence that no Conv1d folds (a
        mode other than zeros, or another reader): a :class:`PadTime` layer."""
        if not isinstance(fill, (int, float)) or isinstance(fill, bool) \
                or not np.isfinite(fill):
            self.fail(node, f"a padding value {fill!r}")
            return None
        data = self.time_major(node, arg, f"{mode} padding")
        if data is None:
            return None
        steps = data.shape[2]
        if mode == "reflect" and max(pads) >= steps:
            self.fail(node, f"reflect padding by {max(pads)} of a sequence of {steps} steps "
                            "(torch needs fewer than the steps)")
            return None
        out = (data.shape[0], data.features, steps + pads[0] + pads[1])
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, out):
            return None
        module = node.module
        self.layers.append(PadTime(mode, float(fill), pads[0], pads[1],  # type: ignore[arg-type]
                                   data.features, module.path if module is not None else ""))
        value = _Data(len(self.layers), data.features, out, 0, 2, channels_first=True)
        self.set(node, value)
        return value

    def unfolded_pads(self, names: tuple[str | None, ...]) -> None:
        """A zero padding of the time axis (of the values ``names``) read by anything but a
        Conv1d (which folds it into its own padding), or returned, becomes a
        :class:`PadTime` layer before that reader."""
        for name in names:
            pad = self.values.get(name) if name is not None else None
            if isinstance(pad, _TimePad) and pad.node is not None:
                value = self.pad_time(pad.node, pad.source, "constant", 0.0,
                                      (pad.left, pad.right))
                self.values[name] = value if value is not None else _FAILED

    def select(self, node: Node) -> None:
        value = self.value(node.first())
        dim = node.arg("dim", 0)
        if isinstance(value, _State):
            self.select_state(node, value)
            return
        shape = self.shape(node.first().name) if isinstance(node.first(), TensorRef) else ()
        if (isinstance(value, _Input) and node.target == "aten.select.int" and len(shape) == 3
                and _is_int(dim) and -3 <= dim < 3 and dim % 3 in (0, 1)
                and _is_int(node.arg("index")) and -shape[dim] <= node.arg("index") < shape[dim]):
            # x[:, t] of a loop over time (a cell reads it); the batch is the other axis
            time_axis = dim % 3
            self.set(node, _XStep(value.index, node.arg("index") % shape[dim], 1 - time_axis,
                                  time_axis, shape))
            return
        if (isinstance(value, _Data) and node.target == "aten.slice.Tensor" and _is_int(dim)
                and -len(value.shape) <= dim < len(value.shape)
                and dim % len(value.shape) == self.channel_axis(value)):
            self.channel_slice(node, value)
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

    # -- values beyond the chain: residuals, channel slices, cat ----------------------------
    @staticmethod
    def channel_axis(value: _Data) -> int:
        return 1 if value.channels_first else len(value.shape) - 1

    def data_value(self, node: Node, arg: Any) -> _Data | None:
        """A data-path value ``arg``, the latest or an earlier one (a residual reads both), or
        the model input x once a layer read it (value 0); else the node is reported."""
        if not self.cell_as_data(node, arg):
            return None
        value = self.value(arg)
        if isinstance(value, _Input) and self.x_index is None:
            data = self.step_input(node, value, arg)
            if data is not None:
                return data
            if value.index != 0:  # x_t's frame is read after a carried value (Silero: cat)
                first = self.graph.user_inputs[0]
                self.step_input(node, _Input(0), TensorRef(first))
        if isinstance(value, _Input) and self.step_module and value.index != self.x_index:
            return self.carry(node, value, arg)
        if isinstance(value, (_Input, _InputView)) and value.index == self.x_index:
            if self.step_module:
                return _Data(0, self.inputs[value.index].features, self.shape(arg.name), 0, None)
            spec = self.inputs[value.index]
            shape = self.shape(arg.name)
            if isinstance(value, _Input) and spec.time_axis is not None:
                return _Data(0, spec.features, shape, spec.batch_axis, spec.time_axis,
                             channels_first=len(shape) == 3 and spec.time_axis == 2)
            if isinstance(value, _InputView) and spec.time_axis is not None:
                batch, time = value.axes.index(spec.batch_axis), value.axes.index(spec.time_axis)
                if batch == 0 and time in (1, 2):
                    return _Data(0, spec.features, shape, 0, time, channels_first=time == 2)
        if not isinstance(value, _Data):
            self.fail(node, "its input is not the model's sequence data")
            return None
        taken = [i for i, layer in enumerate(self.layers) if isinstance(layer, SelectStep)]
        if taken and value.depth <= taken[-1]:
            self.fail(node, "reads a sequence from before the time step the model takes; take "
                            "the step of each value it combines")
            return None
        return value

    def step_input(self, node: Node, value: _Input, arg: Any) -> _Data | None:
        """The first forward argument ``x_t`` (B, N) of a step module whose frame front-end
        reads it (``x_t.unsqueeze(1)``, a cat): the data path's value 0."""
        shape = self.shape(arg.name)
        if value.index != 0 or len(shape) != 2 or self.layers:
            return None
        batch, size = shape
        self.x_index, self.step_module, self.seq_len = value.index, True, 1
        self.inputs[value.index] = InputSpec("x", (batch, 1, size), 0, 1, features=size)
        return _Data(0, size, shape, 0, None)

    def carry(self, node: Node, value: _Input, arg: Any) -> _Data | None:
        """A step module's forward argument after x_t that is neither a cell's state: a
        carried value (Silero's context), (B, N); the forward returns its new value."""
        shape = self.shape(arg.name)
        if len(shape) != 2:
            self.fail(node, f"a carried value of shape {list(shape)}; a step module carries "
                            "(B, N) values")
            return None
        if value.index not in self.carry_of:
            self.layers.append(Carry(shape[1]))
            self.carry_of[value.index] = len(self.layers) - 1
            self.inputs[value.index] = InputSpec("carry", shape, 0, size=shape[1])
        return _Data(self.carry_of[value.index] + 1, shape[1], shape, 0, None)

    def frame_of(self, value: Any, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """(C, L) where ``value`` (torch shape ``shape``) is one step's frame (B, C, L): a frame
        value, or a vector viewed as (B, 1, N) or (B, N, 1)."""
        if not isinstance(value, _Data) or value.time_axis is not None or len(shape) != 3:
            return None
        if value.length:
            return value.features, value.length
        if (shape[1] == 1 or shape[2] == 1) and shape[1] * shape[2] == value.width:
            return shape[1], shape[2]
        return None

    def two_values(self, node: Node) -> bool:
        """Whether ``a + b`` / ``a * b`` combines two different tensors that are not stored
        constants (a residual, :meth:`binary`); a number, a constant or ``x * x`` is a
        :meth:`scalar_op`."""
        a, b = node.arg("self", None), node.arg("other", None)
        return (isinstance(a, TensorRef) and isinstance(b, TensorRef) and a.name != b.name
                and self.const(a) is None and self.const(b) is None)

    def over_ones(self, node: Node) -> bool:
        """Whether a mean is over axes of size 1 only (Silero's ``mean(dim=1)`` of (B, 1)),
        which moves no data (:meth:`mean`); a mean over the time axis is a PoolTime."""
        dims = node.arg("dim", None)
        dims = (dims,) if _is_int(dims) else dims
        shape = self.shape(node.first().name) if isinstance(node.first(), TensorRef) else ()
        return (isinstance(dims, tuple) and bool(dims) and bool(shape)
                and all(_is_int(d) and -len(shape) <= d < len(shape) and shape[d] == 1
                        for d in dims)
                and node.arg("dtype", None) is None)

    def mean(self, node: Node) -> None:
        """A mean over axes of size 1 moves no data (Silero's ``mean(dim=1)`` of (B, 1))."""
        self.view(node)

    def binary(self, node: Node, kind: str) -> None:
        """``a + b`` or ``a * b`` of two data-path values of one shape and layout."""
        a, b = node.arg("self"), node.arg("other")
        if node.arg("alpha", 1) != 1:
            self.fail(node, "add with alpha other than 1")
            return
        if not (isinstance(a, TensorRef) and isinstance(b, TensorRef)):
            self.fail(node, f"{kind} with a number; tinyrnn adds or multiplies two data-path "
                            "values of one shape (a residual)")
            return
        values = [self.data_value(node, v) for v in (a, b)]
        if values[0] is None or values[1] is None:
            return
        va, vb = values
        if (va.shape != vb.shape or va.channels_first != vb.channels_first
                or va.time_axis != vb.time_axis or va.batch_axis != vb.batch_axis
                or va.width != vb.width):
            self.fail(node, f"{kind} of values of shapes {list(va.shape)} and {list(vb.shape)}"
                            "; tinyrnn adds or multiplies values of one shape and layout "
                            "(no broadcasting)")
            return
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, va.shape):
            return
        self.layers.append(Binary(kind, va.width, (va.depth, vb.depth)))  # type: ignore
        self.set(node, replace(va, depth=len(self.layers)))

    def concat(self, node: Node) -> None:
        """``torch.cat`` of data-path values along their channel axis."""
        tensors, dim = node.first(), node.arg("dim", 0)
        if not isinstance(tensors, tuple) or not tensors or not all(
                isinstance(t, TensorRef) for t in tensors) or not _is_int(dim):
            self.fail(node, "cat of an unexpected form")
            return
        values = []
        for tensor in tensors:  # one report for the first that cannot be read
            value = self.data_value(node, tensor)
            if value is None:
                return
            values.append(value)
        first = values[0]
        ndim = len(first.shape)
        axis = self.channel_axis(first)
        if not -ndim <= dim < ndim or dim % ndim != axis:
            self.fail(node, f"cat over dim {dim}; tinyrnn joins values along the channel axis "
                            f"(dim {axis}); to gather a loop's steps use torch.stack(outs, 1)")
            return
        others = [tuple(d for i, d in enumerate(v.shape) if i != axis) for v in values]
        if any(o != others[0] for o in others) or any(
                (v.channels_first, v.time_axis, v.batch_axis)
                != (first.channels_first, first.time_axis, first.batch_axis) for v in values):
            self.fail(node, "cat of values of different lengths or layouts")
            return
        shape = list(first.shape)
        shape[axis] = sum(v.shape[axis] for v in values)
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, tuple(shape)):
            return
        if any(v.length != first.length for v in values):
            self.fail(node, "cat of frames of different lengths")
            return
        layer = Concat(tuple(v.depth for v in values), tuple(v.features for v in values),
                       max(first.length, 1))
        self.layers.append(layer)
        self.set(node, replace(first, depth=len(self.layers),
                               features=sum(v.features for v in values), shape=tuple(shape)))

    def pad(self, node: Node) -> None:
        """``F.pad`` / ``nn.ZeroPad1d`` / ``ConstantPad1d`` / ``ReflectionPad1d`` /
        ``ReplicationPad1d``: on the time axis, zero padding folded into the Conv1d that reads
        it."""
        pads, mode, fill = node.arg("pad"), node.arg("mode", "constant"), node.arg("value", None)
        if mode not in _PAD_MODES:
            self.fail(node, f"padding mode {mode!r}; tinyrnn pads with 'constant', 'reflect' "
                            "or 'replicate'" + _suggestion(node, self.weight_shapes))
            return
        if not (isinstance(pads, tuple) and len(pads) == 2 and all(_is_int(p) and p >= 0
                                                                   for p in pads)):
            self.fail(node, f"padding {pads!r}; tinyrnn pads the last axis by (left, right) "
                            ">= 0")
            return
        value = self.value(node.first())
        shape = self.shape(node.first().name) if isinstance(node.first(), TensorRef) else ()
        if isinstance(value, _Input) and self.x_index is None:
            value = self.step_input(node, value, node.first()) or value
        frame = self.frame_of(value, shape)
        if frame is None and isinstance(value, _Data) and value.time_axis is None \
                and len(shape) == 2 and not value.length:
            frame = (1, value.width)  # F.pad of a step's (B, N): its last axis
        if frame is not None:
            self.frame_pad(node, value, frame, mode, 0.0 if fill is None else fill, pads)
            return
        on_time = (isinstance(value, (_Input, _InputView)) and len(shape) == 3) or (
            isinstance(value, _Data) and value.channels_first)
        if not on_time:
            self.fail(node, "padding an axis other than the time axis of a (B, C, T) value")
            return
        if mode != "constant" or fill not in (None, 0, 0.0):  # Conv1d(padding_mode=) too
            self.pad_time(node, node.first(), mode, 0.0 if fill is None else fill, pads)
            return
        out = list(shape)
        out[-1] += pads[0] + pads[1]
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, tuple(out)):
            return
        self.set(node, _TimePad(node.first(), pads[0], pads[1], node))

    def frame_pad(self, node: Node, value: _Data, frame: tuple[int, int], mode: str,
                  fill: Any, pads: tuple[int, int]) -> None:
        channels, length = frame
        if mode == "reflect" and max(pads) >= length:
            self.fail(node, f"reflect padding by {max(pads)} of a frame of {length}")
            return
        if not isinstance(fill, (int, float)) or isinstance(fill, bool):
            self.fail(node, f"a padding value {fill!r}")
            return
        out = (value.shape[0], channels, length + pads[0] + pads[1])
        flat = len(value.shape) == 2  # (B, N) padded as one channel: (B, N + pads)
        if not self.shape_is(node, node.outputs[0] if node.outputs else None,
                             (out[0], out[2]) if flat else out):
            return
        earlier = value.depth < len(self.layers)
        self.layers.append(FramePad(mode, float(fill), pads[0], pads[1],  # type: ignore
                                    channels, length, (value.depth,) if earlier else ()))
        if flat:
            self.set(node, _Data(len(self.layers), out[2], (out[0], out[2]), 0, None))
        else:
            self.set(node, _Data(len(self.layers), channels, out, 0, None,
                                 channels_first=True, length=out[2]))

    def frame_conv(self, node: Node, value: _Data, frame: tuple[int, int], w: _Const,
                   b: _Const | None, stride: int, dilation: int, groups: int, pad_left: int,
                   pad_right: int) -> None:
        """A Conv1d over the positions of one step's frame (any stride, zero padding)."""
        channels, length = frame
        if value.depth != len(self.layers):
            self.fail(node, "a Conv1d over a frame computed before the latest value")
            return
        if channels != w.tensor.shape[1] * groups:
            self.fail(node, f"Conv1d weights of shape {list(w.tensor.shape)} with {groups} "
                            f"group(s) for {channels} input channels")
            return
        layer = FrameConv1d(
            name=w.name.removesuffix(".weight"), weight=self.tensor_of(w, None, ""),
            bias=self.tensor_of(b, None, "") if b is not None else None, stride=stride,
            dilation=dilation, groups=groups, pad_left=pad_left, pad_right=pad_right,
            length=length)
        if layer.out_length < 1:
            self.fail(node, f"a Conv1d of kernel {layer.kernel} over a frame of {length}")
            return
        out = (value.shape[0], layer.out_channels, layer.out_length)
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, out):
            return
        self.layers.append(layer)
        self.set(node, _Data(len(self.layers), layer.out_channels, out, 0, None,
                             channels_first=True, length=layer.out_length))

    def channel_slice(self, node: Node, value: _Data) -> None:
        """``x[:, a:b]`` on the channel axis of a data-path value (step 1)."""
        start, end, step = node.arg("start", None), node.arg("end", None), node.arg("step", 1)
        if not (all(v is None or _is_int(v) for v in (start, end)) and step == 1):
            self.fail(node, "a channel slice with a step other than 1")
            return
        picked = range(value.features)[slice(start, end)]
        if len(picked) == 0:
            self.fail(node, "an empty channel slice")
            return
        data = self.data_value(node, node.first())
        if data is None:
            return
        shape = list(value.shape)
        shape[self.channel_axis(value)] = len(picked)
        if not self.shape_is(node, node.outputs[0] if node.outputs else None, tuple(shape)):
            return
        self.layers.append(ChannelSlice(picked.start, picked.stop, value.features,
                                        (data.depth,), max(value.length, 1)))
        self.set(node, replace(value, depth=len(self.layers), features=len(picked),
                               shape=tuple(shape)))

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

    def cell_state_output(self, out: str, cell: _Cell) -> OutputSpec | None:
        """A cell's h or c returned by the forward: the new state, ``(B, H)``."""
        chain = self.chains[cell.chain]
        if cell.t != chain.steps - 1:
            self.fail_output(out, f"returns the state of step {cell.t} of {chain.module}, "
                                  f"not of its last step {chain.steps - 1}")
            return None
        size = self.layers[chain.layer].hidden_size
        return OutputSpec("h_n" if cell.role == "h" else "c_n", self.shape(out), batch_axis=0,
                          size=size, group=chain.group)

    def carry_output(self, out: str, value: Any, k: int, carried: list[int]
                     ) -> OutputSpec | None:
        """The new value of the k-th carried argument, returned before the cell's state."""
        layer = self.carry_of[carried[k]]
        size = self.layers[layer].features  # type: ignore[union-attr]
        if isinstance(value, _Cell) or not isinstance(value, _Data) or value.time_axis is not None \
                or value.width != size or self.shape(out) != (value.shape[0], size):
            self.fail_output(out, f"a step module returns the new value of each carried "
                                  f"argument (here ({size},) per sample) just before its new "
                                  f"cell state, in the order of the arguments")
            return None
        span = range(layer + 1, value.depth)
        if value.depth <= layer or any(
                isinstance(self.layers[j], (RecurrentLayer, SelectStep, Carry))
                or any(r not in (0, *range(layer + 1, j + 1))
                       for r in ir_reads(self.layers, j)) for j in span):
            self.fail_output(out, "a carried value's new value computed after a cell or "
                                  "another carried value; compute it from x_t and the value "
                                  "first, before the cell (e.g. x = torch.cat([context, x_t], "
                                  "1); new_context = x[:, -N:])")
            return None
        self.carries.append((layer, value.depth))
        return OutputSpec("carry_n", self.shape(out), 0, size=size, group=k)

    def step_states(self, names: tuple[str, ...]) -> int:
        """How many of a step module's outputs are its new state (they come last, in the
        order of the state inputs); reports a module that breaks the convention."""
        chain = next((c for c in self.chains if c.step_module), None)
        if chain is None:
            if not self.problems:
                self.fail_output(names[-1] if names else "", (
                    "a step module whose frame front-end feeds no cell; tinyrnn's step modules "
                    "step an LSTMCell, GRUCell or RNNCell once per frame"))
            return -1
        indices = sorted(self.group_inputs.get(chain.group, ()))
        roles = ["h" if self.inputs[i].role == "h0" else "c" for i in indices]
        tail = list(names[len(names) - len(roles):]) if len(names) >= len(roles) else []
        got = [self.cell_outputs.get(n) for n in tail]
        if not (len(tail) == len(roles) and all(
                g is not None and g.chain == self.chains.index(chain) and g.role == r
                for g, r in zip(got, roles))):
            order = ", ".join(f"new {r}" for r in roles)
            found = ", ".join(f"{'new ' + g.role if g else 'another value'}" for g in got)
            self.fail_output(names[-1] if names else "", (
                f"a step module returns its outputs, then its new state in the order of its "
                f"state inputs: (..., {order}); it returns ({found}) last"))
            return -1
        return len(roles)

    def read_outputs(self, names: tuple[str, ...]) -> tuple[OutputSpec, ...]:
        outputs = []
        states = self.step_states(names) if self.step_module else 0
        if states < 0:
            return ()
        carried = sorted(self.carry_of)  # their new values come just before the cell states
        first_carry = len(names) - states - len(carried)
        for position, out in enumerate(names):
            value = self.values.get(out)
            if value is _FAILED:
                continue
            if carried and first_carry <= position < len(names) - states:
                spec = self.carry_output(out, value, position - first_carry, carried)
                if spec is not None:
                    outputs.append(spec)
                continue
            cell = self.cell_outputs.get(out)
            if cell is not None and (not self.step_module or position >= len(names) - states):
                spec = self.cell_state_output(out, cell)
                if spec is not None:
                    outputs.append(spec)
                continue
            if isinstance(value, _Cell):  # a step module's y is its h
                node = self.producer[out]
                if not self.cell_as_data(node, TensorRef(out)):
                    continue
                value = self.values[out]
            shape = self.shape(out)
            if self.step_module and isinstance(value, _Data):
                if value.depth != len(self.layers):
                    self.fail_output(out, "returns an intermediate value of the data path")
                elif len(shape) != 2 or value.batch_axis != 0:
                    self.fail_output(out, f"a step module's output of shape {list(shape)}; "
                                          "its outputs are (B, F)")
                else:  # one step of a sequence (B, T, F)
                    outputs.append(OutputSpec("sequence", (shape[0], 1, shape[1]), 0, 1,
                                              features=value.features))
                continue
            if isinstance(value, _Data):
                if value.depth != len(self.layers):
                    self.fail_output(out, "returns an intermediate value of the data path")
                    continue
                if value.channels_first:
                    self.fail_output(out, "returns a (B, C, T) value; return it as (B, T, C) "
                                          "(y.transpose(1, 2))")
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


def _fold(layer: Dense | Conv1d, scale: np.ndarray, shift: np.ndarray, scale_what: str,
          shift_what: str) -> Dense | Conv1d:
    """``layer`` followed by ``y = scale * y + shift`` per output channel, as one layer:
    ``W' = scale W`` (row by row), ``b' = scale b + shift``."""
    shape = (-1,) + (1,) * (layer.weight.data.ndim - 1)
    weight = Tensor(layer.weight.data * scale.reshape(shape),
                    f"{layer.weight.source} * s ({scale_what})")
    if layer.bias is not None:
        bias = Tensor(layer.bias.data * scale + shift, f"{layer.bias.source} * s {shift_what}")
    else:
        bias = Tensor(np.asarray(shift, dtype=np.float64), f"{shift_what.lstrip('+ ')}")
    return replace(layer, weight=weight, bias=bias)


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
