"""The quantization pass: a float IR :class:`~tinyrnn.ir.Model` -> a :class:`QModel` whose layers
hold integer weights, per-row multipliers and the number format of every value.

Everything the generated C and the reference simulator (:mod:`tinyrnn.check.reference`) compute with
is decided here, in Python: the integers of every weight and bias, every requantization
multiplier and shift, every format change. The templates print these numbers; the reference
applies them with :mod:`tinyrnn.numerics.helpers`. ``docs/fixed-point.md`` explains the scheme.

Two steps:

1. :func:`calibrate` runs the float IR (:mod:`tinyrnn.check.simulate`) on representative inputs and
   records the largest magnitude of every quantity whose format is calibrated
   (:class:`Ranges`); :func:`choose_formats` turns them into formats (:class:`Formats`), with
   headroom. Formats are recorded in the manifest, so :func:`formats_from_manifest` gives them
   back to ``tinyrnn verify`` without the calibration data.
2. :func:`quantize` quantizes the weights for those formats. It is deterministic: the same IR
   and formats give the same integers.

Accumulators (:class:`QAccumulator`)
------------------------------------
One output row ``r`` of a gate (or Dense layer) sums one integer accumulator per input part
(the input ``x`` and the recurrent state ``h`` of a gate; the single input of a Dense layer)::

    acc_p[r] = bias_p[r] + W_p[r] @ v[offset_p : offset_p + cols_p]     (exact, int32 or int64)
    y[r]     = saturate(sum_p rescale(acc_p[r], M_p[r], n_p[r]), out.bits)     (format ``out``)

Each part's weights have the per-row scale that is ideal for that part alone
(``max|W_p[r]| * step_p / qmax``), so the x part and the h part, whose int16 inputs have
different steps, both use the full weight range. A gate's result is the wide pre-activation
Q3.20 (:data:`tinyrnn.numerics.helpers.ACT_WIDE`), where the rounding of ``rescale`` is negligible;
a single-part Dense layer's is int16 in its output format (then ``rescale`` + ``sat16`` is
exactly :func:`tinyrnn.numerics.helpers.requant`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..check.simulate import Batch, run_float, split_state, state_rows
from ..errors import TinyRNNError
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
    GRULayer,
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
from ..numerics.helpers import (
    ACT_ONE,
    ACT_OUT,
    ACT_WIDE,
    WIDE_EXTRA,
    QFormat,
    SoftmaxParams,
    softmax_params,
)

WEIGHT_BITS = {"w8a16": 8, "w16a16": 16}
"""The integer formats and their weight widths. Activations and states are always int16."""

ACT_BITS = 16
HEADROOM = 2.0
"""Calibrated formats cover twice the largest magnitude observed (one spare integer bit)."""

MAX_FRAC = 30
"""Calibrated formats have at most 30 fraction bits (the shifts of the cell updates need it)."""

BIAS_LIMIT = 2**30
"""A bias never needs more than this many accumulator units (the unit grows instead)."""

INPUT_LIMIT = 2**15
"""Largest magnitude of an int16 input of an accumulator (-32768)."""

Q15 = ACT_OUT
TANH_FRAC = 30  # tanh_wide returns Q0.30
TANH_Q30_PRODUCT = Q15.frac + TANH_FRAC  # a Q0.15 value times tanh_wide's result is Q45


# ----------------------------------------------------------------------------------------------
# Calibration: observed ranges -> formats
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranges:
    """Largest magnitudes observed by the float simulation on the calibration data.

    ``layers[i]``: of IR layer ``i``'s output (for recurrent layers including the initial h0
    rows of that layer); ``cells[i]``: of an LSTM layer's cell state c (c0 included);
    ``cell_medians[i]``: the median over c's units of each unit's largest ``|c|``;
    ``projected[i]``: of ``o * tanh(c)`` of an LSTM layer with a projection.
    """

    input: float
    layers: tuple[float, ...]
    cells: tuple[float | None, ...]
    projected: tuple[float | None, ...]
    source: str  # "calibration data" or "example input"
    sequences: int
    steps: int
    cell_medians: tuple[float | None, ...] = ()


def calibrate(model: Model, batch: Batch, source: str) -> Ranges:
    """Run the float IR on ``batch`` and record the ranges that calibrated formats need."""
    trace, numerics = run_float(model, batch)
    h0 = split_state(model, batch.h0.astype(np.float64), 0) if batch.h0 is not None else {}
    layers = []
    for index, out in enumerate(trace.layers):
        peak = float(np.abs(out).max()) if out.size else 0.0
        for (i, _), h in h0.items():
            if i == index:
                peak = max(peak, float(np.abs(h).max()))
        layers.append(peak)
    cells = tuple(numerics.max_cell.get(i) for i in range(len(model.layers)))
    medians = tuple(float(np.median(numerics.unit_cell[i])) if i in numerics.unit_cell else None
                    for i in range(len(model.layers)))
    projected = tuple(numerics.max_projected.get(i) for i in range(len(model.layers)))
    peaks = [float(np.abs(batch.x).max()), *layers,
             *(c for c in cells + projected if c is not None)]
    if not all(math.isfinite(v) for v in peaks):
        raise TinyRNNError(
            f"the float model produces Inf or NaN on the {source}; calibrate with inputs on "
            "which the model is finite"
        )
    return Ranges(
        input=peaks[0],
        layers=tuple(layers),
        cells=cells,
        projected=projected,
        source=source,
        sequences=batch.size,
        steps=int(batch.x.shape[1]),
        cell_medians=medians,
    )


@dataclass(frozen=True)
class LayerFormats:
    """The format of an IR layer's output (and of an LSTM layer's cell state c and, with a
    projection, of ``o * tanh(c)``). ``cell_io``: c's 16-bit format at the C API (c0, c_n);
    it is ``cell`` itself unless c is held in 32 bits (:data:`CELL32_SPREAD`)."""

    out: QFormat
    cell: QFormat | None = None
    projected: QFormat | None = None
    cell_io: QFormat | None = None
    weight_bits: int | None = None
    """The layer's weight bits when they differ from the model format's (a per-layer format,
    :func:`weight_overrides`); None: the format's (:func:`layer_weight_bits`)."""


@dataclass(frozen=True)
class Formats:
    """Every activation format of a model: its input and each layer's output."""

    input: QFormat
    layers: tuple[LayerFormats, ...]


def _calibrated(peak: float, headroom: float) -> QFormat:
    chosen = QFormat.choose(peak, ACT_BITS, headroom)
    return QFormat(ACT_BITS, min(chosen.frac, MAX_FRAC))


def _bounded(peak: float, headroom: float) -> QFormat:
    """A value that tanh bounds to (-1, 1): calibrated, but never coarser than Q0.15 (unless
    the calibration saw |v| >= 1, e.g. from initial states)."""
    chosen = _calibrated(peak, headroom)
    return chosen if peak >= 1.0 else QFormat(ACT_BITS, max(chosen.frac, Q15.frac))


CELL32_SPREAD = 4.0
"""An LSTM's cell state is held in 32 bits when the calibration's largest |c| is at least this
many times the median unit's largest |c|: a shared 16-bit format would then give the median
unit 2 or more bits fewer than a format of its own (docs/fixed-point.md, "The cell state")."""

CELL32_EXTRA = 16
"""Fraction bits a 32-bit cell state has beyond its 16-bit format (up to MAX_FRAC)."""


def cell_formats(peak: float, median: float | None, headroom: float) -> tuple[QFormat, QFormat]:
    """``(c's format, c's 16-bit API format)`` from the calibration: the 16-bit calibrated
    format, or, when the units' ranges are uneven (``peak >= CELL32_SPREAD * median``), 32 bits
    with :data:`CELL32_EXTRA` more fraction bits."""
    io = _calibrated(peak, headroom)
    if median is not None and peak > 0 and peak >= CELL32_SPREAD * median and io.frac >= 0:
        return QFormat(32, min(io.frac + CELL32_EXTRA, MAX_FRAC)), io
    return io, io


def fuse_magnitudes(model: Model) -> Model:
    """``sqrt(a**2 + b**2)`` of two channel slices of one value (an STFT's magnitude: the
    real and imaginary channels) as one :class:`~tinyrnn.ir.Hypot` layer in place of the
    sqrt, when nothing else reads the squares and their sum. The integer formats then sum the
    squares exactly in 32 bits: rounded to int16 the sum loses every small magnitude (its
    format must hold the largest one), and the sqrt spreads that error (Silero VAD: 33 dB
    instead of the STFT's 46). The squares and the sum stay in the IR, read by nobody (the
    lowering drops them), so layer indices and the manifest's formats keep their places."""
    layers = list(model.layers)
    readers: dict[int, int] = {}
    for index in range(len(layers)):
        for value in reads(layers, index):
            readers[value] = readers.get(value, 0) + 1
    for _, new in model.carries:
        readers[new] = readers.get(new, 0) + 1
    readers[len(layers)] = readers.get(len(layers), 0) + 1

    def only(value: int, kind: type, what: str = "") -> bool:
        layer = layers[value - 1] if value > 0 else None
        return (isinstance(layer, kind) and readers.get(value) == 1
                and (not what or getattr(layer, "kind", "") == what))

    def root(value: int) -> int:
        while value > 0 and isinstance(layers[value - 1], ChannelSlice):
            value = reads(layers, value - 1)[0]
        return value

    for index, layer in enumerate(model.layers):
        if not (isinstance(layer, Activation) and layer.kind == "sqrt"):
            continue
        total = reads(layers, index)[0]
        if not only(total, Binary, "add"):
            continue
        squares = reads(layers, total - 1)
        if len(set(squares)) != 2 or not all(only(v, Activation, "square") for v in squares):
            continue
        xa, xb = (reads(layers, v - 1)[0] for v in squares)
        if root(xa) == root(xb) and isinstance(layers[xa - 1], ChannelSlice) \
                and isinstance(layers[xb - 1], ChannelSlice):
            layers[index] = Hypot(layer.features, (xa, xb))
    if layers == list(model.layers):
        return model
    return replace(model, layers=tuple(layers))


def choose_formats(model: Model, ranges: Ranges, headroom: float = HEADROOM) -> Formats:
    """Calibrated formats (with headroom) for every value the functions do not bound, and
    formats at least as fine as Q0.15 for those they bound:

    - input x, LSTM c, h of projected LSTMs and RNN-relu, Dense outputs, log_softmax:
      calibrated;
    - h of LSTM (no projection), GRU, RNN-tanh, ``o * tanh(c)`` of projected LSTMs, tanh
      outputs: calibrated but at least Q0.15 (:func:`_bounded`), so small signals keep their
      precision;
    - sigmoid and softmax outputs: Q0.15; relu keeps its input's format.
    """
    model = fuse_magnitudes(model)
    layers = _choose(model, ranges, headroom, {})
    # a carried value keeps the format of the value that replaces it at the end of each step
    # (Silero's context: the input's samples), so the carry is a plain copy; a second pass
    # settles the formats that read the carried value
    carried = {index: layers[new - 1].out for index, new in model.carries}
    if carried:
        layers = _choose(model, ranges, headroom, carried)
    return Formats(_input_format(model, ranges, headroom), tuple(layers))


IDS = QFormat(ACT_BITS, 0)
"""The format of token ids (a model whose first layer is an Embedding): the id itself."""

MAX_VOCAB_Q = 2**15
"""The integer formats take token ids as int16: vocabularies up to 32,768 ids."""


def _input_format(model: Model, ranges: Ranges, headroom: float) -> QFormat:
    """x's format: calibrated, or :data:`IDS` for token ids."""
    return IDS if model.vocab else _calibrated(ranges.input, headroom)


def embedding_format(layer: Embedding) -> QFormat:
    """The int16 format of an Embedding's table and output, chosen from the table's values:
    the finest that holds its largest |value| (no headroom: a lookup gives nothing larger)."""
    peak = float(np.abs(layer.weight.data).max()) if layer.weight.data.size else 0.0
    return _calibrated(peak, 1.0)


def _choose(model: Model, ranges: Ranges, headroom: float, carried: dict[int, QFormat]
            ) -> list[LayerFormats]:
    """:func:`choose_formats`' formats, with the Carry layers' formats in ``carried`` (else
    calibrated)."""
    input_format = _input_format(model, ranges, headroom)
    values = [input_format]  # by value index (ir.reads): the input, then each layer's output
    relu_peaks = _relu_peaks(model, ranges)
    layers = []
    for index, layer in enumerate(model.layers):
        peak = ranges.layers[index]
        read = [values[k] for k in reads(model.layers, index)]
        current = read[0]
        cell = projected = cell_io = None
        if isinstance(layer, RecurrentLayer):
            bounded = layer.spec.bounded and not layer.projected
            out = _bounded(peak, headroom) if bounded else _calibrated(peak, headroom)
            if isinstance(layer, LSTMLayer):
                medians = ranges.cell_medians
                cell, cell_io = cell_formats(ranges.cells[index] or 0.0,
                                             medians[index] if medians else None, headroom)
                if layer.projected:
                    projected = _bounded(ranges.projected[index] or 0.0, headroom)
        elif isinstance(layer, (Dense, Conv1d, FrameConv1d)):
            out = _calibrated(relu_peaks.get(index, peak), headroom)
        elif isinstance(layer, Binary):
            out = _calibrated(peak, headroom)
        elif isinstance(layer, Embedding):
            out = embedding_format(layer)
        elif isinstance(layer, Carry):
            out = carried.get(index) or _calibrated(peak, headroom)
        elif isinstance(layer, Concat):  # the coarsest part's format: no part saturates
            out = min(read, key=lambda f: f.frac)
        elif isinstance(layer, Hypot):  # never finer than a and b (hypot_q rounds down to it)
            out = min(_calibrated(peak, headroom), current, key=lambda f: f.frac)
        elif isinstance(layer, PoolTime):  # a sum: calibrated, never finer than its input
            out = current if layer.kind != "sum" else min(
                _calibrated(peak, headroom), current, key=lambda f: f.frac)
        elif isinstance(layer, PoolWindow):  # a max or an average: within the input's range
            out = current
        elif isinstance(layer, PadTime):  # the input's format, coarser if the constant needs it
            out = min(_calibrated(peak, headroom), current, key=lambda f: f.frac)
        elif isinstance(layer, Activation):
            if layer.kind in ("relu", "relu6", "hardtanh", "leaky_relu", "hardswish", "abs"):
                out = current
            elif layer.kind == "square":
                out = _calibrated(peak, headroom)
            elif layer.kind == "log_softmax":
                out = _calibrated(peak, headroom)
            elif layer.kind == "tanh":
                out = _bounded(peak, headroom)
            elif layer.kind == "sqrt":
                out = sqrt_format(current, _calibrated(peak, headroom))
            else:
                out = Q15
        else:  # SelectStep, ChannelSlice, FramePad: x's format
            out = current
        layers.append(LayerFormats(out, cell, projected, cell_io))
        values.append(out)
    return layers


def _relu_peaks(model: Model, ranges: Ranges) -> dict[int, float]:
    """The layers whose value only relus read (Silero's encoder convs), each with the largest
    relu output observed: their format need only hold the positive side. A negative value
    then saturates, and the relu makes it 0 all the same (Silero's first conv: 281 below 0,
    32.6 above, three bits more)."""
    readers: dict[int, list[int]] = {}
    for index in range(len(model.layers)):
        for value in reads(model.layers, index):
            readers.setdefault(value, []).append(index)
    kept = {len(model.layers)} | {new for _, new in model.carries}
    peaks = {}
    for index in range(len(model.layers)):
        users = readers.get(index + 1, [])
        if users and index + 1 not in kept and all(
                isinstance(model.layers[u], Activation) and model.layers[u].kind == "relu"
                for u in users):
            peaks[index] = max(ranges.layers[u] for u in users)
    return peaks


SQRT_MAX_SHIFT = fp.SQRT_Q_MAX_SHIFT
"""``sqrt_q`` takes ``x * 2**e`` with ``0 <= e <= 15``: below 2**30, and its root below 2**15
(an int16 without saturation, up to the rounding of the largest x)."""


def sqrt_format(x: QFormat, calibrated: QFormat) -> QFormat:
    """sqrt's output format: the calibrated one, kept where ``e = 2 * out.frac - x.frac`` lies
    in ``[0, SQRT_MAX_SHIFT]`` (``sqrt(v * 2**-xf) * 2**of = sqrt(v * 2**e)``, one exact
    integer square root). Calibration gives ``e`` near 14 (x and its root both with one bit
    of headroom); a finer format would saturate, a coarser one only loses bits."""
    lo, hi = -(-x.frac // 2), (x.frac + SQRT_MAX_SHIFT) // 2
    return QFormat(ACT_BITS, min(max(calibrated.frac, lo), hi))


# ----------------------------------------------------------------------------------------------
# Per-layer formats: other weight bits for named layers
# ----------------------------------------------------------------------------------------------


def layer_weight_bits(format: str, lf: LayerFormats) -> int:
    """The weight bits of a layer with formats ``lf`` in a ``format`` export: its per-layer
    format's (``lf.weight_bits``), else the model format's. Every layer kind of
    :func:`quantize` takes its weights' bits from here."""
    return lf.weight_bits or WEIGHT_BITS[format]


def layer_name(layer: object) -> str | None:
    """The module path a per-layer format names a layer with weights by: its torch module path
    (``encoder.0``), for a recurrent module's layer ``k`` that path with ``.lk`` (torch's
    ``_lk`` suffix: ``rnn.l1``; ``l1`` for a model that is itself an nn.LSTM/GRU/RNN). None for
    a layer without weights. See :func:`weight_overrides` for how names select layers."""
    if isinstance(layer, RecurrentLayer):
        return f"{layer.module}.l{layer.layer}" if layer.module else f"l{layer.layer}"
    if isinstance(layer, (Dense, Conv1d, FrameConv1d)):
        return layer.name
    return None


def check_layer_formats(format: str, layer_formats: object) -> dict[str, str]:
    """``layer_formats`` (``{module path: format}``) checked without the model: every value an
    integer format, in an integer export. Raises one TinyRNNError listing every problem."""
    if layer_formats is None:
        return {}
    if not isinstance(layer_formats, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in layer_formats.items()):
        raise TinyRNNError("layer_formats must map layer names to formats, e.g. "
                           "{'encoder.0': 'w16a16'} (--layer-format encoder.0=w16a16)")
    problems = []
    for name, value in sorted(layer_formats.items()):
        given = f"--layer-format {name}={value}"
        if format not in WEIGHT_BITS and value in (*WEIGHT_BITS, "float32"):
            problems.append(
                f"{given}: per-layer formats apply to the integer exports, and this one is "
                f"{format}: every layer is float32. Export with --format w8a16 and give the "
                "layers that need more precision w16a16")
        elif value == "float32":
            problems.append(
                f"{given}: a float32 layer inside a {format} model is not supported (it would "
                "need quantize/dequantize steps at its edges); give the layer w16a16 (16-bit "
                "weights), or export the whole model with --format float32")
        elif value not in WEIGHT_BITS:
            problems.append(f"{given}: unknown format {value!r}; a layer of an integer export "
                            f"takes {' or '.join(WEIGHT_BITS)}")
    if problems:
        raise TinyRNNError("per-layer formats: " + "; ".join(problems))
    return dict(layer_formats)


def weight_overrides(model: Model, format: str, layer_formats: Mapping[str, str],
                     modules: Mapping[str, str] | None = None) -> dict[int, int]:
    """``{IR layer index: weight bits}`` of the layers ``layer_formats`` names whose bits
    differ from ``format``'s. A name selects the layer at that path (:func:`layer_name`) and
    every layer inside it: ``encoder`` each conv of an ``encoder`` Sequential, ``rnn`` every
    layer of a stacked nn.LSTM (``rnn.l1`` its second), ``""`` the whole model. Where two
    names select one layer, the longer (more specific) one wins. ``modules``: the program's
    module paths and types, so that a module without weights of its own (ReLU, a folded
    BatchNorm1d) is named as such. Raises one TinyRNNError listing every name that selects
    nothing."""
    layer_formats = check_layer_formats(format, layer_formats)
    named = [(index, name) for index, layer in enumerate(model.layers)
             if (name := layer_name(layer)) is not None]
    chosen: dict[int, int] = {}
    problems = []
    for name, value in sorted(layer_formats.items(), key=lambda item: (len(item[0]), item[0])):
        hits = [index for index, path in named
                if not name or path == name or path.startswith(name + ".")]
        if not hits and modules and name in modules:
            problems.append(f"{name!r} ({modules[name]}) has no weights of its own in the "
                            "export (an activation, or folded into the layer before it)")
        elif not hits:
            problems.append(f"{name!r} names no layer of the model")
        for index in hits:
            chosen[index] = WEIGHT_BITS[value]
    if problems:
        kinds: dict[str, tuple[str, list[str]]] = {}  # module -> kind, its layers' paths
        for index, path in named:
            layer = model.layers[index]
            if isinstance(layer, RecurrentLayer):
                kind, module = layer.kind.upper(), layer.module
            else:
                kind = "Linear" if isinstance(layer, Dense) else type(layer).__name__
                module = path
            kinds.setdefault(module, (kind, []))[1].append(path)
        listing = ", ".join(
            f"{module!r} ({kind}" + (f" x {len(paths)}: {', '.join(paths)})" if len(paths) > 1
                                     else ")")
            for module, (kind, paths) in kinds.items())
        raise TinyRNNError(
            f"per-layer formats: {'; '.join(problems)}. The layers with weights are "
            f"{listing or 'none'} (torch module paths, as model.named_modules() gives them)")
    return {index: bits for index, bits in chosen.items() if bits != WEIGHT_BITS[format]}


def with_weight_bits(formats: Formats, overrides: Mapping[int, int]) -> Formats:
    """``formats`` with the per-layer weight bits of :func:`weight_overrides`."""
    return Formats(formats.input, tuple(replace(lf, weight_bits=overrides.get(index))
                                        for index, lf in enumerate(formats.layers)))


# ----------------------------------------------------------------------------------------------
# The quantized IR
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class QPart:
    """``acc = bias + W @ v[offset : offset + cols]``, exact in ``acc_bits``; it contributes
    ``rescale(acc, mult, shift)`` to its row."""

    weights: np.ndarray  # int64 (rows, cols), values within the weight bits
    offset: int  # first column of the input vector
    bias: np.ndarray | None  # int64 (rows,), in accumulator units
    scale: np.ndarray  # float64 (rows,): the real weight of one integer step
    unit: np.ndarray  # float64 (rows,): the real value of one accumulator step
    acc_bits: int  # 32 or 64, proven by ``bound``
    bound: int  # largest |acc| over all int16 inputs (numerics.acc_bound)
    mult: np.ndarray  # int64 (rows,): 2**14 <= M < 2**15
    shift: np.ndarray  # int64 (rows,)
    source: str  # torch tensor and rows
    bias_source: str

    @property
    def cols(self) -> int:
        return self.weights.shape[1]


@dataclass(frozen=True, eq=False)
class QAccumulator:
    """``y = saturate(sum_p rescale(acc_p, M_p, n_p), out.bits)`` per row (see module doc)."""

    name: str
    parts: tuple[QPart, ...]
    bits: int  # weight bits
    out: QFormat

    @property
    def rows(self) -> int:
        return self.parts[0].weights.shape[0]


@dataclass(frozen=True, eq=False)
class QDirection:
    reverse: bool
    accs: tuple[QAccumulator, ...]  # as the IR direction's accumulators
    proj: QAccumulator | None = None

    def acc(self, name: str) -> QAccumulator:
        return next(a for a in self.accs if a.name == name)


@dataclass(frozen=True, eq=False)
class QLSTMLayer:
    """LSTM step in integers::

        i, f, o = sigmoid_wide(acc_i, acc_f, acc_o) (Q0.15)    g = tanh_wide(acc_g) (Q0.30)
        c  = dot2_q(f, c, fc_mul, i, g, ig_mul, c_shift)                         (c format)
             (dot2_q32 when c has 32 bits; c0 and c_n are int16 in c_io, c = c0 * 2**io_shift)
        hc = mul_q30(o, tanh_wide(sat24(rshift_round(c, c_wide_shift))), oc_shift)  (hc format)
        h  = hc, or the projection accumulator of hc                             (h format)
    """

    ir: LSTMLayer
    directions: tuple[QDirection, ...]
    x: QFormat
    h: QFormat
    c: QFormat
    hc: QFormat
    fc_mul: int
    ig_mul: int
    c_shift: int
    c_wide_shift: int
    oc_shift: int
    c_io: QFormat
    io_shift: int  # c.frac - c_io.frac: 0 for a 16-bit c


@dataclass(frozen=True, eq=False)
class QGRULayer:
    """GRU step in integers::

        r, z = sigmoid_wide(acc_r), sigmoid_wide(acc_z)                          (Q0.15)
        n = tanh_wide(sat24(acc_n + rshift_round(r * acc_nh, rn_shift)))  (Q0.30; acc Q3.20)
        h = dot2_q(z, h, zh_mul, one - z, n, zn_mul, h_shift)                    (h format)
    """

    ir: GRULayer
    directions: tuple[QDirection, ...]
    x: QFormat
    h: QFormat
    one: int
    rn_shift: int
    zn_mul: int
    zh_mul: int
    h_shift: int


@dataclass(frozen=True, eq=False)
class QRNNLayer:
    """Elman step in integers: tanh: ``h = sat_shift(tanh_wide(acc_h), out_shift)`` (acc in
    Q3.20, tanh in Q0.30); relu: ``h = relu_q(sat_shift(acc_h, out_shift))`` (acc in the h
    format with ``WIDE_EXTRA`` more fraction bits)."""

    ir: RNNLayer
    directions: tuple[QDirection, ...]
    x: QFormat
    h: QFormat
    out_shift: int


@dataclass(frozen=True, eq=False)
class QDense:
    ir: Dense
    acc: QAccumulator
    x: QFormat
    out: QFormat


@dataclass(frozen=True, eq=False)
class QConv1d:
    """A Conv1d in integers: one single-part accumulator whose row ``o`` is output channel
    ``o``'s weights as (kernel, in_channels / groups), i.e. ``W_q[o, k * cg + c]`` is torch's
    ``weight[o, c, k]``, with a per-channel scale. Output step ``t`` of channel ``o`` sums its
    row against the taps of x that fall inside the sequence (the zero padding adds nothing),
    then ``y = requant(bias + sum, M[o], n[o])`` in ``out`` (docs/fixed-point.md, "Conv1d")."""

    ir: Conv1d | FrameConv1d  # a frame conv: the same sums over the frame's L positions
    acc: QAccumulator
    x: QFormat
    out: QFormat


@dataclass(frozen=True, eq=False)
class QActivation:
    """relu: ``relu_q``; sigmoid: ``sigmoid_wide(sat24(rshift_round(x, in_shift)))`` (to
    Q3.20 first); tanh: ``sat_shift(tanh_wide(...), out_shift)`` (Q0.30 to the output);
    softmax/log_softmax: :mod:`tinyrnn.numerics.helpers` with ``softmax``'s constants."""

    ir: Activation
    x: QFormat
    out: QFormat
    in_shift: int = 0
    out_shift: int = 0
    softmax: SoftmaxParams | None = None
    low: int = 0  # relu6/hardtanh: the clamp bounds in x's format
    high: int = 0
    mult: int = 0  # leaky_relu (the slope), hardsigmoid/hardswish (1/6), square: M * 2^-shift
    shift: int = 0


@dataclass(frozen=True, eq=False)
class QPoolTime:
    """mean (x's format, rounded half up) or max (x's format) over time, or the sum: exact,
    then ``shift`` fraction bits fewer (its calibrated format, never finer than x's)."""

    ir: PoolTime
    x: QFormat
    out: QFormat
    shift: int = 0


@dataclass(frozen=True, eq=False)
class QPoolWindow:
    """MaxPool1d (exact) or AvgPool1d (the exact sum divided by the window's count, rounded
    half up: :func:`tinyrnn.numerics.helpers.avg_pool_q`) over time, in x's format."""

    ir: PoolWindow
    x: QFormat
    out: QFormat


@dataclass(frozen=True, eq=False)
class QPadTime:
    """Padding of the time axis: the steps of x moved into ``out`` (``shift`` fraction bits
    fewer, rounded half up; 0 unless the constant needs a coarser format than x's), the
    constant ``value`` in ``out`` (round half up, saturating)."""

    ir: PadTime
    x: QFormat
    out: QFormat
    value: int = 0
    shift: int = 0


AVG_POOL_MAX_KERNEL = 2**14 - 1
"""The largest AvgPool1d kernel whose int32 sum (``2 sum + d``) cannot overflow."""


@dataclass(frozen=True, eq=False)
class QEmbedding:
    """An Embedding's table as int16 in the format ``out`` (round half up, no saturation:
    :func:`embedding_format` holds every value); x is the token id (:data:`IDS`)."""

    ir: Embedding
    x: QFormat
    out: QFormat
    table: np.ndarray  # (V, D) int16 values


@dataclass(frozen=True, eq=False)
class QSelectStep:
    ir: SelectStep
    x: QFormat


@dataclass(frozen=True, eq=False)
class QMulti:
    """A layer over one or more int16 values that only moves or combines them (a cat, a channel
    slice, a frame pad, a carried value, a residual add or mul): each input ``xs[k]`` is
    brought to ``out`` by ``sat_shift(v, xs[k].frac - out.frac)`` (a copy when equal).

    Binary add: ``sat_shift(a * 2**(F - a.frac) + b * 2**(F - b.frac), F - out.frac)``, F the
    finer of the two formats (the int32 sum exact); mul: ``sat_shift(a * b, a.frac + b.frac -
    out.frac)`` (the int32 product exact). FramePad's constant is ``pad`` in x's format.
    Hypot: ``hypot_q(a, b, a.frac - out.frac)``, the exact 32-bit sum of squares."""

    ir: Binary | Concat | ChannelSlice | FramePad | Carry | Hypot
    xs: tuple[QFormat, ...]
    out: QFormat
    pad: int = 0  # FramePad: the constant in x's format; Hypot: the shift k of hypot_q

    @property
    def x(self) -> QFormat:
        return self.xs[0]

    def shifts(self) -> tuple[int, ...]:
        """What ``sat_shift`` applies to each input (Binary: to the sum or the product)."""
        if isinstance(self.ir, Hypot):  # a and b share one format (fuse_magnitudes)
            return (self.xs[0].frac - self.out.frac,)
        if isinstance(self.ir, Binary):
            a, b = self.xs
            if self.ir.kind == "mul":
                return (a.frac + b.frac - self.out.frac,)
            fine = max(a.frac, b.frac)
            return (fine - a.frac, fine - b.frac, fine - self.out.frac)
        return tuple(x.frac - self.out.frac for x in self.xs)


QRecurrent = QLSTMLayer | QGRULayer | QRNNLayer
QLayer = (QLSTMLayer | QGRULayer | QRNNLayer | QDense | QConv1d | QActivation | QSelectStep
          | QPoolTime | QPoolWindow | QPadTime | QMulti | QEmbedding)


@dataclass(frozen=True, eq=False)
class QModel:
    """A quantized model: the float IR (structure, interface) plus the integer layers."""

    model: Model
    format: str
    weight_bits: int
    input: QFormat
    layers: tuple[QLayer, ...]
    formats: Formats
    ranges: Ranges | None

    def out_format(self, index: int) -> QFormat:
        """The format of IR layer ``index``'s output."""
        return self.formats.layers[index].out

    def layer_bits(self, index: int) -> int | None:
        """The weight bits of IR layer ``index`` (None for a layer without weights): those
        :func:`quantize` gave it (:func:`layer_weight_bits`)."""
        if layer_name(self.model.layers[index]) is None:
            return None
        return layer_weight_bits(self.format, self.formats.layers[index])

    @property
    def final_format(self) -> QFormat:
        """The format of the data path's last value (NAME_step's output, sequence/vector)."""
        return self.formats.layers[-1].out if self.layers else self.input

    def state_formats(self, group: int, k: int) -> list[QFormat]:
        """Per row of a module's h (k=0) or c (k=1), in torch's (layers*directions) order."""
        out = []
        for index in self.model.groups[group].layers:
            layer = self.layers[index]
            assert isinstance(layer, (QLSTMLayer, QGRULayer, QRNNLayer))
            fmt = layer.h if k == 0 else layer.c_io  # type: ignore[union-attr]
            out += [fmt] * len(layer.directions)
        return out

    def carry_format(self, k: int) -> QFormat:
        """The format of the model's ``k``-th carried value (:attr:`Model.carries`)."""
        return self.out_format(self.model.carries[k][0])

    def input_row_formats(self) -> list[tuple[str, list[QFormat], int]]:
        """``(role, per-row formats, row size)`` for each forward input (see docs/c-api.md)."""
        rows = []
        carries = iter(range(len(self.model.carries)))
        for spec in self.model.inputs:
            if spec.role == "x":
                rows.append(("x", [self.input], spec.features))
            elif spec.role == "carry":
                rows.append(("carry", [self.carry_format(next(carries))], spec.size))
            else:
                k = 0 if spec.role == "h0" else 1
                fmts = self.state_formats(self.model.state_group, k)
                rows.append((spec.role, fmts, spec.size // len(fmts)))
        return rows

    def output_row_formats(self) -> list[tuple[str, list[QFormat], int]]:
        """``(role, per-row formats, row size)`` for each output of the forward."""
        rows = []
        for spec in self.model.outputs:
            if spec.role in ("sequence", "vector"):
                rows.append((spec.role, [self.final_format], spec.features))
            elif spec.role == "carry_n":
                rows.append((spec.role, [self.carry_format(spec.group)], spec.size))
            else:
                fmts = self.state_formats(spec.group, 0 if spec.role == "h_n" else 1)
                rows.append((spec.role, fmts, spec.size // len(fmts)))
        return rows


# ----------------------------------------------------------------------------------------------
# Quantizing weights
# ----------------------------------------------------------------------------------------------


Part = tuple[np.ndarray, float, int, str, "np.ndarray | None", str]
"""float weights (rows, cols), step of the int16 input they read, column offset, source,
float bias (rows,) or None, bias source."""


def _part(w: np.ndarray, step: float, offset: int, source: str, bias: np.ndarray | None,
          bias_source: str, out: QFormat, bits: int, what: str) -> QPart:
    """Quantize one part for an accumulator whose result has format ``out``.

    ``unit = max(max|W[r]| * step / qmax, |bias[r]| / BIAS_LIMIT)`` (``out.step`` for a row
    with neither), ``W_q = round_half_up(W * step / unit)``, ``b_q = round_half_up(bias / unit)``,
    ``M * 2**-n ~= unit / out.step``.
    """
    qmax = 2 ** (bits - 1) - 1
    rows = w.shape[0]
    peak = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(rows)
    unit = peak * step / qmax
    if bias is not None:
        unit = np.maximum(unit, np.abs(bias) / BIAS_LIMIT)
    unit = np.where(unit > 0, unit, out.step)
    w_q = fp.saturate(fp.round_half_up(w * step / unit[:, None]), bits)
    # |bias / unit| <= BIAS_LIMIT by the choice of unit, so the rounded bias fits easily
    b_q = fp.round_half_up(bias / unit).astype(np.int64) if bias is not None else None
    bound = fp.acc_bound(w_q, INPUT_LIMIT, b_q) if w.shape[1] else np.abs(
        b_q if b_q is not None else np.zeros(rows, np.int64))
    top = int(bound.max()) if rows else 0
    if top >= fp.REQUANT_ACC_LIMIT:
        raise TinyRNNError(
            f"{what}: the accumulator bound {top} reaches 2**47; the weights are too large for "
            "int16 inputs. Use --format w8a16 or check the weights."
        )
    try:
        mult, shift = fp.quantize_multipliers(unit / out.step)
    except ValueError as exc:
        raise TinyRNNError(
            f"{what}: cannot requantize to {out} ({exc}); the weights or the calibrated "
            "range are extreme. Check the weights and the calibration data."
        ) from None
    return QPart(w_q, offset, b_q, unit / step, unit, 32 if top <= fp.ACC32_LIMIT else 64, top,
                 mult, shift, source, bias_source)


def _accumulator(name: str, parts: Sequence[Part], out: QFormat, bits: int, what: str
                 ) -> QAccumulator:
    """Quantize the parts of one accumulator (see :func:`_part`)."""
    return QAccumulator(name, tuple(_part(*p, out=out, bits=bits, what=what) for p in parts),
                        bits, out)


def _direction(layer: RecurrentLayer, index: int, d: int, x: QFormat, h: QFormat,
               gate_out: QFormat, hc: QFormat, bits: int) -> QDirection:
    direction = layer.directions[d]
    side = "reverse" if direction.reverse else "forward"
    where = f"layer {index} ({layer.module} layer {layer.layer}, {side})"
    accs = []
    for a in direction.accumulators:  # LSTM i f g o; GRU r z n nh; RNN h
        bias = a.bias.data if a.bias is not None else None
        bias_source = a.bias.source if a.bias is not None else ""
        parts = [(t.data, step, offset, t.source) for t, step, offset in (
            (a.w_x, x.step, 0), (a.w_h, h.step, layer.input_size)) if t is not None]
        # the bias starts the first part's sum
        parts = [(*parts[0], bias, bias_source)] + [(*p, None, "") for p in parts[1:]]
        accs.append(_accumulator(a.name, parts, gate_out, bits, f"{where} gate {a.name}"))
    proj = None
    if direction.w_proj is not None:
        proj = _accumulator(
            "proj", [(direction.w_proj.data, hc.step, 0, direction.w_proj.source, None, "")],
            h, bits, f"{where} projection")
    return QDirection(direction.reverse, tuple(accs), proj)


def conv_rows(layer: Conv1d | FrameConv1d) -> np.ndarray:
    """torch's (out, in / groups, kernel) weights as one row per output channel, (kernel,
    in / groups) flattened: the taps one after the other, each tap's channels contiguous."""
    w = layer.weight.data
    return np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(w.shape[0], -1)


def quantize_conv1d(layer: Conv1d | FrameConv1d, index: int, x: QFormat, out: QFormat,
                    bits: int) -> QConv1d:
    """A Conv1d's weights with one scale per output channel (as a Linear's rows), its bias in
    accumulator units, its requantization to the calibrated output format."""
    b = layer.bias.data if layer.bias is not None else None
    b_src = layer.bias.source if layer.bias is not None else ""
    acc = _accumulator(
        "conv", [(conv_rows(layer), x.step, 0, f"{layer.weight.source} as (out, kernel, "
                  "in / groups)", b, b_src)],
        out, bits, f"layer {index} (Conv1d {layer.name})")
    return QConv1d(layer, acc, x, out)


def _check_shift(value: int, lo: int, hi: int, what: str) -> int:
    if not lo <= value <= hi:
        raise TinyRNNError(
            f"{what}: the calibrated format needs a shift of {value}, outside [{lo}, {hi}]; the "
            "calibration ranges are extreme. Check the calibration data."
        )
    return value


def quantize(model: Model, format: str, formats: Formats, ranges: Ranges | None = None
             ) -> QModel:
    """Quantize ``model``'s weights for ``format`` (w8a16 or w16a16) and the given formats."""
    if format not in WEIGHT_BITS:
        raise TinyRNNError(f"{format!r} is not an integer format ({', '.join(WEIGHT_BITS)})")
    model = fuse_magnitudes(model)
    values = [formats.input]  # by value index (ir.reads)
    layers: list[QLayer] = []
    for index, layer in enumerate(model.layers):
        lf = formats.layers[index]
        bits = layer_weight_bits(format, lf)  # every branch's weights: 8 or 16 bits
        where = f"layer {index}"
        read = [values[k] for k in reads(model.layers, index)]
        current = read[0]
        if isinstance(layer, RecurrentLayer):
            h = lf.out
            if isinstance(layer, LSTMLayer):
                assert lf.cell is not None
                c = lf.cell
                c_io = lf.cell_io or c
                hc = lf.projected or h if layer.projected else h
                dirs = tuple(_direction(layer, index, d, current, h, ACT_WIDE, hc, bits)
                             for d in range(layer.num_directions))
                # f*c is Q(15+cf), i*g is Q45 (g in Q0.30): sum in Q45, one rounding to c
                _check_shift(c.frac, 0 if c.bits == ACT_BITS else CELL32_EXTRA, MAX_FRAC,
                             f"{where} cell state format")
                layers.append(QLSTMLayer(
                    layer, dirs, current, h, c, hc,
                    fc_mul=2 ** (TANH_Q30_PRODUCT - Q15.frac - c.frac),
                    ig_mul=1,
                    c_shift=TANH_Q30_PRODUCT - c.frac,
                    c_wide_shift=c.frac - ACT_WIDE.frac,
                    oc_shift=_check_shift(TANH_Q30_PRODUCT - hc.frac, 0, 62, where),
                    c_io=c_io,
                    io_shift=_check_shift(c.frac - c_io.frac, 0, CELL32_EXTRA, where),
                ))
            elif isinstance(layer, GRULayer):
                dirs = tuple(_direction(layer, index, d, current, h, ACT_WIDE, h, bits)
                             for d in range(layer.num_directions))
                _check_shift(h.frac, 0, MAX_FRAC, f"{where} state format")
                # z*h is Q(15+hf), (1-z)*n is Q45 (n in Q0.30): sum in Q45, one rounding
                layers.append(QGRULayer(
                    layer, dirs, current, h, one=ACT_ONE, rn_shift=Q15.frac,
                    zn_mul=1, zh_mul=2 ** (TANH_Q30_PRODUCT - Q15.frac - h.frac),
                    h_shift=TANH_Q30_PRODUCT - h.frac,
                ))
            else:
                assert isinstance(layer, RNNLayer)
                relu = layer.nonlinearity == "relu"
                pre = QFormat(ACT_WIDE.bits, h.frac + WIDE_EXTRA) if relu else ACT_WIDE
                dirs = tuple(_direction(layer, index, d, current, h, pre, h, bits)
                             for d in range(layer.num_directions))
                shift = WIDE_EXTRA if relu else _check_shift(TANH_FRAC - h.frac, 0,
                                                              fp.SAT_SHIFT_MAX, where)
                layers.append(QRNNLayer(layer, dirs, current, h, out_shift=shift))
        elif isinstance(layer, Dense):
            b = layer.bias.data if layer.bias is not None else None
            b_src = layer.bias.source if layer.bias is not None else ""
            acc = _accumulator(
                "dense", [(layer.weight.data, current.step, 0, layer.weight.source, b, b_src)],
                lf.out, bits, f"layer {index} (Linear {layer.name})")
            layers.append(QDense(layer, acc, current, lf.out))
        elif isinstance(layer, (Conv1d, FrameConv1d)):
            layers.append(quantize_conv1d(layer, index, current, lf.out, bits))
        elif isinstance(layer, Embedding):
            if layer.num_embeddings > MAX_VOCAB_Q:
                raise TinyRNNError(
                    f"{where} (Embedding {layer.name}): {layer.num_embeddings} token ids; the "
                    f"integer formats take ids as int16, up to {MAX_VOCAB_Q}; export this model "
                    "with --format float32 (format='float32')")
            table = lf.out.quantize(layer.weight.data).astype(np.int16)
            layers.append(QEmbedding(layer, current, lf.out, table))
        elif isinstance(layer, Carry):  # read in place; its new value replaces it as is
            new = formats.layers[dict(model.carries)[index] - 1].out
            if new != lf.out:
                raise TinyRNNError(
                    f"{where} (a carried value): its format {lf.out} differs from that of the "
                    f"value that replaces it ({new}); export this model with --format float32")
            layers.append(QMulti(layer, (lf.out,), lf.out))
        elif isinstance(layer, (Binary, Concat, ChannelSlice, FramePad, Hypot)):
            layers.append(_multi(layer, index, tuple(read), lf.out))
        elif isinstance(layer, Activation):
            if layer.kind in ("sigmoid", "tanh"):
                shift = _check_shift(current.frac - ACT_WIDE.frac, -40, 40, where)
                out_shift = (_check_shift(TANH_FRAC - lf.out.frac, 0, fp.SAT_SHIFT_MAX, where)
                             if layer.kind == "tanh" else 0)
                layers.append(QActivation(layer, current, lf.out, in_shift=shift,
                                          out_shift=out_shift))
            elif layer.kind in ("softmax", "log_softmax"):
                try:
                    params = softmax_params(layer.kind == "log_softmax", current, lf.out)
                except ValueError as exc:
                    raise TinyRNNError(
                        f"layer {index} ({layer.kind}): its input format {current} is outside "
                        f"the supported range ({exc}); the logits are extreme"
                    ) from None
                layers.append(QActivation(layer, current, lf.out, softmax=params))
            elif layer.kind in _POINTWISE:
                layers.append(_pointwise(layer, index, current, lf.out))
            else:
                layers.append(QActivation(layer, current, lf.out))
        elif isinstance(layer, PoolTime):
            shift = _check_shift(current.frac - lf.out.frac, 0, fp.REQUANT_MAX_SHIFT, where)
            layers.append(QPoolTime(layer, current, lf.out, shift))
        elif isinstance(layer, PoolWindow):
            if layer.kind == "avg" and layer.kernel > AVG_POOL_MAX_KERNEL:
                raise TinyRNNError(
                    f"{where} (AvgPool1d {layer.name}): kernel {layer.kernel} is beyond the "
                    f"integer form's {AVG_POOL_MAX_KERNEL} (its int32 sum); export this model "
                    "with --format float32 (format='float32')")
            layers.append(QPoolWindow(layer, current, lf.out))
        elif isinstance(layer, PadTime):
            shift = _check_shift(current.frac - lf.out.frac, 0, fp.REQUANT_MAX_SHIFT, where)
            value = int(lf.out.saturate(fp.round_half_up(layer.value * 2.0**lf.out.frac)))
            layers.append(QPadTime(layer, current, lf.out, value, shift))
        else:
            assert isinstance(layer, SelectStep)
            layers.append(QSelectStep(layer, current))
        values.append(lf.out)
    return QModel(model, format, WEIGHT_BITS[format], formats.input, tuple(layers), formats,
                  ranges)


def _multi(layer: Binary | Concat | ChannelSlice | FramePad | Carry | Hypot, index: int,
           xs: tuple[QFormat, ...], out: QFormat) -> QMulti:
    """A :class:`QMulti`, its shifts checked (``sat_shift`` takes ``|n| <= 31``; a Binary add
    aligns the two inputs in int32: at most 15 bits apart)."""
    pad = 0
    if isinstance(layer, FramePad) and layer.mode == "constant":
        pad = int(xs[0].quantize(np.float32(layer.value)))
    q = QMulti(layer, xs, out, pad)
    shifts = q.shifts()
    where = f"layer {index} ({type(layer).__name__})"
    if isinstance(layer, Binary) and layer.kind == "add":
        for n in shifts[:2]:
            _check_shift(n, 0, ACT_BITS - 1, where)
    if isinstance(layer, Hypot):
        assert xs[0] == xs[1], "fuse_magnitudes pairs slices of one value"
        return QMulti(layer, xs, out, _check_shift(shifts[0], 0, fp.HYPOT_Q_MAX_SHIFT, where))
    _check_shift(shifts[-1], -fp.SAT_SHIFT_MAX, fp.SAT_SHIFT_MAX, where)
    for n in shifts[:-1] if not isinstance(layer, Binary) else ():
        _check_shift(n, -fp.SAT_SHIFT_MAX, fp.SAT_SHIFT_MAX, where)
    return q


_POINTWISE = {"relu6", "hardtanh", "leaky_relu", "hardsigmoid", "hardswish", "abs", "square",
              "sqrt"}


def _pointwise(layer: Activation, index: int, x: QFormat, out: QFormat) -> QActivation:
    """The integer constants of an element-wise function other than relu/sigmoid/tanh:
    clamp bounds in x's format (relu6, hardtanh), or one multiplier ``M * 2^-n`` (leaky_relu:
    the slope; hardsigmoid and hardswish: ``x / 6`` into Q0.15; square: ``x * x`` into the
    output format); sqrt: the shift of :func:`sqrt_format`."""
    where = f"layer {index} ({layer.kind})"
    kind = layer.kind
    if kind in ("relu6", "hardtanh"):
        low, high = (int(x.saturate(fp.round_half_up(v * 2.0**x.frac)))
                     for v in (layer.low, layer.high))
        return QActivation(layer, x, out, low=low, high=high)
    if kind == "abs":
        return QActivation(layer, x, out)
    if kind == "sqrt":  # sqrt_q(x, e): the exact root of x * 2**e, rounded (sqrt_format)
        return QActivation(layer, x, out, shift=_check_shift(2 * out.frac - x.frac, 0,
                                                             SQRT_MAX_SHIFT, where))
    if kind == "leaky_relu":
        real = layer.slope
    elif kind == "square":
        real = 2.0 ** (out.frac - 2 * x.frac)
    else:  # hardsigmoid, hardswish: x / 6 in Q0.15
        real = 2.0 ** (fp.ACT_OUT.frac - x.frac) / 6.0
    if kind == "leaky_relu" and real <= 0:
        raise TinyRNNError(f"{where}: leaky_relu with negative_slope {real!r} has no integer "
                           "form (it takes a slope > 0; use relu for 0); export this model "
                           "with --format float32 (format='float32')")
    try:
        mult, shift = fp.quantize_multiplier(real)
    except ValueError as exc:
        raise TinyRNNError(f"{where}: its multiplier {real!r} has no integer form ({exc}); "
                           "export this model with --format float32 (format='float32')"
                           ) from None
    return QActivation(layer, x, out, mult=mult, shift=shift)


# ----------------------------------------------------------------------------------------------
# The manifest section, and reading the formats back
# ----------------------------------------------------------------------------------------------


def _fmt(q: QFormat) -> dict:
    return {"format": str(q), "bits": q.bits, "frac": q.frac}


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64)]


def _acc_summary(a: QAccumulator) -> dict:
    return dict(
        weight_bits=a.bits,
        output_format=f"{a.out} ({a.out.bits} bits)",
        parts=[dict(source=p.source, columns=[p.offset, p.offset + p.cols],
                    bias_source=p.bias_source or None,
                    accumulator_bits=p.acc_bits, accumulator_bound=p.bound,
                    weight_scale=_floats(p.scale), accumulator_unit=_floats(p.unit),
                    requant_multiplier=[int(v) for v in p.mult],
                    requant_shift=[int(v) for v in p.shift])
               for p in a.parts],
    )


def manifest_section(q: QModel) -> dict:
    """The manifest's ``quantization`` section: every format, scale and observed range."""
    ranges = q.ranges
    layers = []
    for index, layer in enumerate(q.layers):
        entry: dict = dict(index=index, output=_fmt(q.out_format(index)))
        if ranges is not None:
            entry["observed_max_abs"] = ranges.layers[index]
        cell = q.formats.layers[index].cell
        if cell is not None:
            entry["cell"] = _fmt(cell)
            wide = cell.bits != ACT_BITS  # only then: a 16-bit c's record is as before
            if wide:
                entry["cell_io"] = _fmt(q.formats.layers[index].cell_io or cell)
            if ranges is not None:
                entry["cell_observed_max_abs"] = ranges.cells[index]
                if wide and ranges.cell_medians and ranges.cell_medians[index] is not None:
                    entry["cell_observed_median_unit_max_abs"] = ranges.cell_medians[index]
        projected = q.formats.layers[index].projected
        if projected is not None:
            entry["projected"] = _fmt(projected)
            if ranges is not None:
                entry["projected_observed_max_abs"] = ranges.projected[index]
        bits = q.layer_bits(index)
        if bits is not None and bits != q.weight_bits:  # a per-layer format (every
            entry["weight_bits"] = bits  # accumulator below records its bits as well)
        if isinstance(layer, (QLSTMLayer, QGRULayer, QRNNLayer)):
            entry["kind"] = layer.ir.kind
            entry["directions"] = [
                dict(reverse=d.reverse,
                     accumulators={a.name: _acc_summary(a) for a in d.accs},
                     **({"projection": _acc_summary(d.proj)} if d.proj is not None else {}))
                for d in layer.directions]
        elif isinstance(layer, QDense):
            entry["kind"] = "dense"
            entry["accumulator"] = _acc_summary(layer.acc)
        elif isinstance(layer, QConv1d):
            entry["kind"] = "frame_conv1d" if isinstance(layer.ir, FrameConv1d) else "conv1d"
            entry["accumulator"] = _acc_summary(layer.acc)
        elif isinstance(layer, QActivation):
            entry["kind"] = layer.ir.kind
            if layer.softmax is not None:
                entry["softmax"] = dict(vars(layer.softmax))
            if layer.ir.kind in ("relu6", "hardtanh"):
                entry["clamp"] = [layer.low, layer.high]
            if layer.mult:
                entry["multiplier"] = dict(M=layer.mult, shift=layer.shift)
            if layer.ir.kind == "sqrt":
                entry["sqrt_shift"] = layer.shift
        elif isinstance(layer, QEmbedding):
            entry["kind"] = "embedding"
            entry["table_bits"] = ACT_BITS
        elif isinstance(layer, QPoolTime):
            entry["kind"] = f"{layer.ir.kind}_time"
        elif isinstance(layer, QPoolWindow):
            entry["kind"] = f"{layer.ir.kind}_pool1d"
        elif isinstance(layer, QPadTime):
            entry["kind"] = "pad_time"
            entry["value"] = layer.value
            entry["shift"] = layer.shift
        elif isinstance(layer, QMulti):
            ir = layer.ir
            entry["kind"] = ir.kind if isinstance(ir, Binary) else {
                Concat: "cat", ChannelSlice: "channel_slice", FramePad: "frame_pad",
                Carry: "carry", Hypot: "hypot"}[type(ir)]
            entry["inputs"] = [_fmt(x) for x in layer.xs]
            if isinstance(ir, FramePad) and ir.mode == "constant":
                entry["pad_value"] = layer.pad
        else:
            entry["kind"] = "select_step"
        layers.append(entry)
    section: dict = dict(
        scheme="symmetric per-row weights, int16 activations, round half up, saturation "
               "(docs/fixed-point.md)",
        weight_bits=q.weight_bits,
        activation_bits=ACT_BITS,
        headroom=HEADROOM,
        input=_fmt(q.input),
        layers=layers,
    )
    if ranges is not None:
        section["input"]["observed_max_abs"] = ranges.input
        section["calibration"] = dict(source=ranges.source, sequences=ranges.sequences,
                                      steps=ranges.steps)
    return section


def formats_from_manifest(model: Model, section: dict) -> Formats:
    """The :class:`Formats` recorded by :func:`manifest_section` (for ``tinyrnn verify``)."""

    def read(entry: dict) -> QFormat:
        return QFormat(int(entry["bits"]), int(entry["frac"]))

    def weight_bits(entry: dict) -> int | None:
        """A per-layer format's weight bits (None where they are the model format's: the
        entry has none)."""
        if "weight_bits" not in entry:
            return None
        bits = int(entry["weight_bits"])
        if bits not in WEIGHT_BITS.values():
            raise ValueError(f"weight_bits {bits} is neither 8 nor 16")
        return None if bits == int(section["weight_bits"]) else bits

    try:
        layers = section["layers"]
        if len(layers) != len(model.layers):
            raise TinyRNNError(
                f"the manifest lists {len(layers)} layers but the model has {len(model.layers)}"
            )
        return Formats(read(section["input"]), tuple(
            LayerFormats(read(e["output"]), read(e["cell"]) if "cell" in e else None,
                         read(e["projected"]) if "projected" in e else None,
                         read(e["cell_io"]) if "cell_io" in e else None,
                         weight_bits(e))
            for e in layers))
    except (KeyError, TypeError, ValueError) as exc:
        raise TinyRNNError(
            f"the manifest's quantization section is incomplete ({exc}); re-export the model"
        ) from None


def interface_section(q: QModel) -> dict:
    """The manifest's ``interface.quantized``: what a harness needs for the ``_q`` API.

    Element ``e`` of a flat buffer (input or output, one sample) has the format
    ``frac[(e // row_size) % len(frac)]``: one entry for x, sequences and vectors, one per
    (layer, direction) row for h0/c0/h_n/c_n.
    """

    def rows(items: list[tuple[str, list[QFormat], int]]) -> list[dict]:
        return [dict(role=role, bits=ACT_BITS, frac=[f.frac for f in fmts], row_size=size)
                for role, fmts, size in items]

    return dict(
        bits=ACT_BITS,
        forward_inputs=rows(q.input_row_formats()),
        outputs=rows(q.output_row_formats()),
        step_output_frac=q.final_format.frac,
        state_h_frac=[f.frac for f in q.state_formats(q.model.state_group, 0)],
        state_c_frac=([f.frac for f in q.state_formats(q.model.state_group, 1)]
                      if q.model.groups[q.model.state_group].cell == "lstm" else []),
    )


__all__ = [
    "Formats", "LayerFormats", "QAccumulator", "QActivation", "QConv1d", "QDense", "QDirection",
    "QEmbedding",
    "QGRULayer", "QLSTMLayer", "QModel", "QMulti", "QPadTime", "QPart", "QPoolTime",
    "QPoolWindow", "QRNNLayer", "QSelectStep",
    "Ranges",
    "WEIGHT_BITS", "calibrate", "check_layer_formats", "choose_formats", "formats_from_manifest",
    "fuse_magnitudes", "interface_section", "layer_name", "layer_weight_bits", "manifest_section",
    "quantize", "quantize_conv1d", "state_rows", "weight_overrides", "with_weight_bits",
]
