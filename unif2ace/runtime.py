"""Process-wide runtime settings, scoped.

    from unif2ace.runtime import torch_threads
    with torch_threads(1):      # one OpenMP thread for a trainer sharing 2 cores; 0 = leave as is
        train(...)
    d = process_tempdir("unif2ace-pg-")   # a scratch directory removed when the process exits
"""
from __future__ import annotations

import multiprocessing.util
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
    a path they were given: open_clip rescans its config paths, a FileStore its file), removed
    when the process exits (a multiprocessing worker too; not after SIGKILL) so that runs do not
    litter the temp directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    # multiprocessing's exit finalizers, not atexit: they also run when a pool worker ends (it
    # leaves through os._exit, skipping atexit), and a forked child starts with an empty registry,
    # so it never removes its parent's directory
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(str(path),), kwargs={"ignore_errors": True},
                                  exitpriority=0)
    return path
