"""Routing statistics across layers and a PNG heat map (like the paper's expert-activation figure).

    from unif2ace.model.moe.stats import RoutingStats, save_heatmap
    acc = RoutingStats()
    for batch in loader:
        out = model(...); acc.add(out.stats)         # keys 'L{i}/route_frac_gen' etc.
    for key, mat in acc.matrices().items():          # (layers, experts), rows sum to 1
        save_heatmap(mat, f"runs/x/{key}.png", title=key)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from unif2ace.atomic import atomic_open

ROUTING_KEYS = ("route_frac_gen", "route_frac_und", "seq_route_gen", "seq_route_und")
_KEY = re.compile(r"^L(\d+)/(.+)$")


def routing_matrices(stats: dict, keys: tuple[str, ...] = ROUTING_KEYS) -> dict[str, np.ndarray]:
    """Model stats {'L{i}/key': (E,) tensor} → {key: (layers, E) array} for the routing keys present."""
    rows: dict[str, dict[int, np.ndarray]] = {}
    for name, val in stats.items():
        m = _KEY.match(name)
        if m and m.group(2) in keys:
            rows.setdefault(m.group(2), {})[int(m.group(1))] = np.asarray(val.detach().float().cpu())
    return {k: np.stack([v[i] for i in sorted(v)]) for k, v in rows.items()}


class RoutingStats:
    """Running mean of the routing matrices over steps."""

    def __init__(self, keys: tuple[str, ...] = ROUTING_KEYS):
        self.keys = keys
        self.sums: dict[str, np.ndarray] = {}
        self.steps = 0

    def add(self, stats: dict) -> None:
        for k, mat in routing_matrices(stats, self.keys).items():
            self.sums[k] = self.sums.get(k, 0.0) + mat
        self.steps += 1

    def matrices(self) -> dict[str, np.ndarray]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


def save_heatmap(matrix: np.ndarray, path: str | os.PathLike, title: str = "",
                 xlabel: str = "expert", ylabel: str = "layer") -> Path:
    """Write a (layers, experts) heat map as PNG, atomically (unif2ace/atomic.py)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"save_heatmap({path}): expected a 2-D (layers, experts) matrix, got shape {matrix.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = matrix.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * w, 1.0 + 0.3 * h))
    im = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_xticks(range(w))
    ax.set_yticks(range(h))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, label="fraction of tokens")
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
