"""Supervised tokens per second of the synthface recipe: where the training compute goes.

    python benchmarks/bench_supervised_tokens.py --shards runs/demo/shards
    python benchmarks/bench_supervised_tokens.py --shards runs/demo/shards --rounds 3 --steps 8 --json runs/bench_sup.json

A supervised token is one that carries loss: a masked image code of a T2I row, an answer token
(or the final <eot>) of an MMU row. Two data settings train the same model (the recipe as given,
plain torch forward + backward + AdamW, one process) on the same shards:

  before  data.max_qa_turns=4, data.trim_padding=false   every row padded to the full length,
                                                          4 of a face's QA pairs per VQA row
  after   data.max_qa_turns=12, data.trim_padding=true    a face's QA pairs share its row, batches
                                                          cut to their longest real row (the recipe)

Settings alternate in rounds so background load hits both alike; the table gives the median
tokens/s (all positions computed), supervised tokens/s, and supervised tokens/s of the
understanding (MMU) rows alone — answers and captions, where packed QA turns add supervision —
of each, and their ratios. One run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


import torch

from unif2ace.config import load_config
from unif2ace.data.loader import ShardLoader
from unif2ace.losses import total_loss
from unif2ace.model.unif2ace import UniF2ace
from unif2ace.tokens import IGNORE, TASK_MMU

from _report import report

SETTINGS = {"before": ["data.max_qa_turns=4", "data.trim_padding=false"],
            "after": ["data.max_qa_turns=12", "data.trim_padding=true"]}


def supervised(batch: dict) -> tuple[int, int]:
    """(all supervised tokens, those of MMU rows: answers, captions and their <eot>)."""
    sup = batch.labels != IGNORE
    return int(sup.sum()), int(sup[batch.task == TASK_MMU].sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="precomputed shards of the recipe (e.g. runs/demo/shards)")
    ap.add_argument("--recipe", default="synthface")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per setting per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="key=value overrides for both settings")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {}
    for name, extra in SETTINGS.items():
        cfg = load_config(args.recipe, [f"data.shards={args.shards}", *extra, *args.overrides])
        torch.manual_seed(cfg.train.seed)
        model = UniF2ace(cfg.model).train()
        runs[name] = {"cfg": cfg, "model": model, "opt": torch.optim.AdamW(model.parameters(), lr=cfg.train.lr),
                      "it": iter(ShardLoader(cfg.data, cfg.model, 0, 1, cfg.train.micro_batch, loss_cfg=cfg.loss)),
                      "tok": [], "sup": [], "mmu": []}

    def step(r) -> tuple[int, tuple[int, int], float]:
        b = next(r["it"])
        t = time.perf_counter()
        out = r["model"](b.input_ids, b.task, features=b.features)
        loss, _ = total_loss(out, b, r["model"].layout, r["cfg"].loss)
        r["opt"].zero_grad(set_to_none=True)
        loss.backward()
        r["opt"].step()
        return b.input_ids.numel(), supervised(b), time.perf_counter() - t

    for r in runs.values():
        step(r)  # warm-up
    for _ in range(args.rounds):
        for r in runs.values():
            tok = sup = mmu = 0
            secs = 0.0
            for _ in range(args.steps):
                a, (s, m), dt = step(r)
                tok, sup, mmu, secs = tok + a, sup + s, mmu + m, secs + dt
            r["tok"].append(tok / secs)
            r["sup"].append(sup / secs)
            r["mmu"].append(mmu / secs)
    res: dict = {"recipe": args.recipe, "micro_batch": runs["after"]["cfg"].train.micro_batch,
                 "rounds x steps": f"{args.rounds} x {args.steps}"}
    for name, r in runs.items():
        res[f"{name}: tokens/s"] = statistics.median(r["tok"])
        res[f"{name}: supervised tokens/s"] = statistics.median(r["sup"])
        res[f"{name}: supervised understanding tokens/s"] = statistics.median(r["mmu"])
    for what in ("supervised tokens/s", "supervised understanding tokens/s"):
        res[f"after / before, {what}"] = res[f"after: {what}"] / res[f"before: {what}"]
    report(res, args.json, digits=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
