"""The manifest NAME.json is bound to the C it describes.

The host harness, the QEMU harness and the profiler size their buffers from the manifest's
``interface`` (input size, outputs, state size). A manifest edited after export would make them
read and write outside the C's buffers. So the provenance comment at the top of NAME.h and
NAME.c carries the sha256 of the manifest's ``name``, ``format``, ``interface`` and
``c_interface`` (the typed record host, cross and profile read; in a canonical JSON form), and
:func:`read_manifest` checks it against both files before anyone uses the manifest: a
mismatch is an error that asks to re-export.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..checks import check_name
from ..errors import TinyRNNError

BINDING = " * interface sha256: "
"""The provenance line of NAME.h and NAME.c that carries :func:`interface_sha256`."""

HEADER_LINES = 12
"""The binding line is among the first lines of each file (the provenance comment)."""

MAX_MANIFEST_BYTES = 16 << 20
"""Generated manifests are a few kilobytes (the quantization section grows with the layers)."""

_DIGEST = re.compile(r"[0-9a-f]{64}")


def interface_sha256(name: Any, fmt: Any, interface: Any, c_interface: Any) -> str:
    """sha256 of the canonical JSON of ``{"name", "format", "interface", "c_interface"}``."""
    record = {"name": name, "format": fmt, "interface": interface, "c_interface": c_interface}
    try:
        text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        text = ""  # not what export writes: it matches no binding
    return hashlib.sha256(text.encode()).hexdigest()


def binding_line(name: str, fmt: str, interface: dict, c_interface: dict) -> str:
    """The provenance line (without its newline) that render writes into NAME.h and NAME.c."""
    digest = interface_sha256(name, fmt, interface, c_interface)
    return f"{BINDING}{digest} (of NAME.json)"


def _recorded(path: Path) -> str | None:
    """The digest on the binding line of ``path``, or None when there is none."""
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for _ in range(HEADER_LINES):
            line = handle.readline()
            if line.startswith(BINDING):
                token = line[len(BINDING):].split(" ", 1)[0].strip()
                return token if _DIGEST.fullmatch(token) else None
    return None


def read_manifest(model_dir: str | Path) -> dict:
    """The manifest of the single exported model in ``model_dir``, checked against its C."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TinyRNNError(f"{model_dir} is not a directory; pass the folder tinyrnn export wrote")
    manifests = sorted(m for m in model_dir.glob("*.json") if m.with_suffix(".c").is_file())
    if len(manifests) != 1:
        raise TinyRNNError(
            f"{model_dir} should hold exactly one exported model (NAME.json, NAME.c, NAME.h); "
            f"found {len(manifests)}"
        )
    path = manifests[0]
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise TinyRNNError(f"{path} is larger than any manifest tinyrnn writes; re-export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise TinyRNNError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(manifest, dict) or manifest.get("name") != path.stem:
        raise TinyRNNError(f"{path} does not describe a model named {path.stem!r}; re-export "
                           "the model with tinyrnn export")
    check_name(path.stem)
    check_manifest(model_dir, manifest)
    return manifest


def check_manifest(model_dir: Path, manifest: dict) -> None:
    """Refuse a manifest whose name, format or interface differs from what NAME.h and NAME.c
    were generated with (edited, or copied from another export)."""
    name = manifest["name"]
    want = interface_sha256(name, manifest.get("format"), manifest.get("interface"),
                            manifest.get("c_interface"))
    for suffix in (".h", ".c"):
        source = model_dir / f"{name}{suffix}"
        if not source.is_file():
            raise TinyRNNError(f"{source} is missing; re-export the model with tinyrnn export")
        recorded = _recorded(source)
        if recorded is None:
            raise TinyRNNError(
                f"{source} carries no interface sha256 (written by an older tinyrnn, or "
                "edited); re-export the model with tinyrnn export"
            )
        if recorded != want:
            raise TinyRNNError(
                f"{model_dir / (name + '.json')} does not match {source.name}: the manifest's "
                "name, format, interface or c_interface differs from what the C was generated "
                "with "
                f"(interface sha256 {want[:12]}... vs {recorded[:12]}... in {source.name}); "
                "re-export the model with tinyrnn export"
            )
