"""The UniF²ace transformer: Phi-style backbone, omni-attention, FFN slot for the grouped MoE.

    from unif2ace.config import load_config
    from unif2ace.model.unif2ace import UniF2ace
    model = UniF2ace(load_config("tiny").model)
    out = model(batch.input_ids, batch.task)      # out.logits (B, L, V)

Knows nothing of parallelism; ``unif2ace.train.engine`` applies DeepSpeed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from unif2ace.config import ModelConfig
from unif2ace.model.block import Block
from unif2ace.model.context import Context
from unif2ace.model.image_input import ImageFeatureInput, ImagePositions
from unif2ace.tokens import TokenLayout, mmu_turn_positions, omni_attention_mask


@dataclass
class ModelOutput:
    logits: torch.Tensor
    """(B, L, V) over the whole vocabulary."""
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    """Weighted auxiliary losses (keys 'loss_*'), summed over layers; add them to the objective."""
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached per-layer statistics, keyed 'L{i}/name' (routing fractions, …)."""
    cache: list | None = None
    """Per-layer (k, v) for incremental decoding, when requested."""


class UniF2ace(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = TokenLayout.from_model_config(cfg)
        v = self.layout.vocab_size
        self.embed_tokens = nn.Embedding(v, cfg.hidden_size)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, v, bias=True)
        # Registered last, and built under a forked RNG (``init_weights`` redraws its weights
        # anyway), so turning it on leaves every other weight's random draw as it was.
        self.image_input = None
        if cfg.mmu_image_features:
            with torch.random.fork_rng(devices=[]):
                self.image_input = ImageFeatureInput(cfg)
        self.image_positions = None
        if cfg.image_positions:
            with torch.random.fork_rng(devices=[]):
                self.image_positions = ImagePositions(cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Explicit init (also called after ``deepspeed.zero.Init``, which skips HF init)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.cfg.init_std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            if m is not self and hasattr(m, "init_weights") and callable(m.init_weights):
                m.init_weights(self.cfg.init_std)
        # ``modules()`` visits a module before its children, so the generic init above undoes what
        # a module's own init set on a child (a feature expert's gate bias): those redo it last.
        # (A separate pass, not a reordering, keeps the random draws of every weight as they were.)
        for m in self.modules():
            if getattr(m, "init_after_children", False):
                m.init_weights(self.cfg.init_std)

    def forward(self, input_ids: torch.Tensor, task: torch.Tensor, features: dict | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: list | None = None, use_cache: bool = False, layer_state: list | None = None) -> ModelOutput:
        """``input_ids`` (B, L); ``task`` (B,) (0 T2I, 1 MMU). Without ``attention_mask`` the
        omni mask is built from the ids; with ``cache`` (incremental decoding) the caller gives
        the mask over cached + new keys and the positions."""
        b, l = input_ids.shape
        if attention_mask is None:
            if cache is not None:
                raise ValueError("incremental decoding needs an explicit attention_mask")
            attention_mask = omni_attention_mask(input_ids, self.layout, self.cfg.mmu_attention, self.cfg.mmu_turns)
        if position_ids is None:
            if self.cfg.mmu_turns == "isolated":
                position_ids = mmu_turn_positions(input_ids, self.layout)
            else:  # Show-o: positions 0..L−1 counting left pads.
                position_ids = torch.arange(l, device=input_ids.device).expand(b, l)
        token_mask = input_ids != self.layout.pad_id
        features = features or {}
        x = self.embed_tokens(input_ids)
        if self.image_input is not None:
            x = self.image_input(x, input_ids, task, features)
        if self.image_positions is not None:
            x = self.image_positions(x, input_ids)
        x = self.embed_dropout(x)
        aux_losses: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        new_cache = [] if (use_cache or cache is not None) else None
        ckpt = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            ctx_i = Context(task, token_mask, features, layer_state[i] if layer_state is not None else None)
            past = cache[i] if cache is not None else None
            if ckpt:
                # aux comes out of the checkpointed function, so recomputation cannot double-count it.
                x, aux, kv = checkpoint(layer, x, attention_mask, position_ids, ctx_i, past, use_reentrant=False)
            else:
                x, aux, kv = layer(x, attention_mask, position_ids, ctx_i, past)
            if new_cache is not None:
                new_cache.append(kv)
            for k, val in aux.items():
                if k.startswith("loss_"):
                    aux_losses[k] = aux_losses.get(k, 0.0) + val
                else:
                    stats[f"L{i}/{k}"] = val.detach() if torch.is_tensor(val) else val
        logits = self.lm_head(self.final_layernorm(x))
        return ModelOutput(logits, aux_losses, stats, new_cache)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
