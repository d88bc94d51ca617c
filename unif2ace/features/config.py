"""Typed configuration of the cached-feature encoders (CLIP, face identity, noise).

    from unif2ace.features import FeatureConfig
    cfg = FeatureConfig.from_dict({"clip": {"model": "UniF2ace-Tiny-CLIP", "fallback": "random-init"},
                                   "face": {"model_dir": "~/models/antelopev2"},
                                   "noise": {"dim": 64}})

Weights are local files only. When weights are absent (not configured, or the path does
not exist) each encoder applies its ``fallback`` *explicitly*: ``"error"`` raises naming the
path, any other choice logs a WARNING that names the choice and is recorded in the
manifest (see ``FeatureEncoders.describe``). Nothing proceeds silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TINY_CLIP = "UniF2ace-Tiny-CLIP"
"""Name of the built-in tiny open_clip architecture (64×64 input, 512-d) for CPU runs and tests."""


@dataclass
class ClipConfig:
    """CLIP image embedding through open_clip."""

    model: str = "ViT-B-32"
    """open_clip architecture name (built-in, registered from ``model_configs``, or the tiny built-in)."""
    weights: str = ""
    """Local checkpoint file (.safetensors, .bin/.pt state dict) passed as ``pretrained=``; '' = none."""
    model_configs: list[str] = field(default_factory=list)
    """Extra open_clip JSON config files or directories registered with ``open_clip.add_model_config``."""
    image_size: int = 0
    """Override the architecture's input size (0 = keep it); position embeddings are resized on load."""
    patch_tokens: bool = False
    """Also return patch tokens (B, N, D), projected into the pooled embedding's space (ViT towers only)."""
    normalize: bool = True
    """L2-normalise the pooled embedding (patch tokens are never normalised)."""
    batch_size: int = 32
    """Images per forward pass."""
    device: str = "auto"
    """torch device: 'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    fallback: Literal["error", "random-init"] = "error"
    """Without weights: 'error' raises; 'random-init' builds the configured architecture randomly
    initialised with ``fallback_seed`` and logs a WARNING (embeddings then carry no pretrained meaning)."""
    fallback_seed: int = 0
    """Seed of the 'random-init' fallback (fixed so re-runs give identical features)."""


@dataclass
class FaceConfig:
    """Face identity through insightface + onnxruntime (SCRFD detector, ArcFace recogniser)."""

    model_dir: str = ""
    """Local model directory in insightface layout (e.g. antelopev2: scrfd_10g_bnkps.onnx + glintr100.onnx);
    every *.onnx in it is routed by insightface and the detection + recognition models are kept."""
    det_path: str = ""
    """Explicit detector ONNX (SCRFD with keypoints); overrides the one found in ``model_dir``."""
    rec_path: str = ""
    """Explicit recognition ONNX (ArcFace layout); overrides the one found in ``model_dir``."""
    mode: Literal["detect", "aligned"] = "detect"
    """'detect': SCRFD → largest central face → norm_crop(5 keypoints) → ArcFace. 'aligned': the image
    already is a face crop (e.g. SynthFace renders); it is resized to the recogniser input (112²) and
    embedded directly, no detector, every image counts as a face."""
    det_size: int = 640
    """Square detector input size (ignored by detectors exported with a fixed input size)."""
    det_thresh: float = 0.5
    """Detection score threshold; below it the image has no face (face_found=False, zero vector)."""
    dim: int = 512
    """Identity embedding width; checked against the recogniser's output (ArcFace: 512)."""
    batch_size: int = 64
    """Aligned crops per recognition call (needs a dynamic batch axis; fixed-batch models run one by one)."""
    providers: list[str] = field(default_factory=list)
    """onnxruntime execution providers ([] = insightface's default: CUDA when present, else CPU)."""
    threads: int = 0
    """onnxruntime intra-op threads per session (0 = onnxruntime's default, all cores)."""
    fallback: Literal["error", "none"] = "error"
    """Without models: 'error' raises naming the missing path; 'none' logs a WARNING and marks every
    image face_found=False with a zero vector."""


@dataclass
class NoiseConfig:
    """Seeded Gaussian noise embedding (the generation group's noise expert)."""

    dim: int = 64
    """Embedding width."""
    seed: int = 0
    """Global seed; each sample's vector is drawn from a generator seeded by sha256(seed, sample id)."""


@dataclass
class FeatureConfig:
    """All cached-feature encoders of the precompute step."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    """CLIP image embedding."""
    face: FaceConfig = field(default_factory=FaceConfig)
    """Face identity embedding."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """Noise embedding."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "FeatureConfig":
        """Build from a nested mapping; unknown keys and wrong types raise ConfigError naming the key."""
        # The repo's one typed-dataclass builder (same checks and messages as the run config).
        from unif2ace.config import build

        return build(cls, dict(data or {}), "features.")
