"""Render: the IR -> C text (NAME.h, NAME.c) and the manifest (NAME.json).

Python decides everything here (names, buffer assignment, the order of operations, the
numbers); the Jinja2 templates only print it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from . import __version__
from .errors import TinyRNNError
from .ir import Activation, Dense, Model, RecurrentLayer, SelectStep
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


def _environment() -> jinja2.Environment:
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
                out += [t for t in (g.w_x, g.w_h, g.bias, g.bias_h) if t is not None]
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


def _direction_view(p: str, index: int, layer: RecurrentLayer, d_index: int) -> dict:
    d = layer.directions[d_index]
    tag = "rev" if d.reverse else "fwd"
    gates = []
    for g in d.gates:
        w = np.concatenate([g.w_x.data, g.w_h.data], axis=1)
        gates.append(
            dict(
                name=g.name,
                w_text=c_floats(w),
                w_source=f"{g.w_x.source} | {g.w_h.source}",
                b_text=c_floats(g.bias.data) if g.bias is not None else "",
                b_source=g.bias.source if g.bias is not None else "",
                bh_text=c_floats(g.bias_h.data) if g.bias_h is not None else "",
                bh_source=g.bias_h.source if g.bias_h is not None else "",
            )
        )
    module = layer.module or "rnn"
    return dict(
        fn=f"{p}_l{index}_{tag}",
        title=f"{module} layer {layer.layer}, {'reverse' if d.reverse else 'forward'} direction",
        I=layer.input_size,
        H=layer.hidden_size,
        P=layer.state_size,
        gates=gates,
        proj=d.w_proj is not None,
        proj_text=c_floats(d.w_proj.data) if d.w_proj is not None else "",
        proj_source=d.w_proj.source if d.w_proj is not None else "",
        nonlinearity=getattr(layer, "nonlinearity", ""),
        state=[f"s->l{index}_{tag}_h"] + ([f"s->l{index}_{tag}_c"] if layer.kind == "lstm" else []),
    )


class _Builder:
    """Assigns buffers and names and builds the template context for one model."""

    def __init__(self, model: Model, name: str):
        self.model = model
        self.p = name
        self.layer_views: list[dict] = []
        self.state_vars: list[dict] = []
        self.scratch_sizes = dict(xh=1, tmp=1, va=1, vb=1)

    def views(self) -> None:
        p = self.p
        for index, layer in enumerate(self.model.layers):
            if isinstance(layer, RecurrentLayer):
                dirs = [_direction_view(p, index, layer, k) for k in range(layer.num_directions)]
                self.layer_views.append(dict(kind="recurrent", cell=layer.kind, directions=dirs))
                for view, d in zip(dirs, layer.directions):
                    side = "reverse" if d.reverse else "forward"
                    what = f"{layer.module} layer {layer.layer} {side}"
                    self.state_vars.append(
                        dict(ctype="float", name=view["state"][0][3:], size=layer.state_size,
                             comment=f"h, {what}")
                    )
                    if layer.kind == "lstm":
                        self.state_vars.append(
                            dict(ctype="float", name=view["state"][1][3:], size=layer.hidden_size,
                                 comment=f"c, {what}")
                        )
                self.scratch_sizes["xh"] = max(
                    self.scratch_sizes["xh"], layer.input_size + layer.state_size
                )
                self.scratch_sizes["tmp"] = max(self.scratch_sizes["tmp"], layer.hidden_size)
            elif isinstance(layer, Dense):
                self.layer_views.append(
                    dict(
                        kind="dense",
                        fn=f"{p}_dense{index}",
                        source=layer.name,
                        rows=layer.out_features,
                        cols=layer.in_features,
                        w_text=c_floats(layer.weight.data),
                        w_source=f"{layer.weight.source}, float32",
                        bias=layer.bias is not None,
                        b_text=c_floats(layer.bias.data) if layer.bias is not None else "",
                        b_source=f"{layer.bias.source}, float32" if layer.bias is not None else "",
                    )
                )
                for key in ("va", "vb"):
                    self.scratch_sizes[key] = max(
                        self.scratch_sizes[key], layer.out_features, layer.in_features
                    )
            elif isinstance(layer, Activation):
                self.layer_views.append(
                    dict(kind="activation", fn=f"{p}_{layer.kind}{index}", op=layer.kind,
                         features=layer.features)
                )
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
            for dview in self.layer_views[index]["directions"]:
                rows.append(dict(var=dview["state"][k][3:], offset=offset, size=size,
                                 comment=f"row {len(rows)}: {dview['title']}"))
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
        seq_results = [
            dict(out=i, width=o.features) for i, o in enumerate(model.outputs)
            if o.role == "sequence"
        ]
        vec_results = [
            dict(out=i, width=o.features) for i, o in enumerate(model.outputs)
            if o.role == "vector"
        ]
        select = next((lay.index for lay in model.layers if isinstance(lay, SelectStep)), None)
        max_seq_len = model.max_seq_len if model.bidirectional else 0
        if model.bidirectional:
            pre, pre_result, post, post_result, sel_w, widest = self.layer_major()
            step_plan = None
            self.state_vars += [
                dict(ctype="float", name="seq_a", size=max_seq_len * widest,
                     comment=f"scratch: {max_seq_len} steps x {widest} features"),
                dict(ctype="float", name="seq_b", size=max_seq_len * widest,
                     comment=f"scratch: {max_seq_len} steps x {widest} features"),
            ]
            self.scratch_sizes["va"] = max(self.scratch_sizes["va"], sel_w)
        else:
            pre, pre_result, post, post_result, sel_w = self.time_major(
                f"x + (size_t)t * {model.input_size}", model.input_size
            )
            step_pre, _, step_post, step_result, _ = self.time_major("x_t", model.input_size)
            step_plan = _Plan(step_pre + step_post, step_result)
        self.state_vars += [
            dict(ctype="float", name="scratch_" + key, size=size, comment="scratch")
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
        out_doc = []
        for out in model.outputs:
            if out.role == "sequence":
                out_doc.append(f"sequence, T x {out.features} floats")
            elif out.role == "vector":
                out_doc.append(f"vector, {out.features} floats")
            else:
                out_doc.append(f"{out.role}, {out.size} floats (layers*directions, H)")
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
            state_size=sum(r["size"] for r in set_state_rows if r["arg"] == "h0"),
            max_seq_len=max_seq_len,
            step_plan=step_plan,
            run_plan=run_plan,
            out_doc=out_doc,
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


def render(model: Model, out_dir: Path, name: str, fmt: str, options: dict) -> dict:
    """Write NAME.h, NAME.c and NAME.json into ``out_dir``; returns the manifest."""
    import torch

    check_name(name)
    digest = weights_hash(model)
    opts = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    provenance = (
        f"/* Generated by tinyrnn {__version__} from a torch {torch.__version__} model.\n"
        f" * weights sha256: {digest}\n"
        f" * options: {opts}\n"
        f" * Do not edit: re-run tinyrnn export instead. */"
    )
    context = _Builder(model, name).context(provenance, name)
    env = _environment()
    header = env.get_template("model.h.j2").render(**context)
    source = env.get_template("model.c.j2").render(**context)
    state_bytes = 4 * sum(
        v["size"] for v in context["state_vars"] if not v["name"].startswith(("scratch", "seq"))
    )
    scratch_bytes = 4 * sum(
        v["size"] for v in context["state_vars"] if v["name"].startswith(("scratch", "seq"))
    )
    weight_bytes = 4 * sum(t.data.size for layer in model.layers for t in _tensors(layer))
    manifest = dict(
        name=name,
        format=fmt,
        tinyrnn_version=__version__,
        torch_version=torch.__version__,
        weights_sha256=digest,
        options=options,
        interface=interface(model, context),
        sizes=dict(
            weights_bytes=weight_bytes, state_bytes=state_bytes, scratch_bytes=scratch_bytes
        ),
        layers=[_layer_summary(layer) for layer in model.layers],
    )
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
            bias=layer.directions[0].gates[0].bias is not None,
        )
    if isinstance(layer, Dense):
        return dict(kind="dense", name=layer.name, in_features=layer.in_features,
                    out_features=layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, Activation):
        return dict(kind=layer.kind, features=layer.features)
    assert isinstance(layer, SelectStep)
    return dict(kind="select_step", index=layer.index)
