"""Routing statistics across layers: which experts each task's tokens (token-level MoE) and
rows (sequence-level MoE) chose, as (layers, experts) matrices.

    from unif2ace.model.moe.stats import RoutingStats
    acc = RoutingStats()
    for batch in loader:
        out = model(...); acc.add(out.stats)     # keys 'L{i}/route_frac_gen' etc., (E,) tensors
    acc.matrices()                               # {key: (layers, E) array}, rows sum to 1
    acc.add(json.loads(line))                    # a metrics.jsonl row: 'L{i}/route_frac_gen/{j}' floats

Keys: ``route_frac_*`` (token-level MoE: share of the group's routed token assignments per
expert), ``seq_route_*`` (sequence-level MoE: share of the group's (row, expert) choices);
``*_gen`` is the generation group (T2I rows), ``*_und`` the understanding group (MMU rows).
Heat maps and tables of these: ``unif2ace/eval/routing.py``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

ROUTING_KEYS = ("route_frac_gen", "route_frac_und", "seq_route_gen", "seq_route_und")
# 'L3/route_frac_gen' (the model's stats: one (E,) vector) or 'L3/route_frac_gen/5' (the training
# log's flattened form, one float per expert: unif2ace/train/metrics.py writes rows that way).
_KEY = re.compile(r"^L(\d+)/([^/]+)(?:/(\d+))?$")


def routing_matrices(stats: Mapping[str, Any], keys: tuple[str, ...] = ROUTING_KEYS) -> dict[str, np.ndarray]:
    """Per-layer routing stats (either form above) → {key: (layers, E) array} for the keys present."""
    vectors: dict[str, dict[int, np.ndarray]] = {}
    entries: dict[str, dict[int, dict[int, float]]] = {}
    for name, val in stats.items():
        m = _KEY.match(name)
        if not m or m.group(2) not in keys:
            continue
        key, layer = m.group(2), int(m.group(1))
        if m.group(3) is None:
            val = val.detach().float().cpu() if hasattr(val, "detach") else val
            vectors.setdefault(key, {})[layer] = np.atleast_1d(np.asarray(val, dtype=np.float64))  # 1 expert: a float
        else:
            entries.setdefault(key, {}).setdefault(layer, {})[int(m.group(3))] = float(val)
    for key, layers in entries.items():
        for layer, per_expert in layers.items():
            if sorted(per_expert) != list(range(len(per_expert))):
                raise ValueError(f"routing stats L{layer}/{key}: experts {sorted(per_expert)} are not 0..n-1")
            vectors.setdefault(key, {})[layer] = np.array([per_expert[j] for j in range(len(per_expert))])
    return {k: np.stack([v[i] for i in sorted(v)]) for k, v in vectors.items()}


class RoutingStats:
    """Running mean of the routing matrices over steps."""

    def __init__(self, keys: tuple[str, ...] = ROUTING_KEYS):
        self.keys = keys
        self.sums: dict[str, np.ndarray] = {}
        self.steps = 0

    def add(self, stats: Mapping[str, Any]) -> None:
        for k, mat in routing_matrices(stats, self.keys).items():
            self.sums[k] = self.sums.get(k, 0.0) + mat
        self.steps += 1

    def matrices(self) -> dict[str, np.ndarray]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}
