"""Outputs appear only complete.

Every command writes into a temporary folder (``.tinyrnn-tmp-*``) in the target folder, or in
the nearest existing folder above a target that does not exist yet, and moves the finished
files into place at the end with ``os.rename``. If anything fails before that, the temporary
folder is removed and the target is left as it was: no half-written NAME.c, no NAME.h without
its NAME.c, no truncated .npz. Missing folders on the way to a target are created (as part of
the same final rename). An existing file of the same name is replaced, unless it is read-only
or a folder, which is refused before anything is moved.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import TinyRNNError

STAGE_PREFIX = ".tinyrnn-tmp-"


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _anchor(target: Path, what: str) -> Path:
    """The folder the stage goes into: ``target`` when it is a folder, else the nearest
    existing folder above it. Refuses a target that is a file and unwritable folders."""
    if target.exists() and not target.is_dir():
        raise TinyRNNError(f"{what} {target} is a file, not a folder; give a folder (it is "
                           "created if missing) or remove the file")
    anchor = target
    while not anchor.exists():
        if anchor.parent == anchor:
            break
        anchor = anchor.parent
    if not anchor.is_dir():
        raise TinyRNNError(f"{what} {target} is inside {anchor}, which is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise TinyRNNError(f"{what} {target}: folder {anchor} is not writable")
    return anchor


def check_folder(target: str | Path, what: str = "--out") -> None:
    """Fail early (before expensive work) if ``target`` cannot become an output folder."""
    _anchor(Path(target), what)


def check_file(target: str | Path, what: str = "--output") -> None:
    """Fail early if ``target`` cannot become an output file."""
    target = Path(target)
    if target.is_dir():
        raise TinyRNNError(f"{what} {target} is a folder; give a file name")
    if target.exists() and not os.access(target, os.W_OK):
        raise TinyRNNError(f"{what} {target} exists and is read-only; remove it or choose "
                           "another name")
    _anchor(target.parent, what)


def _relative_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if not p.is_dir())


def _merge(stage: Path, target: Path, what: str) -> None:
    """Move every file of ``stage`` into the existing folder ``target``, all or none."""
    files = _relative_files(stage)
    for rel in files:  # refuse before moving anything
        dest = target / rel
        if dest.is_dir():
            raise TinyRNNError(f"{what}: {dest} is a folder; remove it so that the file "
                               f"{rel} can be written")
        if dest.exists() and not os.access(dest, os.W_OK):
            raise TinyRNNError(f"{what}: {dest} exists and is read-only; remove it or choose "
                               "another folder")
        for parent in reversed(rel.parents[:-1]):
            if (target / parent).exists() and not (target / parent).is_dir():
                raise TinyRNNError(f"{what}: {target / parent} is a file, not a folder")
    backup = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX + "old-", dir=target))
    done: list[tuple[Path, Path | None]] = []  # (moved file, its backup)
    created: list[Path] = []
    try:
        for rel in files:
            dest = target / rel
            for parent in reversed(rel.parents[:-1]):
                if not (target / parent).exists():
                    (target / parent).mkdir()
                    created.append(target / parent)
            old = None
            if dest.exists():
                old = backup / str(len(done))
                os.rename(dest, old)
            done.append((dest, old))
            os.rename(stage / rel, dest)
    except OSError as exc:
        for dest, old in reversed(done):  # put back what was there
            if dest.exists():
                dest.unlink()
            if old is not None:
                os.rename(old, dest)
        for folder in reversed(created):
            folder.rmdir()
        raise TinyRNNError(f"cannot write {what} {target}: {_why(exc)}; nothing was "
                           "changed") from None
    finally:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def output_folder(target: str | Path, what: str = "--out",
                  shown: str | Path | None = None) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without an error, its files move
    into ``target`` (created with any missing parents). On an error nothing is left.
    ``shown``: the path the messages name (default ``target``)."""
    target = Path(target)
    anchor = _anchor(target, what)
    shown = target if shown is None else shown
    try:
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=anchor))
    except OSError as exc:
        raise TinyRNNError(f"cannot write {what} {shown}: {_why(exc)}") from None
    try:
        if anchor == target:
            yield stage
            _merge(stage, target, what)
        else:
            rel = target.relative_to(anchor)
            inner = stage / rel
            inner.mkdir(parents=True)
            yield inner
            top = rel.parts[0]
            try:
                os.rename(stage / top, anchor / top)
            except OSError as exc:
                raise TinyRNNError(f"cannot write {what} {shown}: {_why(exc)}") from None
    except OSError as exc:
        raise TinyRNNError(f"cannot write {what} {shown}: {_why(exc)}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def output_file(target: str | Path, what: str = "--output") -> Iterator[Path]:
    """Yield a temporary path to write one file to; it becomes ``target`` at the end."""
    target = Path(target)
    check_file(target, what)
    with output_folder(target.parent, what, shown=target) as folder:
        yield folder / target.name


def write_files(folder: str | Path, files: Mapping[str, str | bytes],
                what: str = "--out") -> None:
    """Write ``{file name: text or bytes}`` into ``folder``, all or none."""
    with output_folder(folder, what) as stage:
        for name, content in files.items():
            if isinstance(content, bytes):
                (stage / name).write_bytes(content)
            else:
                (stage / name).write_text(content, encoding="utf-8")


def install_file(source: str | Path, target: str | Path, what: str = "--output") -> Path:
    """Copy the finished file ``source`` to ``target`` so that it appears only complete."""
    with output_file(target, what) as staged:
        shutil.copyfile(source, staged)
    return Path(target)


def npz_path(path: str | Path) -> Path:
    """The file ``numpy.savez`` writes for ``path`` (it appends .npz when missing)."""
    path = Path(path)
    return path if path.name.endswith(".npz") else path.with_name(path.name + ".npz")
