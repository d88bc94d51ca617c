"""The one place that knows DeepSpeed ("parallelize" in torchtitan's terms).

    from unif2ace.train import engine as E
    dist = E.init_distributed(timeout_s=600)              # env:// (deepspeed / torchrun / plain python)
    ds_config = E.load_ds_config("ds_configs/zero3.json", cfg.train, dist.world_size)
    model = E.build_model(cfg, ds_config)                  # explicit finite init, or init_from
    engine = E.build_engine(model, cfg.train, ds_config)   # torch AdamW + warm-up/cosine, ZeRO

The model stays a plain ``nn.Module``; the loop (unif2ace/train/trainer.py) only calls
``engine(...)``, ``engine.backward``, ``engine.step`` and the checkpoint helpers.

Decisions, and why:
- The DeepSpeed JSON holds only the parallelism (ZeRO stage, offload, buckets, expert
  parallelism). Batch sizes, accumulation, clipping and precision come from ``train.*``; the JSON
  says ``"auto"`` for them and a concrete value that disagrees is an error, so there is one source
  of truth. ``optimizer``/``scheduler`` sections are refused: we build them here.
- torch AdamW with two groups. Norms and embeddings are found by *module type*, biases and other
  vectors by dimensionality (plus the MoE's stacked expert biases), so no list of parameter
  names can silently miss (Show-o's never matched Phi's names).
- bf16 on CUDA (fp32 master weights inside ZeRO), fp32 on CPU.
- Every rank seeds the same generator before building, so a model built without ``zero.Init``
  is identical everywhere before ZeRO partitions it; under ``zero.Init`` the weights are gathered
  and initialised by rank 0 explicitly (transformers' init is skipped there, giving 1e27 weights).
"""
from __future__ import annotations

import copy
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unif2ace.config import Config, TrainConfig
from unif2ace.jsonfile import read_json

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """A DeepSpeed config, an init checkpoint or the model itself is unusable; says which and why."""


# --------------------------------------------------------------------------- process group


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_gpu() -> bool:
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"


def shm_workspace_path(rank: int) -> Path:
    """Where DeepSpeed's CPU backend puts ``rank``'s shared-memory all-reduce workspace (its
    csrc/cpu/comm/shm.cpp names it after the uid, MASTER_ADDR and MASTER_PORT)."""
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_"
                               f"{os.environ.get('MASTER_PORT')}_{rank}")


def _release_shm_workspace() -> None:
    """Unlink this rank's DeepSpeed shared-memory workspace once every rank has mapped it.

    When the ``deepspeed`` launcher sets LOCAL_SIZE, DeepSpeed's CPU backend gives each rank a
    69 MB workspace in /dev/shm and never unlinks it: every run left LOCAL_SIZE × 69 MB of RAM
    behind until reboot (20 GB on a machine that ran the tests for two days, until a 4-process
    run starved). The workspace serves only DeepSpeed's inference all-reduce, which training does
    not call; the mapping outlives the name, so the memory goes back when the processes end,
    however they end (SIGKILL included).
    """
    import torch.distributed as dist

    if os.environ.get("LOCAL_SIZE") != str(dist.get_world_size()):
        return  # DeepSpeed maps the workspace only when every rank is on this host (a world of one too)
    dist.barrier()  # each rank returns from init only after it mapped every peer's workspace
    shm_workspace_path(dist.get_rank()).unlink(missing_ok=True)


def init_distributed(timeout_s: int = 600) -> DistInfo:
    """Join the process group from the launcher's env (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Plain ``python launchers/train.py`` has none of them: it becomes a world of one. The timeout
    bounds every collective, so a dead peer turns into an error instead of a hang.
    """
    import deepspeed
    import torch.distributed as dist

    single = {}
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        # A world of one needs no TCP rendezvous: a file store cannot lose a race for a port
        # (a free port found by bind-and-close was taken again before the store bound it, in CI).
        from unif2ace.runtime import process_tempdir
        single = {"init_method": "file://" + str(process_tempdir("unif2ace-pg-") / "store"),
                  "rank": 0, "world_size": 1}
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = on_gpu()
    if gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo", auto_mpi_discovery=False,
                                   timeout=timedelta(seconds=timeout_s), verbose=False, **single)
        if not gpu:
            _release_shm_workspace()
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


# --------------------------------------------------------------------------- DeepSpeed JSON

_OWNED_BY_TRAIN = {
    # DeepSpeed key: (train.* field it must equal, how to compute it)
    "train_micro_batch_size_per_gpu": "train.micro_batch",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_clipping": "train.grad_clip",
}


def load_ds_config(path: str | os.PathLike | dict, train: TrainConfig, world_size: int,
                   gpu: bool | None = None) -> dict[str, Any]:
    """Read a DeepSpeed JSON and resolve its ``"auto"`` entries from ``train``.

    Raises EngineError naming the file and key when the JSON contradicts ``train.*`` or carries
    an ``optimizer``/``scheduler`` section.
    """
    if isinstance(path, dict):
        src, raw = "<dict>", copy.deepcopy(path)
    else:
        src = str(path)
        try:
            raw = read_json(path, EngineError, name=f"DeepSpeed config {src}")
        except FileNotFoundError:
            raise EngineError(f"DeepSpeed config {src}: file not found (see ds_configs/README.md)") from None
    if not isinstance(raw, dict):
        raise EngineError(f"DeepSpeed config {src}: top level must be an object")
    for key in ("optimizer", "scheduler"):
        if key in raw:
            raise EngineError(f"DeepSpeed config {src}: remove {key!r}: the optimiser (torch AdamW with weight-decay "
                              f"groups) and the warm-up + cosine schedule are built from train.* by unif2ace")
    gpu = on_gpu() if gpu is None else gpu
    wanted = {"train_micro_batch_size_per_gpu": train.micro_batch,
              "gradient_accumulation_steps": train.grad_accum,
              "gradient_clipping": float(train.grad_clip)}
    for key, value in wanted.items():
        have = raw.get(key, "auto")
        if have != "auto" and float(have) != float(value):
            raise EngineError(f"DeepSpeed config {src}: {key}={have} contradicts {_OWNED_BY_TRAIN[key]}={value}; "
                              f"set it to \"auto\" (train.* is the source of truth)")
        raw[key] = value
    global_batch = train.micro_batch * train.grad_accum * world_size
    have = raw.get("train_batch_size", "auto")
    if have != "auto" and int(have) != global_batch:
        raise EngineError(f"DeepSpeed config {src}: train_batch_size={have} ≠ micro_batch·grad_accum·world "
                          f"= {train.micro_batch}·{train.grad_accum}·{world_size} = {global_batch}")
    raw["train_batch_size"] = global_batch
    bf16 = raw.setdefault("bf16", {"enabled": "auto"})
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = bool(gpu and torch.cuda.is_bf16_supported())
    if raw.get("fp16", {}).get("enabled") is True:
        raise EngineError(f"DeepSpeed config {src}: fp16 is not supported (loss scaling would skip steps that our "
                          f"NaN accounting counts as bad); use bf16")
    # A client (torch) optimiser under ZeRO needs these two switches; they change nothing else.
    raw.setdefault("zero_allow_untested_optimizer", True)
    zero = raw.setdefault("zero_optimization", {"stage": 0})
    if zero.get("offload_optimizer", {}).get("device", "none") != "none" and train.optimizer == "torch_adamw":
        raw.setdefault("zero_force_ds_cpu_optimizer", False)
    ep = raw.get("expert_parallel_size", 1)
    if not isinstance(ep, int) or ep < 1:
        raise EngineError(f"DeepSpeed config {src}: expert_parallel_size={ep!r} must be a positive integer")
    if ep > 1:
        stage = int(zero.get("stage", 0))
        if stage not in (1, 2, 3):
            raise EngineError(f"DeepSpeed config {src}: expert_parallel_size={ep} needs ZeRO stage 1, 2 or 3 (stage "
                              f"{stage} given)")
        if stage == 3:
            _check_zero3_ep(raw, zero, src, ep)
        if world_size % ep:
            raise EngineError(f"DeepSpeed config {src}: expert_parallel_size={ep} does not divide the "
                              f"{world_size} ranks")
        if "expert_parallel" in raw:
            raise EngineError(f"DeepSpeed config {src}: 'expert_parallel' (DeepSpeed AutoEP) cannot drive the grouped "
                              f"token MoE; use expert_parallel_size alone")
        if stage < 3:  # DeepSpeed asserts both for expert (MoE) parameter groups under ZeRO-2.
            zero.setdefault("contiguous_gradients", True)
            zero.setdefault("reduce_scatter", True)
    raw.setdefault("steps_per_print", 10 ** 9)  # we log ourselves
    raw.setdefault("wall_clock_breakdown", False)
    return raw


def _check_zero3_ep(raw: dict, zero: dict, src: str, ep: int) -> None:
    """What DeepSpeed refuses for AutoEP under ZeRO-3 (our experts use the same placement), and
    the one setting that would silently drop experts."""
    refused = {"zero_optimization.zero_hpz_partition_size": (zero.get("zero_hpz_partition_size", 1), 1),
               "zero_optimization.zero_quantized_gradients": (zero.get("zero_quantized_gradients", False), False),
               "sequence_parallel_size": (raw.get("sequence_parallel_size", 1), 1)}
    for key, (have, ok) in refused.items():
        if have != ok:
            raise EngineError(f"DeepSpeed config {src}: {key}={have} is not supported with expert_parallel_size={ep} "
                              f"under ZeRO-3 (DeepSpeed refuses it for expert-partitioned parameters)")
    if zero.get("stage3_gather_16bit_weights_on_model_save"):
        raise EngineError(f"DeepSpeed config {src}: stage3_gather_16bit_weights_on_model_save=true would save rank 0's "
                          f"experts only with expert_parallel_size={ep}; set it to false (tools/convert_checkpoint.py "
                          f"merges every rank's experts)")


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


# --------------------------------------------------------------------------- model


NO_DECAY_MODULES: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.Embedding,
                                       nn.modules.batchnorm._NormBase)
"""Module types none of whose parameters get weight decay."""


def _module_no_decay(mod: nn.Module) -> set[str]:
    """Names of ``mod``'s own parameters that are biases of a non-standard module: declared by
    the module (timm's ``no_weight_decay()`` protocol) or, for the MoE's stacked experts, the
    per-expert bias stacks (``ExpertStack.b1``/``b2``, 2-3 dims, so dimensionality misses them)."""
    names: set[str] = set()
    declared = getattr(mod, "no_weight_decay", None)
    if callable(declared):
        names |= set(declared())
    from unif2ace.model.moe.token_moe import ExpertStack

    if isinstance(mod, ExpertStack):
        names |= {"b1", "b2"}
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decay for the weight matrices of compute layers; no decay for every
    parameter of a norm or embedding module (by type), every 0/1-dim parameter (biases, gates,
    scales), parameters registered as ``bias``, and per-module declared biases (see
    ``_module_no_decay``). Each group carries ``names`` for inspection."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        own_no_decay = _module_no_decay(mod)
        for pname, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{pname}" if mod_name else pname
            if (isinstance(mod, NO_DECAY_MODULES) or pname == "bias" or pname in own_no_decay
                    or _logical_ndim(p) < 2):
                no_decay.append((full, p))
            else:
                decay.append((full, p))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def _logical_ndim(p: torch.Tensor) -> int:
    """Dims of the full parameter (ZeRO-3 replaces ``p`` by an empty placeholder)."""
    shape = getattr(p, "ds_shape", None)
    return len(shape) if shape is not None else p.dim()


def leaf_module_classes() -> list[type]:
    """MoE classes ZeRO-3 must treat as leaves (their submodules run in a data-dependent order)."""
    from unif2ace.model.moe import ZERO3_LEAF_MODULES

    return list(ZERO3_LEAF_MODULES)


def register_leaf_modules(model: nn.Module) -> list[nn.Module]:
    """Flag every MoE block of ``model`` as a ZeRO-3 leaf (else ranks hang on mismatched gathers)."""
    from deepspeed.utils import set_z3_leaf_modules

    classes = [c for c in leaf_module_classes() if any(isinstance(m, c) for m in model.modules())]
    if not classes:
        return []
    return set_z3_leaf_modules(model, classes)


def _same_model(ckpt_model, run_model, source: str) -> None:
    from dataclasses import asdict

    from unif2ace.checkpoint.run_config import config_diff

    diffs = config_diff(asdict(ckpt_model), asdict(run_model), "model.")
    if diffs:
        raise EngineError(f"train.init_from={source}: its model config differs from this run's: "
                          + "; ".join(diffs[:12]) + (" …" if len(diffs) > 12 else "")
                          + " (use the recipe it was trained with, or override those keys)")


def load_init(cfg: Config) -> nn.Module:
    """``train.init_from``: any checkpoint ``unif2ace.checkpoint.load.load_model`` reads (ours,
    a DeepSpeed checkpoint, or a Phi / Show-o directory imported with MoE upcycling as
    configured). The model config it implies must equal this run's."""
    from unif2ace.checkpoint.hf_io import CheckpointError
    from unif2ace.checkpoint.load import load_model

    src = Path(cfg.train.init_from)
    try:
        model, ckpt_cfg = load_model(src, base=cfg, seed=cfg.train.seed)
    except CheckpointError as e:
        raise EngineError(f"train.init_from: {e}") from None
    _same_model(ckpt_cfg.model, cfg.model, str(src))
    return model


def build_model(cfg: Config, ds_config: dict) -> nn.Module:
    """The model, identical on every rank: ``train.init_from`` weights, or ``init_weights()``
    right after seeding ``train.seed`` (so a run does not depend on how the model was built).

    ``train.zero_init`` (ZeRO-3 only) builds under ``deepspeed.zero.Init`` so parameters are
    partitioned as they are created, then gathers them for the explicit init on rank 0 (the
    init inside the constructor ran on empty placeholders there).
    """
    from unif2ace.model.unif2ace import UniF2ace

    torch.manual_seed(cfg.train.seed)
    if cfg.train.init_from:
        return load_init(cfg)
    if cfg.train.zero_init:
        if zero_stage(ds_config) != 3:
            raise EngineError(f"train.zero_init=true needs ZeRO stage 3, the DeepSpeed config has stage "
                              f"{zero_stage(ds_config)}")
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = UniF2ace(cfg.model)
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                torch.manual_seed(cfg.train.seed)
                model.init_weights()
        return model
    model = UniF2ace(cfg.model)
    torch.manual_seed(cfg.train.seed)
    model.init_weights()
    return model


def owned_values(p: nn.Parameter) -> torch.Tensor:
    """The values of ``p`` this rank holds: the whole tensor, or under ZeRO-3 this rank's shard
    without its padding. ZeRO-3 pads every parameter to a multiple of the partition group's size
    and never writes the padding (``torch.empty``), so it may hold anything, NaN included."""
    if not hasattr(p, "ds_tensor"):
        return p.data
    t = p.ds_tensor
    start = t.ds_numel * torch.distributed.get_rank(group=p.ds_process_group)
    return t.narrow(0, 0, max(0, min(t.ds_numel, p.ds_numel - start)))


def check_finite(model: nn.Module) -> None:
    """Raise naming the first parameters (this rank's ZeRO-3 shard) that hold NaN/inf."""
    bad = []
    for n, p in model.named_parameters():
        t = owned_values(p)
        if t.numel() and not torch.isfinite(t).all():
            bad.append(n)
    if bad:
        raise EngineError(f"non-finite weights after init in {len(bad)} tensors: {', '.join(bad[:10])}")


# --------------------------------------------------------------------------- optimiser + engine


def build_optimizer(model: nn.Module, train: TrainConfig, ds_config: dict) -> torch.optim.Optimizer:
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, train.weight_decay)]
    if expert_parallel_size(ds_config) > 1:
        from unif2ace.train import expert_parallel

        groups = expert_parallel.optimizer_groups(groups)
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") != "none"
    kind = train.optimizer
    if kind == "auto":
        kind = "cpu_adam" if offload else "torch_adamw"
    if kind == "cpu_adam":
        if not offload:
            raise EngineError("train.optimizer=cpu_adam needs zero_optimization.offload_optimizer in the DeepSpeed config")
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # compiles a C++ op on first use

        return DeepSpeedCPUAdam(groups, lr=train.lr, betas=train.betas, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


def lr_schedule(train: TrainConfig):
    """Linear warm-up to ``train.lr``, cosine decay to ``min_lr_ratio·lr`` at ``train.steps``
    (unif2ace.schedule; DeepSpeed calls it with the optimiser it wraps)."""
    from unif2ace.schedule import warmup_cosine

    def make(optimizer):
        return warmup_cosine(optimizer, train.warmup_steps, train.steps, train.min_lr_ratio)

    return make


def expert_parallel_size(ds_config: dict) -> int:
    return int(ds_config.get("expert_parallel_size", 1))


def build_engine(model: nn.Module, train: TrainConfig, ds_config: dict):
    """``deepspeed.initialize`` with our optimiser and schedule; MoE blocks registered as leaves;
    routed experts sharded when the DeepSpeed JSON sets ``expert_parallel_size`` (expert_parallel.py;
    under ZeRO-3 each local expert parameter's partition group is then checked)."""
    import deepspeed

    from unif2ace.train import expert_parallel

    leaves = register_leaf_modules(model)
    if leaves:
        log.info("ZeRO-3 leaf modules: %d (%s)", len(leaves), sorted({type(m).__name__ for m in leaves}))
    ep, stage = expert_parallel_size(ds_config), zero_stage(ds_config)
    if ep > 1:
        try:
            expert_parallel.apply(model, ep, stage)
        except expert_parallel.ExpertParallelError as e:
            raise EngineError(str(e)) from None
    optimizer = build_optimizer(model, train, ds_config)
    if ep > 1 and stage < 3:
        engine = expert_parallel.initialize(model, optimizer, lr_schedule(train), ds_config)
    else:  # ZeRO-3 places the experts from their parameter attributes (expert_parallel.py)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_schedule(train),
                                               config=ds_config, dist_init_required=False)
    if ep > 1 and stage == 3:
        try:
            expert_parallel.check_zero3_placement(engine.module)
        except expert_parallel.ExpertParallelError as e:
            raise EngineError(str(e)) from None
    check_finite(engine.module)
    return engine


def model_dtype(ds_config: dict) -> torch.dtype:
    return torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") else torch.float32


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """Collective. The whole model's weights on rank 0 (CPU tensors, the engine's compute dtype),
    None elsewhere. Under ZeRO-3 each parameter is gathered in turn, so peak memory is the model
    once on rank 0's CPU plus one parameter on every device; under expert parallelism every
    rank's experts are gathered and merged back into the unsharded layout."""
    import deepspeed
    import torch.distributed as dist

    module = engine.module
    rank0 = dist.get_rank() == 0
    sd: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None, enabled=hasattr(p, "ds_id")):
            if rank0:
                sd[name] = p.detach().to("cpu", copy=True)
    if rank0:
        for name, b in module.named_buffers():
            if name in module.state_dict():  # persistent buffers only
                sd[name] = b.detach().to("cpu", copy=True)
    from unif2ace.train import expert_parallel

    shards = expert_parallel.gather_expert_shards(module)
    if rank0 and shards:
        sd = expert_parallel.merge_expert_shards(sd, shards)
    return sd if rank0 else None


def export_model(engine, cfg: Config, out_dir: str | os.PathLike) -> Path | None:
    """Collective. Write an HF-style model directory (unif2ace.checkpoint.hf_io) from the live
    engine; returns the path on rank 0."""
    import torch.distributed as dist

    from unif2ace.checkpoint.hf_io import save_pretrained

    sd = full_state_dict(engine)
    out = None
    if dist.get_rank() == 0:
        out = save_pretrained(engine.module, cfg, out_dir, state_dict=sd)
    dist.barrier()
    return out
