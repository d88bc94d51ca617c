"""Process-wide runtime settings, scoped.

    from unif2ace.runtime import torch_threads
    with torch_threads(1):      # one OpenMP thread for a trainer sharing 2 cores; 0 = leave as is
        train(...)
"""
from __future__ import annotations

from contextlib import contextmanager
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
