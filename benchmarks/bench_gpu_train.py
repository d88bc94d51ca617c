"""Training throughput and MFU (DeepSpeed ZeRO-3, one rank), then T2I and MMU inference speed.

    python benchmarks/bench_gpu_train.py --json out.json                       # unif2ace-1.8b, CUDA, bf16
    python benchmarks/bench_gpu_train.py model.num_layers=12 --steps 20        # fewer layers, more steps
    python benchmarks/bench_gpu_train.py --device cpu --recipe tiny --steps 2 --warmup 1 \
        --t2i-batch 2 --mmu-batches 1 2 --new-tokens 4                          # check the code path on CPU

Training: the recipe's model built as ``launchers/train.py`` builds it (``train/engine.py``:
seeded init, our AdamW groups, warm-up + cosine, DeepSpeed with ``--deepspeed``, ZeRO-3 by
default; bf16 on a GPU that has it, activation checkpointing as the recipe says — on in
``unif2ace-1.8b``), fed synthetic batches of the recipe's shapes (half T2I, half MMU rows, cached
features drawn at random), so no data set is needed. ``--warmup`` steps are not timed. Reported:
tokens/s (every position of every row, as the trainer's ``tokens_per_s``), samples/s, step time,
model FLOPs per token and MFU (``unif2ace/train/flops.py``: 6·N_active + 12·L·H·S against the
GPU's dense bf16 peak, ``train.peak_tflops`` to override), peak GPU memory.

Inference, on a bf16 copy of the model (random init: speed does not depend on the weights):
T2I images/s with MaskGIT at ``--t2i-steps`` (classifier-free guidance: cond + uncond rows in
one forward) and MMU decode tokens/s with the KV cache at each of ``--mmu-batches``, decoding
exactly ``--new-tokens`` per row. The median of ``--repeats`` runs after one warm-up run.

One JSON object (stdout, and ``--json PATH``); ``benchmarks/gpu_suite.sh`` runs this on a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_batch(cfg, layout, rows: int, generator) -> dict:
    """``rows`` rows of the recipe's sequence length: even rows T2I (a masked image after a
    caption), odd rows MMU (an image, a question, an answer), with random cached features."""
    import torch

    from unif2ace.tokens import TASK_MMU, TASK_T2I, build_mmu, build_t2i, collate, mask_image_codes

    m = cfg.model
    out, tasks, ratios = [], [], []
    for i in range(rows):
        codes = torch.randint(0, m.codebook_size, (m.num_image_tokens,), generator=generator)
        text = torch.randint(3, m.text_vocab_size, (m.text_len,), generator=generator).tolist()
        if i % 2 == 0:
            masked, ratio = mask_image_codes(codes[None], torch.rand(1, generator=generator), generator)
            out.append(build_t2i(layout, text[: m.text_len - 2], codes, masked[0], m.text_len))
            tasks.append(TASK_T2I)
            ratios.append(float(ratio[0]))
        else:
            half = (m.text_len - 2) // 2
            out.append(build_mmu(layout, codes, [(text[:half], text[half: 2 * half])], m.text_len))
            tasks.append(TASK_MMU)
            ratios.append(0.0)
    batch = collate(out, tasks)
    batch.mask_ratio = torch.tensor(ratios)
    batch.features = random_features(cfg, rows, generator)
    return batch


def random_features(cfg, rows: int, generator) -> dict:
    """Cached-feature stand-ins for the sequence-level MoE's experts (empty when it is off)."""
    import torch

    s = cfg.model.seq_moe
    if not s.enabled:
        return {}
    return {"clip": torch.randn(rows, s.clip_dim, generator=generator),
            "face": torch.randn(rows, s.face_dim, generator=generator),
            "face_found": torch.ones(rows, dtype=torch.bool),
            "noise": torch.randn(rows, s.noise_dim, generator=generator)}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_throughput(cfg, device: str, ds_config: str, steps: int, warmup: int) -> dict:
    import torch

    from unif2ace.losses import total_loss
    from unif2ace.tokens import TokenLayout
    from unif2ace.train import engine as E
    from unif2ace.train.flops import mfu
    from unif2ace.train.metrics import active_matmul_params, device_peak_flops, train_flops_per_token

    dist = E.init_distributed(cfg.train.dist_timeout_s)
    if dist.world_size != 1:
        raise SystemExit("bench_gpu_train.py measures one rank; run it with plain python, not a launcher")
    ds = E.load_ds_config(ds_config, cfg.train, 1, gpu=device == "cuda")
    t0 = time.perf_counter()
    engine = E.build_engine(E.build_model(cfg, ds), cfg.train, ds)
    build_s = time.perf_counter() - t0
    engine.train()
    layout = TokenLayout.from_model_config(cfg.model)
    g = torch.Generator().manual_seed(0)
    # A few distinct batches, cycled: building rows in Python is not what is measured.
    batches = [synthetic_batch(cfg, layout, cfg.train.micro_batch, g).to(dist.device) for _ in range(4)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, t_start = [], None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t_start = time.perf_counter()
        batch = batches[i % len(batches)]
        out = engine(batch.input_ids, batch.task, features=batch.features)
        loss, _ = total_loss(out, batch, layout, cfg.loss)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    _sync(device)
    dt = time.perf_counter() - t_start
    tokens = steps * cfg.train.micro_batch * cfg.model.seq_len
    fpt = train_flops_per_token(engine.module, cfg.model)
    peak = device_peak_flops(cfg.train.peak_tflops) if device == "cuda" else None
    res = {
        "zero_stage": E.zero_stage(ds), "dtype": str(E.model_dtype(ds)).replace("torch.", ""),
        "activation_checkpointing": cfg.model.activation_checkpointing,
        "micro_batch": cfg.train.micro_batch, "seq_len": cfg.model.seq_len, "timed_steps": steps,
        "warmup_steps": warmup, "build_s": round(build_s, 2), "step_time_s": dt / steps,
        "tokens_per_s": tokens / dt, "samples_per_s": steps * cfg.train.micro_batch / dt,
        "params": int(sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())),
        "active_matmul_params": int(active_matmul_params(engine.module)), "flops_per_token": fpt,
        "achieved_tflops": tokens / dt * fpt / 1e12, "peak_tflops": peak / 1e12 if peak else None,
        "mfu": mfu(tokens / dt, fpt, peak) if peak else None,
        "loss_first": losses[0], "loss_last": losses[-1], "all_finite": all(math.isfinite(x) for x in losses),
    }
    if device == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    engine.destroy()
    del engine, batches
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


def inference_speed(cfg, device: str, t2i_steps: int, t2i_batch: int, mmu_batches: list[int],
                    new_tokens: int, repeats: int) -> dict:
    import torch

    from bench_inference import timed
    from unif2ace.inference.mmu import generate_answers, mmu_prompts
    from unif2ace.inference.t2i import generate_codes
    from unif2ace.model.unif2ace import UniF2ace

    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device: seconds instead of minutes on a CPU
        model = UniF2ace(cfg.model)
    model = model.to(dtype).eval()
    m, g = cfg.model, torch.Generator().manual_seed(0)
    res: dict = {"dtype": str(dtype).replace("torch.", "")}

    prompts = [torch.randint(3, m.text_vocab_size, (12,), generator=g).tolist() for _ in range(t2i_batch)]
    sc = dataclasses.replace(cfg.sample, steps=t2i_steps)
    wall, _, codes = timed(lambda: generate_codes(model, prompts, sc, generator=torch.Generator().manual_seed(0)),
                           repeats, device)
    assert codes.shape == (t2i_batch, m.num_image_tokens) and int(codes.min()) >= 0
    res["t2i"] = {"steps": t2i_steps, "batch": t2i_batch, "guidance_form": sc.guidance_form,
                  "images_per_s": t2i_batch / wall, "s_per_batch": wall}

    res["mmu"] = []
    for b in mmu_batches:
        codes = torch.randint(0, m.codebook_size, (b, m.num_image_tokens), generator=g)
        questions = [torch.randint(3, m.text_vocab_size, (12,), generator=g).tolist() for _ in range(b)]
        pr = mmu_prompts(model.layout, codes, questions)
        feats = random_features(cfg, b, g)
        wall, _, answers = timed(lambda: generate_answers(model, pr, cfg.sample, features=feats,
                                                          max_new_tokens=new_tokens, stop_at_eos=False),
                                 repeats, device)
        assert [len(a) for a in answers] == [new_tokens] * b
        res["mmu"].append({"batch": b, "new_tokens": new_tokens, "prompt_len": len(pr[0]),
                           "tokens_per_s": b * new_tokens / wall, "s_per_batch": wall})
    del model
    gc.collect()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="unif2ace-1.8b")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--deepspeed", default=str(ROOT / "ds_configs" / "zero3.json"), help="DeepSpeed JSON")
    ap.add_argument("--steps", type=int, default=10, help="timed optimiser steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed optimiser steps first")
    ap.add_argument("--t2i-steps", type=int, default=16)
    ap.add_argument("--t2i-batch", type=int, default=16)
    ap.add_argument("--mmu-batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. model.num_layers=12")
    args = ap.parse_args(argv)
    # DeepSpeed picks its accelerator once, at first use: say which before anything imports it.
    os.environ["DS_ACCELERATOR"] = args.device
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False (use --device cpu)", file=sys.stderr)
        return 2
    from unif2ace.config import ConfigError, load_config

    try:
        cfg = load_config(args.recipe, ["train.wandb=disabled", *args.overrides])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = {"recipe": cfg.name, "overrides": args.overrides, "device": args.device,
           "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
           "torch": torch.__version__, "num_layers": cfg.model.num_layers, "hidden_size": cfg.model.hidden_size}
    import deepspeed

    res["deepspeed"] = deepspeed.__version__
    t0 = time.perf_counter()
    res["train"] = train_throughput(cfg, args.device, args.deepspeed, args.steps, args.warmup)
    if not args.skip_inference:
        res["inference"] = inference_speed(cfg, args.device, args.t2i_steps, args.t2i_batch, args.mmu_batches,
                                           args.new_tokens, args.repeats)
    res["wall_s"] = time.perf_counter() - t0
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        from unif2ace.atomic import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0 if res["train"]["all_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
