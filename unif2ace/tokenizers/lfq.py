"""Lookup-free quantisation (LFQ, MAGVIT-v2): each latent channel is one bit.

A latent vector ``z`` with K channels is quantised to ``sign(z)`` in {-1, +1}^K; its
code is the integer whose binary digits are those signs, **channel 0 the most
significant bit** (the order of the ``showlab/magvitv2`` checkpoint). There is no
codebook to learn, so the "lookup" is arithmetic::

    from unif2ace.tokenizers import lfq
    q = lfq.quantize(z)                 # (B, K, H, W) -> ±1
    codes = lfq.bits_to_codes(q)        # (B, H, W) long in [0, 2**K)
    back = lfq.codes_to_bits(codes, K)  # (B, H, W, K) ±1
    loss = lfq.entropy_loss(z) + lfq.commitment_loss(z)

Training losses (MAGVIT-v2, Yu et al. 2023): the entropy loss is the mean per-sample
entropy minus the entropy of the batch-averaged code distribution (low per-sample
entropy = confident codes, high codebook entropy = all codes used); the commitment
loss pulls ``z`` towards its quantised value. ``LFQuantizer`` wraps the functions in a
module whose two buffers carry the checkpoint's key names (``embedding``, ``power_vals``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bit_values(bits: int, device: torch.device | str | None = None) -> Tensor:
    """Place values of the K channels, most significant first: ``[2**(K-1), ..., 2, 1]``."""
    return 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.long, device=device)


def codebook(bits: int, device: torch.device | str | None = None) -> Tensor:
    """All 2**K code vectors as a (2**K, K) float tensor of ±1; row k is code k's bits."""
    codes = torch.arange(2 ** bits, dtype=torch.long, device=device)
    return _unpack(codes, bits)


def quantize(z: Tensor) -> Tensor:
    """±1 per element: +1 where ``z > 0``, else -1 (zero maps to -1, as in the checkpoint's code)."""
    return torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))


def straight_through(z: Tensor) -> Tensor:
    """``quantize(z)`` in the forward pass, identity gradient in the backward pass."""
    return z + (quantize(z) - z).detach()


def bits_to_codes(z: Tensor, dim: int = 1) -> Tensor:
    """Integer code of each latent vector along ``dim`` (signs of ``z`` are the bits)."""
    bits = z.shape[dim]
    shape = [1] * z.dim()
    shape[dim] = bits
    weights = bit_values(bits, z.device).view(shape)
    return ((z > 0).long() * weights).sum(dim)


def codes_to_bits(codes: Tensor, bits: int) -> Tensor:
    """±1 float bits of integer codes: shape ``codes.shape + (bits,)``, MSB first."""
    if codes.dtype.is_floating_point:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2 ** bits):
        raise ValueError(f"codes outside [0, {2 ** bits}) for a {bits}-bit LFQ: "
                         f"min {int(codes.min())}, max {int(codes.max())}")
    return _unpack(codes, bits)


def _unpack(codes: Tensor, bits: int) -> Tensor:
    on = (codes.long().unsqueeze(-1) & bit_values(bits, codes.device)) != 0
    return on.float() * 2 - 1


def bit_logits(z: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-odds that each bit is +1. With the distance logits ``-(z-1)² vs -(z+1)²`` of
    MAGVIT-v2 the difference is ``4z``; ``temperature`` divides it."""
    return 4.0 * z / temperature


@dataclass
class EntropyTerms:
    """The two halves of the LFQ entropy loss, in nats."""

    sample: Tensor
    """Mean over latent vectors of the entropy of that vector's code distribution."""
    codebook: Tensor
    """Entropy of the code distribution averaged over all latent vectors of the batch."""

    @property
    def loss(self) -> Tensor:
        """``sample - codebook``: minimised by confident, evenly used codes."""
        return self.sample - self.codebook


def entropy_terms(z: Tensor, dim: int = 1, temperature: float = 1.0, full_codebook: bool = True) -> EntropyTerms:
    """Entropy terms of latents ``z`` (bits along ``dim``).

    Per-vector code probabilities factorise over bits, so the sample entropy is the sum
    of binary entropies. The codebook entropy needs the marginal over all 2**K codes
    (``full_codebook=True``: an (N, 2**K) matrix, cheap for K ≤ 14); ``False`` uses the
    per-bit marginals instead (an upper bound, what Show-o's quantiser computes, up to
    its averaging over bits instead of summing).
    """
    bits = z.shape[dim]
    flat = z.movedim(dim, -1).reshape(-1, bits).float()
    logit = bit_logits(flat, temperature)
    logp1, logp0 = F.logsigmoid(logit), F.logsigmoid(-logit)
    p1 = logp1.exp()
    # Binary entropy of each bit, summed over bits: the entropy of the factorised code distribution.
    sample = -(p1 * logp1 + (1 - p1) * logp0).sum(-1).mean()
    if full_codebook:
        on = (codebook(bits, z.device) > 0).float()            # (2**K, K)
        log_q = logp1 @ on.T + logp0 @ (1 - on).T               # (N, 2**K) log q(code | z)
        # log of the batch-mean probability, stably: logsumexp over vectors minus log N.
        log_m = torch.logsumexp(log_q, 0) - math.log(flat.shape[0])
        cb = -(log_m.exp() * log_m).sum()
    else:
        m1 = p1.mean(0).clamp(1e-7, 1 - 1e-7)
        cb = -(m1 * m1.log() + (1 - m1) * (1 - m1).log()).sum()
    return EntropyTerms(sample=sample, codebook=cb)


def entropy_loss(z: Tensor, dim: int = 1, temperature: float = 1.0, full_codebook: bool = True) -> Tensor:
    """LFQ entropy loss ``E[H(q(z))] - H(E[q(z)])`` (see ``entropy_terms``)."""
    return entropy_terms(z, dim, temperature, full_codebook).loss


def commitment_loss(z: Tensor) -> Tensor:
    """Mean squared distance of ``z`` to its (constant) quantised value."""
    return F.mse_loss(z, quantize(z).detach())


def code_usage(codes: Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity of the code histogram) over ``codes``."""
    counts = torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp_min(1)
    nz = p[p > 0]
    perplexity = float(torch.exp(-(nz * nz.log()).sum())) if nz.numel() else 0.0
    return float((counts > 0).sum()) / codebook_size, perplexity


class LFQuantizer(nn.Module):
    """LFQ as a module. Its buffers match the ``quantize.*`` keys of ``showlab/magvitv2``:
    ``embedding`` (2**K, K) — the ±1 code vectors — and ``power_vals`` (K,) — bit values."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("embedding", codebook(bits))
        self.register_buffer("power_vals", bit_values(bits))

    @property
    def codebook_size(self) -> int:
        return 2 ** self.bits

    def codes(self, z: Tensor) -> Tensor:
        """(B, K, H, W) latents -> (B, H, W) long codes."""
        return ((z > 0).long() * self.power_vals.view(1, -1, 1, 1)).sum(1)

    def embed(self, codes: Tensor) -> Tensor:
        """(B, H, W) long codes -> (B, K, H, W) ±1 latents (a lookup in ``embedding``)."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"image codes outside [0, {self.codebook_size}): "
                             f"min {int(codes.min())}, max {int(codes.max())}")
        return self.embedding[codes.long()].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(straight-through quantised latents, codes) of (B, K, H, W) latents."""
        return straight_through(z), self.codes(z)
