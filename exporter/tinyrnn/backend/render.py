"""The backend: a :class:`tinyrnn.backend.plan.Plan` -> C text (NAME.h, NAME.c, and NAME_kernels.S
when the model has assembly kernels), the typed C interface and the manifest (NAME.json).

:mod:`tinyrnn.passes.lower` decides everything (names, buffers, folds, layouts, forms); this module
formats the plan's numbers (initializers of the constant arrays, guards of the kernel
families) and the Jinja2 templates print it. Every generated line is at most
:data:`tinyrnn.backend.cformat.WIDTH` characters (:func:`tinyrnn.backend.cformat.wrap`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from .. import __version__
from ..checks import check_name
from ..ir import (
    Conv1d,
    Dense,
    Embedding,
    FrameConv1d,
    Model,
    RecurrentLayer,
)
from ..numerics.helpers import helper_closure, numeric_context
from ..outputs import write_files
from ..passes.lower import lower
from ..resources import resource_dir
from . import dspasm, fpuasm, mveasm, v6masm
from . import interface as c_interface
from .cformat import WIDTH, wrap
from .manifest import binding_line
from .plan import CTYPE_BYTES, Const, Function, Plan


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


def _literal(value: Any, ctype: str) -> str:
    if ctype == "float":
        return np.format_float_scientific(np.float32(value), unique=True, trim="0") + "f"
    return str(int(value))


def initializer(data: np.ndarray, ctype: str, indent: int = 4, width: int = WIDTH) -> str:
    """The body of a C initializer: the values packed into lines of at most ``width``
    characters, each row of a 2-D array in ``{ ... }``, rows following each other on a line;
    exact floats in their shortest round-trip form."""
    array = np.asarray(data)
    pad = " " * indent
    if array.ndim <= 1:
        pieces = [_literal(v, ctype) for v in array.reshape(-1)]
    else:
        pieces = []
        for row in array.reshape(array.shape[0], -1):
            items = [_literal(v, ctype) for v in row]
            items[0] = "{ " + items[0]
            items[-1] += " }"
            pieces += items
    lines, current = [], pad
    for k, piece in enumerate(pieces):
        piece += "," if k + 1 < len(pieces) else ""
        if len(current) + len(piece) > width and current.strip():
            lines.append(current.rstrip())
            current = pad
        current += piece + " "
    lines.append(current.rstrip())
    return "\n".join(lines)


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
    if isinstance(layer, (Dense, Conv1d, FrameConv1d)):
        return [t for t in (layer.weight, layer.bias) if t is not None]
    if isinstance(layer, Embedding):
        return [layer.weight]
    return []


# ---------------------------------------------------------------------------------------------
# What the templates print: the plan with its numbers formatted and its guards spelled out

HELPER_PREFIX = "tr_"
"""The arithmetic helpers are static: one short prefix for all models keeps the statements
that nest them readable (and within the line width whatever the model's name)."""

FAMILY_MACROS = {"dsp": "DSP_KERNELS", "v6m": "V6M_KERNELS", "mve": "MVE_KERNELS",
                 "fpu": "FPU_KERNELS"}
MVE_CONDITION = "defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)"
"""The builds that run the MVE kernels: a core with integer Helium (Cortex-M55, M85)."""
FAMILY_CONDITIONS = {"dsp": dspasm.CONDITION, "v6m": v6masm.CONDITION, "mve": MVE_CONDITION,
                     "fpu": fpuasm.CONDITION}
FAMILY_DOCS = {
    "dsp": "the DSP unit kernels of NAME_kernels.S (Cortex-M4/M7/M33)",
    "v6m": "the ARMv6-M unit kernels (Cortex-M0/M0+)",
    "mve": "the MVE (Helium) kernels (Cortex-M55/M85: tested before the DSP ones)",
    "fpu": "the float unit kernels of NAME_kernels.S (cores with an FPU: Cortex-M4F/M7/M33/M55)",
}


def _guard(P: str, families: frozenset[str], present: tuple[str, ...]) -> str:
    """The preprocessor condition under which an item used by ``families`` is compiled."""
    if set(present) <= families:
        return ""
    macros = {f: f"{P}_{FAMILY_MACROS[f]}" for f in present if f != "c"}
    if "c" in families:
        return " && ".join(f"!{macros[f]}" for f in present if f not in families)
    return " || ".join(macros[f] for f in present if f in families)


def _const_view(c: Const, P: str, present: tuple[str, ...]) -> dict:
    return dict(name=c.c_name, ctype=c.ctype, dims=c.dims, comment=c.comment,
                text=initializer(c.data, c.ctype), guard=_guard(P, c.families, present))


def _function_view(fn: Function, P: str, present: tuple[str, ...]) -> dict:
    return dict(name=fn.name, comment=fn.comment, params=fn.params, named=fn.named,
                prologue=fn.prologue, loops=fn.loops, mve_unit_loop=fn.mve_unit_loop,
                mve_unused_named=fn.mve_unused_named,
                constants=[_const_view(c, P, present) for c in fn.constants])


def _asm_lines(lines: list) -> list[str]:
    out = []
    for line in lines:
        if isinstance(line, dspasm.Rept):
            out += ([f"    {line.macro}"] if line.count == 1 else
                    [f"    .rept {line.count}", f"    {line.macro}", "    .endr"])
        else:
            out.append(line if line.endswith(":") else f"    {line}")
    return out


def _merged(lines: list) -> list:
    """Back-to-back repeats of one macro as one ``.rept``."""
    out: list = []
    for line in lines:
        if isinstance(line, dspasm.Rept) and out and isinstance(out[-1], dspasm.Rept) \
                and out[-1].macro == line.macro:
            out[-1] = dspasm.Rept(out[-1].count + line.count, line.macro)
        else:
            out.append(line)
    return out


def _variants(kernel: Any, speed: int, size: int) -> list[str]:
    """The kernel at both unrolls: the lines they share once, the others under
    ``#if defined(__OPTIMIZE_SIZE__)``."""
    import difflib

    fast, small = _merged(kernel.assembly(speed)), _merged(kernel.assembly(size))
    lines: list[str] = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, small, fast, autojunk=False
                                                       ).get_opcodes():
        if op == "equal":
            lines += _asm_lines(small[a0:a1])
        else:
            lines += ["#if defined(__OPTIMIZE_SIZE__)", *_asm_lines(small[a0:a1]), "#else",
                      *_asm_lines(fast[b0:b1]), "#endif"]
    return lines


def _kernels_view(plan: Plan) -> dict:
    """The C kernels with their guards, the family selection and the assembly kernels."""
    p, P = plan.name, plan.name.upper()
    present = plan.families
    selection = [dict(macro=f"{P}_{FAMILY_MACROS[f]}", condition=FAMILY_CONDITIONS[f],
                      doc=FAMILY_DOCS[f].replace("NAME", p)) for f in present if f != "c"]
    c = []
    f32 = []  # the float32 kernels: G rows at once, G independent sums (layout.float_stream)
    for G, bits, acc_bits, families in plan.c_kernels:
        if bits == 32:
            f32.append(dict(G=G, name=f"{p}_mac{G}_f32",
                            tail=[f"{r} * tail + k" if r else "k" for r in range(G)],
                            guard=_guard(P, families, present)))
            continue
        wtype = {8: "int8_t", 16: "int16_t"}[bits]
        c.append(dict(G=G, bits=bits, acc_bits=acc_bits, wtype=wtype, acc_t=f"int{acc_bits}_t",
                      name=f"{p}_mac{G}_w{bits}_acc{acc_bits}",
                      row=f"{p}_mac_w{bits}_acc{acc_bits}",
                      columns=("x0", "x2", "x1", "x3") if bits == 8 else ("x0", "x1", "x2", "x3"),
                      families=families, dsp="dsp" in families))
    union = frozenset().union(*(k["families"] for k in c)) if c else frozenset()
    for k in c:
        k["guard"] = "" if k["families"] == union else _guard(P, k["families"], present)
    # the dual-MAC rows of the kernels that DSP builds run (no DSP assembly kernel for them)
    dsp = [k for k in c if k["dsp"]]
    w8 = any(k["bits"] == 8 for k in dsp)
    rows = [dict(name=f"{p}_mac_w{bits}_acc{acc}", bits=bits, wtype=f"int{bits}_t",
                 acc_t=f"int{acc}_t", mac="__smlad" if acc == 32 else "__smlald")
            for bits, acc in sorted({(k["bits"], k["acc_bits"]) for k in dsp})]
    assembly = []
    if plan.dsp_kernels:
        assembly.append(dict(macro=f"{P}_DSP_KERNELS", doc=(
            "NAME_kernels.S: acc[0..G) = bx + W_x x, acc[G..2G) = bh + W_h h of one unit "
            "(of each of n units, 2G sums apart, bx and bh moving G per unit, with int8 weights); "
            "returns the next unit's weights").replace("NAME", p),
            kernels=[dict(prototype=(
                f"const {'int8_t' if u.bits == 8 else 'int16_t'} *{u.name(p)}("
                f"const {'int8_t' if u.bits == 8 else 'int16_t'} *w, const int16_t *xh, "
                f"{'int32_t' if u.bits == 8 else 'int64_t'} *acc, "
                f"const {'int32_t' if u.bits == 8 else 'int64_t'} *bx, "
                f"const {'int32_t' if u.bits == 8 else 'int64_t'} *bh"
                f"{', int n' if u.block > 1 else ''})"))
                for u in plan.dsp_kernels], constants=[]))
    if plan.v6m_kernels:
        assembly.append(dict(macro=f"{P}_V6M_KERNELS", doc=(
            "NAME_kernels.S: acc[0..G) = bx + W_x x, acc[G..2G) = bh + W_h h of one unit, "
            "from its row of the ARMv6-M copy of the weights"
        ).replace("NAME", p), kernels=[dict(prototype=(
            f"void {u.name(p)}(const int8_t *w, const int16_t *xh, int32_t *acc, "
            "const int32_t *bx, const int32_t *bh)")) for u in plan.v6m_kernels],
            constants=[dict(_const_view(k, P, present), guard="") for k in plan.v6m_constants]))
    mve = []
    for G, bits, acc in plan.mve_kernels:
        kernel = mveasm.MveKernel(G, bits, acc)
        mve.append(dict(G=G, bits=bits, acc=acc, name=kernel.name(p), wtype=kernel.wtype,
                        acc_t=kernel.acc_t, mac=kernel.mac, registers=kernel.registers,
                        loop=kernel.literals(kernel.loop()),
                        tail=kernel.literals(kernel.tail()),
                        sums=", ".join(f'[a{r}] "+r"(a{r})' for r in range(G)),
                        w_constraint=kernel.w_constraint,
                        clobbers=", ".join(f'"q{q}"' for q in range(min(G, 2) + 1))))
    if plan.fpu_kernels:
        assembly.append(dict(macro=f"{P}_FPU_KERNELS", doc=(
            "NAME_kernels.S: the x sums bx + W_x x, then the h sums bh + W_h h of one or "
            "several consecutive units in float32 (the kernel's comment says where); returns "
            "the next unit's weights").replace("NAME", p),
            kernels=[dict(prototype=(
                f"const float *{u.name(p)}(const float *w, const float *xh, float *acc, "
                "const float *bx, const float *bh)")) for u in plan.fpu_kernels],
            constants=[]))
    selection_doc = ("The recurrent kernels of this build: "
                     + "".join(f"{f['doc']}, " for f in selection)
                     + "or the portable C kernels below (host, Cortex-M3, M23, ARM state).")
    return dict(selection=selection, selection_doc=selection_doc, c=c, f32=f32, w8=w8, rows=rows,
                v6m_c=any("v6m" in k["families"] for k in c),  # ARMv6-M runs a C kernel
                storage=f"{P}_C_KERNEL" if any("v6m" in k["families"] for k in c)
                else "static inline",
                define_dsp=bool(dsp) and "dsp" not in plan.helpers,  # else the helpers do
                c_guard=_guard(P, union, present) if c else "",
                assembly=assembly, mve=mve, mve_helpers=plan.mve_helpers)


def _assembly_view(plan: Plan) -> list[dict]:
    """The families of NAME_kernels.S: their condition, macros and kernels (both unrolls)."""
    p = plan.name
    families = []
    if plan.dsp_kernels:
        macros: dict[str, list[str]] = {}
        for u in plan.dsp_kernels:
            macros.update(u.macros())
        families.append(dict(condition=dspasm.CONDITION, macros=[
            dict(name=name, lines=lines) for name, lines in sorted(macros.items())],
            kernels=[dict(name=u.name(p), doc=u.doc(), lines=_variants(
                u, dspasm.UNROLL_SPEED, dspasm.UNROLL_SIZE)) for u in plan.dsp_kernels]))
    if plan.v6m_kernels:
        macros = {}
        for k in plan.v6m_kernels:
            macros.update(k.macros())
        families.append(dict(condition=v6masm.CONDITION, macros=[
            dict(name=name, lines=lines) for name, lines in sorted(macros.items())],
            kernels=[dict(name=k.name(p), doc=k.doc(), lines=_variants(
                k, v6masm.UNROLL_SPEED, v6masm.UNROLL_SIZE)) for k in plan.v6m_kernels]))
    if plan.fpu_kernels:
        macros = {}
        for f in plan.fpu_kernels:
            macros.update(f.macros())
        families.append(dict(condition=fpuasm.CONDITION, macros=[
            dict(name=name, lines=lines) for name, lines in sorted(macros.items())],
            kernels=[dict(name=f.name(p), doc=f.doc(), lines=_variants(
                f, fpuasm.UNROLL_SPEED, fpuasm.UNROLL_SIZE)) for f in plan.fpu_kernels]))
    return families


def numeric_context_text() -> dict:
    """:func:`tinyrnn.numerics.helpers.numeric_context` with the tables formatted as
    initializers."""
    q = numeric_context()
    for key in ("sigmoid_table", "tanh30_table", "exp2_table", "log2_table", "sigmoid_packed",
                "tanh30_pairs"):
        q[f"{key}_text"] = initializer(np.asarray(q[key]), "int32_t", indent=8)
    return q


def helpers_source(names: list[str], prefix: str = HELPER_PREFIX, P: str = "TR") -> str:
    """The C of the helpers ``names`` and of those they call, as an export prints them."""
    template = _environment().from_string(
        '{% import "numerics.c.j2" as numerics with context %}'
        "{% for helper in helpers %}\n{{ numerics[helper]() }}{% endfor %}")
    return wrap(template.render(hp=prefix, P=P, q=numeric_context_text(),
                                helpers=[h.name for h in helper_closure(names)],
                                portable_helpers=[]))


def _scale(frac: int | None) -> str:
    """The exact float32 literal ``2**-frac`` (C99 hexadecimal floating constant)."""
    return f"0x1p{-frac}f" if frac is not None else ""


def context(plan: Plan, provenance: str, api: c_interface.CInterface) -> dict:
    """Everything the templates print for one plan."""
    p, P = plan.name, plan.name.upper()
    present = plan.families
    q = numeric_context_text()
    outputs = [dict(index=o.index, role=o.role, width=o.width, scale=_scale(o.frac),
                    rows=[dict(buffer=r.buffer, offset=r.offset, size=r.size,
                               comment=r.comment, scale=_scale(r.frac), shift=r.shift)
                          for r in o.rows])
               for o in plan.outputs]
    uses_math = any(s in plan.helpers for s in ("sigmoid", "sigmoid_den", "softmax_f",
                                                "log_softmax_f")) or not plan.fixed
    return dict(
        p=p, P=P, hp=HELPER_PREFIX, name=p, guard=f"{P}_H", provenance=provenance, api=api,
        fixed=plan.fixed, T=plan.T, q=q, helpers=plan.helpers, uses_math=uses_math,
        portable_helpers=plan.portable_helpers, scalar_only_helpers=plan.scalar_only_helpers,
        family_macros={f: f"{P}_{FAMILY_MACROS[f]}" for f in present if f != "c"},
        kernels=_kernels_view(plan),
        functions=[_function_view(fn, P, present) for fn in plan.functions],
        schedule=plan.schedule, input_size=plan.input_size,
        step_output_size=plan.step_output_size, max_seq_len=plan.max_seq_len,
        input_frac=plan.input_frac, final_scale=_scale(plan.final_frac), vocab=plan.vocab,
        set_state=[dict(role=role, rows=[dict(buffer=r.buffer, offset=r.offset, size=r.size,
                                               comment=r.comment, frac=r.frac, shift=r.shift,
                                               factor=1 << r.shift) for r in rows])
                   for role, rows in plan.set_state],
        wide_load=any(r.shift for _, rows in plan.set_state for r in rows),
        wide_store=any(r.shift for o in plan.outputs for r in o.rows),
        outputs=outputs, seq_outputs=[o for o in outputs if o["role"] == "sequence"],
        vec_outputs=[o for o in outputs if o["role"] == "vector"],
        state_outputs=[o for o in outputs if o["role"] in ("h_n", "c_n", "carry_n")],
        state_vars=[dict(ctype=b.ctype or plan.T, name=b.name, size=b.size, comment=b.comment)
                    for b in plan.buffers],
        weight_format=plan.format,
    )


def _format_macros(plan: Plan, q: Any) -> list[c_interface.Macro]:
    """The integer formats' ``*_FRAC`` macros of the header."""
    if q is None:
        return []
    P = plan.name.upper()
    macros = [c_interface.Macro(f"{P}_INPUT_FRAC", q.input.frac, f"x: {q.input}"),
              c_interface.Macro(f"{P}_STEP_OUTPUT_FRAC", q.final_format.frac,
                                f"{plan.name}_step_q's y_t: {q.final_format}")]
    for k, (role, fmts, _) in enumerate(q.output_row_formats()):
        if len(fmts) == 1:
            macros.append(c_interface.Macro(f"{P}_OUT{k}_FRAC", fmts[0].frac,
                                            f"out{k} ({role}): {fmts[0]}"))
    return macros


def _out_fracs(q: Any) -> list[dict]:
    """Comments for outputs whose rows have several formats."""
    if q is None:
        return []
    out = []
    for k, (role, fmts, _) in enumerate(q.output_row_formats()):
        if len(fmts) > 1:
            out.append(dict(out=k, role=role, frac=None,
                            text="per row: " + ", ".join(str(f) for f in fmts)))
    return out


def build_interface(plan: Plan, model: Model, q: Any, sources: list[str]
                    ) -> c_interface.CInterface:
    """The typed C interface of the plan (written into NAME.json)."""
    lengths = []
    for out in plan.outputs:
        if out.role == "sequence" and model.length_rules:
            steps = " then ".join(f"T = (T {'+' if add >= 0 else '-'} {abs(add)}) / {stride} + 1"
                                  for add, stride in model.length_rules)
            lengths.append((f"sequence, T' x {out.width} values, T' from the length-changing "
                            "layers: "
                            f"{steps}", c_interface.Length(out.width, 0, model.length_rules)))
        elif out.role == "sequence":
            lengths.append((f"sequence, T x {out.width} values", c_interface.Length(out.width, 0)))
        elif out.role == "vector":
            lengths.append((f"vector, {out.width} values", c_interface.Length(0, out.width)))
        else:
            lengths.append((f"{out.role}, {out.width} values (layers*directions, H)",
                            c_interface.Length(0, out.width)))
    sizes = [(role, sum(r.size for r in rows)) for role, rows in plan.set_state]
    return c_interface.build(
        plan.name, fixed=plan.fixed, input_size=plan.input_size,
        step_output_size=plan.step_output_size, max_seq_len=plan.max_seq_len,
        state_size=sizes[0][1], set_state_args=sizes, outputs=lengths,
        has_step=plan.schedule is not None and plan.schedule.step is not None,
        sources=sources, format_macros=_format_macros(plan, q), vocab=plan.vocab,
        **({"no_step_why": f"in this model {plan.schedule.no_step_why} (docs/c-api.md, "
                           "\"Which models stream\")"}
           if (model.convolves or model.windows) and plan.schedule is not None else
           {"no_step_why": "this model pools over time, which reads every step"}
           if model.pools else {}))


def interface(model: Model, plan: Plan) -> dict:
    """The manifest's ``interface`` section (see docs/c-api.md)."""

    def spec(obj: Any) -> dict:
        d = {k: v for k, v in vars(obj).items() if v is not None and k != "group"}
        for key in ("size", "features", "vocab"):
            if d.get(key) == 0:
                del d[key]
        d["torch_shape"] = list(obj.torch_shape)
        return d

    return dict(
        input_size=model.input_size,
        step_output_size=model.step_output_size,
        max_seq_len=plan.max_seq_len or None,
        state_size=sum(r.size for r in plan.set_state[0][1]),
        has_step=plan.schedule is not None and plan.schedule.step is not None,
        set_state_args=[role for role, _ in plan.set_state],
        forward_inputs=[spec(i) for i in model.inputs],
        outputs=[spec(o) for o in model.outputs],
    )


def render(model: Model, out_dir: Path, name: str, fmt: str, options: dict,
           quantized: Any = None) -> dict:
    """Write NAME.h, NAME.c (and NAME_kernels.S when the model has assembly kernels) and
    NAME.json into ``out_dir``; returns the manifest.

    ``quantized``: the :class:`tinyrnn.passes.quantize.QModel` of an integer format (None for
    float32).
    """
    import torch

    check_name(name)
    if quantized is not None:  # the quantizer's form of the model (fused magnitudes)
        model = quantized.model
    digest = weights_hash(model)
    opts = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    quant_line = ""
    if quantized is not None:
        from ..passes.quantize import manifest_section

        section = json.dumps(manifest_section(quantized), sort_keys=True).encode()
        quant_line = (f" * {fmt} formats and integers sha256: "
                      f"{hashlib.sha256(section).hexdigest()}\n")
    plan = lower(model, name, quantized)
    kernels_file = f"{name}_kernels.S" if plan.dsp_kernels or plan.v6m_kernels \
        or plan.fpu_kernels else None
    sources = [f"{name}.c"] + ([kernels_file] if kernels_file else [])
    api = build_interface(plan, model, quantized, sources)
    summary = interface(model, plan)
    if quantized is not None:
        from ..passes.quantize import interface_section

        summary["quantized"] = interface_section(quantized)
    provenance = (  # binds NAME.json to the C (tinyrnn.backend.manifest)
        f"/* Generated by tinyrnn {__version__} from a torch {torch.__version__} model.\n"
        f" * weights sha256: {digest}\n"
        f"{quant_line}"
        f" * options: {opts}\n"
        f"{binding_line(name, fmt, summary, api.to_json())}\n"
        f" * Do not edit: re-run tinyrnn export instead. */"
    )
    ctx = context(plan, provenance, api)
    ctx["out_fracs"] = _out_fracs(quantized)
    env = _environment()
    files = {f"{name}.h": wrap(env.get_template("model.h.j2").render(**ctx)),
             f"{name}.c": wrap(env.get_template("model.c.j2").render(**ctx))}
    if kernels_file:
        files[kernels_file] = wrap(env.get_template("kernels.S.j2").render(
            families=_assembly_view(plan), **ctx), asm=True)
    width = CTYPE_BYTES[plan.T]
    manifest = dict(
        name=name,
        format=fmt,
        tinyrnn_version=__version__,
        torch_version=torch.__version__,
        weights_sha256=digest,
        options=options,
        interface=summary,
        c_interface=api.to_json(),
        sizes=dict(
            weights_bytes=plan.weights_bytes,
            state_bytes=sum(CTYPE_BYTES[b.ctype or plan.T] * b.size
                            for b in plan.buffers if not b.scratch),
            scratch_bytes=width * sum(b.size for b in plan.buffers if b.scratch),
        ),
        layers=[layer.summary() for layer in model.layers],
    )
    if quantized is not None:
        from ..passes.quantize import manifest_section

        manifest["sizes"]["tables_bytes"] = sum(h.table_bytes for h in helper_closure(
            list(plan.helpers)))
        manifest["quantization"] = manifest_section(quantized)
    files[f"{name}.json"] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    write_files(out_dir, files)  # all or none (tinyrnn.outputs)
    if kernels_file is None:  # left by an earlier export of a model with assembly kernels
        (Path(out_dir) / f"{name}_kernels.S").unlink(missing_ok=True)
    return manifest
