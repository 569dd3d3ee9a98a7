"""Zip archives from untrusted files, read with limits.

A ``.pt2`` archive and the ``torch.save`` file inside it are zip files. :class:`SafeZip` opens
one with :mod:`zipfile`, checks every entry name (no absolute paths, no ``..``, no backslashes,
no duplicates, one root folder) and every declared size (per entry, in total, and the
compression ratio) before a single byte is inflated, and reads entries with a bounded read, so
a zip bomb is refused instead of inflated. Nothing is ever extracted to disk.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass

from ..errors import TinyRNNError


@dataclass(frozen=True)
class ZipLimits:
    """How much an archive may hold. tinyrnn models are small (they fit a microcontroller)."""

    max_entries: int = 4096
    max_total_bytes: int = 256 << 20  # uncompressed, all entries together
    max_entry_bytes: int = 256 << 20
    max_ratio: int = 200  # uncompressed / compressed, for entries larger than ratio_floor
    ratio_floor: int = 1 << 20


DEFAULT_LIMITS = ZipLimits()

_ROOT = re.compile(r"[^/\\\x00-\x1f\x7f]{1,200}")
_PART = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_ALLOWED_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                NotImplementedError, RuntimeError)


def quote(text: str, limit: int = 80) -> str:
    """A string from a file, safe to print: repr-quoted (control characters escaped), cut."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


class SafeZip:
    """The entries of one zip archive below its single root folder, checked before reading.

    ``what`` names the archive in messages (e.g. ``model.pt2`` or ``model.pt2: sample
    inputs``). ``entries`` maps each name below the root (``models/model.json``) to its
    :class:`zipfile.ZipInfo`.
    """

    def __init__(self, source: bytes | str, what: str, limits: ZipLimits = DEFAULT_LIMITS):
        self.what = what
        self.limits = limits
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes)
                                        else source)
            infos = self._zip.infolist()
        except _READ_ERRORS as exc:
            raise TinyRNNError(f"{what} is not a zip archive ({_short(exc)})") from None
        if not infos:
            raise TinyRNNError(f"{what} is an empty zip archive")
        if len(infos) > limits.max_entries:
            raise TinyRNNError(f"{what} has {len(infos)} entries; tinyrnn reads at most "
                               f"{limits.max_entries}")
        self.root = ""
        self.entries: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            rest = self._check_name(info)
            self._check_size(info)
            total += info.file_size
            if total > limits.max_total_bytes:
                raise TinyRNNError(
                    f"{what} holds more than {limits.max_total_bytes >> 20} MiB uncompressed; "
                    "tinyrnn refuses it before inflating it (a model for a microcontroller "
                    "is far smaller)")
            self.entries[rest] = info

    def _check_name(self, info: zipfile.ZipInfo) -> str:
        name = info.orig_filename
        shown = quote(name)
        bad = (not name or name.startswith("/") or "\\" in name or "\x00" in name
               or re.match(r"[A-Za-z]:", name) is not None)
        parts = name.split("/")
        if bad or any(p in ("", ".", "..") for p in parts):
            raise TinyRNNError(f"{self.what}: entry {shown} is not a plain relative path "
                               "(absolute, '..', backslash or empty component); refused")
        if len(parts) < 2 or not _ROOT.fullmatch(parts[0]):
            raise TinyRNNError(f"{self.what}: entry {shown} is not inside the archive's root "
                               "folder")
        if not self.root:
            self.root = parts[0]
        elif parts[0] != self.root:
            raise TinyRNNError(f"{self.what}: entry {shown} is outside the root folder "
                               f"{quote(self.root)}; an archive has one root folder")
        if not all(_PART.fullmatch(p) for p in parts[1:]):
            raise TinyRNNError(f"{self.what}: entry {shown} has characters tinyrnn does not "
                               "accept in an entry name")
        rest = "/".join(parts[1:])
        if rest in self.entries:
            raise TinyRNNError(f"{self.what}: entry {shown} appears twice; refused (which copy "
                               "would be read is ambiguous)")
        return rest

    def _check_size(self, info: zipfile.ZipInfo) -> None:
        shown = quote(info.orig_filename)
        if info.flag_bits & 0x1:
            raise TinyRNNError(f"{self.what}: entry {shown} is encrypted")
        if info.compress_type not in _ALLOWED_METHODS:
            raise TinyRNNError(f"{self.what}: entry {shown} uses compression method "
                               f"{info.compress_type}; tinyrnn reads stored or deflated entries")
        if info.file_size > self.limits.max_entry_bytes:
            raise TinyRNNError(f"{self.what}: entry {shown} declares {info.file_size} bytes; "
                               f"tinyrnn reads entries of at most "
                               f"{self.limits.max_entry_bytes >> 20} MiB")
        if (info.file_size > self.limits.ratio_floor
                and info.file_size > self.limits.max_ratio * max(info.compress_size, 1)):
            raise TinyRNNError(
                f"{self.what}: entry {shown} inflates {info.compress_size} bytes to "
                f"{info.file_size} (ratio above {self.limits.max_ratio}); refused as a "
                "possible zip bomb")

    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, rest: str, max_bytes: int | None = None) -> bytes:
        """The bytes of the entry ``rest`` (below the root), read with a bounded read."""
        info = self.entries[rest]
        limit = info.file_size if max_bytes is None else min(info.file_size, max_bytes)
        if info.file_size > limit:
            raise TinyRNNError(f"{self.what}: entry {quote(rest)} has {info.file_size} bytes; "
                               f"tinyrnn reads at most {limit} from it")
        try:
            with self._zip.open(info) as handle:
                data = handle.read(limit + 1)
        except _READ_ERRORS as exc:
            raise TinyRNNError(f"{self.what}: entry {quote(rest)} cannot be read "
                               f"({_short(exc)}); the archive is damaged") from None
        if len(data) != info.file_size:
            raise TinyRNNError(f"{self.what}: entry {quote(rest)} holds {len(data)} bytes but "
                               f"declares {info.file_size}; the archive is damaged")
        return data

    def close(self) -> None:
        self._zip.close()


def printable(text: str, limit: int = 160) -> str:
    """Text from a file or from an exception about it, safe to print on one line."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + ("..." if len(text) > limit else "")


def _short(exc: BaseException) -> str:
    return printable(str(exc) or type(exc).__name__)
