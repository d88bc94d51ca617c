"""Process-wide runtime settings, scoped.

    from unif2ace.runtime import torch_threads
    with torch_threads(1):      # one OpenMP thread for a trainer sharing 2 cores; 0 = leave as is
        train(...)
    d = process_tempdir("unif2ace-pg-")   # a scratch directory removed when the process exits
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (0: unchanged), then restore the caller's count
    (e.g. the rest of a test session)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def process_tempdir(prefix: str) -> Path:
    """A fresh temporary directory that lives as long as the process (some libraries keep reading
    a path they were given: open_clip rescans its config paths, a FileStore its file), removed at
    interpreter exit so that runs do not litter the temp directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
