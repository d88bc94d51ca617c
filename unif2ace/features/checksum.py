"""sha256 of weight files, cached per (path, size, mtime) so a 260 MB ONNX is hashed once.

    from unif2ace.features.checksum import file_sha256
    file_sha256("models/antelopev2/glintr100.onnx")   # 'a3b1…' (hex)
"""
from __future__ import annotations

import functools
import hashlib
import os


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key only: a rewritten file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    st = os.stat(real)
    return _sha256(real, st.st_size, st.st_mtime_ns)
