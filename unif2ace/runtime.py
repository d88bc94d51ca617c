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


_made: list[multiprocessing.util.Finalize] = []


def process_tempdir(prefix: str) -> Path:
    """A fresh temporary directory that lives as long as the process (some libraries keep reading
    a path they were given: open_clip rescans its config paths, a FileStore its file), removed
    when the process exits, so that runs do not litter the temp directory. A multiprocessing
    worker's goes too; not after SIGKILL, nor after a bare ``os._exit`` (see
    ``remove_process_tempdirs``)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    # multiprocessing's exit finalizers, not atexit: they also run when a pool worker ends (it
    # leaves through os._exit, skipping atexit), and one does nothing in a process other than the
    # one that made it, so a forked child never removes its parent's directory
    _made.append(multiprocessing.util.Finalize(None, shutil.rmtree, args=(str(path),),
                                               kwargs={"ignore_errors": True}, exitpriority=0))
    return path


def remove_process_tempdirs() -> None:
    """Remove this process's ``process_tempdir`` directories now, for a process about to leave
    through ``os._exit`` (which runs no exit handler)."""
    for finalizer in _made:
        finalizer()
