"""Data pipeline throughput: offline precompute (images/s) and the streaming loader (samples/s)
against what a ``synthface``-recipe training step consumes.

    python benchmarks/bench_data.py                      # 256 SynthFace images, CPU
    python benchmarks/bench_data.py --num 1024 --workers 2 --json runs/bench_data.json

Steps, all on the built-in SynthFace set at 64×64:
1. render N images; train the 1024-piece SentencePiece tokenizer; save a randomly initialised
   ``MagvitConfig.synthface()`` tokenizer (speed does not depend on the weights);
2. precompute: MAGVIT codes + tiny CLIP (random-init fallback) + face ('aligned', 'none'
   fallback: no ONNX models here) + noise, batched — images/s end to end and per stage;
3. loader: ``ShardLoader`` over those shards with the recipe's micro batch — samples/s, in the
   training process and with ``--loader-workers`` DataLoader workers;
4. training step: forward + backward + AdamW of ``UniF2ace(load_config("synthface").model)``
   on loader batches — samples/s; headroom = loader / step (target ≥ 20×).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


import torch

from unif2ace.config import load_config

from _report import report


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=256, help="SynthFace images")
    ap.add_argument("--workers", type=int, default=1, help="precompute worker processes")
    ap.add_argument("--batch-size", type=int, default=32, help="precompute batch")
    ap.add_argument("--loader-batches", type=int, default=300)
    ap.add_argument("--loader-workers", type=int, default=2, help="also time the loader with this many workers")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--dir", default="", help="work directory (default: a temp dir)")
    ap.add_argument("--json", default="", help="also write the numbers here")
    args = ap.parse_args(argv)

    from unif2ace import synthface
    from unif2ace.data.loader import ShardLoader
    from unif2ace.data.precompute import PrecomputeConfig, _encode_batch, load_models, run
    from unif2ace.data.sources import SourceConfig, load_records, open_image, texts_for_tokenizer
    from unif2ace.features import FeatureConfig
    from unif2ace.losses import total_loss
    from unif2ace.model.unif2ace import UniF2ace
    from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2
    from unif2ace.tokenizers.text import train_sentencepiece

    cfg = load_config("synthface")
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_data_"))
    res: dict = {"num_images": args.num, "threads": torch.get_num_threads(), "workers": args.workers}

    t = time.perf_counter()
    synthface.write_dataset(work / "sf", num=args.num, progress=False)
    res["synthface_images_per_s"] = _rate(args.num, time.perf_counter() - t)
    recs = load_records(SourceConfig(root=str(work / "sf")))
    train_sentencepiece(texts_for_tokenizer(recs), work / "spm.model", vocab_size=cfg.model.text_vocab_size)
    torch.manual_seed(0)
    MagvitV2(MagvitConfig.synthface()).save_pretrained(work / "magvit")
    feats = FeatureConfig.from_dict({"clip": {"model": "UniF2ace-Tiny-CLIP", "fallback": "random-init"},
                                     "face": {"mode": "aligned", "fallback": "none"}, "noise": {"dim": 64}})
    pcfg = PrecomputeConfig(out=str(work / "shards"), image_tokenizer=str(work / "magvit"),
                            text_tokenizer=str(work / "spm.model"), image_size=64, shard_size=128,
                            batch_size=args.batch_size, workers=args.workers)

    # Per stage, one batch at a time, models already loaded.
    models = load_models(pcfg, feats)
    sample = recs[: min(len(recs), 128)]
    t = time.perf_counter()
    images = [open_image(r)[0] for r in sample]
    res["decode_images_per_s"] = _rate(len(sample), time.perf_counter() - t)
    from unif2ace.data.precompute import _to_tensor

    with torch.inference_mode():
        t = time.perf_counter()
        for s in range(0, len(images), args.batch_size):
            models.image_tok.encode(_to_tensor(images[s:s + args.batch_size], 64))
        res["magvit_images_per_s"] = _rate(len(images), time.perf_counter() - t)
    t = time.perf_counter()
    for s in range(0, len(images), args.batch_size):
        models.encoders.encode(images[s:s + args.batch_size], [r.id for r in sample[s:s + args.batch_size]])
    res["encoders_images_per_s"] = _rate(len(images), time.perf_counter() - t)
    _encode_batch(models, pcfg, sample[:2], images[:2])
    del models

    # End to end (decode + tokenize + encode + write), models loaded before the clock starts.
    summary = run(pcfg, SourceConfig(root=str(work / "sf")), feats, progress=False, model_cfg=cfg.model)
    res["precompute_images_per_s"] = summary["images_per_s"]
    res["num_samples"] = summary["num_samples"]

    # Loader.
    cfg.data.shards = str(work / "shards")
    cfg.data.split = ""
    mb = cfg.train.micro_batch
    for nw in sorted({0, args.loader_workers}):
        cfg.data.num_workers = nw
        loader = ShardLoader(cfg.data, cfg.model, 0, 1, mb, loss_cfg=cfg.loss)
        it = iter(loader)
        for _ in range(1 + 2 * nw):  # worker start-up and prefetch outside the clock
            next(it)
        t = time.perf_counter()
        for _ in range(args.loader_batches):
            next(it)
        key = "loader_samples_per_s" if nw == 0 else f"loader_{nw}_workers_samples_per_s"
        res[key] = _rate(args.loader_batches * mb, time.perf_counter() - t)
        del it
    cfg.data.num_workers = 0
    loader = ShardLoader(cfg.data, cfg.model, 0, 1, mb, loss_cfg=cfg.loss)
    it = iter(loader)

    # Training step of the synthface recipe on loader batches.
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)

    def step(batch):
        out = model(batch.input_ids, batch.task, features=batch.features)
        loss, _ = total_loss(out, batch, model.layout, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up
        step(next(it))
    batches = [next(it) for _ in range(args.steps)]
    t = time.perf_counter()
    for b in batches:
        step(b)
    res["train_step_samples_per_s"] = _rate(args.steps * mb, time.perf_counter() - t)
    res["micro_batch"] = mb
    res["headroom"] = res["loader_samples_per_s"] / res["train_step_samples_per_s"]

    return report(res, args.json, digits=1)


if __name__ == "__main__":
    main()
