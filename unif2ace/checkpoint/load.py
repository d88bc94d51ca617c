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
    from unif2ace.train.checkpointing import read_run_config

    root = Path(root)
    tag = tag or (root / "latest").read_text().strip()
    if not (root / tag).is_dir():
        raise CheckpointError(f"{root / tag}: no such checkpoint")
    cfg = read_run_config(root / tag)
    sd = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    model = UniF2ace(cfg.model)
    check_state_dict(model, {k: v.float().contiguous() for k, v in sd.items()}, str(root / tag))
    return model, cfg


def load_model(path: str | os.PathLike, tag: str | None = None):
    p = Path(path)
    if (p / CONFIG_NAME).is_file():
        return load_pretrained(p)
    root = zero_root(p)
    if root is not None:
        return load_zero(root, tag if tag else (p.name if p.parent == root else None))
    raise CheckpointError(f"{p}: neither a unif2ace model directory (config.json + model.safetensors) "
                          f"nor a DeepSpeed checkpoint directory (with a 'latest' file)")
