"""The one "config.json + model.safetensors" directory format (model, image tokenizer, classifier).

    save_safetensors_dir("runs/x/final", {"format": "unif2ace", ...}, model.state_dict())
    config, state = read_safetensors_dir("runs/x/final", CheckpointError)

Weights are safetensors (no pickle). By default the directory is written whole and atomically
(unif2ace/atomic.py: a crash leaves the old one); ``whole=False`` writes the two files (each
atomically, weights first) into a directory that holds other files too (a tokenizer's
training directory with its resume state).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from unif2ace.atomic import atomic_directory, atomic_path, atomic_write_text
from unif2ace.jsonfile import read_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed, or does not fit the model."""


def save_safetensors_dir(out: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor],
                         metadata: dict[str, str] | None = None, whole: bool = True) -> Path:
    """Write ``config`` as ``config.json`` and ``state_dict`` (CPU, contiguous) as
    ``model.safetensors`` in ``out``; returns ``out``."""
    out = Path(out)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {"format": "pt", **(metadata or {})}
    text = json.dumps(config, indent=2) + "\n"
    if whole:
        with atomic_directory(out) as tmp:
            _save_file(tensors, tmp / WEIGHTS_NAME, meta)
            (tmp / CONFIG_NAME).write_text(text)  # fsync'ed with the directory
    else:
        with atomic_path(out / WEIGHTS_NAME) as tmp:
            _save_file(tensors, tmp, meta)
        atomic_write_text(out / CONFIG_NAME, text)
    return out


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def read_config_json(directory: str | os.PathLike, error: type[Exception] = CheckpointError) -> dict:
    """``directory/config.json`` as a dict; ``error`` names the file when it is absent or malformed."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise error(f"{directory}: no {CONFIG_NAME}")
    data = read_json(path, error)
    if not isinstance(data, dict):
        raise error(f"{path}: top level must be an object")
    return data


def load_weights(path: str | os.PathLike, error: type[Exception] = CheckpointError,
                 map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; ``error`` names the file when it is absent or unreadable."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"{path.parent}: no {path.name}")
    try:
        return load_file(str(path), device=map_location)
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise error(f"{path}: unreadable safetensors file: {e}") from None


def read_safetensors_dir(directory: str | os.PathLike, error: type[Exception] = CheckpointError,
                         map_location: str = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, state dict) of a directory written by ``save_safetensors_dir``."""
    return read_config_json(directory, error), load_weights(Path(directory) / WEIGHTS_NAME, error, map_location)
