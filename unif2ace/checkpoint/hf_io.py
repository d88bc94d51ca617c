"""Our own checkpoint format: a Hugging Face-style directory.

    save_pretrained(model, cfg, "runs/x/final")         # config.json + model.safetensors
    model, cfg = load_pretrained("runs/x/final")

``config.json`` holds the whole run config (model section used to rebuild the model); the
weights are safetensors (no pickle). Writes are atomic: a crash leaves the old directory.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from unif2ace.checkpoint.safetensors_dir import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError,  # noqa: F401
                                                 load_weights, read_config_json, save_safetensors_dir)
from unif2ace.config import Config, ConfigError, config_from_dict

FORMAT = "unif2ace"


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
    sd = state_dict if state_dict is not None else model.state_dict()
    return save_safetensors_dir(out_dir, {"format": FORMAT, **cfg.to_dict()}, sd, {"producer": FORMAT})


def read_config(ckpt_dir: str | os.PathLike) -> Config:
    path = Path(ckpt_dir) / CONFIG_NAME
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir}: no {CONFIG_NAME} (not a unif2ace checkpoint directory)")
    data = read_config_json(ckpt_dir)
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
    sd = load_weights(weights, CheckpointError, map_location)
    model = UniF2ace(cfg.model)
    check_state_dict(model, sd, str(weights), allow_partial)
    return model, cfg
