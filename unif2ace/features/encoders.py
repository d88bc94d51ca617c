"""All cached-feature encoders behind one call, plus the config hash the precompute manifest records.

    from unif2ace.features import FeatureConfig, build_encoders
    enc = build_encoders(FeatureConfig.from_dict({"clip": {"model": "UniF2ace-Tiny-CLIP",
                                                           "fallback": "random-init"},
                                                  "face": {"mode": "aligned", "fallback": "none"}}))
    feats = enc.encode(pil_images, ids)   # clip fp16 (B,D) [clip_patches fp16 (B,N,D)],
                                          # face fp16 (B,512), face_found bool (B,), noise fp16 (B,Dn)
    enc.config_hash()                     # sha256 hex of everything that determines the features
    enc.describe()                        # JSON-able record for the manifest (hash, files, fallbacks)

The hash covers the CLIP architecture, preprocessing and weights checksum (or the
random-init seed), the face mode, detector/recogniser checksums, sizes and thresholds (or
the 'none' fallback), the noise dim/seed, and a format version. It leaves out file paths,
devices, batch sizes and library versions (recorded in ``describe`` for information), so a
moved model directory does not invalidate shards but a different weights file does.
"""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any

import numpy as np
from PIL import Image

from unif2ace.features.config import FeatureConfig
from unif2ace.features.noise import NoiseEmbedder

FEATURE_FORMAT = 1
"""Bump when the meaning of a stored feature changes without any config change."""

_PATH_KEYS = {"path", "weights", "reason"}


def _strip_paths(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_paths(v) for k, v in obj.items() if k not in _PATH_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_strip_paths(v) for v in obj]
    return obj


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


class FeatureEncoders:
    """CLIP + face + noise; ``encode`` returns the fp16/bool arrays a shard stores."""

    def __init__(self, cfg: FeatureConfig, clip: Any, face: Any, noise: NoiseEmbedder):
        self.cfg, self.clip, self.face, self.noise = cfg, clip, face, noise

    def encode(self, images: list[Image.Image], ids: list[str]) -> dict[str, np.ndarray]:
        if len(images) != len(ids):
            raise ValueError(f"encode: {len(images)} images but {len(ids)} ids")
        out: dict[str, np.ndarray] = {}
        for k, v in self.clip.encode(images).items():
            out[k] = v.astype(np.float16)
        face, found = self.face.encode(images)
        out["face"] = face.astype(np.float16)
        out["face_found"] = found
        out["noise"] = self.noise.encode(list(ids)).astype(np.float16)
        for k, v in out.items():
            if v.dtype == np.float16 and not np.all(np.isfinite(v)):
                raise FloatingPointError(f"encode: feature {k!r} is not finite in fp16 (ids {ids[:4]}...)")
        return out

    @property
    def fallbacks(self) -> dict[str, str]:
        """Which encoders run on a fallback instead of real weights (empty when none)."""
        return {name: enc.fallback_used for name, enc in (("clip", self.clip), ("face", self.face))
                if enc.fallback_used}

    def _determinants(self) -> dict[str, Any]:
        return {"format": FEATURE_FORMAT, "clip": self.clip.describe(), "face": self.face.describe(),
                "noise": self.noise.describe()}

    def config_hash(self) -> str:
        blob = json.dumps(_strip_paths(self._determinants()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-able manifest record: config hash, per-encoder details with file paths, fallbacks, versions."""
        return {
            "config_hash": self.config_hash(),
            **self._determinants(),
            "fallbacks": self.fallbacks,
            "versions": {p: _version(p) for p in ("open_clip_torch", "insightface", "onnxruntime", "torch")},
        }


def build_encoders(cfg: FeatureConfig | dict[str, Any] | None = None) -> FeatureEncoders:
    """Load every encoder; absent weights follow each section's ``fallback`` (error or a logged WARNING)."""
    if not isinstance(cfg, FeatureConfig):
        cfg = FeatureConfig.from_dict(cfg)
    # Imported here: open_clip takes seconds to import, and FeatureConfig users may not need it.
    from unif2ace.features.clip import ClipEncoder
    from unif2ace.features.face import FaceEncoder

    noise = NoiseEmbedder(cfg.noise.dim, cfg.noise.seed)
    return FeatureEncoders(cfg, ClipEncoder(cfg.clip), FaceEncoder(cfg.face), noise)
