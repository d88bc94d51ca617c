"""What a training checkpoint directory says about itself: its layout names and its config.

    from unif2ace.checkpoint.run_config import read_run_config
    cfg = read_run_config("runs/x/train/checkpoints/step00000400")   # the Config that wrote it
    config_diff({"model": {"hidden_size": 64}}, {"model": {"hidden_size": 128}})
    # ['model.hidden_size: checkpoint 64 vs run 128']

Training writes these files (unif2ace/train/checkpointing.py); loading, conversion and
evaluation read them, so the names and the reader live here and need nothing from training.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unif2ace.config import Config, config_from_dict
from unif2ace.jsonfile import read_json

LATEST = "latest"
"""File in ``checkpoints/`` naming the newest complete step directory."""
RUN_META = "run.json"
"""File in a step directory: the full config and the world size that wrote it."""


class CheckpointMismatch(RuntimeError):
    """The checkpoint was written by another config or world size, or is incomplete."""


def read_run_config(ckpt_dir: str | os.PathLike) -> Config:
    """The full config that wrote a checkpoint (``run.json``), e.g. for tools/convert_checkpoint.py."""
    path = Path(ckpt_dir) / RUN_META
    if not path.exists():
        raise CheckpointMismatch(f"{path}: missing (not a unif2ace training checkpoint, or an incomplete one)")
    meta = read_json(path, CheckpointMismatch)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointMismatch(f"{path}: no 'config' mapping")
    return config_from_dict(meta["config"])


def config_diff(checkpoint: Any, run: Any, prefix: str = "") -> list[str]:
    """Where a checkpoint's nested config (dicts of values) differs from this run's: one
    ``"a.b.c: checkpoint X vs run Y"`` per differing leaf, keys sorted, a key missing on one side
    read as None. Lists and tuples compare by their items (JSON turns tuples into lists)."""
    if isinstance(checkpoint, dict) and isinstance(run, dict):
        out = []
        for k in sorted(set(checkpoint) | set(run)):
            out += config_diff(checkpoint.get(k), run.get(k), f"{prefix}{k}.")
        return out
    if isinstance(checkpoint, (list, tuple)) and isinstance(run, (list, tuple)):
        checkpoint, run = list(checkpoint), list(run)
    return [] if checkpoint == run else [f"{prefix.rstrip('.')}: checkpoint {checkpoint!r} vs run {run!r}"]
