"""Training steps/s from precomputed shards vs encoding images inside every step (Show-o's design).

    python benchmarks/bench_precompute_vs_inline.py                       # synthface recipe, CPU
    python benchmarks/bench_precompute_vs_inline.py --rounds 5 --steps 10 --json runs/bench_pvi.json
    python benchmarks/bench_precompute_vs_inline.py --recipe unif2ace-1.8b --magvit showlab \
        model.num_layers=4 --device cuda                                  # paper tokenizer, on a GPU

Both variants train the same model (same recipe, same seed, same batch size, forward + backward +
AdamW, plain torch so only the data path differs) on the same SynthFace images:

  precomputed  ShardLoader batches: image codes and text ids were computed once by
               unif2ace.data.precompute (what our training does)
  inline       every step decodes the PNGs, runs the MAGVIT-v2 image tokenizer (no grad) and the
               text tokenizer, then builds the T2I / MMU rows with unif2ace.tokens (Show-o)

The image tokenizer is randomly initialised (its speed does not depend on its weights) with the
preset that matches the recipe (synthface: 64² → 64 codes of 8 bits). Variants alternate in
rounds so background load hits both alike; the table reports the median steps/s of each and the
ratio precomputed / inline. One run, one process.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path


import torch

from unif2ace.config import load_config

from _report import report


def inline_batches(records, text_tok, magvit, cfg, image_size: int, device, seed: int = 0):
    """Show-o's data path: decode → tokenize images and text → build rows, every step."""
    from unif2ace.data.precompute import images_to_tensor
    from unif2ace.data.sources import open_image
    from unif2ace.tokens import TASK_MMU, TASK_T2I, TokenLayout, build_mmu, build_t2i, collate, mask_image_codes, mask_ratio

    layout = TokenLayout.from_model_config(cfg.model)
    gen = torch.Generator().manual_seed(seed)
    mb, pos = cfg.train.micro_batch, 0
    while True:
        recs = [records[(pos + j) % len(records)] for j in range(mb)]
        pos += mb
        images = [open_image(r)[0] for r in recs]
        with torch.no_grad():
            codes = magvit.encode(images_to_tensor(images, image_size).to(device)).long().cpu()
        rows, tasks, ratios = [], [], []
        for j, (r, c) in enumerate(zip(recs, codes)):
            if j < mb * cfg.data.t2i_fraction:
                want = mask_ratio(torch.rand(1, generator=gen), cfg.loss.schedule)
                masked, applied = mask_image_codes(c[None], want, generator=gen)
                rows.append(build_t2i(layout, text_tok.encode(r.caption), c, masked[0], cfg.model.text_len))
                tasks.append(TASK_T2I)
                ratios.append(float(applied[0]))
            else:
                qa = r.qa[: cfg.data.max_qa_turns]
                turns = [(text_tok.encode_question(q.question), text_tok.encode_answer(q.answer)) for q in qa]
                rows.append(build_mmu(layout, c, turns or [(text_tok.encode("Describe."), text_tok.encode(r.caption))],
                                      cfg.model.text_len))
                tasks.append(TASK_MMU)
                ratios.append(0.0)
        batch = collate(rows, tasks)
        batch.mask_ratio = torch.tensor(ratios)
        batch.features = {}
        yield batch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="synthface")
    ap.add_argument("--magvit", default="", help="MAGVIT preset (default: the recipe's name if it is a preset)")
    ap.add_argument("--num", type=int, default=64, help="SynthFace images")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--dir", default="", help="work directory (default: a temp dir)")
    ap.add_argument("--json", default="")
    ap.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from unif2ace import synthface
    from unif2ace.data.loader import ShardLoader
    from unif2ace.data.precompute import PrecomputeConfig, run
    from unif2ace.data.sources import SourceConfig, load_records, texts_for_tokenizer
    from unif2ace.features import FeatureConfig
    from unif2ace.losses import total_loss
    from unif2ace.model.unif2ace import UniF2ace
    from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2
    from unif2ace.tokenizers.text import TextTokenizer, train_sentencepiece

    cfg = load_config(args.recipe, args.overrides)
    mcfg = MagvitConfig.preset(args.magvit or args.recipe)
    side = math.isqrt(cfg.model.num_image_tokens)
    image_size = side * 2 ** (len(mcfg.encoder_ch_mult) - 1)
    if 2 ** mcfg.codebook_bits != cfg.model.codebook_size:
        sys.exit(f"MAGVIT preset has {2 ** mcfg.codebook_bits} codes, recipe {cfg.model.codebook_size}")
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_pvi_"))
    device = torch.device(args.device)

    synthface.write_dataset(work / "sf", num=args.num, size=image_size, progress=False)
    recs = load_records(SourceConfig(root=str(work / "sf")))
    train_sentencepiece(texts_for_tokenizer(recs), work / "spm.model", vocab_size=cfg.model.text_vocab_size)
    torch.manual_seed(0)
    MagvitV2(mcfg).save_pretrained(work / "magvit")
    feats = FeatureConfig.from_dict({"clip": {"model": "UniF2ace-Tiny-CLIP", "fallback": "random-init"},
                                     "face": {"mode": "aligned", "fallback": "none"}, "noise": {"dim": 64}})
    pcfg = PrecomputeConfig(out=str(work / "shards"), image_tokenizer=str(work / "magvit"),
                            text_tokenizer=str(work / "spm.model"), image_size=image_size, shard_size=1024)
    t = time.perf_counter()
    run(pcfg, SourceConfig(root=str(work / "sf")), feats, progress=False, model_cfg=cfg.model)
    precompute_s = time.perf_counter() - t

    cfg.data.shards, cfg.data.split = str(work / "shards"), ""
    shard_it = iter(ShardLoader(cfg.data, cfg.model, 0, 1, cfg.train.micro_batch, loss_cfg=cfg.loss))
    magvit = MagvitV2.from_pretrained(work / "magvit").to(device).eval()
    inline_it = inline_batches(recs, TextTokenizer.load(work / "spm.model"), magvit, cfg, image_size, device)

    def trainer():
        torch.manual_seed(cfg.train.seed)
        model = UniF2ace(cfg.model).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)

        def step(batch):
            batch = batch.to(device)
            out = model(batch.input_ids, batch.task, features=batch.features)
            loss, _ = total_loss(out, batch, model.layout, cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return step

    steps = {"precomputed": trainer(), "inline": trainer()}
    sources = {"precomputed": shard_it, "inline": inline_it}
    for name in steps:  # warm-up
        steps[name](next(sources[name]))
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name in steps:
            t = time.perf_counter()
            for _ in range(args.steps):
                steps[name](next(sources[name]))
            rates[name].append(args.steps / (time.perf_counter() - t))
    res = {"recipe": cfg.name, "magvit": args.magvit or args.recipe, "image_size": image_size,
           "micro_batch": cfg.train.micro_batch, "device": str(device), "threads": torch.get_num_threads(),
           "precompute_images_per_s": args.num / precompute_s,
           "precomputed_steps_per_s": statistics.median(rates["precomputed"]),
           "inline_steps_per_s": statistics.median(rates["inline"])}
    res["ratio"] = res["precomputed_steps_per_s"] / res["inline_steps_per_s"]
    return report(res, args.json, digits=3)


if __name__ == "__main__":
    main()
