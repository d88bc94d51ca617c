"""Training checkpoints: every N steps and on SIGTERM, on all ranks, atomic, keep the last K.

    ckpt = CheckpointManager(Path(cfg.train.out_dir) / "checkpoints", cfg, world_size, rank)
    state = ckpt.load(engine)            # None (fresh start) or this rank's RankState
    ...
    ckpt.save(engine, RankState(step, loader.state_dict(), counters))

Layout under ``checkpoints/``::

    step00000010/               DeepSpeed's files (mp_rank_*, zero_pp_rank_*_optim_states.pt)
        rank00000.pt            per-rank: loader position, RNG states, loop counters
        run.json                config + world size that wrote it (checked on resume)
    latest                      "step00000010": the newest *complete* checkpoint
    zero_to_fp32.py             DeepSpeed's consolidation script (copied by DeepSpeed)

Atomicity: all ranks write into ``.tmp-stepN/``, meet at a barrier, then rank 0 renames the
directory (``unif2ace.atomic.publish_directory``: fsync, then one rename) and only then flips
``latest`` (``atomic_write_text``). A crash anywhere before the flip leaves ``latest`` on the previous complete
checkpoint; stale ``.tmp-*`` directories are removed at the next save.

Exact resume: DeepSpeed restores weights, optimizer state and the LR schedule; we add the data
loader position and the Python / NumPy / torch (CPU and CUDA) RNG states of every rank, so a
resumed run reproduces the uninterrupted loss sequence bit for bit (tested).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Layout names and the run.json reader are shared with checkpoint loading (which must not import
# training), so they live in unif2ace.checkpoint.run_config.
from unif2ace.atomic import atomic_path, atomic_write_text, publish_directory
from unif2ace.checkpoint.run_config import LATEST, RUN_META, CheckpointMismatch, read_run_config  # noqa: F401
from unif2ace.checkpoint.run_config import config_diff
from unif2ace.config import Config
from unif2ace.train import expert_parallel, faults

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step(\d{8})$")


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every generator the loop touches, as tensors / plain Python (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    # random.setstate needs tuples; serialisation may hand back lists
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- per-rank state


@dataclass
class RankState:
    """What DeepSpeed does not save, for one rank."""

    step: int
    """Optimiser steps completed (skipped non-finite steps included)."""
    loader: dict[str, Any] = field(default_factory=dict)
    """The data loader's state_dict(): the next batch it yields after resume."""
    counters: dict[str, Any] = field(default_factory=dict)
    """Loop counters (bad steps, samples and tokens seen)."""
    rng: dict[str, Any] = field(default_factory=dict)
    """RNG states at save time (filled by save)."""


# --------------------------------------------------------------------------- manager


def _tag(step: int) -> str:
    return f"step{step:08d}"


def run_meta(cfg: Config, world_size: int, expert_parallel_size: int = 1) -> dict[str, Any]:
    """What must match for a checkpoint to be resumable by this run."""
    meta = {"world_size": world_size, "model": asdict(cfg.model), "loss": asdict(cfg.loss),
            "data": asdict(cfg.data),
            "train": {k: getattr(cfg.train, k) for k in ("micro_batch", "grad_accum", "seed")}}
    if expert_parallel_size > 1:  # absent otherwise, so checkpoints without EP read as before
        meta["expert_parallel_size"] = expert_parallel_size
    return meta


class CheckpointManager:
    def __init__(self, root: str | os.PathLike, cfg: Config, world_size: int, rank: int, keep_last: int = 2):
        self.root = Path(root)
        self.cfg = cfg
        self.world_size = world_size
        self.rank = rank
        self.keep_last = keep_last

    # ----------------------------------------------------------------- queries

    def latest_tag(self) -> str | None:
        p = self.root / LATEST
        if not p.exists():
            return None
        tag = p.read_text().strip()
        if not (self.root / tag).is_dir():
            raise CheckpointMismatch(f"{p} points to {tag!r}, which does not exist under {self.root}")
        return tag

    def complete_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for d in self.root.iterdir() if (m := _STEP_RE.match(d.name)) and d.is_dir())

    # ----------------------------------------------------------------- save

    def save(self, engine, state: RankState) -> Path:
        """Collective: every rank must call it with the same ``state.step``."""
        import torch.distributed as dist

        tag = _tag(state.step)
        final = self.root / tag
        tmp_tag = f".tmp-{tag}"
        tmp = self.root / tmp_tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-step*"):
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()
        engine.save_checkpoint(str(self.root), tag=tmp_tag, save_latest=False)
        # ZeRO-2 EP: DeepSpeed saves rank 0's experts only, so every EP rank writes its own;
        # ZeRO-3 EP: the ZeRO files hold them, rank 0 records which EP rank each rank was
        expert_parallel.save_expert_shards(engine.module, tmp)
        state.rng = rng_state()
        with atomic_path(tmp / f"rank{self.rank:05d}.pt") as part:
            torch.save(asdict(state), part)
        if self.rank == 0:
            meta = {**run_meta(self.cfg, self.world_size, expert_parallel.ep_size_of(engine.module)),
                    "config": self.cfg.to_dict()}
            atomic_write_text(tmp / RUN_META, json.dumps(meta, indent=1))
        faults.maybe_fail("crash_in_save", state.step, self.rank)
        dist.barrier()  # every rank's files are on disk
        if self.rank == 0:
            publish_directory(tmp, final)  # replaces a same-step one (SIGTERM right after a periodic save)
            atomic_write_text(self.root / LATEST, tag)
            self._prune(keep=tag)
        dist.barrier()
        return final

    def _prune(self, keep: str) -> None:
        steps = self.complete_steps()
        for s in steps[:-self.keep_last]:
            if _tag(s) != keep:
                shutil.rmtree(self.root / _tag(s), ignore_errors=True)

    # ----------------------------------------------------------------- load

    def check_compatible(self, tag: str, expert_parallel_size: int = 1) -> None:
        meta_path = self.root / tag / RUN_META
        if not meta_path.exists():
            raise CheckpointMismatch(f"{meta_path}: missing (incomplete or foreign checkpoint)")
        have = json.loads(meta_path.read_text())
        have.pop("config", None)
        want = json.loads(json.dumps(run_meta(self.cfg, self.world_size, expert_parallel_size)))
        diffs = config_diff(have, want)
        if diffs:
            raise CheckpointMismatch(
                f"checkpoint {self.root / tag} was written by a different run configuration: " + "; ".join(diffs[:10])
                + (" …" if len(diffs) > 10 else "")
                + ". Use another train.out_dir, train.resume=false, or the original settings "
                  "(a world-size change needs DeepSpeed's ds_to_universal conversion).")
        rank_file = self.root / tag / f"rank{self.rank:05d}.pt"
        if not rank_file.exists():
            raise CheckpointMismatch(f"{rank_file}: missing")

    def load(self, engine) -> RankState | None:
        """Restore the latest checkpoint into ``engine`` and this process's RNGs; None if none."""
        tag = self.latest_tag()
        if tag is None:
            return None
        self.check_compatible(tag, expert_parallel.ep_size_of(engine.module))
        path, _ = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointMismatch(f"DeepSpeed could not load {self.root / tag}")
        try:
            expert_parallel.restore_expert_shards(engine, self.root / tag)
        except expert_parallel.ExpertParallelError as e:
            raise CheckpointMismatch(str(e)) from None
        raw = torch.load(self.root / tag / f"rank{self.rank:05d}.pt", weights_only=True)
        state = RankState(**raw)
        set_rng_state(state.rng)
        log.info("resumed from %s (step %d)", self.root / tag, state.step)
        return state
