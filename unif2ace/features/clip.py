"""CLIP image embeddings through open_clip, from a local weights file.

    from unif2ace.features.config import ClipConfig
    from unif2ace.features.clip import ClipEncoder
    enc = ClipEncoder(ClipConfig(model="ViT-B-32", weights="~/models/ViT-B-32.safetensors"))
    out = enc.encode(pil_images)          # {"clip": float32 (B, 512)}
    out = enc.encode(uint8_bchw_tensor)   # same preprocessing, tensors go through open_clip's val transform

The model is built by ``open_clip.create_model_and_transforms(name, pretrained=<local file>)``;
architectures outside open_clip's list are registered with ``open_clip.add_model_config``
(``clip.model_configs``), and a tiny built-in one, ``UniF2ace-Tiny-CLIP`` (64×64, 512-d),
serves CPU runs and tests. Patch tokens (``clip.patch_tokens``) are the ViT's final tokens
after ``ln_post``, projected by the tower's ``proj`` so they share the pooled embedding's
width D. Without weights the configured ``clip.fallback`` applies (see FeatureConfig).
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from PIL import Image

from unif2ace.atomic import atomic_write_text
from unif2ace.config import ConfigError
from unif2ace.checksum import file_sha256
from unif2ace.features.config import TINY_CLIP, ClipConfig
from unif2ace.runtime import process_tempdir

log = logging.getLogger(__name__)

TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 32, "patch_size": 8},
    # The text tower is never run here, but open_clip's CLIP class always builds one.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}

_config_dir: Path | None = None
_registered: set[str] = set()


def register_model_config(name: str, cfg: dict[str, Any]) -> None:
    """Register an in-memory architecture under ``name``.

    open_clip's registry only reads JSON files (``add_model_config(path)``), so the dict is
    written once per process to a private temporary directory (removed at exit).
    """
    global _config_dir
    if name in _registered:
        return
    if _config_dir is None:
        _config_dir = process_tempdir("unif2ace-open_clip-")
    path = _config_dir / f"{name}.json"
    atomic_write_text(path, json.dumps(cfg))
    register_config_path(path)
    _registered.add(name)


def register_config_path(path: str | os.PathLike) -> None:
    """``open_clip.add_model_config`` with a check: open_clip silently skips JSON files that
    lack ``embed_dim``/``vision_cfg``/``text_cfg``, which would later surface as 'unknown model'."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.exists():
        raise ConfigError(f"clip.model_configs: {p} does not exist")
    if p.is_file():
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"clip.model_configs: {p} is not readable JSON: {e}") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in data]
        if missing:
            raise ConfigError(f"clip.model_configs: {p} lacks {missing}; open_clip would ignore it")
    if str(p) not in _registered:
        open_clip.add_model_config(p)
        _registered.add(str(p))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ClipEncoder:
    """Pooled (B, D) CLIP image embeddings, optionally with patch tokens (B, N, D)."""

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg
        register_model_config(TINY_CLIP, TINY_CLIP_CONFIG)
        for p in cfg.model_configs:
            register_config_path(p)
        arch = open_clip.get_model_config(cfg.model)
        if arch is None:
            raise ConfigError(
                f"clip.model={cfg.model!r} is not an open_clip architecture; register its JSON config with "
                f"clip.model_configs (built-ins include {TINY_CLIP!r}, 'ViT-B-32', 'ViT-L-14')")
        self.device = resolve_device(cfg.device)
        kwargs: dict[str, Any] = {
            # Never let open_clip fetch base-tower weights (timm / HF text) from a hub.
            "pretrained_image": False, "pretrained_text": False,
        }
        if cfg.image_size:
            kwargs["force_image_size"] = cfg.image_size
        weights = os.path.abspath(os.path.expanduser(cfg.weights)) if cfg.weights else ""
        if weights and os.path.isfile(weights):
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    cfg.model, pretrained=weights, device=self.device, **kwargs)
            except Exception as e:  # strict load: wrong architecture, corrupt file, ...
                raise RuntimeError(f"{weights}: cannot load as open_clip {cfg.model!r} weights: {e}") from e
            self.source: dict[str, Any] = {"weights": weights, "sha256": file_sha256(weights, cached=True)}
            self.fallback_used = None
        else:
            reason = "clip.weights is not set" if not weights else f"clip.weights file {weights} does not exist"
            if cfg.fallback == "error":
                raise FileNotFoundError(
                    f"{reason}: give a local open_clip checkpoint of {cfg.model!r}, or set "
                    f"clip.fallback=random-init to run with a randomly initialised model")
            log.warning("CLIP: %s -> fallback 'random-init': %r randomly initialised with seed %d; "
                        "these embeddings carry no pretrained meaning", reason, cfg.model, cfg.fallback_seed)
            # Initialise on CPU under a private RNG state: the same seed gives the same weights on
            # every device, and the caller's global RNG stream is left untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.fallback_seed)
                model, _, preprocess = open_clip.create_model_and_transforms(cfg.model, pretrained=None, **kwargs)
            model = model.to(self.device)
            self.source = {"fallback": "random-init", "seed": cfg.fallback_seed}
            self.fallback_used = "random-init"
        model.eval()
        visual = model.visual
        if cfg.patch_tokens:
            if not isinstance(visual, VisionTransformer):
                raise ConfigError(f"clip.patch_tokens needs an open_clip VisionTransformer tower; "
                                  f"{cfg.model!r} has {type(visual).__name__}")
            visual.output_tokens = True  # forward then returns (pooled, tokens)
        self.visual = visual
        self.preprocess = preprocess
        self.arch = copy.deepcopy(arch)
        if cfg.image_size:
            self.arch["vision_cfg"]["image_size"] = cfg.image_size
        self.dim = int(self.arch["embed_dim"])

    # ------------------------------------------------------------------ input

    def preprocess_batch(self, images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
        """PIL images, or a (B, 3, H, W) tensor (uint8 0..255 or float 0..1) → normalised (B, 3, S, S)."""
        if isinstance(images, torch.Tensor):
            x = images if images.ndim == 4 else images.unsqueeze(0)
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"expected a (B, 3, H, W) image tensor, got shape {tuple(images.shape)}")
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            else:
                x = x.float()
                if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
                    raise ValueError("float image tensors must hold values in [0, 1] (uint8 for 0..255)")
            # open_clip's val transform (Resize, CenterCrop, Normalize) passes tensors through,
            # batched, so PIL and tensor inputs share one definition of preprocessing.
            return self.preprocess(x)
        return torch.stack([self.preprocess(im.convert("RGB")) for im in images])

    # ------------------------------------------------------------------ encode

    @torch.inference_mode()
    def encode(self, images: list[Image.Image] | torch.Tensor) -> dict[str, np.ndarray]:
        """{"clip": float32 (B, D)} plus "clip_patches" float32 (B, N, D) when patch tokens are on."""
        n = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else len(images)
        pooled_all, patches_all = [], []
        bs = max(1, self.cfg.batch_size)
        for s in range(0, n, bs):
            x = self.preprocess_batch(images[s:s + bs]).to(self.device)
            out = self.visual(x)
            if self.cfg.patch_tokens:
                pooled, tokens = out
                if self.visual.proj is not None:
                    tokens = tokens @ self.visual.proj
                patches_all.append(tokens.float().cpu())
            else:
                pooled = out
            if self.cfg.normalize:
                pooled = F.normalize(pooled, dim=-1)
            pooled_all.append(pooled.float().cpu())
        res = {"clip": torch.cat(pooled_all).numpy() if pooled_all else np.zeros((0, self.dim), np.float32)}
        if self.cfg.patch_tokens:
            res["clip_patches"] = (torch.cat(patches_all).numpy() if patches_all
                                   else np.zeros((0, self.num_patches, self.dim), np.float32))
        return res

    @property
    def num_patches(self) -> int:
        gh, gw = self.visual.grid_size
        return gh * gw

    def describe(self) -> dict[str, Any]:
        """What determines these features (for the config hash) and where the weights came from."""
        return {
            "model": self.cfg.model,
            "arch": self.arch,
            "preprocess": dict(self.visual.preprocess_cfg),
            "source": self.source,
            "normalize": self.cfg.normalize,
            "patch_tokens": self.cfg.patch_tokens,
            "dim": self.dim,
        }
