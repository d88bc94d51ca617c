"""Forward+backward time of the grouped token MoE (torch backend) against its baselines, on CPU.

    DS_ACCELERATOR=cpu python benchmarks/bench_moe.py                  # 4096 tokens, D=512, F=512
    python benchmarks/bench_moe.py --threads 1      # on a loaded machine: no OpenMP barrier stalls
    python benchmarks/bench_moe.py --tokens 8192 --hidden 1024 --repeats 9

Compared, all with biases, GELU-new (fused tanh GELU), 1 shared/residual + 8 routed experts, top-4:
  dense        a dense MLP of width (shared + top_k)·expert_ffn: the same active matmul FLOPs
  ours         GroupedTokenMoE, backend=torch, 2 groups, dropless (sort by expert), both
               implementations: blocked (fused per expert; the CPU default) and grouped
               (torch._grouped_mm, the GPU default)
  naive loop   the usual per-expert Python loop (index → expert → index_add), 2 groups
  deepspeed    deepspeed.moe.layer.MoE (capacity-based top-k gating, capacity_factor 1.0,
               tokens over capacity dropped; use_residual=True plays the shared expert), 1 group
Half of the sequences are T2I (generation group) and half MMU (understanding group); the
DeepSpeed layer has no groups, so it routes all tokens over one group of 8 (same FLOPs).
Methods run round-robin so background load hits all of them alike; the table reports median
wall time and median process CPU time (on a shared machine CPU time is the steadier number),
each also relative to the dense MLP.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch
from torch import nn
from transformers.activations import ACT2FN

from unif2ace.config import TokenMoEConfig
from unif2ace.model.context import Context
from unif2ace.model.mlp import DenseMLP
from unif2ace.model.moe.token_moe import GroupedTokenMoE
from unif2ace.tokens import TASK_MMU, TASK_T2I

ACT = "gelu_pytorch_tanh"  # = gelu_new, fused; what GroupedTokenMoE runs for gelu_new — same for all


def expert_mlp(d: int, f: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, f), ACT2FN[ACT], nn.Linear(f, d))


class NaiveLoopMoE(nn.Module):
    """Two groups; each: shared experts on all its tokens + a per-expert loop over routed ones."""

    def __init__(self, d: int, f: int, shared: int, routed: int, k: int):
        super().__init__()
        self.k = k
        self.routers = nn.ModuleList(nn.Linear(d, routed, bias=False) for _ in range(2))
        self.shared = nn.ModuleList(nn.ModuleList(expert_mlp(d, f) for _ in range(shared)) for _ in range(2))
        self.routed = nn.ModuleList(nn.ModuleList(expert_mlp(d, f) for _ in range(routed)) for _ in range(2))

    def forward(self, h: torch.Tensor, ctx: Context):
        b, l, d = h.shape
        x = h.reshape(-1, d)
        group = ctx.task.view(b, 1).expand(b, l).reshape(-1)
        out = torch.zeros_like(x)
        for g in range(2):
            rows = (group == g).nonzero().squeeze(1)
            xg = x[rows]
            yg = sum(e(xg) for e in self.shared[g])
            gate, idx = self.routers[g](xg).softmax(-1).topk(self.k, -1)
            for j, expert in enumerate(self.routed[g]):
                tok, slot = (idx == j).nonzero(as_tuple=True)
                if tok.numel():
                    yg = yg.index_add(0, tok, gate[tok, slot].unsqueeze(1) * expert(xg[tok]))
            out = out.index_copy(0, rows, yg)
        return out.view(b, l, d)


def deepspeed_moe(d: int, f: int, routed: int, k: int) -> nn.Module:
    import deepspeed
    from deepspeed.moe.layer import MoE

    # The layer wants expert-parallel process groups even on one process: gloo, world size 1.
    for key, val in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533"), ("RANK", "0"),
                     ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, val)
    deepspeed.init_distributed(dist_backend="gloo")
    moe = MoE(hidden_size=d, expert=expert_mlp(d, f), num_experts=routed, ep_size=1, k=k,
              capacity_factor=1.0, use_residual=True, drop_tokens=True)
    moe.set_deepspeed_parallelism()
    return moe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--expert-ffn", type=int, default=512)
    ap.add_argument("--shared", type=int, default=1)
    ap.add_argument("--routed", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-deepspeed", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tokens % args.seq_len or (args.tokens // args.seq_len) % 2:
        ap.error("--tokens must be an even number of --seq-len sequences (half T2I, half MMU)")
    torch.manual_seed(0)
    d, f, s, e, k = args.hidden, args.expert_ffn, args.shared, args.routed, args.top_k
    b = args.tokens // args.seq_len
    h = torch.randn(b, args.seq_len, d)
    ctx = Context(torch.tensor([TASK_T2I, TASK_MMU] * (b // 2)), torch.ones(b, args.seq_len, dtype=torch.bool))
    grad = torch.randn_like(h)

    def ours(impl: str) -> GroupedTokenMoE:
        torch.manual_seed(1)
        return GroupedTokenMoE(d, TokenMoEConfig(enabled=True, num_shared=s, num_routed=e, top_k=k, expert_ffn=f,
                                                 backend="torch", torch_impl=impl))

    methods: dict[str, callable] = {
        "dense (same active FLOPs)": (lambda m=DenseMLP(d, (s + k) * f, ACT): m(h)[0]),
        "ours: torch, blocked (CPU default)": (lambda m=ours("blocked"): m(h, ctx)[0]),
        "ours: torch, grouped (_grouped_mm)": (lambda m=ours("grouped"): m(h, ctx)[0]),
        "naive per-expert loop": (lambda m=NaiveLoopMoE(d, f, s, e, k): m(h, ctx)),
    }
    if not args.skip_deepspeed:
        ds = deepspeed_moe(d, f, e, k)
        methods["deepspeed MoE (capacity 1.0)"] = lambda: ds(h)[0]

    wall: dict[str, list[float]] = {n: [] for n in methods}
    cpu: dict[str, list[float]] = {n: [] for n in methods}
    for r in range(args.repeats + 1):  # the first round warms up (allocator, probes, lazy init)
        for name, fn in methods.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn().backward(grad)
            if r:
                wall[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
    print(f"tokens={args.tokens} hidden={d} expert_ffn={f} shared={s} routed={e} top_k={k} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats}")
    print("forward+backward, median over repeats; CPU = process CPU time (robust to other load on the machine)")
    print(f"{'method':36s} {'wall ms':>9s} {'× dense':>8s} {'CPU ms':>9s} {'× dense':>8s}")
    dw = statistics.median(wall["dense (same active FLOPs)"])
    dc = statistics.median(cpu["dense (same active FLOPs)"])
    for name in methods:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:36s} {w:9.1f} {w / dw:8.2f} {c:9.1f} {c / dc:8.2f}")

if __name__ == "__main__":
    main()
