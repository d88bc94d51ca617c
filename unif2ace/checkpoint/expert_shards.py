"""Per-rank expert files of an expert-parallel training checkpoint, and their merge.

    from unif2ace.checkpoint.expert_shards import SHARD_FILE, merge_expert_shards
    full = merge_expert_shards(rank0_module_state, [load_file(d / SHARD_FILE.format(rank=r)) for r in ...])

Training writes one ``experts-ep<rank>.safetensors`` per expert-parallel rank next to
DeepSpeed's files (unif2ace/train/expert_parallel.py); loading and conversion only need to
read them back, so the file name and the merge live here, below both.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

SHARD_FILE = "experts-ep{rank:03d}.safetensors"
"""One expert-parallel rank's local routed experts inside a checkpoint step directory."""
LAYOUT_FILE = "expert_parallel.json"
"""ZeRO-3 EP checkpoints: EP size and every global rank's EP rank (written by rank 0)."""
STACK_KEYS = ("w1", "w2", "b1", "b2")
"""Parameters of an ``ExpertStack`` (shape (G, S+E, ...)); biases may be absent."""


def merge_expert_shards(state: dict[str, torch.Tensor],
                        shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A state dict of the EP model (shared_* and one rank's local_*) plus every EP rank's local
    experts (in rank order) → the same weights in the unsharded ``ExpertStack`` layout
    (``...experts.w1`` of shape (G, S+E, F, D), ...), as written by EP=1 runs."""
    def split(k):  # "layers.3.ffn.experts.local_w1" → ("layers.3.ffn.", "experts", "local_w1")
        head, _, leaf = k.rpartition(".")
        owner, _, last = head.rpartition(".")
        return (owner + "." if owner else ""), last, leaf

    out, prefixes = {}, set()
    for k, v in state.items():
        prefix, last, leaf = split(k)
        if last == "experts" and leaf.startswith(("local_", "shared_")):
            prefixes.add(prefix)
        else:
            out[k] = v
    for prefix in sorted(prefixes):
        for key in STACK_KEYS:
            local = f"{prefix}experts.local_{key}"
            if local not in state:
                continue
            parts = [s[local] for s in shards]
            shared = state.get(f"{prefix}experts.shared_{key}")
            out[f"{prefix}experts.{key}"] = torch.cat(([shared] if shared is not None else []) + parts, 1)
    return out


def read_layout(directory: str | os.PathLike, error: type[Exception] = ValueError) -> dict:
    """``LAYOUT_FILE`` of a ZeRO-3 EP checkpoint step directory (a bad file raises ``error`` naming it)."""
    from unif2ace.jsonfile import read_json

    path = Path(directory) / LAYOUT_FILE
    return read_json(path, error, name=str(path))
