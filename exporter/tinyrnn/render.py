"""Render: the IR -> C text (NAME.h, NAME.c) and the manifest (NAME.json).

Python decides everything here (names, buffer assignment, the order of operations, the
numbers); the Jinja2 templates only print it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from . import __version__
from . import interface as c_interface
from .dspasm import UNROLL_SIZE, UNROLL_SPEED, UnitKernel
from .errors import TinyRNNError
from .ir import Activation, Dense, Model, RecurrentLayer, SelectStep
from .quantize import padded
from .resources import resource_dir

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_C_KEYWORDS = {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch",
    "typedef", "union", "unsigned", "void", "volatile", "while", "main",
}


def check_name(name: str) -> str:
    """A model name must be a C identifier; it prefixes every symbol."""
    if not _NAME.match(name) or name in _C_KEYWORDS:
        raise TinyRNNError(
            f"model name {name!r} is not usable as a C identifier prefix; use letters, digits "
            "and underscores, starting with a letter (e.g. --name gesture_lstm)"
        )
    return name


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    """One environment per process: each template is compiled once."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def c_floats(array: np.ndarray, indent: str = "    ", per_line: int = 6) -> str:
    """A C initializer body for float32 values, exact (shortest round-trip form)."""
    flat = np.asarray(array, dtype=np.float32)
    if flat.ndim == 1:
        flat = flat[None, :]
    rows = []
    for row in flat.reshape(flat.shape[0], -1):
        items = [np.format_float_scientific(v, unique=True, trim="0") + "f" for v in row]
        chunks = [", ".join(items[k:k + per_line]) for k in range(0, len(items), per_line)]
        body = (",\n" + indent + "  ").join(chunks)
        rows.append(indent + ("{ " + body + " }" if array.ndim > 1 else body))
    return ",\n".join(rows)


def weights_hash(model: Model) -> str:
    """sha256 over every constant array in IR order: identifies the weights in headers."""
    digest = hashlib.sha256()
    for layer in model.layers:
        for tensor in _tensors(layer):
            digest.update(tensor.source.encode())
            digest.update(np.ascontiguousarray(tensor.data, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _tensors(layer: Any) -> list:
    if isinstance(layer, RecurrentLayer):
        out = []
        for d in layer.directions:
            for g in d.gates:
                out += g.tensors
            if d.w_proj is not None:
                out.append(d.w_proj)
        return out
    if isinstance(layer, Dense):
        return [t for t in (layer.weight, layer.bias) if t is not None]
    return []


@dataclass
class _Op:
    """One call in the generated run/step code."""

    kind: str  # "cell", "dense", "activation"
    fn: str
    src: str
    src_width: int
    dst: str = ""
    dst_width: int = 0
    dst_offset: int = 0
    state: list[str] = field(default_factory=list)
    out_size: int = 0
    reverse: bool = False
    comment: str = ""


@dataclass
class _Plan:
    ops: list[_Op]
    result: str


def c_ints(array: np.ndarray, indent: str = "    ", per_line: int = 12) -> str:
    """A C initializer body for integers (rows of a matrix in braces, like :func:`c_floats`)."""
    flat = np.asarray(array, dtype=np.int64)
    rows = []
    for row in (flat[None, :] if flat.ndim == 1 else flat):
        items = [str(int(v)) for v in row]
        chunks = [", ".join(items[k:k + per_line]) for k in range(0, len(items), per_line)]
        body = (",\n" + indent + "  ").join(chunks)
        rows.append(indent + ("{ " + body + " }" if flat.ndim > 1 else body))
    return ",\n".join(rows)


def _hex_scale(frac: int) -> str:
    """The exact float32 literal ``2**frac`` (C99 hexadecimal floating constant)."""
    return f"0x1p{frac}f"


WEIGHT_CTYPE = {8: "int8_t", 16: "int16_t"}
ACC_CTYPE = {32: "int32_t", 64: "int64_t"}
CTYPE_BYTES = {"float": 4, "int8_t": 1, "int16_t": 2, "int32_t": 4, "int64_t": 8, "uint8_t": 1,
               "uint32_t": 4}


class _Arrays:
    """The constant arrays of one function, in print order, with their sizes."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, ctype: str, name: str, data: np.ndarray, comment: str) -> str:
        dims = "".join(f"[{n}]" for n in data.shape)
        text = c_floats(data) if ctype == "float" else c_ints(data)
        self.items.append(dict(ctype=ctype, name=name, dims=dims, text=text, comment=comment,
                               bytes=CTYPE_BYTES[ctype] * int(data.size)))
        return name


def _float_part(arrays: _Arrays, fn: str, w_name: str, offset: int, n: int,
                bias: Any, bias_name: str) -> dict:
    b = ""
    if bias is not None:
        b = arrays.add("float", bias_name, bias.data, f"{bias.source}, float32")
    return dict(w=w_name, off=f" + {offset}" if offset else "", n=n, bias=b, dot="dot",
                acc_t="float")


def _fixed_acc(arrays: _Arrays, fn: str, acc: Any, w_name: str, suffix: str,
               part_names: list[str]) -> dict:
    """A view of a QAccumulator whose parts' weights live in the (already added) array
    ``w_name``; adds the bias, multiplier and shift arrays of each part."""
    parts = []
    for part, pname in zip(acc.parts, part_names):
        acc_t = ACC_CTYPE[part.acc_bits]
        b = ""
        if part.bias is not None:
            b = arrays.add(acc_t, f"{fn}_b_{suffix}", part.bias,
                           f"{part.bias_source}, {acc_t} in accumulator units")
        m = arrays.add("int16_t", f"{fn}_m_{suffix}{pname}", part.mult,
                       f"requant multipliers of {part.source}")
        sh = arrays.add("uint8_t", f"{fn}_s_{suffix}{pname}", part.shift,
                        f"requant shifts of {part.source}")
        parts.append(dict(w=w_name, off=f" + {part.offset}" if part.offset else "",
                          n=part.cols, bias=b, dot=f"dot_w{acc.bits}_acc{part.acc_bits}",
                          acc_t=acc_t, m=m, sh=sh))
    return dict(parts=parts, wide=acc.out.bits != 16)


def _direction_view(p: str, index: int, layer: RecurrentLayer, d_index: int, q: Any,
                    kernels: _Kernels | None = None) -> dict:
    """Everything one cell template prints for one direction; ``q`` is the quantized layer
    (None for float32). The integer formats add the kernels they call to ``kernels``."""
    d = layer.directions[d_index]
    tag = "rev" if d.reverse else "fwd"
    fn = f"{p}_l{index}_{tag}"
    arrays = _Arrays()
    accs: dict[str, dict] = {}
    I, P = layer.input_size, layer.state_size
    extra: dict[str, Any] = {}
    if q is None:
        for g in d.gates:
            w = np.concatenate([g.w_x.data, g.w_h.data], axis=1)
            w_name = arrays.add("float", f"{fn}_w_{g.name}", w,
                                f"{g.w_x.source} | {g.w_h.source}, float32")
            for a in g.accumulators:
                offset = 0 if a.w_x is not None else I
                cols = (I if a.w_x is not None else 0) + (P if a.w_h is not None else 0)
                accs[a.name] = dict(parts=[_float_part(arrays, fn, w_name, offset, cols, a.bias,
                                                       f"{fn}_b_{a.name}")])
        if d.w_proj is not None:
            w_name = arrays.add("float", f"{fn}_w_proj", d.w_proj.data,
                                f"{d.w_proj.source}, float32")
            accs["proj"] = dict(parts=[dict(w=w_name, off="", n=layer.hidden_size, bias="",
                                            dot="dot", acc_t="float")])
    else:
        qd = q.directions[d_index]
        wtype = WEIGHT_CTYPE[q.directions[0].accs[0].bits]
        extra["kernel"] = _kernel_view(p, fn, arrays, layer, d, qd, kernels)
        if qd.proj is not None:
            w_name = arrays.add(wtype, f"{fn}_w_proj", qd.proj.parts[0].weights,
                                f"{d.w_proj.source}, {wtype}, per-row scale")
            accs["proj"] = _fixed_acc(arrays, fn, qd.proj, w_name, "proj", [""])
        extra.update({k: v for k, v in vars(q).items()
                      if isinstance(v, int) and not isinstance(v, bool)})
        formats = [f"x {q.x}", f"h {q.h}"]
        if layer.kind == "lstm":
            formats.append(f"c {q.c}")
            if layer.projected:
                formats.append(f"o*tanh(c) {q.hc}")
        extra["formats"] = ", ".join(formats)
    module = layer.module or "rnn"
    return dict(
        fn=fn,
        title=f"{module} layer {layer.layer}, {'reverse' if d.reverse else 'forward'} direction",
        I=I,
        I4=padded(I),
        H=layer.hidden_size,
        P=P,
        arrays=arrays.items,
        acc=accs,
        proj=d.w_proj is not None,
        nonlinearity=layer.spec.gates[-1].activation,
        state=[f"s->l{index}_{tag}_h"] + ([f"s->l{index}_{tag}_c"] if layer.kind == "lstm" else []),
        **extra,
    )


@dataclass
class _Kernels:
    """The matrix-vector kernels one model's cells call, each once: the C kernels as
    (G, bits, acc_bits), the DSP unit kernels, and the ARMv6-M unit kernels (by name) with the
    copies of the weights they read."""

    c: set = field(default_factory=set)
    units: set = field(default_factory=set)
    v6m_units: dict = field(default_factory=dict)
    v6m_arrays: list = field(default_factory=list)


INT16_MAX_ABS = 32768
"""The largest |value| of an int16 activation: the accumulator bounds assume every input."""


@dataclass(frozen=True)
class _Fold:
    """The requantization of one part folded into one rounded high-word multiply.

    32-bit sums: ``rshift_round(acc * M, n) == c * acc + mmulr(acc, k)`` with
    ``k + c * 2**32 = M * 2**(32 - n)``, ``-2**31 <= k < 2**31`` (exact: ``c * acc * 2**32`` is a
    multiple of 2**32). 64-bit sums (``wide``): ``mmulr64(acc, k)`` with ``k = M * 2**(32 - n)``,
    ``0 <= k < 2**32`` and c = 0; the result must fit int32."""

    k: np.ndarray       # int64 (rows, gates)
    c: np.ndarray       # int64 (rows, gates)
    bound: np.ndarray   # int64 (rows, gates): largest |rescaled sum| over all int16 inputs
    wide: bool


def _fold(side: list, rows: int, acc_bits: int) -> _Fold | None:
    """The folded multipliers of one part of every gate, or None when a shift is out of range
    or a product could leave int32 for some input."""
    from .fixedpoint import acc_bound

    ks, cs, bounds = [], [], []
    for part in side:
        mult = np.asarray(part.mult, dtype=np.int64)
        shift = np.asarray(part.shift, dtype=np.int64)
        if (shift > 32).any() or (shift < 0).any() or (mult <= 0).any():
            return None
        acc = acc_bound(part.weights, INT16_MAX_ABS, part.bias).astype(object)
        full = [int(m) << (32 - int(n)) for m, n in zip(mult, shift)]
        if acc_bits == 32:
            c = [(f + (1 << 31)) >> 32 for f in full]
            if any(abs(ci) * int(a) >= 1 << 31 for ci, a in zip(c, acc)):
                return None
        elif max(full) < 1 << 32:
            c = [0] * len(full)
        else:
            return None
        ks.append([f - ci * (1 << 32) for f, ci in zip(full, c)])
        cs.append(c)
        bounds.append([(int(a) * int(m) >> int(n)) + 1 for a, m, n in zip(acc, mult, shift)])
        if max(bounds[-1]) >= 1 << 31:
            return None
    return _Fold(k=np.array(ks, dtype=np.int64).T.reshape(rows, -1),
                 c=np.array(cs, dtype=np.int64).T.reshape(rows, -1),
                 bound=np.array(bounds, dtype=np.int64).T.reshape(rows, -1),
                 wide=acc_bits == 64)


def _kernel_view(p: str, fn: str, arrays: _Arrays, layer: RecurrentLayer, d: Any, qd: Any,
                 kernels: _Kernels | None) -> dict:
    """The interleaved weights and per-unit constants of one direction's gate rows (see
    :func:`tinyrnn.quantize.kernel_layout`) and the C expression of each pre-activation."""
    from .quantize import kernel_layout

    spec = layer.spec
    names = spec.gate_names
    sides: list[list] = [[], []]  # the x part and the h part of each gate
    for gate in spec.gates:
        parts = [p for name in gate.accumulators for p in qd.acc(name).parts]
        sides[0].append(next(p for p in parts if p.offset == 0))
        sides[1].append(next(p for p in parts if p.offset != 0))
    bits = qd.accs[0].bits
    wtype = WEIGHT_CTYPE[bits]
    stream = np.concatenate(
        [kernel_layout([part.weights for part in side], bits).reshape(layer.hidden_size, -1)
         for side in sides], axis=1)
    sources = ", ".join(part.source for part in sides[0] + sides[1])
    order = "bytes of each 4-column group in SXTB16 order 0,2,1,3" if bits == 8 else \
        "4-column groups"
    w_name = arrays.add(wtype, f"{fn}_w", stream,
                        f"per unit: {'/'.join(names)} rows interleaved, x columns then h "
                        f"columns, each padded to a multiple of 4 with zeros, {order}; "
                        f"{wtype}, per-row scale for each part; from {sources}")
    G = len(names)
    views = []
    for k, (side, tag) in enumerate(zip(sides, ("x", "h"))):
        acc_bits = max(part.acc_bits for part in side)
        acc_t = ACC_CTYPE[acc_bits]
        fold = _fold(side, layer.hidden_size, acc_bits)
        bias = ""
        if any(part.bias is not None for part in side):
            b = np.stack([part.bias if part.bias is not None else
                          np.zeros(layer.hidden_size, np.int64) for part in side], axis=1)
            bias = arrays.add(acc_t, f"{fn}_b{tag}", b,
                              f"biases of the {tag} parts, {acc_t} in accumulator units: "
                              + ", ".join(part.bias_source for part in side
                                          if part.bias is not None))
        c_name = s_name = ""
        if fold is not None and fold.wide:
            m = arrays.add("uint32_t", f"{fn}_m{tag}", fold.k,
                           f"requant of the {tag} parts: k = M * 2^(32 - n); the rounded high "
                           "word of acc times it is rshift_round(acc * M, n)")
        elif fold is not None:
            m = arrays.add("int32_t", f"{fn}_m{tag}", fold.k,
                           f"requant of the {tag} parts: k with k + c * 2^32 = M * 2^(32 - n); "
                           "c * acc + the rounded high word of acc * k is rshift_round(acc * M, n)")
            if fold.c.any():
                c_name = arrays.add("int32_t", f"{fn}_c{tag}", fold.c,
                                    f"requant of the {tag} parts: c (see {fn}_m{tag})")
        else:
            mult = np.stack([part.mult for part in side], axis=1)
            shift = np.stack([part.shift for part in side], axis=1)
            m = arrays.add("int16_t", f"{fn}_m{tag}", mult,
                           f"requant multipliers M of the {tag} parts")
            s_name = arrays.add("uint8_t", f"{fn}_s{tag}", shift,
                                f"requant shifts n of the {tag} parts")
        mac = f"{p}_mac{G}_w{bits}_acc{acc_bits}"
        if kernels is not None:
            kernels.c.add((G, bits, acc_bits))
        views.append(dict(acc_t=acc_t, bias=bias, m=m, c=c_name, s=s_name, fold=fold, mac=mac,
                          groups=padded(layer.input_size if k == 0 else layer.state_size) // 4))

    def rescaled(k: int, g: int, add: str = "") -> str:
        v = views[k]
        acc = f"a{'xh'[k]}[{g}]"
        if v["fold"] is not None:
            if v["c"]:
                add = f"{acc} * {v['c']}[j][{g}]" + (f" + {add}" if add else "")
            if v["fold"].wide:
                term = f"{p}_mmulr64({acc}, {v['m']}[j][{g}])"
                return f"{add} + {term}" if add else term
            return (f"{p}_mmlar({acc}, {v['m']}[j][{g}], {add})" if add
                    else f"{p}_mmulr({acc}, {v['m']}[j][{g}])")
        term = f"{p}_rescale({acc}, {v['m']}[j][{g}], {v['s']}[j][{g}])"
        return f"{add} + {term}" if add else term

    def sat(expr: str, wide64: bool) -> str:
        return f"{p}_sat24({expr})" if wide64 else f"{p}_sat24_32({expr})"

    unit = ""
    if all(v["acc_t"] == {8: "int32_t", 16: "int64_t"}[bits] for v in views):
        kernel = UnitKernel(G, views[0]["groups"], views[1]["groups"], bool(views[0]["bias"]),
                            bool(views[1]["bias"]), bits)
        unit = kernel.name(p)
        if kernels is not None:
            kernels.units.add(kernel)
    v6m: dict = {}  # the ARMv6-M unit kernel and its copy of the weights (tinyrnn/v6masm.py)
    if bits == 8 and all(v["acc_t"] == "int32_t" for v in views):  # int8 weights, 32-bit sums
        from . import v6masm

        m0 = v6masm.V6MUnitKernel(G, layer.input_size, layer.state_size,
                                  padded(layer.input_size), bool(views[0]["bias"]),
                                  bool(views[1]["bias"]))
        rows = [np.stack([part.weights for part in side], axis=1) for side in sides]
        data = m0.layout(*rows)
        v6m = dict(name=m0.name(p), array=f"{fn}_w_v6m")
        if kernels is not None:
            kernels.v6m_units.setdefault(v6m["name"], dict(
                name=v6m["name"], G=G, nx=m0.nx, nh=m0.nh, ret="void ", wtype="int8_t",
                acc_t="int32_t", speed=m0.assembly(v6masm.UNROLL_SPEED),
                size=m0.assembly(v6masm.UNROLL_SIZE)))
            kernels.v6m_arrays.append(dict(
                ctype="int8_t", name=v6m["array"], dims="".join(f"[{n}]" for n in data.shape),
                text=c_ints(data),
                comment=f"{w_name} for the ARMv6-M unit kernel: per unit, "
                f"each {'/'.join(names)} row of the x part, then of the h part, "
                "at a stride of 2 bytes per column, two rows to a block "
                f"{'(the last rows of x and h share one) ' if G % 2 else ''}"
                "(tinyrnn/v6masm.py); int8_t"))
    bias_args = ", ".join(f"{v['bias']}[j]" if v["bias"] else "0" for v in views)
    folds = [v["fold"] for v in views]
    pre = {}
    for g, gate in enumerate(spec.gates):
        if gate.split:
            name_x, name_h = gate.accumulators
            pre[name_x] = sat(rescaled(0, g), folds[0] is None)
            pre[name_h] = sat(rescaled(1, g), folds[1] is None)
        else:
            name = gate.name
            both = folds[0] is not None and folds[1] is not None and int(
                (folds[0].bound[:, g] + folds[1].bound[:, g]).max()) < 1 << 31
            if both:
                pre[name] = sat(rescaled(1, g, rescaled(0, g)), False)
            else:
                x = rescaled(0, g)
                x = x if folds[0] is None else f"(int64_t){x}"
                h = rescaled(1, g)
                h = h if folds[1] is None else f"(int64_t){h}"
                pre[name] = sat(f"{x} + {h}", True)
    return dict(G=G, w=w_name, wtype=wtype, x=views[0], h=views[1], pre=pre, unit=unit,
                v6m=v6m, bias_args=bias_args)


def _dense_view(p: str, index: int, layer: Dense, q: Any) -> dict:
    fn = f"{p}_dense{index}"
    arrays = _Arrays()
    if q is None:
        w_name = arrays.add("float", f"{fn}_w", layer.weight.data,
                            f"{layer.weight.source}, float32")
        acc = dict(parts=[_float_part(arrays, fn, w_name, 0, layer.in_features, layer.bias,
                                      f"{fn}_b")])
        formats = ""
    else:
        wtype = WEIGHT_CTYPE[q.acc.bits]
        w_name = arrays.add(wtype, f"{fn}_w", q.acc.parts[0].weights,
                            f"{layer.weight.source}, {wtype}, per-row scale")
        acc = _fixed_acc(arrays, fn, q.acc, w_name, "", [""])
        formats = f"x {q.x}, y {q.out}"
    return dict(kind="dense", fn=fn, source=layer.name, rows=layer.out_features,
                cols=layer.in_features, bias=layer.bias is not None, arrays=arrays.items,
                acc=acc, formats=formats)


def _activation_view(p: str, index: int, layer: Activation, q: Any) -> dict:
    view = dict(kind="activation", fn=f"{p}_{layer.kind}{index}", op=layer.kind,
                features=layer.features, arrays=[], formats="")
    if q is not None:
        view.update(in_shift=q.in_shift, out_shift=q.out_shift,
                    formats=f"x {q.x}, y {q.out}")
        if q.softmax is not None:
            view["softmax"] = vars(q.softmax)
    return view


class _Builder:
    """Assigns buffers and names and builds the template context for one model."""

    def __init__(self, model: Model, name: str, q: Any = None):
        self.model = model
        self.q = q
        self.p = name
        self.T = "int16_t" if q is not None else "float"
        self.layer_views: list[dict] = []
        self.state_vars: list[dict] = []
        self.scratch_sizes = dict(xh=1, tmp=1, va=1, vb=1)
        self.kernels = _Kernels()
        if q is not None:
            self.scratch_sizes["x"] = model.input_size

    def qlayer(self, index: int) -> Any:
        return self.q.layers[index] if self.q is not None else None

    def views(self) -> None:
        p = self.p
        for index, layer in enumerate(self.model.layers):
            if isinstance(layer, RecurrentLayer):
                dirs = [_direction_view(p, index, layer, k, self.qlayer(index), self.kernels)
                        for k in range(layer.num_directions)]
                self.layer_views.append(dict(kind="recurrent", cell=layer.kind, directions=dirs))
                for view, d in zip(dirs, layer.directions):
                    side = "reverse" if d.reverse else "forward"
                    what = f"{layer.module} layer {layer.layer} {side}"
                    q = self.qlayer(index)
                    self.state_vars.append(
                        dict(ctype=self.T, name=view["state"][0][3:], size=layer.state_size,
                             comment=f"h, {what}" + (f", {q.h}" if q is not None else ""))
                    )
                    if layer.kind == "lstm":
                        self.state_vars.append(
                            dict(ctype=self.T, name=view["state"][1][3:], size=layer.hidden_size,
                                 comment=f"c, {what}" + (f", {q.c}" if q is not None else ""))
                        )
                xh = layer.input_size + layer.state_size
                if self.q is not None:  # the kernels read x and h in groups of 4 columns
                    xh = padded(layer.input_size) + padded(layer.state_size)
                self.scratch_sizes["xh"] = max(self.scratch_sizes["xh"], xh)
                self.scratch_sizes["tmp"] = max(self.scratch_sizes["tmp"], layer.hidden_size)
            elif isinstance(layer, Dense):
                self.layer_views.append(_dense_view(p, index, layer, self.qlayer(index)))
                for key in ("va", "vb"):
                    self.scratch_sizes[key] = max(
                        self.scratch_sizes[key], layer.out_features, layer.in_features
                    )
            elif isinstance(layer, Activation):
                self.layer_views.append(_activation_view(p, index, layer, self.qlayer(index)))
                for key in ("va", "vb"):
                    self.scratch_sizes[key] = max(self.scratch_sizes[key], layer.features)
            else:
                self.layer_views.append(dict(kind="select"))

    def time_major(self, src: str, width: int) -> tuple[list[_Op], str, list[_Op], str, int]:
        """Ops before and after the selected step, for one time step of a unidirectional model."""
        pre: list[_Op] = []
        post: list[_Op] = []
        ops = pre
        cur, cur_w = src, width
        scratch = ["s->scratch_va", "s->scratch_vb"]
        sel_w = 0
        for layer, view in zip(self.model.layers, self.layer_views):
            if isinstance(layer, RecurrentLayer):
                d = view["directions"][0]
                ops.append(_Op("cell", d["fn"], cur, cur_w, state=d["state"]))
                cur, cur_w = d["state"][0], layer.state_size
            elif isinstance(layer, (Dense, Activation)):
                in_place = isinstance(layer, Activation) and cur in scratch
                dst = cur if in_place else (scratch[1] if cur == scratch[0] else scratch[0])
                kind = "dense" if isinstance(layer, Dense) else "activation"
                ops.append(_Op(kind, view["fn"], cur, cur_w, dst=dst))
                cur = dst
                cur_w = layer.out_features if isinstance(layer, Dense) else cur_w
            elif isinstance(layer, SelectStep):
                pre_result = cur
                sel_w = cur_w
                ops = post
        if ops is pre:
            return pre, cur, [], cur, sel_w
        return pre, pre_result, post, cur, sel_w

    def layer_major(self) -> tuple[list[_Op], str, list[_Op], str, int, int]:
        """Ops over whole sequences (bidirectional models) and after the selected step."""
        model = self.model
        pre: list[_Op] = []
        post: list[_Op] = []
        cur, cur_w = "x", model.input_size
        seq = ["s->seq_a", "s->seq_b"]
        vec = ["s->scratch_va", "s->scratch_vb"]
        widest = 1
        selected = False
        for layer, view in zip(model.layers, self.layer_views):
            if isinstance(layer, SelectStep):
                selected = True
                sel_w = cur_w
                pre_result = cur
                cur = "s->scratch_va"
                continue
            if selected:
                pool = vec
            else:
                pool = seq
            other = pool[1] if cur == pool[0] else pool[0]
            if isinstance(layer, RecurrentLayer):
                for d, dview in zip(layer.directions, view["directions"]):
                    pre.append(
                        _Op("cell", dview["fn"], cur, cur_w, dst=other,
                            dst_width=layer.output_size,
                            dst_offset=layer.state_size if d.reverse else 0,
                            state=dview["state"], out_size=layer.state_size,
                            reverse=d.reverse, comment=dview["title"])
                    )
                cur, cur_w = other, layer.output_size
            else:
                kind = "dense" if isinstance(layer, Dense) else "activation"
                in_place = kind == "activation" and cur in pool
                dst = cur if in_place else other
                out_w = layer.out_features if isinstance(layer, Dense) else cur_w
                (post if selected else pre).append(
                    _Op(kind, view["fn"], cur, cur_w, dst=dst, dst_width=out_w)
                )
                cur, cur_w = dst, out_w
            widest = max(widest, cur_w)
        if not selected:
            return pre, cur, [], cur, 0, widest
        return pre, pre_result, post, cur, sel_w, widest

    def state_rows(self, group, k: int) -> list[dict]:
        """The rows of a module's h (k=0) or c (k=1) in torch's (layers*directions) order."""
        rows, offset = [], 0
        for index in group.layers:
            layer = self.model.layers[index]
            size = layer.state_size if k == 0 else layer.hidden_size
            q = self.qlayer(index)
            fmt = (q.h if k == 0 else q.c) if q is not None else None
            for dview in self.layer_views[index]["directions"]:
                row = dict(var=dview["state"][k][3:], offset=offset, size=size,
                           comment=f"row {len(rows)}: {dview['title']}")
                if fmt is not None:
                    row.update(scale=_hex_scale(-fmt.frac), frac=fmt.frac,
                               comment=f"{row['comment']}, {fmt}")
                rows.append(row)
                offset += size
        return rows

    def context(self, provenance: str, name: str) -> dict:
        model = self.model
        self.views()
        group = model.groups[model.state_group]
        set_state_args = ["h0", "c0"] if group.cell == "lstm" else ["h0"]
        set_state_rows = [
            dict(row, arg=arg)
            for k, arg in enumerate(set_state_args)
            for row in self.state_rows(model.groups[model.state_group], k)
        ]
        # h_n / c_n outputs are gathered from the state after the run
        results = [
            dict(row, out=i)
            for i, out in enumerate(model.outputs)
            if out.role in ("h_n", "c_n")
            for row in self.state_rows(model.groups[out.group], 0 if out.role == "h_n" else 1)
        ]
        final = self.q.final_format if self.q is not None else None
        final_scale = _hex_scale(-final.frac) if final is not None else ""
        seq_results = [
            dict(out=i, width=o.features, scale=final_scale) for i, o in enumerate(model.outputs)
            if o.role == "sequence"
        ]
        vec_results = [
            dict(out=i, width=o.features, scale=final_scale) for i, o in enumerate(model.outputs)
            if o.role == "vector"
        ]
        select = next((lay.index for lay in model.layers if isinstance(lay, SelectStep)), None)
        max_seq_len = model.max_seq_len if model.bidirectional else 0
        if model.bidirectional:
            pre, pre_result, post, post_result, sel_w, widest = self.layer_major()
            step_plan = None
            self.state_vars += [
                dict(ctype=self.T, name="seq_a", size=max_seq_len * widest,
                     comment=f"scratch: {max_seq_len} steps x {widest} features"),
                dict(ctype=self.T, name="seq_b", size=max_seq_len * widest,
                     comment=f"scratch: {max_seq_len} steps x {widest} features"),
            ]
            self.scratch_sizes["va"] = max(self.scratch_sizes["va"], sel_w)
        else:
            pre, pre_result, post, post_result, sel_w = self.time_major(
                "x_t" if self.q is not None else f"x + (size_t)t * {model.input_size}",
                model.input_size
            )
            step_pre, _, step_post, step_result, _ = self.time_major("x_t", model.input_size)
            step_plan = _Plan(step_pre + step_post, step_result)
        self.state_vars += [
            dict(ctype=self.T, name="scratch_" + key, size=size, comment="scratch")
            for key, size in self.scratch_sizes.items()
        ]
        run_plan = dict(
            layer_major=model.bidirectional,
            pre=pre,
            pre_result=pre_result,
            post=post,
            post_result=post_result,
            select=select,
            select_width=sel_w,
            seq_results=seq_results,
            vec_results=vec_results,
            state_results=results,
        )
        outputs = []
        for out in model.outputs:
            if out.role == "sequence":
                outputs.append((f"sequence, T x {out.features} values",
                                c_interface.Length(out.features, 0)))
            elif out.role == "vector":
                outputs.append((f"vector, {out.features} values", c_interface.Length(0,
                                                                                   out.features)))
            else:
                outputs.append((f"{out.role}, {out.size} values (layers*directions, H)",
                                c_interface.Length(0, out.size)))
        sizes = {arg: sum(r["size"] for r in set_state_rows if r["arg"] == arg)
                 for arg in set_state_args}
        api = c_interface.build(
            self.p, fixed=self.q is not None, input_size=model.input_size,
            step_output_size=model.step_output_size, max_seq_len=max_seq_len,
            state_size=sizes["h0"], set_state_args=list(sizes.items()), outputs=outputs,
            has_step=step_plan is not None, sources=[f"{name}.c"],
            format_macros=self.format_macros())
        fixed: dict[str, Any] = dict(fixed=self.q is not None, T=self.T, out_fracs=[])
        if self.q is not None:
            fixed.update(self.fixed_context())
        return dict(
            p=self.p,
            P=self.p.upper(),
            name=name,
            guard=f"{self.p.upper()}_H",
            provenance=provenance,
            model=model,
            layers=self.layer_views,
            state_vars=self.state_vars,
            set_state_args=set_state_args,
            set_state_rows=set_state_rows,
            state_size=sizes["h0"],
            api=api,
            max_seq_len=max_seq_len,
            step_plan=step_plan,
            run_plan=run_plan,
            **fixed,
        )

    def format_macros(self) -> list[c_interface.Macro]:
        """The integer formats' ``*_FRAC`` macros of the header."""
        q = self.q
        if q is None:
            return []
        P = self.p.upper()
        macros = [c_interface.Macro(f"{P}_INPUT_FRAC", q.input.frac, f"x: {q.input}"),
                  c_interface.Macro(f"{P}_STEP_OUTPUT_FRAC", q.final_format.frac,
                                    f"{self.p}_step_q's y_t: {q.final_format}")]
        for k, (role, fmts, _) in enumerate(q.output_row_formats()):
            if len(fmts) == 1:
                macros.append(c_interface.Macro(f"{P}_OUT{k}_FRAC", fmts[0].frac,
                                                f"out{k} ({role}): {fmts[0]}"))
        return macros

    def fixed_context(self) -> dict:
        """Names and numbers only the integer formats print."""
        from .fixedpoint import qmath_context
        from .qfunctions import numeric_context

        q = self.q
        kinds = {layer.kind for layer in self.model.layers if isinstance(layer, Activation)}
        numeric = dict(numeric_context(), softmax=bool(kinds & {"softmax", "log_softmax"}),
                       softmax_kinds={k: k in kinds for k in ("softmax", "log_softmax")})
        out_fracs = []
        for k, (role, fmts, _) in enumerate(q.output_row_formats()):
            if len(fmts) == 1:
                out_fracs.append(dict(out=k, role=role, frac=fmts[0].frac, text=str(fmts[0])))
            else:
                text = ", ".join(str(f) for f in fmts)
                out_fracs.append(dict(out=k, role=role, frac=None, text=f"per row: {text}"))
        return dict(
            kernels=[dict(G=G, bits=bits, acc_bits=acc_bits, wtype=WEIGHT_CTYPE[bits],
                          acc_t=ACC_CTYPE[acc_bits], name=f"{self.p}_mac{G}_w{bits}_acc{acc_bits}")
                     for G, bits, acc_bits in sorted(self.kernels.c)],
            units=[dict(G=u.G, name=u.name(self.p), xg=u.xg, hg=u.hg,
                        ret=f"const {WEIGHT_CTYPE[u.bits]} *", wtype=WEIGHT_CTYPE[u.bits],
                        acc_t=ACC_CTYPE[4 * u.bits],
                        speed=u.assembly(UNROLL_SPEED), size=u.assembly(UNROLL_SIZE))
                   for u in sorted(self.kernels.units)],
            v6m_units=list(self.kernels.v6m_units.values()),
            v6m_arrays=self.kernels.v6m_arrays,
            q=numeric,
            qmath_text=_environment().get_template("qmath.h.j2").render(
                **qmath_context(self.p + "_")),
            input_format=str(q.input),
            input_frac=q.input.frac,
            final_format=str(q.final_format),
            final_frac=q.final_format.frac,
            final_scale=_hex_scale(-q.final_format.frac),
            out_fracs=out_fracs,
            weight_format=q.format,
        )


def interface(model: Model, context: dict) -> dict:
    """The manifest's ``interface`` section (see docs/c-api.md)."""

    def spec(obj: Any) -> dict:
        d = {k: v for k, v in vars(obj).items() if v is not None and k != "group"}
        for key in ("size", "features"):
            if d.get(key) == 0:
                del d[key]
        d["torch_shape"] = list(obj.torch_shape)
        return d

    return dict(
        input_size=model.input_size,
        step_output_size=model.step_output_size,
        max_seq_len=context["max_seq_len"] or None,
        state_size=context["state_size"],
        has_step=context["step_plan"] is not None,
        set_state_args=context["set_state_args"],
        forward_inputs=[spec(i) for i in model.inputs],
        outputs=[spec(o) for o in model.outputs],
    )


def render(model: Model, out_dir: Path, name: str, fmt: str, options: dict,
           quantized: Any = None) -> dict:
    """Write NAME.h, NAME.c and NAME.json into ``out_dir``; returns the manifest.

    ``quantized``: the :class:`tinyrnn.quantize.QModel` of an integer format (None for float32).
    """
    import torch

    check_name(name)
    digest = weights_hash(model)
    opts = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    quant_line = ""
    if quantized is not None:
        from .quantize import manifest_section

        section = json.dumps(manifest_section(quantized), sort_keys=True).encode()
        quant_line = (f" * {fmt} formats and integers sha256: "
                      f"{hashlib.sha256(section).hexdigest()}\n")
    provenance = (
        f"/* Generated by tinyrnn {__version__} from a torch {torch.__version__} model.\n"
        f" * weights sha256: {digest}\n"
        f"{quant_line}"
        f" * options: {opts}\n"
        f" * Do not edit: re-run tinyrnn export instead. */"
    )
    context = _Builder(model, name, quantized).context(provenance, name)
    env = _environment()
    header = env.get_template("model.h.j2").render(**context)
    source = env.get_template("model.c.j2").render(**context)
    width = CTYPE_BYTES[context["T"]]
    state_bytes = width * sum(
        v["size"] for v in context["state_vars"] if not v["name"].startswith(("scratch", "seq"))
    )
    scratch_bytes = width * sum(
        v["size"] for v in context["state_vars"] if v["name"].startswith(("scratch", "seq"))
    )
    weight_bytes = sum(
        a["bytes"] for view in context["layers"]
        for a in (view["arrays"] if "arrays" in view
                  else [x for d in view.get("directions", []) for x in d["arrays"]])
    )
    manifest = dict(
        name=name,
        format=fmt,
        tinyrnn_version=__version__,
        torch_version=torch.__version__,
        weights_sha256=digest,
        options=options,
        interface=interface(model, context),
        c_interface=context["api"].to_json(),
        sizes=dict(
            weights_bytes=weight_bytes, state_bytes=state_bytes, scratch_bytes=scratch_bytes
        ),
        layers=[_layer_summary(layer) for layer in model.layers],
    )
    if quantized is not None:
        from .qfunctions import table_bytes
        from .quantize import interface_section, manifest_section

        kinds = context["q"]["softmax_kinds"]
        manifest["sizes"]["tables_bytes"] = table_bytes(kinds["softmax"], kinds["log_softmax"])

        manifest["interface"]["quantized"] = interface_section(quantized)
        manifest["quantization"] = manifest_section(quantized)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.h").write_text(header)
    (out_dir / f"{name}.c").write_text(source)
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _layer_summary(layer: Any) -> dict:
    if isinstance(layer, RecurrentLayer):
        return dict(
            kind=layer.kind,
            module=layer.module,
            layer=layer.layer,
            input_size=layer.input_size,
            hidden_size=layer.hidden_size,
            state_size=layer.state_size,
            directions=layer.num_directions,
            bias=layer.directions[0].accumulators[0].bias is not None,
        )
    if isinstance(layer, Dense):
        return dict(kind="dense", name=layer.name, in_features=layer.in_features,
                    out_features=layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, Activation):
        return dict(kind=layer.kind, features=layer.features)
    assert isinstance(layer, SelectStep)
    return dict(kind="select_step", index=layer.index)
