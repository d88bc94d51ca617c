"""Training FLOPs per token and model FLOPs utilisation (MFU): plain arithmetic, no model needed.

    from unif2ace.train.flops import mfu, train_flops_per_token
    f = train_flops_per_token(active_params=1.2e9, num_layers=24, hidden_size=2048, seq_len=387)
    mfu(tokens_per_s=50_000, flops_per_token=f, peak_flops=989e12)       # fraction of the peak

The accounting of PaLM (appendix B) and Megatron-LM, which published MFU figures use:
- ``6·N``: every weight a token multiplies through costs 2 FLOPs forward (multiply + add) and 4
  backward (gradients of the input and of the weight). ``N`` is the *active* matmul parameter
  count: no input-embedding table (a lookup, no matmul), the LM head included, and a token-level
  MoE counted at what one token uses (router + shared + top-k routed experts).
- ``12·L·H·S``: attention scores ``QKᵀ`` and the weighted sum ``A·V`` are 2·S·H FLOPs each per
  token and layer forward, ×3 for forward + backward. Counted over the full sequence (no
  discount for causal rows), as in those papers; activation recomputation is not counted
  (it is hardware FLOPs, not model FLOPs).
MFU = achieved model FLOP/s ÷ the device's dense peak; ``unif2ace/train/metrics.py`` logs it per
step on GPU, ``benchmarks/bench_gpu_train.py`` reports it for a throughput run.
"""
from __future__ import annotations


def train_flops_per_token(active_params: int | float, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward): 6·N + 12·L·H·S."""
    return 6.0 * active_params + 12.0 * num_layers * hidden_size * seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s as a fraction of ``peak_flops`` (FLOP/s)."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return tokens_per_s * flops_per_token / peak_flops
