"""Model FLOPs per training token and MFU against a hand count for the tiny recipe (CPU).

    pytest -q tests/test_flops.py
"""
import pytest

from unif2ace.config import load_config
from unif2ace.model.unif2ace import UniF2ace
from unif2ace.train import flops
from unif2ace.train.metrics import train_flops_per_token

# tiny: H=64, L=2, FFN I=256, vocabulary V = 512 text + [PAD] + 9 specials + 64 codes + [MASK] = 587,
# sequence S = <|t2i|> + 32 text + <|soi|> + 16 image + <|eoi|> = 51.
H, L, I, V, S = 64, 2, 256, 587, 51
LAYER_NORMS = 2 * H                 # input_layernorm weight + bias (parallel block: one LN)
ATTENTION = 4 * (H * H + H)         # q, k, v, dense with biases
DENSE_FFN = (H * I + I) + (I * H + H)
HEAD = 2 * H + V * H + V            # final LayerNorm + lm_head with bias; the embedding is a lookup
ATTN_FLOPS = 12 * L * H * S         # QKᵀ and A·V: 2·S·H each per token and layer, ×3 fwd + bwd


def test_hand_count_dense():
    n = L * (LAYER_NORMS + ATTENTION + DENSE_FFN) + HEAD
    assert n == 137_995
    want = 6 * n + ATTN_FLOPS
    assert want == 906_306
    assert flops.train_flops_per_token(n, L, H, S) == want
    cfg = load_config("tiny")
    assert (cfg.model.seq_len, cfg.model.hidden_size, cfg.model.num_layers) == (S, H, L)
    assert train_flops_per_token(UniF2ace(cfg.model), cfg.model) == want  # from the built model


def test_hand_count_token_moe_counts_active_experts_only():
    # 1 shared + 4 routed experts of width 32 per group, top-2: a token uses its group's router
    # (4·H) and 3 experts (each 2·32·H weights + 32 + H biases), not all 2·5 experts.
    moe_ffn = 4 * H + (1 + 2) * (2 * 32 * H + 32 + H)
    n = L * (LAYER_NORMS + ATTENTION + moe_ffn) + HEAD
    assert n == 97_483
    cfg = load_config("tiny", ["model.moe.enabled=true", "model.moe.num_shared=1", "model.moe.num_routed=4",
                               "model.moe.top_k=2", "model.moe.expert_ffn=32"])
    assert train_flops_per_token(UniF2ace(cfg.model), cfg.model) == 6 * n + ATTN_FLOPS == 663_234


def test_sequence_moe_is_per_sequence_work_not_per_token():
    # its experts resample pooled features once per sequence; only the extra LayerNorm counts
    cfg = load_config("tiny", ["model.seq_moe.enabled=true"])
    n = L * (LAYER_NORMS + ATTENTION + DENSE_FFN + 2 * H) + HEAD
    assert train_flops_per_token(UniF2ace(cfg.model), cfg.model) == 6 * n + ATTN_FLOPS


def test_mfu():
    # 1000 tokens/s × 906 306 FLOPs/token on a 1 GFLOP/s device = 90.6306 %
    assert flops.mfu(1000.0, 906_306.0, 1e9) == pytest.approx(0.906306, rel=1e-12)
    # the paper-scale check: 50k tokens/s at 10 GFLOPs/token on 989 TFLOP/s is 50.6 %
    assert flops.mfu(5e4, 1e10, 989e12) == pytest.approx(0.50556, rel=1e-4)
    with pytest.raises(ValueError, match="peak_flops"):
        flops.mfu(1.0, 1.0, 0.0)
