"""Our own checkpoint format: a Hugging Face-style directory.

    save_pretrained(model, cfg, "runs/x/final")         # config.json + model.safetensors
    model, cfg = load_pretrained("runs/x/final")

``config.json`` holds the whole run config (model section used to rebuild the model); the
weights are safetensors (no pickle). Writes are atomic: a crash leaves the old directory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from unif2ace.atomic import atomic_directory
from unif2ace.config import Config, ConfigError, config_from_dict
from unif2ace.jsonfile import read_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "unif2ace"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed, or does not fit the model."""


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str,
                     allow_partial: bool = False) -> None:
    """Load ``sd`` into ``model``; name every missing, unexpected and mis-shaped key.

    Refuses a partial load unless ``allow_partial`` (then the listed keys keep their init).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                        f"{' …' if len(unexpected) > 20 else ''}")
    if shapes:
        problems.append(f"mis-shaped keys ({len(shapes)}): {'; '.join(shapes[:20])}")
    if problems and not allow_partial:
        raise CheckpointError(f"{source}: refusing a partial load (pass allow_partial=True to accept):\n  "
                              + "\n  ".join(problems))
    if shapes:
        sd = {k: v for k, v in sd.items() if k not in {s.split(':')[0] for s in shapes}}
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    if problems:
        import logging
        logging.getLogger(__name__).warning("%s: partial load:\n  %s", source, "\n  ".join(problems))


def save_pretrained(model: torch.nn.Module, cfg: Config, out_dir: str | os.PathLike,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (temp dir, then rename)."""
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        sd = state_dict if state_dict is not None else model.state_dict()
        sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
        save_file(sd, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "producer": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps({"format": FORMAT, **cfg.to_dict()}, indent=2))
    return out


def read_config(ckpt_dir: str | os.PathLike) -> Config:
    path = Path(ckpt_dir) / CONFIG_NAME
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir}: no {CONFIG_NAME} (not a unif2ace checkpoint directory)")
    data = read_json(path, CheckpointError)
    if data.pop("format", None) != FORMAT:
        raise CheckpointError(f"{path}: not a unif2ace config (for Phi / Show-o use tools/import_showo.py)")
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_pretrained(ckpt_dir: str | os.PathLike, overrides: list[str] | None = None, map_location: str = "cpu",
                    allow_partial: bool = False):
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly.

    ``overrides`` adjust non-shape settings (e.g. ``model.activation_checkpointing=false``).
    """
    from unif2ace.config import merge, parse_overrides
    from unif2ace.model.unif2ace import UniF2ace

    cfg = read_config(ckpt_dir)
    if overrides:
        cfg = config_from_dict(merge(cfg.to_dict(), parse_overrides(overrides)))
    weights = Path(ckpt_dir) / WEIGHTS_NAME
    if not weights.exists():
        raise CheckpointError(f"{ckpt_dir}: no {WEIGHTS_NAME}")
    model = UniF2ace(cfg.model)
    try:
        sd = load_file(str(weights), device=map_location)
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{weights}: unreadable safetensors file: {e}") from None
    check_state_dict(model, sd, str(weights), allow_partial)
    return model, cfg
