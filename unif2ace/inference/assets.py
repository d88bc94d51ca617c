"""Everything inference needs besides the model: the tokenizers and feature encoders that made
the training shards, rebuilt from the shards' ``manifest.json`` so prompts and images are
encoded exactly as in training.

    assets = load_assets("runs/synthface/model")                 # shards from the run config
    ids = assets.text.encode("A smiling woman with red hair")
    codes = assets.encode_images([Image.open("face.png")])
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unif2ace.checkpoint.load import load_model
from unif2ace.data import shards as S


@dataclass
class Assets:
    model: Any
    cfg: Any
    text: Any
    """unif2ace.tokenizers.text.TextTokenizer"""
    image_tokenizer: Any
    """MAGVIT-v2 (encode / decode_codes)"""
    encoders_cfg: dict
    manifest: dict
    _encoders: Any = None

    @property
    def encoders(self):
        """CLIP / face / noise encoders, built on first use (open_clip is slow to import)."""
        if self._encoders is None:
            from unif2ace.features import build_encoders
            self._encoders = build_encoders(self.encoders_cfg)
        return self._encoders

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @torch.no_grad()
    def encode_images(self, images: list) -> torch.Tensor:
        """(B, N) codes; square-crop, resize and scale exactly as the precompute did."""
        from unif2ace.data.precompute import images_to_tensor
        dev = next(self.image_tokenizer.parameters()).device
        return self.image_tokenizer.encode(images_to_tensor(images, self.image_size).to(dev)).long().cpu()

    def features(self, images: list, ids: list[str]) -> dict[str, torch.Tensor]:
        out = self.encoders.encode(images, ids)
        return {k: torch.as_tensor(v).float() if k != "face_found" else torch.as_tensor(v).bool()
                for k, v in out.items()}


def load_assets(checkpoint: str | os.PathLike, shards: str | os.PathLike | None = None,
                device: str = "cpu") -> Assets:
    from unif2ace.tokenizers.magvit import MagvitV2
    from unif2ace.tokenizers.text import TextTokenizer

    model, cfg = load_model(checkpoint)
    model.to(device).eval()
    shards = Path(shards or cfg.data.shards)
    manifest = S.read_manifest(shards)
    text = TextTokenizer.load(manifest["text_tokenizer"]["source"])
    image_tok = MagvitV2.from_pretrained(manifest["image_tokenizer"]["path"]).to(device).eval()
    if text.vocab_size != cfg.model.text_vocab_size or image_tok.config.codebook_size != cfg.model.codebook_size:
        raise S.ShardError(f"{shards}: tokenizers (text {text.vocab_size}, codebook {image_tok.config.codebook_size}) "
                           f"do not fit the checkpoint (text {cfg.model.text_vocab_size}, codebook "
                           f"{cfg.model.codebook_size})")
    enc_cfg = manifest.get("feature_config")
    if enc_cfg is None:
        raise S.ShardError(f"{shards}/manifest.json has no feature_config (made by an older precompute); re-run it")
    return Assets(model, cfg, text, image_tok, enc_cfg, manifest)
