"""State-dict adapters between our names and transformers Phi / Show-o, both ways.

    model, cfg = import_checkpoint("/models/phi-1_5", base_cfg)            # format detected
    model, cfg = import_checkpoint("/models/show-o", base_cfg, fmt="showo")
    export_phi(model, cfg, "runs/x/phi")      # a dense model as a transformers PhiForCausalLM directory
    to_foreign(sd, "phi") / from_foreign(sd)  # the key mapping itself (round trip is the identity)

Our names follow Phi's, minus the ``model.`` prefix and with ``mlp`` → ``ffn`` (the FFN slot).
Show-o wraps the same Phi as ``showo.`` and has already resized the vocabulary to its layout,
which is ours, so its rows map 1:1; its MMU weights were trained under Show-o's understanding
mask, so the imported config selects it (``model.mmu_attention=showo``). A Phi checkpoint has only text rows: we keep the first
``text_vocab_size`` rows and initialise the new ones (PAD, specials, image codes, MASK) at the
mean of the old rows plus small noise, so new tokens start as "an average token" rather than
as noise that dominates the softmax. A dense FFN is upcycled into the MoE when it is enabled.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import torch

from unif2ace.checkpoint.hf_io import CheckpointError, check_state_dict
from unif2ace.config import Config, ModelConfig

log = logging.getLogger(__name__)

_LAYER = re.compile(r"layers\.(\d+)\.")


def read_foreign_state_dict(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF-layout directory: (sharded) safetensors, else pytorch_model*.bin."""
    from safetensors.torch import load_file

    files = sorted(src.glob("*.safetensors"))
    if not files:
        files = sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{src}: no *.safetensors or pytorch_model*.bin weights found")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{f}: unreadable weights file: {e}") from None
        sd.update(part)
    return sd


def detect_format(src: Path, sd: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("showo.") for k in sd):
        return "showo"
    if any(k.startswith("model.layers.") for k in sd) and "lm_head.weight" in sd:
        return "phi"
    raise CheckpointError(f"{src}: cannot tell the checkpoint format (keys like {list(sd)[:3]}); pass --format")


FOREIGN_PREFIX = {"phi": "", "showo": "showo."}
"""What each foreign format puts before Phi's own names."""


def _rename(key: str) -> str | None:
    """A Phi / Show-o key → ours (None: no counterpart)."""
    if key.startswith("showo."):
        key = key[len("showo."):]
    if key.startswith("model."):
        key = key[len("model."):]
    if key.startswith("mm_projector."):
        return None  # Show-o's CLIP-ViT projector: no counterpart (our CLIP enters via the sequence MoE)
    key = key.replace(".mlp.", ".ffn.")
    return key


def _foreign_key(key: str, fmt: str) -> str:
    """Our key → Phi's (``model.`` prefix except on ``lm_head``, ``ffn`` → ``mlp``), Show-o's
    adds ``showo.``."""
    key = key.replace(".ffn.", ".mlp.")
    return FOREIGN_PREFIX[fmt] + (key if key.startswith("lm_head.") else "model." + key)


def from_foreign(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Phi / Show-o state dict under our names (tensors shared, rows not resized)."""
    return {nk: v for k, v in sd.items() if (nk := _rename(k)) is not None}


def to_foreign(sd: dict[str, torch.Tensor], fmt: str = "phi") -> dict[str, torch.Tensor]:
    """Our state dict under Phi's (``fmt="phi"``) or Show-o's names; ``from_foreign`` inverts it."""
    if fmt not in FOREIGN_PREFIX:
        raise CheckpointError(f"unknown format {fmt!r} ({' | '.join(FOREIGN_PREFIX)})")
    return {_foreign_key(k, fmt): v for k, v in sd.items()}


def phi_config(mcfg: ModelConfig):
    """The transformers ``PhiConfig`` of a dense model (the whole vocabulary of our layout)."""
    from transformers import PhiConfig

    from unif2ace.tokens import TokenLayout

    return PhiConfig(vocab_size=TokenLayout.from_model_config(mcfg).vocab_size, hidden_size=mcfg.hidden_size,
                     intermediate_size=mcfg.intermediate_size, num_hidden_layers=mcfg.num_layers,
                     num_attention_heads=mcfg.num_heads, partial_rotary_factor=mcfg.partial_rotary_factor,
                     rope_theta=mcfg.rope_theta, layer_norm_eps=mcfg.layer_norm_eps, hidden_act=mcfg.hidden_act,
                     qk_layernorm=mcfg.qk_layernorm, bos_token_id=mcfg.bos_id, eos_token_id=mcfg.eos_id,
                     tie_word_embeddings=False, architectures=["PhiForCausalLM"])


def export_phi(model: torch.nn.Module, cfg: Config, out: str | Path) -> Path:
    """Write a dense model as a transformers Phi directory (``PhiForCausalLM.from_pretrained``
    loads it; its logits equal ours on causal text). A token MoE or the sequence MoE has no
    place in Phi's layout and is refused, naming the keys."""
    from transformers import PhiForCausalLM

    from unif2ace.checkpoint.safetensors_dir import save_safetensors_dir

    sd = model.state_dict()
    mapped = to_foreign(sd, "phi")
    with torch.device("meta"):  # only the key names: no memory, no init
        theirs = set(PhiForCausalLM(phi_config(cfg.model)).state_dict())
    extra = sorted(k for k, theirs_k in zip(sd, mapped) if theirs_k not in theirs)
    if extra:
        raise CheckpointError(f"{out}: only a dense model exports to Phi; no Phi counterpart for {len(extra)} "
                              f"key(s): {', '.join(extra[:8])}{' …' if len(extra) > 8 else ''}")
    return save_safetensors_dir(out, phi_config(cfg.model).to_dict(), mapped)


def foreign_model_config(src: Path, sd: dict[str, torch.Tensor], fmt: str, base: ModelConfig) -> ModelConfig:
    """Shapes from the weights (and config.json where it has them); the rest from ``base``."""
    pre = "showo.model." if fmt == "showo" else "model."
    for need in ("embed_tokens.weight", "layers.0.mlp.fc1.weight"):
        if pre + need not in sd:
            raise CheckpointError(f"{src}: not a {fmt} checkpoint: no {pre + need}")
    hidden = sd[pre + "embed_tokens.weight"].shape[1]
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER.search(k)))
    inner = sd[pre + "layers.0.mlp.fc1.weight"].shape[0]
    qk_ln = (pre + "layers.0.self_attn.q_layernorm.weight") in sd
    over = dict(hidden_size=hidden, num_layers=layers, intermediate_size=inner, qk_layernorm=qk_ln)
    cfg_path = src / "config.json"
    meta = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    if fmt == "phi":
        meta = {**meta, **(meta.get("rope_parameters") or {})}  # transformers ≥ 5 nests rope settings
        for ours, theirs in (("num_heads", "num_attention_heads"), ("partial_rotary_factor", "partial_rotary_factor"),
                             ("rope_theta", "rope_theta"), ("layer_norm_eps", "layer_norm_eps"),
                             ("hidden_act", "hidden_act")):
            if theirs in meta:
                over[ours] = meta[theirs]
        if meta.get("bos_token_id") is not None:
            over["bos_id"] = meta["bos_token_id"]
        if meta.get("eos_token_id") is not None:
            over["eos_id"] = meta["eos_token_id"]
    else:  # Show-o's config.json names its Phi by hub id; the vocabulary facts are local
        over["mmu_attention"] = "showo"  # the mask its MMU weights were trained under
        for ours, theirs in (("text_vocab_size", "llm_vocab_size"), ("codebook_size", "codebook_size"),
                             ("num_image_tokens", "num_vq_tokens")):
            if theirs in meta:
                over[ours] = meta[theirs]
        rows = sd["showo.model.embed_tokens.weight"].shape[0]
        if "vocab_size" in meta and meta["vocab_size"] != rows:
            raise CheckpointError(f"{cfg_path}: vocab_size {meta['vocab_size']} ≠ embedding rows {rows}")
    return dataclasses.replace(base, **over)


def _resize_rows(old: torch.Tensor, n_keep: int, n_total: int, gen: torch.Generator) -> torch.Tensor:
    kept = old[:n_keep].float()
    if n_total <= n_keep:
        return kept[:n_total].to(old.dtype)
    mean = kept.mean(0, keepdim=True)
    std = kept.std(0, keepdim=True) if old.dim() > 1 else kept.std().reshape(1)
    new = mean + 0.01 * std * torch.randn((n_total - n_keep, *old.shape[1:]), generator=gen)
    return torch.cat([kept, new]).to(old.dtype)


def import_checkpoint(src: str | Path, base: Config, fmt: str | None = None, seed: int = 0,
                      allow_partial: bool = False):
    """Build our model from a Phi or Show-o directory. Returns (model, cfg).

    ``base`` provides everything the foreign checkpoint does not fix (MoE, layout, training).
    """
    from unif2ace.model.unif2ace import UniF2ace

    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a directory")
    sd = read_foreign_state_dict(src)
    fmt = fmt or detect_format(src, sd)
    if fmt not in ("phi", "showo"):
        raise CheckpointError(f"unknown format {fmt!r} (phi | showo)")
    mcfg = foreign_model_config(src, sd, fmt, base.model)
    cfg = dataclasses.replace(base, model=mcfg)
    model = UniF2ace(mcfg)
    layout = model.layout
    ours = from_foreign(sd)
    gen = torch.Generator().manual_seed(seed)
    rows = ours["embed_tokens.weight"].shape[0]
    if fmt == "showo":
        if rows != layout.vocab_size:
            raise CheckpointError(f"{src}: Show-o embedding has {rows} rows but our layout needs {layout.vocab_size} "
                                  f"(text {layout.text_vocab_size} + 10 + codebook {layout.codebook_size} + 1)")
    elif rows != layout.vocab_size:  # equal: our whole layout already (export_phi wrote it): kept as is
        if rows < layout.text_vocab_size:
            raise CheckpointError(f"{src}: embedding has {rows} rows < text_vocab_size {layout.text_vocab_size}")
        for k in ("embed_tokens.weight", "lm_head.weight", "lm_head.bias"):
            if k in ours:
                ours[k] = _resize_rows(ours[k], layout.text_vocab_size, layout.vocab_size, gen)
    if mcfg.moe.enabled:
        ours = _upcycle(model, ours, mcfg)
    check_state_dict(model, ours, str(src), allow_partial)
    return model, cfg


def _upcycle(model, sd: dict[str, torch.Tensor], mcfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Turn each layer's dense fc1/fc2 into the grouped MoE's experts (``moe.upcycle``)."""
    from unif2ace.model.mlp import DenseMLP
    from unif2ace.model.moe.upcycle import upcycle_from_dense

    for i, layer in enumerate(model.layers):
        pre = f"layers.{i}.ffn."
        dense = DenseMLP(mcfg.hidden_size, sd[pre + "fc1.weight"].shape[0], mcfg.hidden_act)
        dense.load_state_dict({n: sd.pop(pre + n) for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")})
        upcycle_from_dense(layer.ffn, dense, mcfg.moe.upcycle)
        for n, t in layer.ffn.state_dict().items():
            sd[pre + n] = t
    return sd
