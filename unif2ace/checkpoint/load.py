"""Load a model for inference from whatever checkpoint a user has.

    model, cfg = load_model("runs/synthface/model")               # our HF-style directory
    model, cfg = load_model("runs/synthface/train/checkpoints")   # a DeepSpeed ZeRO checkpoint (latest)
    model, cfg = load_model("runs/synthface/train")               # … or the run directory holding it

ZeRO partitions are merged in memory with DeepSpeed's ``zero_to_fp32`` utilities (no process
group needed); ``tools/convert_checkpoint.py`` writes the same merge to disk.
"""
from __future__ import annotations

import os
from pathlib import Path

from unif2ace.checkpoint.hf_io import CONFIG_NAME, CheckpointError, check_state_dict, load_pretrained
from unif2ace.checkpoint.expert_shards import SHARD_FILE, merge_expert_shards
from unif2ace.checkpoint.run_config import read_run_config


def zero_root(path: Path) -> Path | None:
    """The directory holding ``latest`` for a ZeRO checkpoint given as root, run dir or tag dir."""
    for cand in (path, path / "checkpoints", path.parent):
        if (cand / "latest").is_file():
            return cand
    return None


def load_zero(root: str | os.PathLike, tag: str | None = None):
    """(model, cfg) from the fp32 master weights of a ZeRO checkpoint ``root/tag``."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from unif2ace.model.unif2ace import UniF2ace

    root = Path(root)
    tag = tag or (root / "latest").read_text().strip()
    if not (root / tag).is_dir():
        raise CheckpointError(f"{root / tag}: no such checkpoint")
    cfg = read_run_config(root / tag)
    if (root / tag / SHARD_FILE.format(rank=0)).exists():
        sd = _expert_parallel_state_dict(root / tag)
    else:
        sd = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    model = UniF2ace(cfg.model)
    check_state_dict(model, {k: v.float().contiguous() for k, v in sd.items()}, str(root / tag))
    return model, cfg


def _expert_parallel_state_dict(ckpt: Path) -> dict:
    """An expert-parallel ZeRO-2 checkpoint (unif2ace/train/expert_parallel.py): DeepSpeed's
    ``zero_to_fp32`` cannot merge its expert optimiser groups (each rank's differ), so the weights
    come from rank 0's module state (the training dtype) plus every rank's expert shard."""
    import torch
    from safetensors.torch import load_file

    states = ckpt / "mp_rank_00_model_states.pt"
    if not states.exists():
        raise CheckpointError(f"{states}: missing")
    module = torch.load(states, weights_only=True)["module"]
    shards, ep = [], 0
    while (ckpt / SHARD_FILE.format(rank=ep)).exists():
        shards.append(load_file(str(ckpt / SHARD_FILE.format(rank=ep))))
        ep += 1
    declared = int(_shard_meta(ckpt / SHARD_FILE.format(rank=0)).get("ep_size", 0))
    if declared != ep:
        raise CheckpointError(f"{ckpt}: {ep} expert shard file(s), but they were written with "
                              f"expert_parallel_size={declared}")
    return merge_expert_shards(module, shards)


def _shard_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def load_model(path: str | os.PathLike, tag: str | None = None):
    p = Path(path)
    if (p / CONFIG_NAME).is_file():
        return load_pretrained(p)
    root = zero_root(p)
    if root is not None:
        return load_zero(root, tag if tag else (p.name if p.parent == root else None))
    raise CheckpointError(f"{p}: neither a unif2ace model directory (config.json + model.safetensors) "
                          f"nor a DeepSpeed checkpoint directory (with a 'latest' file)")
