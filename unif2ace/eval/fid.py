"""FID through torchmetrics with a configurable feature extractor.

    from unif2ace.eval.fid import inception_fid, synthface_fid, compute_fid, to_uint8
    metric = inception_fid("weights/pt_inception-2015-12-05.pth")  # standard FID, local weights file
    metric = synthface_fid(AttributeClassifier.load("runs/clf"))   # SynthFace-FID (classifier features)
    fid = compute_fid(metric, real_batches, fake_batches)          # uint8 (B,3,H,W) batches → float

Standard FID uses torch-fidelity's InceptionV3 (the one torchmetrics wraps) with the weights
given by path: ``weights-inception-2015-12-05-6726825d.pth`` from torch-fidelity's releases, or
the same state dict as ``.safetensors``. Nothing is downloaded. torch-fidelity unpickles the
file without restriction (arbitrary code), so the user's file is never handed
to it: it is read here with safetensors / ``weights_only=True`` and the plain tensors are
re-saved to a private temporary file that torch-fidelity then loads.

SynthFace-FID replaces Inception by the attribute classifier's pooled features: Inception was
trained on ImageNet and sees 64×64 synthetic faces poorly, while the classifier's features are
tuned to exactly the attributes the generator must get right. The numbers of the two are on
different scales and must not be compared with each other.

Both metrics keep their running sums in float64 (torchmetrics' states); ``Metric.set_dtype`` is
not used since it would also cast the extractor's weights.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn


class FIDError(RuntimeError):
    """A weights file is missing, unreadable or does not fit InceptionV3."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FIDError(f"{path}: Inception weights file not found (give a local path; nothing is downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusals, truncation and safetensors errors all land here
        raise FIDError(f"{path}: not a loadable tensor state dict ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FIDError(f"{path}: expected a mapping of parameter names to tensors")
    return sd


def inception_fid(weights_path: str | os.PathLike, feature: int = 2048, **kwargs) -> "FrechetInceptionDistance":
    """torchmetrics FID with torch-fidelity's InceptionV3 loaded from ``weights_path``.

    ``feature``: which Inception layer (64, 192, 768 or 2048 = the standard pool features).
    Other keyword arguments go to ``FrechetInceptionDistance`` (e.g. ``reset_real_features``).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = Path(weights_path)
    sd = _read_state_dict(path)
    fd, tmp = tempfile.mkstemp(suffix=".pth", prefix="inception-")
    os.close(fd)
    try:
        torch.save(sd, tmp)  # plain tensors only: safe for torch-fidelity's unrestricted torch.load
        try:
            return FrechetInceptionDistance(feature=feature, feature_extractor_weights_path=tmp, **kwargs)
        except RuntimeError as e:
            raise FIDError(f"{path}: does not fit torch-fidelity's InceptionV3: {e}") from None
    finally:
        os.unlink(tmp)


class ClassifierFeatures(nn.Module):
    """Adapter: uint8 images (B,3,H,W) → the classifier's pooled features (B, D), float32.

    ``num_features`` lets torchmetrics size its states without a dummy forward. Stays in eval
    mode (BatchNorm statistics and dropout must not change with the metric's train/eval state).
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = int(classifier.num_features)

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(imgs).float()


def synthface_fid(classifier: nn.Module, **kwargs) -> "FrechetInceptionDistance":
    """torchmetrics FID over the attribute classifier's features (``AttributeClassifier``)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=ClassifierFeatures(classifier), **kwargs)


def to_uint8(images) -> torch.Tensor:
    """PIL images (or HWC uint8 arrays) of one size → uint8 tensor (B, 3, H, W)."""
    arrs = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.uint8) for im in images]
    sizes = {a.shape for a in arrs}
    if len(sizes) != 1:
        raise ValueError(f"images must share one size for a batch, got {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def compute_fid(metric, real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor]) -> float:
    """Reset ``metric``, feed uint8 (B,3,H,W) batches of real and generated images, return FID.

    Needs at least 2 images on each side; below the feature dimension the covariances are
    singular and the value is biased upwards (compare FIDs only at equal sample counts).
    Identical sets give 0 up to rounding (|FID| ~ 1e-9); tiny negative values are such rounding.
    """
    metric.reset()
    for batch in real:
        metric.update(batch, real=True)
    for batch in fake:
        metric.update(batch, real=False)
    return float(metric.compute())
