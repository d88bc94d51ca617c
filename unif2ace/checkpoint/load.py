"""Load a model from whatever checkpoint a user has: the one dispatcher.

    model, cfg = load_model("runs/synthface/model")               # our HF-style directory
    model, cfg = load_model("runs/synthface/train/checkpoints")   # a DeepSpeed ZeRO checkpoint (latest)
    model, cfg = load_model("runs/synthface/train")               # … or the run directory holding it
    model, cfg = load_model("…/checkpoints/step00000400")         # … or one step directory
    model, cfg = load_model("/models/phi-1_5", base=cfg)          # a Phi / Show-o directory, imported
                                                                  # into ``base`` (checkpoint/adapters.py)

``checkpoint_kind(path)`` says which of them a path is. Training's ``train.init_from`` goes
through ``load_model`` too.

ZeRO partitions are merged in memory with DeepSpeed's ``zero_to_fp32`` utilities (no process
group needed); ``tools/convert_checkpoint.py`` writes the same merge to disk. Expert-parallel
checkpoints, which ``zero_to_fp32`` cannot merge, are read here directly: ZeRO-2 ones from rank 0's
module state plus every rank's expert file, ZeRO-3 ones from every rank's fp32 partitions.
"""
from __future__ import annotations

import os
from pathlib import Path

from unif2ace.checkpoint.hf_io import CONFIG_NAME, FORMAT, CheckpointError, check_state_dict, load_pretrained
from unif2ace.checkpoint.expert_shards import LAYOUT_FILE, SHARD_FILE, merge_expert_shards, read_layout
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
    elif (root / tag / LAYOUT_FILE).exists():
        sd = _zero3_expert_parallel_state_dict(root / tag)
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


def _zero3_expert_parallel_state_dict(ckpt: Path) -> dict:
    """An expert-parallel ZeRO-3 checkpoint: every rank's fp32 partitions, merged per ZeRO
    sub-group over the ranks that partitioned it (``ds_zero_partition_groups``, written by
    DeepSpeed's stage-3 optimiser). ``zero_to_fp32`` assumes every parameter is split over all
    ranks and raises ("consumed N numels out of M"); here a dense sub-group is split over all ranks
    and an expert sub-group over one expert-data-parallel group, whose members hold the experts of
    the EP rank recorded in ``expert_parallel.json``."""
    import math

    import torch

    layout = read_layout(ckpt, CheckpointError)
    world, ep_of = int(layout["world_size"]), list(layout["ep_rank_of_rank"])
    if len(ep_of) != world:
        raise CheckpointError(f"{ckpt / LAYOUT_FILE}: {len(ep_of)} EP ranks listed for world size {world}")
    flats, parts = [], []
    for r in range(world):
        osd = _load_zero(ckpt / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")["optimizer_state_dict"]
        if "ds_zero_partition_groups" not in osd:
            raise CheckpointError(f"{ckpt}: rank {r}'s optimiser file has no ds_zero_partition_groups (not a ZeRO-3 "
                                  f"expert-parallel checkpoint)")
        flats.append(osd["fp32_flat_groups"])
        parts.append(osd["ds_zero_partition_groups"])
    states = _load_zero(ckpt / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    shapes = states["param_shapes"]
    dense: dict = {k: v for k, v in states["module"].items() if k in set(states["buffer_names"])}
    shards: list[dict] = [{} for _ in range(int(layout["expert_parallel_size"]))]
    for i, names in enumerate(shapes):
        # one merge per distinct partition group: all ranks (dense) or each expert-data-parallel group
        for members in {tuple(parts[r][i]["partition_ranks"]) for r in range(world)}:
            expert = "autoep_expert" in parts[members[0]][i]["families"]
            target = shards[ep_of[members[0]]] if expert else dense
            offset = 0
            for name, shape in names.items():
                n = shape.numel()
                size = math.ceil(n / len(members))
                pieces = [flats[m][i].narrow(0, offset, size) for m in members]
                target[name] = torch.cat(pieces).narrow(0, 0, n).view(shape).clone()
                offset += size
            if offset != flats[members[0]][i].numel():
                raise CheckpointError(f"{ckpt}: ZeRO sub-group {i} of ranks {list(members)} holds "
                                      f"{flats[members[0]][i].numel()} elements, its parameters {offset}")
    missing = [e for e, s in enumerate(shards) if not s]
    if missing:
        raise CheckpointError(f"{ckpt}: no expert partitions for EP rank(s) {missing}")
    return merge_expert_shards({**dense, **shards[0]}, shards)


def _load_zero(path: Path) -> dict:
    """A DeepSpeed ZeRO file, with weights_only: only DeepSpeed's loss-scaler and stage enum are
    allowed as classes (what its stage-3 optimiser state pickles besides tensors)."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    # Some Python builds (e.g. Debian's 3.11.2) pickle an enum member as getattr(EnumClass, name):
    # resolve that global to a lookup that only ever returns a member of an allowed enum.
    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, (_enum_member, "builtins.getattr")]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _enum_member(cls, name: str):
    """Stand-in for ``builtins.getattr`` while unpickling ZeRO files: enum members only."""
    import enum
    import pickle

    if isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str) and name in cls.__members__:
        return cls[name]
    raise pickle.UnpicklingError(f"refusing getattr({cls!r}, {name!r}) while loading a ZeRO file")


def _shard_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"unif2ace"`` (our model directory), ``"zero"`` (a DeepSpeed checkpoint: root, run or step
    directory), ``"foreign"`` (a Phi / Show-o directory); raises CheckpointError otherwise."""
    from unif2ace.checkpoint.safetensors_dir import read_config_json

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a directory")
    if (p / CONFIG_NAME).is_file():
        return "unif2ace" if read_config_json(p).get("format") == FORMAT else "foreign"
    if zero_root(p) is not None:
        return "zero"
    if any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin")):
        return "foreign"
    raise CheckpointError(f"{p}: neither a unif2ace model directory (config.json + model.safetensors), a DeepSpeed "
                          f"checkpoint directory (with a 'latest' file) nor a Phi / Show-o directory")


def load_model(path: str | os.PathLike, tag: str | None = None, *, base=None, fmt: str | None = None,
               seed: int = 0, overrides: list[str] | None = None, map_location: str = "cpu",
               allow_partial: bool = False):
    """(model, cfg) from any checkpoint kind (``checkpoint_kind``). ``tag``: a ZeRO step to load
    instead of ``latest``; ``base``, ``fmt``, ``seed``: the config a Phi / Show-o checkpoint is
    imported into, its format (default: detected) and the seed of new rows / experts;
    ``overrides``, ``map_location`` and ``allow_partial`` apply to our directories."""
    p = Path(path)
    kind = checkpoint_kind(p)
    if kind == "unif2ace":
        return load_pretrained(p, overrides, map_location, allow_partial)
    if kind == "zero":
        root = zero_root(p)
        return load_zero(root, tag if tag else (p.name if p.parent == root else None))
    if base is None:
        raise CheckpointError(f"{p}: a Phi / Show-o checkpoint; importing it needs the config to import into "
                              f"(load_model(..., base=cfg), or tools/import_showo.py)")
    from unif2ace.checkpoint.adapters import import_checkpoint

    return import_checkpoint(p, base, fmt, seed, allow_partial)
