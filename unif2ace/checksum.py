"""sha256 of files: shard checksums (read afresh each time) and weight files (cached, so a 260 MB
ONNX that every ``describe()`` names is hashed once per process).

    from unif2ace.checksum import file_sha256
    file_sha256("runs/x/shards/shard-00000/data.arrow")                  # 'a3b1…' (hex), reads the file
    file_sha256("models/antelopev2/glintr100.onnx", cached=True)         # again: from the cache
"""
from __future__ import annotations

import functools
import hashlib
import os


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key only: a rewritten file is hashed again
    return _sha256(path)


def file_sha256(path: str | os.PathLike, cached: bool = False) -> str:
    """Hex sha256 of the file's bytes. ``cached``: remembered per (real path, size, mtime) — for
    weight files; verification must not use it (corruption that keeps size and mtime would hide)."""
    if not cached:
        return _sha256(path)
    real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    st = os.stat(real)
    return _cached_sha256(real, st.st_size, st.st_mtime_ns)
