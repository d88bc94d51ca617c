"""Routing heat maps and tables: which experts each task's tokens and rows chose, per layer.

    from unif2ace.eval.routing import expert_labels, routing_from_log, routing_table, save_routing_heatmaps
    mats, labels = routing_from_log("runs/x")            # mean of metrics.jsonl's last 50 steps
    save_routing_heatmaps(mats, "runs/x/routing.png", labels, title="last 50 steps")
    print(routing_table(mats, labels))                    # sequence-level MoE, mean over layers

The matrices come from ``unif2ace.model.moe.stats`` (the one place that reads routing stats,
from a model's output or from a training log row). One PNG holds a panel per statistic present
(token-level MoE generation / understanding groups, sequence-level MoE groups): rows are layers,
columns experts, colour the share of the group's choices (each row sums to 1).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from unif2ace.atomic import atomic_open
from unif2ace.jsonfile import read_jsonl
from unif2ace.model.moe.stats import ROUTING_KEYS, RoutingStats

PANELS = {
    "route_frac_gen": "token MoE, generation (T2I) tokens",
    "route_frac_und": "token MoE, understanding (MMU) tokens",
    "seq_route_gen": "sequence MoE, generation (T2I) rows",
    "seq_route_und": "sequence MoE, understanding (MMU) rows",
}
GROUP_NAMES = {"gen": "generation (T2I)", "und": "understanding (MMU)"}


def expert_labels(gen_experts: Sequence[str], und_experts: Sequence[str]) -> dict[str, list[str]]:
    """Column labels of the sequence-level panels (the config's expert names, e.g. clip, face);
    token-level experts are numbered."""
    return {"seq_route_gen": list(gen_experts), "seq_route_und": list(und_experts)}


def routing_from_log(run_dir: str | os.PathLike, last: int = 50) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Mean routing matrices over the last ``last`` logged steps of a training run (``metrics.jsonl``
    in ``run_dir``) and the sequence-level expert labels from its ``final/config.json`` (none when
    it is absent). ({}, {}) when the run has no log or logged no routing statistics."""
    log = Path(run_dir) / "metrics.jsonl"
    if not log.exists():
        return {}, {}
    rows = read_jsonl(log)
    acc = RoutingStats()
    for row in [r for r in rows if "event" not in r][-last:]:
        acc.add(row)
    cfg = Path(run_dir) / "final" / "config.json"
    labels = {}
    if cfg.exists():
        sm = json.loads(cfg.read_text())["model"]["seq_moe"]
        labels = expert_labels(sm["gen_experts"], sm["und_experts"])
    return acc.matrices(), labels


def routing_table(matrices: dict[str, np.ndarray], labels: dict[str, list[str]]) -> str:
    """Markdown table of the sequence-level MoE: per group, each expert's share of the group's
    (row, expert) choices, mean over layers; '' when there is no sequence-level MoE."""
    groups = [g for g in ("gen", "und") if f"seq_route_{g}" in matrices]
    if not groups:
        return ""
    width = max(matrices[f"seq_route_{g}"].shape[1] for g in groups)
    out = ["| group | " + " | ".join(f"expert {j}" for j in range(width)) + " |", "|---|" + "---|" * width]
    for g in groups:
        share = matrices[f"seq_route_{g}"].mean(0)
        names = labels.get(f"seq_route_{g}") or [str(j) for j in range(len(share))]
        out.append(f"| {GROUP_NAMES[g]} | " + " | ".join(f"{n} {v:.2f}" for n, v in zip(names, share)) + " |")
    return "\n".join(out)


def save_routing_heatmaps(matrices: dict[str, np.ndarray], path: str | os.PathLike,
                          labels: dict[str, list[str]] | None = None, title: str = "") -> Path:
    """Write one PNG with a (layers × experts) heat map per routing statistic, atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ROUTING_KEYS if k in matrices]
    if not keys:
        raise ValueError(f"save_routing_heatmaps({path}): no routing statistics to draw (keys: {sorted(matrices)})")
    for k in keys:
        if np.ndim(matrices[k]) != 2:
            raise ValueError(f"save_routing_heatmaps({path}): {k} must be a 2-D (layers, experts) matrix, "
                             f"got shape {np.shape(matrices[k])}")
    labels = labels or {}
    path = Path(path)
    layers = max(matrices[k].shape[0] for k in keys)
    experts = max(matrices[k].shape[1] for k in keys)
    cols = min(2, len(keys))  # generation | understanding; token-level above sequence-level
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(cols * (2.2 + 0.45 * experts), rows * (1.6 + 0.3 * layers) + 0.4))
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, keys):
        mat = np.asarray(matrices[k], dtype=float)
        im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(mat.max()), 1e-9))
        ax.set_xticks(range(mat.shape[1]), labels.get(k) or [str(j) for j in range(mat.shape[1])],
                      rotation=45 if k in labels else 0)
        ax.set_yticks(range(mat.shape[0]))
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_title(PANELS[k], fontsize=9)
        fig.colorbar(im, ax=ax, label="share of choices")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
