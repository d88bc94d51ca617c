"""Expert parallelism (EP) for the grouped token MoE, under DeepSpeed ZeRO-2 or ZeRO-3.

    deepspeed launchers/train.py --deepspeed ds_configs/zero3_ep.json --config synthface
    deepspeed launchers/train.py --deepspeed ds_configs/zero2_ep.json --config synthface
    # {"zero_optimization": {"stage": 3 or 2, ...}, "expert_parallel_size": 2}

What it does (``apply(model, ep_size)``, called by ``engine.build_engine`` before the optimiser
exists):
- Every ``GroupedTokenMoE``'s ``ExpertStack`` (all G·(S+E) experts) is replaced by a
  ``ShardedExperts``: the S shared experts of each group stay replicated (ordinary data-parallel
  parameters); the E routed experts of each group are split into ``ep_size`` contiguous blocks,
  and this rank keeps block ``ep_rank`` only (``local_*`` parameters, E/ep per group).
- The local expert parameters carry DeepSpeed's tags, ``allreduce=False`` and
  ``group_name="ep_size_<ep>"``; the optimiser groups are split with DeepSpeed's
  ``split_params_into_different_moe_groups_for_optimizer``. ZeRO-2 then reduces their gradients
  only inside the expert-data-parallel group (ranks holding the same experts), divided by the full
  data-parallel size — which is right, because through the all-to-all an expert's gradient already
  sums the contributions of every rank's tokens. Broadcast at start-up also stays inside that
  group, so no rank's experts are ever overwritten from rank 0.
- The forward sends each routed (token, expert) pair to the rank owning the expert with a
  differentiable ``all_to_all_single`` (gloo on CPU, NCCL on GPU), runs the local experts with the
  same dropless kernels as EP=1, and sends the outputs back. Every rank makes exactly one
  exchange per MoE layer call whatever its token counts, so ranks never wait on a missing peer.

Why not DeepSpeed AutoEP (the documented ZeRO-3 route): its replacement layer's
``forward(hidden_states)`` receives no task, so it cannot pick our generation / understanding group;
its experts are gated, bias-free (SwiGLU-style w1/w2/w3) MLPs while ours are Phi's biased GELU MLPs
(upcycled exactly from Phi's FFN); and it returns no auxiliary loss. DeepSpeed's native ``MoE``
class is refused under ZeRO-3.

ZeRO-3 (``apply(..., zero_stage=3)``). ZeRO-3 places AutoEP's experts by *parameter attributes*,
not by class, so our local experts carry the same ones (``ds_zero_placement_family="autoep_expert"``,
``ds_zero_partition_group_name``, ``ds_zero_partition_process_group`` = the expert-data-parallel
group): ``zero.Init``'s conversion partitions each only inside that group, the stage-3 optimiser
makes per-group sub-groups, reduce-scatters their gradients inside the group, divides that family
by the full data-parallel size, and adds the expert-parallel group to the gradient norm. What keys
on DeepSpeed's *classes* (``has_moe_layers``, and the stage-3 check "MoE not supported with Stage
3") must stay off, so under ZeRO-3 the engine is plain ``deepspeed.initialize``. Each rank's ZeRO
files then hold its own experts' fp32 partitions, so resume needs nothing extra; rank 0 writes
``expert_parallel.json`` (which EP rank every rank was) so that ``unif2ace.checkpoint.load`` can
merge the partitions without ``zero_to_fp32`` (which cannot: its offsets assume one partition
group). With ``train.zero_init`` the model arrives partitioned over all ranks: each expert stack is
gathered, sliced, and the new parameters converted with the right group (``_convert_zero_init``).

ZeRO-2: DeepSpeed turns on its expert-aware gradient reduction and checkpoint paths only when the model
contains its own ``MoE`` / AutoEP layer classes (``engine.has_moe_layers``). ``ExpertParallelEngine``
sets that flag for a model with tagged parameters, and nothing else. DeepSpeed's checkpoint writer
does not know our layout (it saves rank 0's module state only), so ``save_expert_shards`` /
``load_expert_shards`` write and restore every rank's local experts next to DeepSpeed's files
(``experts-ep<rank>.safetensors``), and ``merge_expert_shards`` rebuilds the full ``ExpertStack``
weights for export and conversion.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from unif2ace.atomic import atomic_path, atomic_write_text
# The file name and the merge are read by checkpoint loading too, so they live below training.
from unif2ace.checkpoint.expert_shards import LAYOUT_FILE, SHARD_FILE, merge_expert_shards  # noqa: F401
from unif2ace.checkpoint import expert_shards
from unif2ace.checkpoint.expert_shards import STACK_KEYS as _STACK_KEYS

log = logging.getLogger(__name__)

EP_KEY = "expert_parallel_size"
"""Top-level key of a DeepSpeed JSON that turns EP on (ours; DeepSpeed ignores it)."""
ZERO3_FAMILY = "autoep_expert"
"""The ZeRO-3 placement family DeepSpeed partitions over the expert-data-parallel group."""


class ExpertParallelError(RuntimeError):
    """EP cannot be applied as configured; says why."""


def group_name(ep_size: int) -> str:
    """DeepSpeed's name for the expert groups of this EP size (``deepspeed.utils.groups``)."""
    return f"ep_size_{ep_size}"


# --------------------------------------------------------------------------- the sharded experts


class ShardedExperts(nn.Module):
    """One token MoE's experts under EP: replicated shared experts + this rank's routed block.

    shared_w1/w2 (G, S, F, D), shared_b1 (G, S, F), shared_b2 (G, S, D) — absent when S = 0;
    local_w1/w2 (G, E/ep, F, D), local_b1/b2 — routed experts [ep_rank·E/ep, (ep_rank+1)·E/ep)."""

    def __init__(self, stack: nn.Module, num_shared: int, num_routed: int, ep_size: int, ep_rank: int,
                 group, name: str, zero3_group=None):
        super().__init__()
        if num_routed % ep_size:
            raise ExpertParallelError(f"model.moe.num_routed={num_routed} is not divisible by the expert-parallel "
                                      f"size {ep_size}")
        self.num_shared, self.num_routed, self.ep_size, self.ep_rank = num_shared, num_routed, ep_size, ep_rank
        self.num_local = num_routed // ep_size
        self.group, self.group_name = group, name
        lo = num_shared + ep_rank * self.num_local
        for key in _STACK_KEYS:
            full = getattr(stack, key)
            if full is None:
                self.register_parameter(f"shared_{key}", None)
                self.register_parameter(f"local_{key}", None)
                continue
            shared = full.data[:, :num_shared].clone() if num_shared else None
            self.register_parameter(f"shared_{key}", nn.Parameter(shared) if shared is not None else None)
            local = nn.Parameter(full.data[:, lo:lo + self.num_local].clone())
            local.allreduce = False  # DeepSpeed's expert tags (deepspeed.moe.utils.is_moe_param)
            local.group_name = name
            if zero3_group is not None:  # ZeRO-3: partition inside the expert-data-parallel group
                local.ds_zero_placement_family = ZERO3_FAMILY
                local.ds_zero_partition_group_name = name
                local.ds_zero_partition_process_group = zero3_group
            self.register_parameter(f"local_{key}", local)

    def no_weight_decay(self) -> set[str]:
        return {"shared_b1", "shared_b2", "local_b1", "local_b2"}

    def local_parameters(self) -> dict[str, torch.Tensor]:
        return {f"local_{k}": p for k in _STACK_KEYS if (p := getattr(self, f"local_{k}")) is not None}

    def forward(self, x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, act, impl: str | None):
        """x (T, D); ids (T, S+k) global expert slots g·(S+E)+j (shared first, as GroupedTokenMoE
        builds them); gates (T, S+k) → (T, D) = Σ gates · expert(x)."""
        from unif2ace.model.moe import dropless

        s, e, el = self.num_shared, self.num_routed, self.num_local
        per_group = s + e
        g = self.local_w1.shape[0]
        f, d = self.local_w1.shape[2], self.local_w1.shape[3]
        out = x.new_zeros(x.shape)
        if s:
            sid = (ids[:, :s] // per_group) * s + ids[:, :s] % per_group
            out = out + dropless.dropless_moe(
                x, sid, gates[:, :s], self.shared_w1.reshape(g * s, f, d), self.shared_w2.reshape(g * s, f, d), act,
                _flat(self.shared_b1), _flat(self.shared_b2), impl=impl)[0]
        rid = ids[:, s:]
        k = rid.shape[1]
        grp, j = rid // per_group, rid % per_group - s
        owner = (j // el).reshape(-1)
        lid = (grp * el + j % el).reshape(-1)
        # Pairs sorted by owning rank (stable: token order kept inside a rank's block).
        order = torch.sort(owner, stable=True).indices
        send = torch.bincount(owner, minlength=self.ep_size)
        recv = _exchange_counts(send, self.group)
        token = torch.div(order, k, rounding_mode="floor")
        xs = x.index_select(0, token)
        xr = _all_to_all(xs, recv, send, self.group)
        lr = _all_to_all_plain(lid.index_select(0, order), recv, send, self.group)
        yr = dropless.dropless_moe(xr, lr.view(-1, 1), xr.new_ones(xr.shape[0], 1), self.local_w1.reshape(g * el, f, d),
                                   self.local_w2.reshape(g * el, f, d), act, _flat(self.local_b1),
                                   _flat(self.local_b2), impl=impl)[0]
        ys = _all_to_all(yr, send, recv, self.group)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        y = ys.index_select(0, inverse).view(x.shape[0], k, d)
        return out + torch.bmm(gates[:, s:].to(y.dtype).unsqueeze(1), y).squeeze(1)


def _flat(b: torch.Tensor | None) -> torch.Tensor | None:
    return None if b is None else b.reshape(-1, b.shape[-1])


def _exchange_counts(send: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def _all_to_all(t: torch.Tensor, out_counts: torch.Tensor, in_counts: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-to-all of rows: rank r gets ``in_counts[r]`` of our rows and we get
    ``out_counts[q]`` rows from each rank q. Backward is the reverse exchange."""
    # The functional collective (torch's replacement for the deprecated torch.distributed.nn one).
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    return all_to_all_single_autograd(t.contiguous(), out_counts.tolist(), in_counts.tolist(), group)


def _all_to_all_plain(t: torch.Tensor, out_counts: torch.Tensor, in_counts: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    out = t.new_empty(int(out_counts.sum()), *t.shape[1:])
    dist.all_to_all_single(out, t.contiguous(), out_counts.tolist(), in_counts.tolist(), group=group)
    return out


# --------------------------------------------------------------------------- applying EP


def apply(model: nn.Module, ep_size: int, zero_stage: int = 2) -> list[str]:
    """Shard every token MoE of ``model`` over expert-parallel groups of ``ep_size`` ranks
    (creates DeepSpeed's expert / expert-data-parallel groups). Returns the sharded module names.
    ``zero_stage=3`` adds ZeRO-3's placement attributes; a model built under ``zero.Init`` is
    handled (each stack gathered for slicing, the new parameters partitioned)."""
    import torch.distributed as dist
    from deepspeed import zero
    from deepspeed.utils import groups

    from unif2ace.model.moe.token_moe import ExpertStack, GroupedTokenMoE

    world = dist.get_world_size()
    if ep_size < 1 or world % ep_size:
        raise ExpertParallelError(f"{EP_KEY}={ep_size} must divide the number of ranks ({world})")
    moes = [(n, m) for n, m in model.named_modules() if isinstance(m, GroupedTokenMoE)]
    if not moes:
        raise ExpertParallelError(f"{EP_KEY}={ep_size} but the model has no token MoE (model.moe.enabled=false)")
    name = group_name(ep_size)
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    group = groups._get_expert_parallel_group(name)
    rank = groups._get_expert_parallel_rank(name)
    zero3_group = groups._get_expert_data_parallel_group(name) if zero_stage == 3 else None
    for mod_name, moe in moes:
        if not isinstance(moe.experts, ExpertStack):
            raise ExpertParallelError(f"{mod_name}: already expert-parallel")
        if moe.cfg.backend == "megablocks":
            raise ExpertParallelError("model.moe.backend=megablocks has its own expert parallelism; use backend=torch "
                                      "with expert_parallel_size")
        partitioned = [p for p in moe.experts.parameters() if hasattr(p, "ds_id")]
        if partitioned and zero_stage != 3:
            raise ExpertParallelError(f"{mod_name}: parameters are ZeRO-3 partitioned but zero_stage={zero_stage}")
        # modifier_rank=None: every rank reads the whole stack, none writes it back
        with zero.GatheredParameters(partitioned, modifier_rank=None, enabled=bool(partitioned)):
            sharded = ShardedExperts(moe.experts, moe.num_shared, moe.num_routed, ep_size, rank, group, name,
                                     zero3_group)
        moe.experts = sharded
        if partitioned:
            _convert_zero_init(partitioned[0], sharded)
    log.info("expert parallel: %d token-MoE layers, %d of %d routed experts per group on this rank (ep rank %d)",
             len(moes), moes[0][1].experts.num_local, moes[0][1].num_routed, rank)
    return [n for n, _ in moes]


def _convert_zero_init(template: nn.Parameter, sharded: ShardedExperts) -> None:
    """Partition ``sharded``'s new parameters as ``zero.Init`` would have: the shared experts over
    the data-parallel group, the local ones over ``ds_zero_partition_process_group`` (the
    expert-data-parallel group). ``convert_to_zero_parameters`` is the closure every ZeRO-3
    parameter carries (what DeepSpeed's AutoEP uses for its replacement experts); same order on
    every rank, so the ds_ids agree."""
    template.convert_to_zero_parameters(param_list=list(sharded.parameters()))


def check_zero3_placement(model: nn.Module) -> None:
    """Raise unless every local expert parameter is ZeRO-3-partitioned over exactly its
    expert-data-parallel group (a parameter partitioned over all ranks would reduce-scatter
    different ranks' experts into each other)."""
    import torch.distributed as dist
    from deepspeed.utils import groups

    for mod_name, m in sharded_modules(model):
        want = dist.get_process_group_ranks(groups._get_expert_data_parallel_group(m.group_name))
        for key, p in m.local_parameters().items():
            pg = getattr(p, "ds_process_group", None)
            got = dist.get_process_group_ranks(pg) if pg is not None else None
            if got != want:
                raise ExpertParallelError(f"{mod_name}.{key}: ZeRO-3 partition group {got}, expected the "
                                          f"expert-data-parallel group {want}")


def is_zero3(model: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for _, m in sharded_modules(model) for p in m.local_parameters().values())


def sharded_modules(model: nn.Module) -> list[tuple[str, ShardedExperts]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ShardedExperts)]


def ep_size_of(model: nn.Module) -> int:
    mods = sharded_modules(model)
    return mods[0][1].ep_size if mods else 1


def engine_class():
    """DeepSpeedEngine that enables its expert-aware paths for our tagged parameters."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    class ExpertParallelEngine(DeepSpeedEngine):
        """``has_moe_layers`` is set only for DeepSpeed's own MoE / AutoEP classes; everything it
        switches on (per-group gradient reduction, MoE optimiser groups, expert-group broadcast)
        works from the parameter tags, which ``apply`` sets."""

        def _configure_distributed_model(self, model):
            mods = sharded_modules(model)
            super()._configure_distributed_model(model)
            if mods:
                self.has_moe_layers = True
                self.num_experts = [m.num_routed for _, m in mods]

    return ExpertParallelEngine


def initialize(model: nn.Module, optimizer, lr_scheduler, config: dict):
    """``deepspeed.initialize`` for an EP model (same arguments, our engine class)."""
    from deepspeed import set_optimizer_flags
    from deepspeed.runtime.config import DeepSpeedConfig

    config_class = DeepSpeedConfig(config, None)
    set_optimizer_flags(config_class, model)
    engine = engine_class()(args=None, model=model, optimizer=optimizer, model_parameters=None,
                            lr_scheduler=lr_scheduler, dist_init_required=False, config=config,
                            config_class=config_class)
    return engine


def optimizer_groups(groups_: list[dict]) -> list[dict]:
    """Our AdamW groups split the DeepSpeed way: expert parameters in their own ``moe`` groups."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    named = [{**g, "name": g.get("name", f"group{i}")} for i, g in enumerate(groups_)]
    return [g for g in split_params_into_different_moe_groups_for_optimizer(named) if g["params"]]


# --------------------------------------------------------------------------- checkpoints


def local_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's routed experts, keyed by full parameter name. Under ZeRO-3 a collective of
    the expert-data-parallel group (the partitions are gathered)."""
    from deepspeed import zero

    named = {f"{n}.{k}": p for n, m in sharded_modules(model) for k, p in m.local_parameters().items()}
    partitioned = [p for p in named.values() if hasattr(p, "ds_id")]
    with zero.GatheredParameters(partitioned, modifier_rank=None, enabled=bool(partitioned)):
        return {k: p.detach().to("cpu", copy=True).contiguous() for k, p in named.items()}


def gather_expert_shards(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Collective. Every EP rank's local experts, in EP-rank order, on global rank 0 ([] elsewhere
    and for a model without EP)."""
    import torch.distributed as dist
    from deepspeed.utils import groups

    mods = sharded_modules(model)
    if not mods:
        return []
    mine = (groups._get_expert_parallel_rank(mods[0][1].group_name), local_state_dict(model))
    got = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, got, dst=0)
    if got is None:
        return []
    by_rank = {}
    for ep_rank, sd in got:
        by_rank.setdefault(ep_rank, sd)
    return [by_rank[r] for r in range(mods[0][1].ep_size)]


def save_expert_shards(model: nn.Module, directory: str | os.PathLike) -> Path | None:
    """Write this rank's routed experts (one file per expert-parallel rank; the other members of
    an expert-data-parallel group hold identical copies and write nothing). Call on every rank.

    Under ZeRO-3 each rank's ZeRO files already hold its experts' partitions; only the layout
    (``LAYOUT_FILE``: EP size, each global rank's EP rank) is written, by rank 0."""
    from deepspeed.utils import groups
    from safetensors.torch import save_file

    mods = sharded_modules(model)
    if not mods:
        return None
    name = mods[0][1].group_name
    if is_zero3(model):
        return _save_layout(mods[0][1], directory)
    if groups._get_expert_data_parallel_rank(name) != 0:
        return None
    ep_rank = groups._get_expert_parallel_rank(name)
    path = Path(directory) / SHARD_FILE.format(rank=ep_rank)
    with atomic_path(path) as tmp:
        save_file(local_state_dict(model), str(tmp), metadata={"ep_size": str(mods[0][1].ep_size),
                                                              "ep_rank": str(ep_rank)})
    return path


def load_expert_shards(model: nn.Module, directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Copy this rank's routed experts back from ``directory`` into ``model``; returns what was
    loaded. A missing file, another EP size or a shape mismatch is an error naming the file."""
    from safetensors import safe_open

    mods = sharded_modules(model)
    if not mods:
        return {}
    first = mods[0][1]
    path = Path(directory) / SHARD_FILE.format(rank=first.ep_rank)
    if not path.exists():
        raise ExpertParallelError(f"{path}: missing (this rank's experts; was the checkpoint written with "
                                  f"{EP_KEY}={first.ep_size}?)")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("ep_size") != str(first.ep_size):
            raise ExpertParallelError(f"{path}: written with {EP_KEY}={meta.get('ep_size')}, this run uses "
                                      f"{first.ep_size}")
        params = dict(model.named_parameters())
        loaded = {}
        for key in f.keys():
            if key not in params:
                raise ExpertParallelError(f"{path}: unexpected tensor {key}")
            t = f.get_tensor(key)
            if t.shape != params[key].shape:
                raise ExpertParallelError(f"{path}: {key} has shape {tuple(t.shape)}, the model "
                                          f"{tuple(params[key].shape)}")
            with torch.no_grad():
                params[key].copy_(t)
            loaded[key] = t
    missing = set(local_state_dict(model)) - set(loaded)
    if missing:
        raise ExpertParallelError(f"{path}: lacks {sorted(missing)[:4]}")
    return loaded


def restore_expert_shards(engine, directory: str | os.PathLike) -> None:
    """After ``engine.load_checkpoint``: put this rank's experts back from its own shard file.

    DeepSpeed's checkpoint writer knows only its own MoE classes: it loads rank 0's module state
    into every rank, so on the other EP ranks the expert weights now hold rank 0's experts. ZeRO-2
    restores each rank's fp32 master partition from that rank's own optimiser file, which does hold
    its experts. So: copy the shard into the weights, and check that the fp32 masters DeepSpeed
    restored for the expert groups agree with it — a mismatch refuses the resume instead of
    training on another rank's experts."""
    import torch.distributed as dist

    model = engine.module
    if not sharded_modules(model):
        return
    if is_zero3(model):
        problem = _layout_mismatch(sharded_modules(model)[0][1], directory)
        bad = torch.tensor([int(problem is not None)])
        dist.all_reduce(bad)
        if int(bad):
            raise ExpertParallelError(problem or f"{Path(directory) / LAYOUT_FILE}: another rank's expert layout "
                                                 f"differs from this run's; refusing to resume")
        return
    saved = load_expert_shards(model, directory)
    wrong = _master_mismatches(engine, saved)
    bad = torch.tensor([len(wrong)])
    dist.all_reduce(bad)
    if int(bad):
        raise ExpertParallelError(f"{directory}: the optimiser's fp32 master weights of {int(bad)} expert "
                                  f"parameter(s) differ from the expert shards (here: {wrong[:3]}); refusing to resume")


def _save_layout(first: ShardedExperts, directory: str | os.PathLike) -> Path | None:
    """Collective. Rank 0 writes ``LAYOUT_FILE``: the EP size and every global rank's EP rank."""
    import json

    import torch.distributed as dist

    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, first.ep_rank)
    if dist.get_rank() != 0:
        return None
    path = Path(directory) / LAYOUT_FILE
    atomic_write_text(path, json.dumps({EP_KEY: first.ep_size, "zero_stage": 3, "world_size": len(ranks),
                                        "ep_rank_of_rank": ranks}, indent=1))
    return path


def read_layout(directory: str | os.PathLike) -> dict:
    return expert_shards.read_layout(directory, ExpertParallelError)


def _layout_mismatch(first: ShardedExperts, directory: str | os.PathLike) -> str | None:
    """Why this rank cannot resume its experts from the ZeRO-3 checkpoint in ``directory`` (None: it can)."""
    import torch.distributed as dist

    path = Path(directory) / LAYOUT_FILE
    if not path.exists():
        return (f"{path}: missing (the checkpoint was not written with ZeRO-3 expert parallelism; this run uses "
                f"{EP_KEY}={first.ep_size} under ZeRO-3)")
    layout = read_layout(directory)
    if layout.get(EP_KEY) != first.ep_size:
        return f"{path}: written with {EP_KEY}={layout.get(EP_KEY)}, this run uses {first.ep_size}"
    mine = layout.get("ep_rank_of_rank", [])
    rank = dist.get_rank()
    if rank >= len(mine) or mine[rank] != first.ep_rank:
        return (f"{path}: rank {rank} held the experts of EP rank {mine[rank] if rank < len(mine) else None}, "
                f"now {first.ep_rank}; refusing to resume")
    return None


def _master_mismatches(engine, saved: dict[str, torch.Tensor]) -> list[str]:
    """Names of expert parameters whose ZeRO-1/2 fp32 master copy differs from ``saved`` (cast to
    the saved dtype, which is how DeepSpeed derives the weights from the masters)."""
    opt = engine.optimizer
    groups = getattr(opt, "round_robin_bit16_groups", None)
    masters = getattr(opt, "single_partition_of_fp32_groups", None)
    moe = getattr(opt, "is_moe_param_group", None)
    if groups is None or masters is None or moe is None:
        raise ExpertParallelError(f"expert parallelism needs DeepSpeed's ZeRO-1/2 optimiser, got {type(opt).__name__}")
    names = {id(p): n for n, p in engine.module.named_parameters()}
    wrong = []
    for params, master, is_moe in zip(groups, masters, moe):
        if not is_moe:
            continue
        offset = 0
        for p in params:
            n = p.numel()
            want = saved[names[id(p)]].reshape(-1)
            if not torch.equal(master[offset:offset + n].to(want.dtype).cpu(), want):
                wrong.append(names[id(p)])
            offset += n
    return wrong
