"""Streaming a model with a time-axis Conv1d front-end: NAME_step one step at a time, equal to
NAME_run over the same sequence (docs/c-api.md, "Which models stream").

A model streams when every layer before its last reads only the present and past steps: each
:class:`tinyrnn.ir.Conv1d` is causal (stride 1, no right padding, exactly ``dilation * (kernel -
1)`` zero steps of left padding, e.g. ``F.pad(x, (k - 1, 0))`` folded into the conv), the
recurrent layers are unidirectional and nothing pools over time. :func:`stream_refusals` says
why a model does not, naming each layer, with the rewrite.

A streaming conv keeps a **shift window** in ``NAME_state_t``: the last ``span = dilation *
(kernel - 1) + 1`` input steps, oldest first, zero at ``NAME_reset`` exactly as the whole
sequence's zero padding. Each step moves the window one step (``memmove`` of ``(span - 1) * C``
values), copies x_t into its last step and calls the SAME conv helper NAME_run calls, over the
``span`` steps of the window with no padding: one output step. So every format's step output
equals NAME_run's bit for bit (float32 too: the same sums in the same order; a tap NAME_run
skips in the padding adds an exact zero here). A ring buffer would save the move but needs
either a second helper that wraps its taps (another arithmetic path to prove) or a doubled
buffer; for the kernels of front-ends (spans of 2 to a few tens of steps) the move costs
``(span - 1) * C`` element copies per step against ``kernel * C * O / groups`` MACs.

The step schedule is the time-major one (:func:`tinyrnn.passes.lower._time_major`) with each
conv replaced by its step function, over its own small scratch (``step*`` members: one step's
vectors); the recurrent states are the members NAME_run uses.
"""

from __future__ import annotations

from dataclasses import replace

from ..backend.plan import Arg, Buffer, Copy, Do, Function, Lit, Op, Param, Ptr, Schedule
from ..errors import TinyRNNError
from ..ir import Conv1d, Model, PadTime, PoolTime, PoolWindow, RecurrentLayer

__all__ = ["conv_step_function", "no_step_reason", "require_streaming", "stream_refusals",
           "streaming_schedule", "window_steps"]


def window_steps(layer: Conv1d) -> int:
    """The input steps the conv's window holds: its span ``dilation * (kernel - 1) + 1``."""
    return layer.dilation * (layer.kernel - 1) + 1


def _conv_refusals(layer: Conv1d, name: str) -> list[str]:
    span = window_steps(layer)
    what = f"{layer.name or 'a conv'} (Conv1d)"
    rewrite = (f"pad on the left only, e.g. F.pad(x, ({span - 1}, 0)) before a "
               "Conv1d(padding=0)")
    out = []
    if layer.stride != 1:
        out.append(f"{what} has stride {layer.stride}, so it gives an output only every "
                   f"{layer.stride} input steps and {name}_step gives one per call: use stride 1 "
                   f"(subsample after the model), or feed whole sequences to {name}_run")
    if layer.pad_right:
        out.append(f"{what} pads {layer.pad_right} step{'s' if layer.pad_right > 1 else ''} on "
                   "the right, so a step would need a future input: " + rewrite)
    elif layer.pad_left != span - 1:
        out.append(f"{what} pads {layer.pad_left} step{'s' if layer.pad_left != 1 else ''} on "
                   f"the left where its span needs {span - 1}, so its output is "
                   f"{'shorter' if layer.pad_left < span - 1 else 'longer'} than its input "
                   f"and not one step per input step: pad exactly ({span - 1}, 0), e.g. "
                   f"F.pad(x, ({span - 1}, 0)) before a Conv1d(padding=0)")
    return out


def stream_refusals(model: Model, name: str = "NAME") -> list[str]:
    """Why ``model`` has no streaming NAME_step, one line per layer (empty: it streams);
    ``name`` is the C prefix the lines name."""
    out = []
    for layer in model.layers:
        if isinstance(layer, Conv1d):
            out += _conv_refusals(layer, name)
        elif isinstance(layer, PoolTime):
            out.append(f"the {layer.kind} over time (PoolTime) reads every step of the "
                       "sequence: take one step instead (e.g. out[:, -1]), or feed whole "
                       f"sequences to {name}_run")
        elif isinstance(layer, PoolWindow):
            out.append(f"the {layer.kind} window over time ({layer.name or 'a pooling layer'}) "
                       "reads neighbouring steps and changes the sequence length: pool in "
                       f"your firmware, or feed whole sequences to {name}_run")
        elif isinstance(layer, PadTime):
            out.append(f"the {layer.mode} padding of the time axis reads the sequence's ends: "
                       f"feed whole sequences to {name}_run (a zero left pad before a Conv1d "
                       "streams: F.pad(x, (k-1, 0)))")
        elif isinstance(layer, RecurrentLayer) and layer.num_directions == 2:
            out.append(f"{layer.module or 'rnn'} layer {layer.layer} is bidirectional: its "
                       "reverse direction reads the sequence from its end: use "
                       "bidirectional=False")
    return out


def no_step_reason(model: Model) -> str:
    """Why the C of ``model`` has no streaming NAME_step, in a few words for its comments
    ("" when it streams)."""
    if any(_conv_refusals(layer, "") for layer in model.layers if isinstance(layer, Conv1d)):
        return "a Conv1d that is not causal needs the whole sequence"
    if model.bidirectional:
        return "a bidirectional layer needs the whole sequence"
    if model.windows:
        return "a pooling window or a padding of the time axis needs the whole sequence"
    if model.pools:
        return "a pooling over time needs the whole sequence"
    return ""


def require_streaming(model: Model, name: str) -> None:
    """``--stream``: refuse, naming every layer and why, a model whose NAME_step would not
    stream (:func:`stream_refusals`)."""
    refusals = stream_refusals(model, name)
    if refusals:
        raise TinyRNNError(
            f"--stream asks for a {name}_step that runs one step at a time and equals "
            f"{name}_run, and this model cannot give one:\n"
            + "\n".join(f"  - {line}" for line in refusals))


def conv_step_function(index: int, layer: Conv1d, whole: Function) -> Function:
    """The step form of a causal conv (``whole``: its whole-sequence function, whose helper
    call and constants it reuses): x_t (C) into the window ``win`` (span, C), then the helper
    over the window's span steps with no padding: y_t (O)."""
    C, span = layer.in_channels, window_steps(layer)
    T = whole.params[0].ctype.replace("const ", "").rstrip(" *")
    helper = whole.prologue[0]
    assert isinstance(helper, Do)
    args = helper.call.args
    # (x, y, T, weights..., pad_left, pad_right): the window, its span, no padding
    source = Ptr("win") if span > 1 else Ptr("x")
    call = replace(helper.call, args=(source, args[1], Lit(span, "int"), *args[3:-2],
                                      Lit(0, "int"), Lit(0, "int")))
    params = [Param("x", f"const {T} *", "in", C)]
    prologue: list = []
    if span > 1:
        params.append(Param("win", f"{T} *", "state", span * C))
        prologue += [Copy("win", 0, "win", (span - 1) * C, T, src_offset=C),
                     Copy("win", (span - 1) * C, "x", C, T)]
    params.append(Param("y", f"{T} *", "out", layer.out_channels))
    prologue.append(Do(call, f"one output step: the conv over the {span} steps of the window"))
    comment = (f"{layer.name}: one step of the causal conv1d ({layer.in_channels} -> "
               f"{layer.out_channels} channels, kernel {layer.kernel}, dilation "
               f"{layer.dilation}, groups {layer.groups})"
               + (f"; win holds the last {span} input steps, oldest first (zeros after reset "
                  "are the left padding): shift it one step, x_t into its last step, then the "
                  f"helper of {whole.name} over it" if span > 1 else
                  f": the helper of {whole.name} over x_t"),)
    return Function(name=f"{whole.name}_step", kind="window", layer=index, comment=comment,
                    params=tuple(params), named=(), prologue=tuple(prologue), loops=(),
                    constants=())


def window_member(fn: Function) -> str:
    """The NAME_state_t member of a step conv's window (``conv0_step_win``: the member
    :func:`tinyrnn.passes.lower._args` gives a function's ``state`` parameter)."""
    return f"{fn.name.rsplit('_', 2)[-2]}_{fn.name.rsplit('_', 1)[-1]}_win"


def streaming_schedule(model: Model, functions: dict[int, list[Function]], fixed: bool,
                       schedule: Schedule, buffers: list[Buffer], time_major
                       ) -> tuple[Schedule, list[Buffer], list[Function]]:
    """The layer-major ``schedule`` of a causal conv model with NAME_step added: the time-major
    schedule (``time_major``, :func:`tinyrnn.passes.lower._time_major`) over each conv's step
    function. Returns the schedule, the buffers (the windows and the step's own scratch added)
    and the step functions to print."""
    step_fns: dict[int, list[Function]] = dict(functions)
    added: list[Function] = []
    for index, layer in enumerate(model.layers):
        if isinstance(layer, Conv1d):
            fn = conv_step_function(index, layer, functions[index][0])
            step_fns[index] = [fn]
            added.append(fn)
    step, step_buffers = time_major(model, step_fns, fixed)
    rename = {b.name: "step" + b.name[len("scratch"):] for b in step_buffers
              if b.scratch and b.name.startswith("scratch")}

    def arg(a: Arg) -> Arg:
        return replace(a, buffer=rename.get(a.buffer, a.buffer))

    ops = []
    for op in step.step or ():
        ops.append(Op(op.fn, tuple(arg(a) for a in op.args), op.kind, op.layer))
    have = {b.name for b in buffers}
    windows = [Buffer(window_member(fn), fn.params[1].size,
                      f"window of {model.layers[fn.layer].name} (Conv1d): its last "  # type: ignore[union-attr]
                      f"{fn.params[1].size // fn.params[0].size} input steps, oldest first",
                      False) for fn in added if len(fn.params) == 3]
    prefix = added[0].name.rsplit("_", 2)[0]  # NAME of NAME_convK_step
    extra = [replace(b, name=rename[b.name], comment=f"scratch of {prefix}_step: one step")
             for b in step_buffers if b.name in rename]
    extra += [b for b in step_buffers if b.name not in rename and b.name not in have]
    assert step.step_result is not None
    return replace(
        schedule, step=tuple(ops), step_result=arg(step.step_result),
        step_input=rename.get(step.input_buffer or "", None),
    ), buffers + windows + extra, added
