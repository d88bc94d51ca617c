"""What is added to the image-token embeddings: cached image features (understanding rows) and
learnt absolute positions (every row).

    inp = ImageFeatureInput(cfg)                     # cfg: ModelConfig with mmu_image_features on
    x = inp(embed(input_ids), input_ids, task, features)
    x = ImagePositions(cfg)(x, input_ids)            # cfg: ModelConfig with image_positions on

Show-o's CLIP-ViT understanding variant puts an image encoder's patch features into the
sequence, where self-attention reads them in every layer, instead of (only) handing them to a
side branch. Here a LayerNorm + linear map of the cached CLIP feature is *added* to the code
embeddings of the image span, so the discrete codes stay in the row and generation rows (whose
image is the target) are untouched. A feature grid coarser than the code grid is repeated
(nearest), a finer one averaged; a pooled feature (one vector) reaches every image token.

Phi's rotary attention knows only relative positions, and every [MASK] token of a generation
row has the same embedding; ``ImagePositions`` tells each image token where in the grid it sits,
as MaskGIT's learnt position embedding does.
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
        if self.key not in features:
            if bool(img.any()):
                raise ValueError(f"model.mmu_image_features needs the cached feature {self.key!r} for understanding "
                                 f"rows; the batch has {sorted(features)}")
            return x  # e.g. generation at inference, where no features are passed
        rows = img.any(1)
        # Runs on zero rows too when a batch holds no understanding row: the map then gets zero
        # gradients, not none, so every ZeRO-1/2 rank reduces the same set of gradients.
        per_token = features_per_image_token(features[self.key][rows].to(x.dtype), self.num_image_tokens)
        if int(img.sum()) != per_token.shape[0] * self.num_image_tokens:
            raise ValueError(f"understanding rows hold {img.sum(1)[rows].tolist()} image tokens; image features "
                             f"need the whole image span ({self.num_image_tokens}) in each")
        add = self.proj(self.norm(per_token))  # (R, N, D), R rows with an image, codes in raster order
        return x.index_put((img,), add.flatten(0, 1), accumulate=True)


class ImagePositions(nn.Module):
    """x + P[k] at the k-th image token (raster order) of every row that holds an image span."""

    def __init__(self, cfg):
        super().__init__()
        self.layout = TokenLayout.from_model_config(cfg)
        self.num_image_tokens = cfg.num_image_tokens
        self.table = nn.Parameter(torch.zeros(cfg.num_image_tokens, cfg.hidden_size))

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.table, std=std)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        img = self.layout.is_image(input_ids)
        counts = img.sum(1)
        rows = counts > 0
        if bool((counts[rows] != self.num_image_tokens).any()):
            raise ValueError(f"rows hold {counts[rows].tolist()} image tokens; image positions need the "
                             f"whole image span ({self.num_image_tokens}) in each")
        add = self.table.to(x.dtype).expand(int(rows.sum()), -1, -1)
        return x.index_put((img,), add.flatten(0, 1), accumulate=True)
