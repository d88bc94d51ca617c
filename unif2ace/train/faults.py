"""Fault injection for the resilience tests, driven by one environment variable.

    UNIF2ACE_FAULT="nan:5,nan:6:1,crash:3:1,crash_in_save:4"   kind:STEP[:RANK], comma-separated

- ``nan:S[:R]``           the loss of step S (on rank R, or all) is multiplied by NaN
- ``crash:S[:R]``         the process exits with status 13 at the start of step S
- ``hang:S[:R]``          the process sleeps forever at the start of step S (the others must
                          time out after ``train.dist_timeout_s`` instead of waiting forever)
- ``crash_in_save:S[:R]`` the checkpoint of step S raises after DeepSpeed wrote its files and
                          before the commit (``latest`` must stay on the previous checkpoint)

Unset in normal runs: every check is a dictionary lookup.
"""
from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)

KINDS = ("nan", "crash", "hang", "crash_in_save")


class InjectedFault(RuntimeError):
    """Raised by ``crash_in_save``."""


def _parse(spec: str) -> dict[tuple[str, int], int | None]:
    out: dict[tuple[str, int], int | None] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        parts = item.split(":")
        if parts[0] not in KINDS or len(parts) not in (2, 3):
            raise ValueError(f"UNIF2ACE_FAULT: bad entry {item!r} (kind:STEP[:RANK], kinds {KINDS})")
        out[(parts[0], int(parts[1]))] = int(parts[2]) if len(parts) == 3 else None
    return out


def active(kind: str, step: int, rank: int) -> bool:
    spec = os.environ.get("UNIF2ACE_FAULT")
    if not spec:
        return False
    table = _parse(spec)
    if (kind, step) not in table:
        return False
    r = table[(kind, step)]
    return r is None or r == rank


def maybe_fail(kind: str, step: int, rank: int) -> None:
    """Apply a ``crash`` / ``hang`` / ``crash_in_save`` fault if one is scheduled here."""
    if not active(kind, step, rank):
        return
    log.error("fault injection: %s at step %d on rank %d", kind, step, rank)
    if kind == "crash":
        os._exit(13)
    if kind == "hang":
        # A process wedged in native code never runs Python signal handlers; emulate that.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            time.sleep(3600)
    raise InjectedFault(f"injected {kind} at step {step} on rank {rank}")
