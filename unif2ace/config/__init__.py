"""Typed configuration: dataclasses with a docstring per field, YAML recipes, CLI overrides.

    from unif2ace.config import load_config
    cfg = load_config("tiny", ["model.num_layers=4", "train.lr=1e-3"])

A recipe is a YAML file (a name in ``unif2ace/recipes`` or a path) holding a nested
mapping with the sections below. Unknown keys, wrong types and inconsistent sizes are
rejected with a message that names the key. ``python -m unif2ace.config RECIPE`` prints
the resolved config and the parameter count per component.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from unif2ace.config.typed import (ConfigError, build, coerce, describe, field_docs, merge, parse_overrides,
                                   set_dotted)

__all__ = ["ConfigError", "build", "coerce", "describe", "field_docs", "merge", "parse_overrides", "set_dotted",
           "Config", "ModelConfig", "TokenMoEConfig", "SeqMoEConfig", "LossConfig", "DataConfig", "TrainConfig",
           "SampleConfig", "load_config", "config_from_dict", "recipe_path", "validate", "print_help"]

RECIPE_DIR = Path(__file__).parents[1] / "recipes"


# --------------------------------------------------------------------------- sections


@dataclass
class TokenMoEConfig:
    """Grouped token-level MoE (replaces the FFN). Disabled → a dense Phi MLP.

    Two expert groups per layer, chosen by the sequence's task (T2I → generation, MMU →
    understanding); each has ``num_shared`` always-on experts and ``num_routed`` routed ones
    with its own softmax top-k router. Dropless: no capacity, every token computed k times.
    """

    enabled: bool = False
    """Use the grouped token-level MoE instead of the dense MLP."""
    num_shared: int = 1
    """Always-on shared experts per group."""
    num_routed: int = 8
    """Routed experts per group (generation and understanding groups each have this many)."""
    top_k: int = 4
    """Routed experts each token is sent to."""
    expert_ffn: int = 1024
    """Hidden size of one expert MLP (shared and routed)."""
    renormalize: bool = False
    """Renormalise the top-k gates to sum to one."""
    activation: str = "gelu_new"
    """Expert activation (a transformers ACT2FN name)."""
    expert_bias: bool = True
    """Per-expert fc1/fc2 biases, as in Phi's dense MLP (needed for an exact ``split`` upcycle).
    MegaBlocks' grouped MLP has no per-expert biases: the megablocks backend needs False."""
    lambda_t2i: float = 0.01
    """Load-balancing loss weight of the generation group."""
    lambda_mmu: float = 0.01
    """Load-balancing loss weight of the understanding group."""
    z_loss: float = 0.0
    """Router z-loss weight (0 disables)."""
    backend: Literal["auto", "torch", "megablocks"] = "auto"
    """Compute backend: megablocks on CUDA when importable, else torch (auto)."""
    torch_impl: Literal["auto", "grouped", "blocked"] = "auto"
    """torch backend: grouped = torch._grouped_mm (per-expert matmul loop where it cannot run);
    blocked = one fused pass per expert (faster on CPU); auto = blocked on CPU, grouped elsewhere."""
    upcycle: Literal["split", "copy", "none"] = "split"
    """How experts are initialised from an imported dense MLP: split = the dense FFN cut into
    expert_ffn-wide slices (exact when (num_shared+num_routed)·expert_ffn = intermediate_size),
    copy = every expert a copy (needs expert_ffn = intermediate_size), none = keep the init."""


@dataclass
class SeqMoEConfig:
    """Grouped sequence-level MoE: one routing decision per sequence, a residual branch."""

    enabled: bool = False
    """Add the sequence-level MoE branch to every block."""
    und_experts: list[str] = field(default_factory=lambda: ["clip", "face", "copy", "copy"])
    """Understanding-group experts (names: clip, face, noise, copy, zero)."""
    gen_experts: list[str] = field(default_factory=lambda: ["copy", "zero", "noise", "copy"])
    """Generation-group experts (names: clip, face, noise, copy, zero)."""
    top_k: int = 2
    """Experts chosen per sequence."""
    balance_weight: float = 0.01
    """Weight of the sequence-router balance loss."""
    resampler_dim: int = 512
    """Inner width of a feature expert's resampler (its cross-attention queries/keys/values)."""
    resampler_heads: int = 4
    """Attention heads of the feature resampler."""
    feature_gate_init: float = 0.0
    """Initial bias of each feature expert's gate, [w, 1−w] = softmax(gate(x) + [−b, b]): w starts
    at σ(−2b), ½ for b = 0 (the neutral gate), 0.018 for b = 2 (mostly the feature). With
    features that name what to read, b = 2 learns presence questions much faster; on the built-in
    run's CLIP patches it has not helped (docs/design.md §12)."""
    no_face: Literal["mask", "copy"] = "mask"
    """Sequences whose image had no detected face: mask = the router never picks the Face
    expert for them; copy = the Face expert reduces to Copy (E(x) = x) for them."""
    clip_dim: int = 512
    """Width of the cached CLIP embedding."""
    clip_tokens: Literal["pooled", "patches"] = "pooled"
    """What the CLIP expert's resampler reads: the pooled embedding ('clip', one vector per image)
    or the patch tokens ('clip_patches', precomputed with clip.patch_tokens=true), which every
    sequence position cross-attends to."""

    def feature_key(self, name: str) -> str:
        """The cached-feature entry (shards, ``ctx.features``) that expert ``name`` reads."""
        return "clip_patches" if name == "clip" and self.clip_tokens == "patches" else name
    face_dim: int = 512
    """Width of the cached face-identity embedding (InsightFace ArcFace: 512)."""
    noise_dim: int = 64
    """Width of the cached Gaussian noise embedding."""


@dataclass
class ModelConfig:
    """Backbone shapes (Phi-1.5 at paper scale) and block layout."""

    text_vocab_size: int = 50295
    """Size of the text tokenizer's vocabulary (len(tokenizer)); ids below it are text."""
    bos_id: int = 50256
    """Start-of-text id of the text tokenizer (Phi: <|endoftext|>)."""
    eos_id: int = 50256
    """End-of-text id of the text tokenizer (Phi: <|endoftext|>)."""
    codebook_size: int = 8192
    """Number of image codes of the image tokenizer."""
    num_image_tokens: int = 256
    """Image tokens per image (256 at 256², 1024 at 512² with ×16 downsampling)."""
    text_len: int = 128
    """Text budget per sequence including <sot>/<eot> (T2I prompt or MMU turns)."""
    hidden_size: int = 2048
    """Transformer width."""
    num_layers: int = 24
    """Transformer blocks."""
    num_heads: int = 32
    """Attention heads."""
    intermediate_size: int = 8192
    """Dense MLP hidden size (Phi: 4 × hidden)."""
    partial_rotary_factor: float = 0.5
    """Fraction of each head's dimensions that get rotary embeddings."""
    rope_theta: float = 10000.0
    """Rotary base."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    qk_layernorm: bool = False
    """LayerNorm over head_dim on q and k (Show-o forces it on)."""
    hidden_act: str = "gelu_new"
    """Dense MLP activation (transformers ACT2FN name)."""
    block_layout: Literal["parallel", "sequential"] = "parallel"
    """parallel: Phi's (one LN feeds attention and FFN); sequential: the paper's figure."""
    dropout: float = 0.0
    """Residual/embedding dropout."""
    init_std: float = 0.02
    """Std of the normal init for linear and embedding weights."""
    activation_checkpointing: bool = False
    """Recompute each block in backward to save memory."""
    mmu_attention: Literal["omni", "showo"] = "omni"
    """Attention of understanding rows. omni: causal text, bidirectional image span, the
    <|mmu|> token causal (sees only itself). showo: Show-o's create_attention_mask_for_mmu,
    where every position up to <|eoi|>, <|mmu|> included, sees that whole prefix. Weights
    trained under one mask give different MMU logits under the other (an imported Show-o
    checkpoint: up to 1.8 at the first text position), so tools/import_showo.py sets showo
    for Show-o checkpoints; from scratch or from Phi the two train alike."""
    mmu_turns: Literal["causal", "isolated"] = "causal"
    """How the (question, answer) turns packed into one understanding row (``data.max_qa_turns``)
    see each other. causal: a conversation — a later turn reads the earlier questions and gold
    answers, which on SynthFace often state its answer ("Is the hair black?" after "What colour
    is the hair? black"), a shortcut the single-question evaluation never offers. isolated: each
    turn sees the image prefix and itself only, with its positions restarted after <sot>, so a
    row of k turns trains exactly k single-turn examples sharing one image (docs/design.md §12).
    A single-turn row is the same under both, and so is decoding up to the answer's <eot>, where
    the decoder stops."""
    mmu_image_features: bool = False
    """Add a learnt map (LayerNorm + linear) of the cached CLIP feature to the image-token
    embeddings of understanding rows, so self-attention reads the encoder's patches in every
    layer beside the codes (Show-o's CLIP-ViT understanding input, kept additive). The feature
    is the one the CLIP expert reads (``seq_moe.clip_tokens``, width ``seq_moe.clip_dim``);
    generation rows are unchanged (docs/design.md §12)."""
    image_positions: bool = False
    """Add a learnt absolute position embedding (one vector per image token, raster order) to
    the image span of every row, generation and understanding. Rotary attention gives only
    relative positions, so without it a [MASK] token learns where it sits only through what it
    attends to (docs/design.md §12)."""
    moe: TokenMoEConfig = field(default_factory=TokenMoEConfig)
    """Grouped token-level MoE."""
    seq_moe: SeqMoEConfig = field(default_factory=SeqMoEConfig)
    """Grouped sequence-level MoE."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def seq_len(self) -> int:
        """Length of every T2I and MMU row: task + soi + image + eoi + text budget."""
        return self.num_image_tokens + 3 + self.text_len


@dataclass
class LossConfig:
    """D3Diff + MMU objective."""

    alpha: float = 0.01
    """Weight of the score-entropy term: L_D3Diff = L_mask + alpha·L_score (0 = mask only)."""
    score_param: Literal["normalized", "unnormalized"] = "normalized"
    """normalized: s = p·(1−m)/m from the same softmax; unnormalized: s = exp(logits) (SEDD)."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Mask schedule m(t): cosine (Show-o) or linear."""
    t2i_vocab: Literal["codebook", "full"] = "codebook"
    """Softmax over image codes only, or over the whole vocabulary (Show-o)."""
    t2i_coef: float = 1.0
    """Coefficient of the T2I (D3Diff) loss."""
    mmu_coef: float = 1.0
    """Coefficient of the MMU next-token loss."""
    min_mask_ratio: float = 0.0
    """Lower clamp on the sampled mask ratio (the score weight m'/m grows as m → 0)."""


@dataclass
class DataConfig:
    """Where the precomputed shards are and how batches are mixed (unif2ace/data/loader.py)."""

    shards: str = "runs/synthface/shards"
    """Directory of precomputed shards (manifest.json inside; tools/precompute_tokens.py)."""
    split: str = "train"
    """Split of the shards to stream ('' = every sample)."""
    t2i_fraction: float = 0.5
    """Fraction of rows that are T2I (rest MMU); 0 and 1 allowed. Tasks follow a low-discrepancy
    sequence over the sample stream, so every batch holds this share to within one row."""
    caption_fraction: float = 0.25
    """Fraction of MMU rows that are captioning (rest VQA)."""
    cond_drop: float = 0.1
    """Probability of dropping the T2I text condition (classifier-free guidance); a dropped row
    also loses its CLIP / face features (face_found=False), keeping only the noise embedding."""
    max_qa_turns: int = 4
    """Question/answer turns packed into one MMU row (turns that do not fit text_len are dropped)."""
    trim_padding: bool = False
    """Cut each batch to its longest real row (T2I left pads rotated to the end; exact under
    rotary attention, see tokens.trim_padding): compute that carries no loss is skipped."""
    num_workers: int = 0
    """DataLoader worker processes building batches (0 = in the training process)."""
    seed: int = 0
    """Seed of the shuffle and the masking (each sample's randomness: seed, epoch, sample)."""
    verify: bool = False
    """Recompute every shard file's sha256 against the manifest when the loader starts (file
    sizes are always checked; a damaged shard is one error naming the file and the fix)."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    micro_batch: int = 4
    """Rows per rank per micro step."""
    grad_accum: int = 1
    """Micro steps per optimiser step."""
    steps: int = 100
    """Optimiser steps."""
    lr: float = 1e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final LR as a fraction of the peak (cosine decay)."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 disables)."""
    seed: int = 0
    """Global seed."""
    out_dir: str = "runs/train"
    """Where checkpoints and logs go."""
    save_every: int = 50
    """Checkpoint every N optimiser steps (0: only at the end / on SIGTERM)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    log_every: int = 1
    """Log every N steps."""
    max_bad_steps: int = 3
    """Stop after this many consecutive non-finite losses."""
    init_from: str = ""
    """Our HF-style checkpoint dir, or a Phi / Show-o dir to import ('' = from scratch)."""
    wandb: Literal["offline", "online", "disabled"] = "offline"
    """Weights & Biases mode."""
    sample_every: int = 0
    """Write a T2I sample grid / VQA examples and MoE routing heat maps every N steps (0 disables)."""
    wandb_project: str = "unif2ace"
    """Weights & Biases project (runs are written under train.out_dir/wandb)."""
    optimizer: Literal["auto", "torch_adamw", "cpu_adam"] = "auto"
    """torch_adamw; cpu_adam (DeepSpeedCPUAdam, compiled on first use) for optimizer offload;
    auto: cpu_adam when the DeepSpeed config offloads the optimizer, else torch_adamw."""
    zero_init: bool = False
    """Build the model under deepspeed.zero.Init (ZeRO-3 only): parameters are partitioned as
    they are created, for models that do not fit one device; weights are then initialised
    explicitly on rank 0 while gathered."""
    resume: bool = True
    """Continue from train.out_dir/checkpoints/latest when it exists."""
    dist_timeout_s: int = 600
    """Timeout of every collective: a dead or stuck rank becomes an error instead of a hang."""
    peak_tflops: float = 0.0
    """Device peak (dense bf16 TFLOP/s) for the MFU estimate; 0 = look the GPU up by name."""
    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0 (metrics also go to train.out_dir/metrics.jsonl)."""
    export_final: bool = True
    """When train.steps is reached, also write train.out_dir/final: a model directory
    (config.json + model.safetensors) gathered from the live engine, loadable without DeepSpeed."""


@dataclass
class SampleConfig:
    """Inference defaults (unif2ace/inference/t2i.py and mmu.py)."""

    steps: int = 12
    """MaskGIT decoding steps (one forward each; fewer if every token is known earlier)."""
    guidance: float = 2.0
    """Classifier-free guidance weight w."""
    guidance_form: Literal["uncond_plus", "showo", "none"] = "uncond_plus"
    """uncond + w·(cond − uncond) (w = 1: no guidance, w = 0: unconditional), Show-o's
    (1+w)·cond − w·uncond (w = 0: no guidance), or none: conditional rows only (half the compute)."""
    temperature: float = 1.0
    """Gumbel temperature of the confidence re-masking at the start; step s of T uses
    temperature·(1 − (s+1)/T), so it falls linearly to 0 at the last step."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Fraction of the initially unknown image tokens still masked after step s: m((s+1)/T)."""
    max_new_tokens: int = 64
    """MMU decoding budget."""
    top_p: float = 1.0
    """Nucleus sampling for MMU (1.0 with temperature 0 = greedy)."""
    mmu_temperature: float = 0.0
    """MMU sampling temperature (0 = greedy)."""
    no_repeat_ngram: int = 0
    """MMU decoding never repeats an n-gram of its own output (transformers'
    ``NoRepeatNGramLogitsProcessor``; 0 = off)."""
    repetition_penalty: float = 1.0
    """MMU logits of tokens already in the answer are divided (if positive) or multiplied (if
    negative) by this (transformers' ``RepetitionPenaltyLogitsProcessor``, CTRL's rule; 1 = off).
    Greedy captions of a small model loop on one sentence; the penalty moves them on."""
    seed: int = 0
    """Sampling seed."""


@dataclass
class Config:
    """A whole run."""

    name: str = "custom"
    """Recipe name (for logs)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model shapes."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Objective."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Sampling."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def recipe_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    q = RECIPE_DIR / f"{name}.yaml"
    if q.exists():
        return q
    known = sorted(x.stem for x in RECIPE_DIR.glob("*.yaml"))
    raise ConfigError(f"recipe {name!r} not found (a path to a .yaml, or one of {known})")


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = build(Config, data)
    validate(cfg)
    return cfg


def load_config(recipe: str | None = "tiny", overrides: list[str] | None = None) -> Config:
    """Load a recipe (name or path) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if recipe:
        path = recipe_path(recipe)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    data = merge(data, parse_overrides(overrides or []))
    return config_from_dict(data)


_EXPERTS = {"clip", "face", "noise", "copy", "zero"}


def validate(cfg: Config) -> None:
    """Cross-field checks; raise ConfigError naming the fields."""
    m = cfg.model
    if m.hidden_size % m.num_heads:
        raise ConfigError(f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}")
    rot = int(m.head_dim * m.partial_rotary_factor)
    if rot % 2 or not 0.0 <= m.partial_rotary_factor <= 1.0:
        raise ConfigError(f"model.partial_rotary_factor={m.partial_rotary_factor} gives an odd rotary dim {rot}")
    if m.text_len < 2:
        raise ConfigError("model.text_len must hold at least <sot> and <eot>")
    for name in ("bos_id", "eos_id"):
        if not 0 <= getattr(m, name) < m.text_vocab_size:
            raise ConfigError(f"model.{name}={getattr(m, name)} is outside the text vocabulary [0, {m.text_vocab_size})")
    for name in ("num_layers", "num_heads", "hidden_size", "intermediate_size", "codebook_size", "num_image_tokens"):
        if getattr(m, name) <= 0:
            raise ConfigError(f"model.{name} must be positive")
    e = m.moe
    if e.enabled:
        if e.num_routed < 1 or not 1 <= e.top_k <= e.num_routed:
            raise ConfigError(f"model.moe.top_k={e.top_k} must be in [1, model.moe.num_routed={e.num_routed}] "
                              "and num_routed ≥ 1")
        if e.num_shared < 0 or e.expert_ffn <= 0:
            raise ConfigError("model.moe.num_shared must be ≥ 0 and model.moe.expert_ffn > 0")
        if min(e.lambda_t2i, e.lambda_mmu, e.z_loss) < 0:
            raise ConfigError("model.moe.lambda_t2i, lambda_mmu and z_loss must be ≥ 0")
        if e.backend == "megablocks" and e.expert_bias:
            raise ConfigError("model.moe.backend=megablocks needs model.moe.expert_bias=false "
                              "(MegaBlocks' grouped MLP has no per-expert biases)")
    s = m.seq_moe
    if s.enabled:
        for grp in ("und_experts", "gen_experts"):
            names = getattr(s, grp)
            bad = [x for x in names if x not in _EXPERTS]
            if bad:
                raise ConfigError(f"model.seq_moe.{grp}: unknown experts {bad}; known: {sorted(_EXPERTS)}")
            if not 1 <= s.top_k <= len(names):
                raise ConfigError(f"model.seq_moe.top_k={s.top_k} must be in [1, len(model.seq_moe.{grp})={len(names)}]")
        if s.balance_weight < 0:
            raise ConfigError("model.seq_moe.balance_weight must be ≥ 0")
        if not math.isfinite(s.feature_gate_init):
            raise ConfigError(f"model.seq_moe.feature_gate_init={s.feature_gate_init} must be finite")
        if s.resampler_dim <= 0 or s.resampler_heads <= 0 or s.resampler_dim % s.resampler_heads:
            raise ConfigError(f"model.seq_moe.resampler_dim={s.resampler_dim} must be a positive multiple of "
                              f"model.seq_moe.resampler_heads={s.resampler_heads}")
    d = cfg.data
    for name in ("t2i_fraction", "caption_fraction", "cond_drop"):
        if not 0.0 <= getattr(d, name) <= 1.0:
            raise ConfigError(f"data.{name}={getattr(d, name)} must be in [0, 1]")
    t = cfg.train
    if t.micro_batch <= 0 or t.grad_accum <= 0 or t.steps < 0:
        raise ConfigError("train.micro_batch and train.grad_accum must be positive, train.steps ≥ 0")
    if t.warmup_steps > max(t.steps, 0):
        raise ConfigError(f"train.warmup_steps={t.warmup_steps} exceeds train.steps={t.steps}")
    if t.keep_last < 1 or t.save_every < 0 or t.max_bad_steps < 1 or t.dist_timeout_s <= 0:
        raise ConfigError("train.keep_last ≥ 1, train.save_every ≥ 0, train.max_bad_steps ≥ 1 and "
                          "train.dist_timeout_s > 0 are required")
    if cfg.loss.alpha < 0:
        raise ConfigError("loss.alpha must be ≥ 0")
    if not 0.0 <= cfg.loss.min_mask_ratio < 1.0:
        raise ConfigError("loss.min_mask_ratio must be in [0, 1)")
    if cfg.sample.no_repeat_ngram < 0 or cfg.sample.repetition_penalty <= 0:
        raise ConfigError("sample.no_repeat_ngram must be ≥ 0 and sample.repetition_penalty > 0")


def print_help() -> None:
    """``python -m unif2ace.config --help``: usage and every key with its docstring."""
    print("usage: python -m unif2ace.config RECIPE [key=value ...]\n")
    print(__doc__)
    print("\n".join(describe(Config)))
