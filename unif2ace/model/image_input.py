"""Cached image features added to the image-token embeddings of understanding rows.

    inp = ImageFeatureInput(cfg)                     # cfg: ModelConfig with mmu_image_features on
    x = inp(embed(input_ids), input_ids, task, features)

Show-o's CLIP-ViT understanding variant puts an image encoder's patch features into the
sequence, where self-attention reads them in every layer, instead of (only) handing them to a
side branch. Here a LayerNorm + linear map of the cached CLIP feature is *added* to the code
embeddings of the image span, so the discrete codes stay in the row and generation rows (whose
image is the target) are untouched. A feature grid coarser than the code grid is repeated
(nearest), a finer one averaged; a pooled feature (one vector) reaches every image token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unif2ace.tokens import TASK_MMU, TokenLayout


def features_per_image_token(feats: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
    """(B, Dc) or (B, Nc, Dc) features → (B, N, Dc), one row per image token in raster order.

    Both grids must be square; the feature grid is resampled onto the code grid (nearest when
    it is coarser, area average when it is finer)."""
    if feats.dim() == 2:
        feats = feats.unsqueeze(1)
    if feats.dim() != 3:
        raise ValueError(f"image features have shape {tuple(feats.shape)}; expected (B, D) or (B, N, D)")
    b, nc, dc = feats.shape
    if nc == 1:
        return feats.expand(b, num_image_tokens, dc)
    gc, gi = math.isqrt(nc), math.isqrt(num_image_tokens)
    if gc * gc != nc or gi * gi != num_image_tokens:
        raise ValueError(f"{nc} feature tokens cannot be laid on the {num_image_tokens} image tokens' grid: "
                         "both must be square numbers")
    grid = feats.transpose(1, 2).reshape(b, dc, gc, gc)
    grid = F.interpolate(grid, size=(gi, gi), mode="nearest") if gi >= gc else F.adaptive_avg_pool2d(grid, gi)
    return grid.flatten(2).transpose(1, 2)


class ImageFeatureInput(nn.Module):
    """x + W·LN(F) at the image tokens of understanding rows; x elsewhere."""

    def __init__(self, cfg):
        super().__init__()
        self.layout = TokenLayout.from_model_config(cfg)
        self.num_image_tokens = cfg.num_image_tokens
        self.key = cfg.seq_moe.feature_key("clip")
        dim = cfg.seq_moe.clip_dim
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, cfg.hidden_size)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor, task: torch.Tensor, features: dict) -> torch.Tensor:
        img = self.layout.is_image(input_ids) & (task == TASK_MMU).unsqueeze(1)
        if not bool(img.any()):  # generation rows, or the text steps of cached decoding
            return x
        count = img.sum(1)
        bad = (count != 0) & (count != self.num_image_tokens)
        if bool(bad.any()):
            raise ValueError(f"understanding row {int(bad.nonzero()[0])} holds {int(count[bad][0])} image tokens; "
                             f"image features need the whole image span ({self.num_image_tokens})")
        if self.key not in features:
            raise ValueError(f"model.mmu_image_features needs the cached feature {self.key!r} for understanding "
                             f"rows; the batch has {sorted(features)}")
        per_token = features_per_image_token(features[self.key].to(x.dtype), self.num_image_tokens)
        add = self.proj(self.norm(per_token))                                  # (B, N, D)
        slot = (img.long().cumsum(1) - 1).clamp(0, self.num_image_tokens - 1)  # k-th image token → grid cell k
        add = torch.gather(add, 1, slot.unsqueeze(-1).expand(-1, -1, add.shape[-1]))
        return x + add * img.unsqueeze(-1).to(x.dtype)
