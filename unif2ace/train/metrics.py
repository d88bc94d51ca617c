"""Observability of a training run: rank-reduced metrics, throughput, MFU, sinks.

    meter = StepMeter(world, device, flops_per_token, peak, cfg.loss)  # every rank
    meter.add_micro(metrics, stats, batch, wait_s, counts, finite)   # after each micro step
    out = meter.reduce({"stop": flag})               # collective: one all_reduce + one all_gather
    sink = MetricsSink(cfg, rank, start_step)        # rank 0 writes; others no-op
    sink.log(step, {**out["row"], "lr": lr, "grad_norm": gn})

Per step the row holds: ``loss`` and the per-task parts (``l_mmu``, ``l_mask``, ``l_score``,
``l_d3diff``) as means over every row of that task in the global batch, every balance loss
(``loss_*``), routing statistics (``L{i}/…``, averaged over ranks), the mean applied mask ratio
of T2I rows, ``grad_norm``, ``lr``, per-rank ``tokens_per_s`` / ``samples_per_s`` /
``data_wait_s`` (``rank{r}/…``), and on GPU an ``mfu`` estimate.

Sinks: ``metrics.jsonl`` in ``train.out_dir`` (one JSON object per step; floats are written
with ``repr`` so they round-trip exactly, which the resume test relies on), a tqdm progress bar,
and wandb (offline by default; ``train.wandb=online``; ``disabled`` or ``WANDB_MODE=disabled``
imports nothing).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from unif2ace.config import Config, LossConfig, ModelConfig
from unif2ace.losses import combine
from unif2ace.tokens import TASK_T2I, Batch
from unif2ace.train import flops

PEAK_TFLOPS = {  # dense bf16 (no sparsity), by substring of torch.cuda.get_device_name()
    "H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0,
    "L4": 121.0, "B200": 2250.0, "4090": 165.0, "V100": 125.0,
}


# --------------------------------------------------------------------------- FLOPs


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 leaves an empty placeholder


def active_matmul_params(model: torch.nn.Module) -> int:
    """Parameters a token multiplies through: all but the input embedding table, with each
    token-level MoE counted at its active size (shared + top-k routed experts). The
    sequence-level MoE is left out: its feature experts resample a pooled feature once per
    sequence (model/moe/resampler.py), so per token they cost a 2-wide gate, not their weights."""
    total = sum(_numel(p) for n, p in model.named_parameters() if not n.startswith("embed_tokens."))
    for layer in getattr(model, "layers", []):
        ffn = getattr(layer, "ffn", None)
        act = getattr(ffn, "active_parameters", None)
        if callable(act):
            total += int(act()) - sum(_numel(p) for p in ffn.parameters())
        seq = getattr(layer, "seq_moe", None)
        if seq is not None:
            total -= sum(_numel(p) for p in seq.parameters())
    return total


def train_flops_per_token(model: torch.nn.Module, mcfg: ModelConfig) -> float:
    """6·N (forward + backward matmuls) + 12·layers·hidden·seq_len (attention scores and
    values, forward + backward), as in the PaLM / Megatron MFU accounting."""
    return flops.train_flops_per_token(active_matmul_params(model), mcfg.num_layers, mcfg.hidden_size, mcfg.seq_len)


def device_peak_flops(override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of this rank's device; None on CPU or an unknown GPU (then no MFU)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return tf * 1e12
    return None


# --------------------------------------------------------------------------- per-step accumulation


class StepMeter:
    """Accumulates one optimiser step's micro steps on this rank, then reduces over ranks.

    Per-task losses are weighted by the rows of that task, so the logged value is the mean over
    every row of the global batch (the quantity the gradient follows, see trainer.task_weights).
    """

    T2I_KEYS = ("l_mask", "l_score", "l_d3diff")

    def __init__(self, world_size: int, device: torch.device, flops_per_token: float, peak_flops: float | None,
                 loss_cfg: LossConfig):
        self.world_size = world_size
        self.device = device
        self.flops_per_token = flops_per_token
        self.peak = peak_flops
        self.loss_cfg = loss_cfg
        self._aux_keys: list[str] | None = None
        self._stat_keys: list[str] | None = None
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.stats: dict[str, torch.Tensor] = {}
        self.stats_n = 0
        self.nonfinite = 0
        self.samples = 0
        self.tokens = 0
        self.wait = 0.0
        self.t0 = time.perf_counter()

    def _add(self, key: str, value: float, weight: float) -> None:
        if weight:
            self.sums[key] = self.sums.get(key, 0.0) + value * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def add_micro(self, metrics: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
                  batch: Batch, wait_s: float, counts: torch.Tensor, finite: bool) -> None:
        """``counts``: rows of (T2I, MMU) in this micro batch; ``finite``: the loss was finite."""
        n_t2i, n_mmu = float(counts[0]), float(counts[1])
        for k, v in metrics.items():
            if k in self.T2I_KEYS:
                self._add(k, float(v), n_t2i)
            elif k == "l_mmu":
                self._add(k, float(v), n_mmu)
            elif k.startswith("loss_"):
                self._add(k, float(v), 1.0)
        t2i = batch.task == TASK_T2I
        if batch.mask_ratio is not None and n_t2i:
            self._add("mask_ratio", float(batch.mask_ratio[t2i].float().mean()), n_t2i)
        for k, v in stats.items():
            v = v.detach().float().reshape(-1).cpu()
            self.stats[k] = self.stats[k] + v if k in self.stats else v
        self.stats_n += 1
        self.nonfinite += int(not finite)
        self.samples += int(batch.input_ids.shape[0])
        self.tokens += int(batch.input_ids.numel())
        self.wait += wait_s

    def reduce(self, extra_flags: dict[str, float]) -> dict[str, Any]:
        """Collective: ``{"row": metrics, "flags": {name: sum over ranks}}``. Losses are row-weighted
        means over ranks, stats plain means, throughput per rank (gathered, so stragglers show)."""
        import torch.distributed as dist

        if self._aux_keys is None:  # fixed key order, identical on every rank
            self._aux_keys = sorted(k for k in self.sums if k.startswith("loss_"))
            self._stat_keys = sorted(self.stats)
        keys = ["l_mmu", *self.T2I_KEYS, "mask_ratio", *self._aux_keys]
        vals: list[float] = []
        for k in keys:
            vals += [self.sums.get(k, 0.0), self.weights.get(k, 0.0)]
        flags = {"_nonfinite": float(self.nonfinite), **extra_flags}
        stat_vecs = [self.stats.get(k, torch.zeros(1)) / max(self.stats_n, 1) for k in self._stat_keys]
        flat = torch.tensor(vals + list(flags.values()), dtype=torch.float64)
        stat_flat = torch.cat(stat_vecs).double() if stat_vecs else torch.zeros(0, dtype=torch.float64)
        packed = torch.cat([flat, stat_flat]).to(self.device)
        if self.world_size > 1:
            dist.all_reduce(packed)
        packed = packed.cpu()
        row: dict[str, Any] = {}
        for i, k in enumerate(keys):
            s, w = float(packed[2 * i]), float(packed[2 * i + 1])
            if w:
                row[k] = s / w
        off = 2 * len(keys)
        summed = {k: float(packed[off + i]) for i, k in enumerate(flags)}
        off += len(flags)
        row["loss"] = combine(row, self.loss_cfg)  # of the global per-task means: scale (1, 1)
        if summed.pop("_nonfinite"):
            row["loss"] = math.nan
        for k, v in zip(self._stat_keys, stat_vecs):
            seg = packed[off: off + v.numel()] / self.world_size
            off += v.numel()
            if seg.numel() == 1:
                row[k] = float(seg)
            else:
                for j, x in enumerate(seg.tolist()):
                    row[f"{k}/{j}"] = x
        dt = time.perf_counter() - self.t0
        mine = torch.tensor([self.tokens / dt, self.samples / dt, self.wait], dtype=torch.float64, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world_size)]
        if self.world_size > 1:
            dist.all_gather(every, mine)
        else:
            every = [mine]
        for r, t in enumerate(every):
            tok, smp, wait = t.tolist()
            row[f"rank{r}/tokens_per_s"] = tok
            row[f"rank{r}/samples_per_s"] = smp
            row[f"rank{r}/data_wait_s"] = wait
        row["tokens_per_s"] = self.tokens / dt * self.world_size
        row["samples_per_s"] = self.samples / dt * self.world_size
        row["step_time_s"] = dt
        if self.peak:
            row["mfu"] = flops.mfu(self.tokens / dt, self.flops_per_token, self.peak)
        self.reset()
        return {"row": row, "flags": summed}


# --------------------------------------------------------------------------- sinks


def wandb_mode(cfg: Config) -> str:
    return "disabled" if os.environ.get("WANDB_MODE") == "disabled" else cfg.train.wandb


class MetricsSink:
    """Rank 0: metrics.jsonl + progress bar + wandb. Other ranks: no-ops."""

    def __init__(self, cfg: Config, rank: int, start_step: int):
        self.enabled = rank == 0
        self.cfg = cfg
        self.bar = None
        self.run = None
        self.file = None
        if not self.enabled:
            return
        out = Path(cfg.train.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / "metrics.jsonl", "a")
        if cfg.train.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc=cfg.name, dynamic_ncols=True)
        mode = wandb_mode(cfg)
        if mode != "disabled":
            import wandb

            self.run = wandb.init(project=cfg.train.wandb_project, name=cfg.name, dir=str(out), mode=mode,
                                  config=cfg.to_dict(), resume="allow")

    def event(self, **kw) -> None:
        if self.file:
            self.file.write(json.dumps({"event": kw.pop("event"), **kw}) + "\n")
            self.file.flush()

    def log(self, step: int, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **row}
        self.file.write(json.dumps(row, allow_nan=True) + "\n")
        self.file.flush()
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            post = {"loss": row.get("loss", math.nan), "lr": row.get("lr", 0.0), "gn": row.get("grad_norm", 0.0),
                    "tok/s": row.get("tokens_per_s", 0.0)}
            if "mfu" in row:
                post["mfu"] = row["mfu"]
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in post.items()}, refresh=False)
        if self.run is not None:
            self.run.log(row, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.run is not None:
            self.run.finish()
        if self.file:
            self.file.close()
