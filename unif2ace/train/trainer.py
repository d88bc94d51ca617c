"""The training loop: mixed T2I + MMU batches, D3Diff + MMU + balance losses, on a DeepSpeed engine.

    deepspeed launchers/train.py --deepspeed ds_configs/zero3.json --config synthface train.steps=300
    torchrun --nproc_per_node 2 launchers/train.py --config tiny
    python launchers/train.py --config tiny                      # one process

or from Python: ``run(load_config("tiny", [...]), "ds_configs/zero3.json")``.

Per optimiser step: ``train.grad_accum`` micro steps (DeepSpeed accumulates and clips), then one
collective that averages the metrics over ranks and agrees on a stop request, then maybe a
checkpoint. Exit statuses: 0 finished or stopped by SIGTERM/SIGUSR1 after a checkpoint, 2 bad
configuration/data/checkpoint, 3 too many non-finite steps in a row, 1 anything else.

A non-finite loss makes the gradients non-finite; DeepSpeed's ZeRO optimiser then skips the
update (weights, optimiser state and LR schedule unchanged) and counts it in ``skipped_steps``.
We count such steps, log them, and stop after ``train.max_bad_steps`` in a row.

Fault injection for tests: see unif2ace/train/faults.py (``UNIF2ACE_FAULT``).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from unif2ace.config import Config, ConfigError, describe, load_config
from unif2ace.data.shards import ShardError
from unif2ace.losses import total_loss
from unif2ace.runtime import remove_process_tempdirs
from unif2ace.tokens import TASK_MMU, TASK_T2I, Batch, TokenLayout
from unif2ace.train import engine as E
from unif2ace.train import faults
from unif2ace.train.checkpointing import CheckpointManager, CheckpointMismatch, RankState, seed_all
from unif2ace.train.metrics import MetricsSink, StepMeter, device_peak_flops, train_flops_per_token

log = logging.getLogger("unif2ace.train")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_DIVERGED = 0, 1, 2, 3
REPO = Path(__file__).resolve().parents[2]
DEFAULT_DS_CONFIG = REPO / "ds_configs" / "zero3.json"


class Diverged(RuntimeError):
    """Too many consecutive non-finite steps."""


class StopRequest:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) sets a flag; the loop checkpoints at the next step
    boundary, after every rank agreed, and exits 0."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def uninstall(self) -> None:
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signum = signum


def _setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{rank}] %(levelname)s %(name)s: %(message)s",
                        force=True)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def make_loader(cfg: Config, rank: int, world_size: int) -> Iterator[Batch]:
    """The precomputed-shard loader (unif2ace/data/loader.py); it checks the shards against the
    model config and raises ShardError naming the directory and every mismatch."""
    from unif2ace.data.loader import ShardLoader

    return ShardLoader(cfg.data, cfg.model, rank, world_size, cfg.train.micro_batch, loss_cfg=cfg.loss)


def task_weights(task: torch.Tensor, world: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Collective. Rows per task on this rank, and the factor that turns this rank's per-task
    mean loss into its share of the *global* per-task mean: ``n_local · world / n_global``.

    DeepSpeed averages gradients over ranks, so with these factors the gradient equals that of
    the per-task mean over every row of the global batch, however rows of a task are spread over
    ranks (the loader balances tasks per batch, not per rank). One process with batch 2B and two
    with batch B then train identically (tested).
    """
    import torch.distributed as dist

    local = torch.stack([(task == TASK_T2I).sum(), (task == TASK_MMU).sum()]).to(torch.float64).cpu()
    glob = local.clone().to(device)
    if world > 1:
        dist.all_reduce(glob)
    glob = glob.cpu()
    w = torch.where(glob > 0, local * world / glob.clamp_min(1), torch.zeros_like(local))
    return local, w


def _grad_norm(engine) -> float:
    gn = engine.get_global_grad_norm()
    if gn is None:
        return math.nan
    return float(gn.item() if torch.is_tensor(gn) else gn)


def run(cfg: Config, ds_config: str | os.PathLike | dict = DEFAULT_DS_CONFIG,
        loader_factory: Callable[[Config, int, int], Iterator[Batch]] | None = None) -> int:
    """Train ``cfg`` to ``train.steps``; returns the exit status (see module docstring)."""
    dist = E.init_distributed(cfg.train.dist_timeout_s)
    _setup_logging(dist.rank)
    rank, world = dist.rank, dist.world_size
    ds = E.load_ds_config(ds_config, cfg.train, world)
    loader = (loader_factory or make_loader)(cfg, rank, world)  # bad shards fail before the model is built
    model = E.build_model(cfg, ds)
    engine = E.build_engine(model, cfg.train, ds)
    engine.train()
    seed_all(cfg.train.seed * 100_003 + rank)  # dropout etc. differ per rank, reproducibly
    layout = TokenLayout.from_model_config(cfg.model)
    ckpt = CheckpointManager(Path(cfg.train.out_dir) / "checkpoints", cfg, world, rank, cfg.train.keep_last)

    step = 0
    counters = {"bad_total": 0, "bad_streak": 0, "samples": 0}
    state = ckpt.load(engine) if cfg.train.resume else None
    if state is not None:
        step = state.step
        counters.update(state.counters)
        loader.load_state_dict(state.loader)
    stop = StopRequest()
    sampler = None
    if cfg.train.sample_every and loader_factory is None:
        from unif2ace.train.samples import PeriodicSampler

        sampler = PeriodicSampler(cfg, rank)
    routing = None
    if cfg.train.sample_every and rank == 0:
        from unif2ace.train.samples import RoutingMaps

        routing = RoutingMaps(cfg)
    meter = StepMeter(world, dist.device, train_flops_per_token(engine.module, cfg.model),
                      device_peak_flops(cfg.train.peak_tflops) if dist.device.type == "cuda" else None, cfg.loss)
    sink = MetricsSink(cfg, rank, step)
    ep = E.expert_parallel_size(ds)
    sink.event(event="start", step=step, resumed=state is not None, world_size=world, zero_stage=E.zero_stage(ds),
               expert_parallel_size=ep, dtype=str(E.model_dtype(ds)))
    log.info("training %s: steps %d → %d, world %d, ZeRO-%d%s, %s, %.2fM parameters%s", cfg.name, step,
             cfg.train.steps, world, E.zero_stage(ds), f", expert parallel {ep}" if ep > 1 else "", E.model_dtype(ds),
             sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters()) / 1e6,
             " (routed experts: this rank's only)" if ep > 1 else "")
    last_saved = step if state is not None else -1
    try:
        stop.install()
        while step < cfg.train.steps:
            faults.maybe_fail("crash", step + 1, rank)
            faults.maybe_fail("hang", step + 1, rank)
            lr = engine.get_lr()[0]
            skipped_before = engine.skipped_steps
            for _ in range(cfg.train.grad_accum):
                t0 = time.perf_counter()
                batch = next(loader)
                wait = time.perf_counter() - t0
                batch = batch.to(dist.device)
                out = engine(batch.input_ids, batch.task, features=batch.features)
                counts, w = task_weights(batch.task, world, dist.device)
                loss, metrics = total_loss(out, batch, layout, cfg.loss, scale=(float(w[0]), float(w[1])))
                if faults.active("nan", step + 1, rank):
                    loss = loss * float("nan")
                finite = bool(torch.isfinite(loss.detach()))
                engine.backward(loss)
                engine.step()
                meter.add_micro(metrics, out.stats, batch, wait, counts, finite)
            step += 1
            reduced = meter.reduce({"stop": float(stop.requested)})
            row = reduced["row"]
            skipped = engine.skipped_steps - skipped_before
            bad = skipped > 0 or not math.isfinite(row.get("loss", math.nan))
            counters["bad_total"] += int(bad)
            counters["bad_streak"] = counters["bad_streak"] + 1 if bad else 0
            counters["samples"] += cfg.train.micro_batch * cfg.train.grad_accum * world
            row.update(lr=lr, grad_norm=_grad_norm(engine), skipped=int(skipped), bad_steps=counters["bad_total"])
            if routing is not None:
                routing.add(step, row)
            if bad or step % cfg.train.log_every == 0 or step == cfg.train.steps:
                sink.log(step, row)
            if bad:
                log.warning("step %d: non-finite loss/gradients (loss %s); the update was skipped (%d in a row, "
                            "%d in total)", step, row.get("loss"), counters["bad_streak"], counters["bad_total"])
                if counters["bad_streak"] >= cfg.train.max_bad_steps:
                    first = step - counters["bad_streak"] + 1
                    raise Diverged(
                        f"stopping: the loss was non-finite in {counters['bad_streak']} consecutive steps "
                        f"({first}–{step}); train.max_bad_steps={cfg.train.max_bad_steps}. Those updates were "
                        f"skipped, so the weights are those after step {first - 1}; latest checkpoint: "
                        f"{ckpt.latest_tag() or 'none'} in {ckpt.root}. Lower train.lr or check the data.")
            stop_now = reduced["flags"]["stop"] > 0
            if sampler is not None and step % cfg.train.sample_every == 0 and not stop_now:
                sampler(engine.module, step, engine.empty_partition_cache)
                engine.train()
                sink.event(event="samples", step=step, path=str(sampler.out))
            if routing is not None and (step % cfg.train.sample_every == 0 or step == cfg.train.steps):
                heatmap = routing.write(step)
                if heatmap is not None:
                    sink.event(event="routing", step=step, path=str(heatmap))
            periodic = cfg.train.save_every and step % cfg.train.save_every == 0
            if periodic or stop_now or step == cfg.train.steps:
                path = ckpt.save(engine, RankState(step, loader.state_dict(), dict(counters)))
                last_saved = step
                sink.event(event="checkpoint", step=step, path=str(path), reason="signal" if stop_now else "schedule")
            if stop_now:
                log.warning("stop requested by signal: checkpoint of step %d written, exiting 0", step)
                sink.event(event="stopped", step=step)
                return EXIT_OK
        if last_saved != step:  # train.steps reached before this run did anything
            ckpt.save(engine, RankState(step, loader.state_dict(), dict(counters)))
        if cfg.train.export_final:
            final = E.export_model(engine, cfg, Path(cfg.train.out_dir) / "final")
            sink.event(event="export", step=step, path=str(final))
        sink.event(event="done", step=step)
        import torch.distributed as tdist

        tdist.barrier()  # no rank leaves while a peer still talks
        log.info("done: %d steps, %d non-finite steps skipped; checkpoints in %s (tools/convert_checkpoint.py makes "
                 "a model directory)", step, counters["bad_total"], ckpt.root)
        return EXIT_OK
    except Diverged as e:
        log.error("%s", e)
        sink.event(event="diverged", step=step)
        return EXIT_DIVERGED
    except (CheckpointMismatch, faults.InjectedFault):
        raise
    except Exception as e:
        hint = ""
        if world > 1 and any(s in str(e) for s in ("Connection closed", "Connection reset", "Timed out", "timeout",
                                                    "Broken pipe", "peer")):
            hint = " — a collective failed: another rank probably died or hangs; see its log and the launcher summary"
        log.error("rank %d failed at step %d: %s: %s%s", rank, step + 1, type(e).__name__, e, hint)
        raise
    finally:
        stop.uninstall()
        sink.close()


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Train UniF²ace with DeepSpeed. Overrides are key=value (python -m unif2ace.config --help "
                    "lists every key).",
        epilog="e.g. deepspeed launchers/train.py --deepspeed ds_configs/zero3.json --config synthface train.steps=300")
    ap.add_argument("--deepspeed", "--deepspeed_config", dest="ds_config", default=str(DEFAULT_DS_CONFIG),
                    help="DeepSpeed JSON (default ds_configs/zero3.json)")
    ap.add_argument("--config", default="synthface", help="recipe name in unif2ace/recipes or a .yaml path")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--list-keys", action="store_true", help="print every config key with its doc and exit")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    return ap.parse_args(argv)


def _finish(code: int):
    """Leave the process now with ``code``, skipping interpreter teardown: after a failure in a
    multi-process run it would wait on collectives with a dead peer, and after success it only
    costs seconds per rank (freeing torch / transformers modules). Everything we write is
    closed and flushed by then."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    remove_process_tempdirs()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_keys:
        print("\n".join(describe(Config)))
        return EXIT_OK
    try:
        cfg = load_config(args.config, args.overrides)
        return run(cfg, args.ds_config)
    except (ConfigError, E.EngineError, CheckpointMismatch, FileNotFoundError, ShardError) as e:
        logging.getLogger("unif2ace.train").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception:
        import traceback

        traceback.print_exc()
        return EXIT_ERROR


def cli() -> None:
    """Entry point of launchers/train.py: ``main()``, then leave without interpreter teardown."""
    _finish(main())
