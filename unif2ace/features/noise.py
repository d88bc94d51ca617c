"""Reproducible per-sample Gaussian noise embedding.

    from unif2ace.features.noise import NoiseEmbedder
    emb = NoiseEmbedder(dim=64, seed=0)
    x = emb.encode(["synthface/000001", "synthface/000002"])   # float32 (2, 64), N(0, 1)

A sample's vector depends only on (seed, sample id, dim): it is the same on every machine,
in every shard order and for every number of worker processes, so re-running the
precompute gives identical noise features. The generator is numpy's PCG64 seeded with the
256-bit sha256 of ``"<seed>\\0<id>"`` (a SeedSequence over its eight 32-bit words).
"""
from __future__ import annotations

import hashlib

import numpy as np


def sample_seed(seed: int, sample_id: str) -> np.ndarray:
    """The 8 uint32 words of sha256("<seed>\\0<id>") — the entropy of this sample's generator."""
    digest = hashlib.sha256(f"{int(seed)}\0{sample_id}".encode("utf-8")).digest()
    return np.frombuffer(digest, dtype="<u4")


class NoiseEmbedder:
    """Seeded standard-normal vectors keyed by sample id."""

    def __init__(self, dim: int = 64, seed: int = 0):
        if dim <= 0:
            raise ValueError(f"noise.dim must be positive, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)

    def one(self, sample_id: str) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(sample_seed(self.seed, sample_id))))
        return rng.standard_normal(self.dim, dtype=np.float32)

    def encode(self, ids: list[str]) -> np.ndarray:
        """float32 (B, dim)."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for i, sid in enumerate(ids):
            out[i] = self.one(str(sid))
        return out

    def describe(self) -> dict:
        return {"dim": self.dim, "seed": self.seed, "method": "sha256(seed,id)->SeedSequence->PCG64.standard_normal"}
