"""Cached-feature encoders for the precompute step: CLIP image embedding, face identity, noise.

    from unif2ace.features import FeatureConfig, build_encoders
    enc = build_encoders(FeatureConfig.from_dict({
        "clip": {"model": "ViT-B-32", "weights": "~/models/open_clip_ViT-B-32.safetensors"},
        "face": {"model_dir": "~/models/antelopev2"},
        "noise": {"dim": 64, "seed": 0}}))
    feats = enc.encode(pil_images, sample_ids)
    manifest["features"] = enc.describe()       # includes enc.config_hash()

CPU / no-weights runs must say so in the config, e.g.
``clip: {model: UniF2ace-Tiny-CLIP, fallback: random-init}``, ``face: {fallback: none}``:
each fallback logs a WARNING and is recorded in ``describe()["fallbacks"]``.

Modules: config.py (typed dataclasses), clip.py (open_clip), face.py (insightface SCRFD +
ArcFace), noise.py (seeded Gaussian), encoders.py (build_encoders, config hash).
"""
from unif2ace.features.config import TINY_CLIP, ClipConfig, FaceConfig, FeatureConfig, NoiseConfig
from unif2ace.features.encoders import FeatureEncoders, build_encoders

__all__ = ["TINY_CLIP", "ClipConfig", "FaceConfig", "FeatureConfig", "NoiseConfig", "FeatureEncoders",
           "build_encoders"]
