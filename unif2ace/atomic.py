"""Atomic writes: a reader (or a crash) sees the old content or the new, never half of it.

    with atomic_directory("runs/x/model") as tmp:     # fill tmp; it replaces runs/x/model on exit
        save_file(sd, tmp / "model.safetensors")
    atomic_write_text("runs/x/metrics.json", text)    # one file
    with atomic_open("runs/x/grid.png", "wb") as f:   # any writer that takes a file object
        image.save(f, format="PNG")
    with atomic_path("runs/x/w.safetensors") as tmp:  # any writer that wants a path
        save_file(sd, tmp)
    publish_directory(tmp_dir, "runs/x/step10")       # a temp directory others filled (several ranks)

Every temp file or directory sits beside its target (same file system, so ``os.replace`` is an
atomic rename) under a dot-name, and is removed if the writer raises. Before a rename the new
content is fsync'ed, after it the parent directory, so after a power loss the target is the old
version or the complete new one (ext4/xfs rename semantics).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (directories: their entries, i.e. a rename into them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def publish_directory(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Make the finished directory ``tmp`` appear as ``out`` in one rename (``tmp`` must be on the
    same file system, e.g. beside ``out``): its files are fsync'ed first; an existing ``out`` is
    moved aside to ``out.old`` and removed after the rename."""
    tmp, out = Path(tmp), Path(out)
    _fsync_tree(tmp)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    _fsync_path(out.parent)
    return out


@contextmanager
def atomic_directory(out: str | os.PathLike, prefix: str | None = None) -> Iterator[Path]:
    """Yield a temp directory beside ``out``; on success it replaces ``out`` whole
    (``publish_directory``), on error it is deleted and ``out`` is untouched. ``prefix``: the temp
    directory's name prefix (default ``.NAME.tmp``), for callers that clean up stale ones by glob."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{out.name}.tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise survive the rename
    try:
        yield tmp
        publish_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside ``path`` for a writer to fill; on success it is flushed to
    disk and renamed over ``path`` (mode 0644, as a plain ``open`` would make it); on error it
    is deleted and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_path(tmp)  # the writer may have closed its own handle without fsync
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """``open(path, mode)`` that publishes the file only when the block succeeds (write modes)."""
    if encoding is None and "b" not in mode:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)
