"""Inference speed: understanding decode with the KV cache vs full recomputation per token
(Show-o's way), and text-to-face images/s by number of MaskGIT steps.

    python benchmarks/bench_inference.py                       # synthface recipe, CPU
    python benchmarks/bench_inference.py --recipe tiny --repeats 1 --steps 4 8
    python benchmarks/bench_inference.py --device cuda model.num_layers=8

Random init is enough for speed: decoding is forced to --new-tokens (no end-of-text stop),
and the two MMU paths are checked to give the same tokens. Prints markdown tables; the
median of --repeats timed runs after one warm-up run.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch


from unif2ace.config import load_config
from unif2ace.inference.mmu import decode_full_recompute, generate_answers, mmu_prompts
from unif2ace.inference.t2i import generate_codes
from unif2ace.model.unif2ace import UniF2ace


def timed(fn, repeats: int, device: str) -> tuple[float, float, object]:
    """Median wall and process-CPU seconds of ``repeats`` runs after one warm-up, and the last
    result. With one thread on a shared CPU box, CPU time is what the run would take alone."""
    out = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="synthface")
    ap.add_argument("--device", default="cpu")
    # One thread by default: on a small shared CPU box an OpenMP barrier waiting for a
    # descheduled second thread costs ~15 ms per op and swamps the measurement.
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--t2i-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.recipe, args.overrides)
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).to(args.device).eval()
    m = cfg.model
    g = torch.Generator().manual_seed(0)
    print(f"recipe {cfg.name}: {model.num_parameters() / 1e6:.1f} M params, {m.num_layers} layers, "
          f"hidden {m.hidden_size}, {m.num_image_tokens} image tokens; device {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")

    print(f"Understanding decode, {args.new_tokens} new tokens (prompt: image + question of 4–20 tokens)\n")
    print("rates as wall-clock / process-CPU time\n")
    print("| batch | prompt len | KV cache tok/s | full recompute tok/s | speed-up | same tokens |")
    print("|---:|---:|---:|---:|---:|:---:|")
    for b in args.batches:
        codes = torch.randint(0, m.codebook_size, (b, m.num_image_tokens), generator=g)
        lens = torch.randint(4, 21, (b,), generator=g).tolist()
        questions = [torch.randint(3, m.text_vocab_size, (n,), generator=g).tolist() for n in lens]
        prompts = mmu_prompts(model.layout, codes, questions)
        kw = dict(max_new_tokens=args.new_tokens, stop_at_eos=False)
        w_kv, c_kv, a = timed(lambda: generate_answers(model, prompts, cfg.sample, **kw), args.repeats, args.device)
        w_f, c_f, f = timed(lambda: decode_full_recompute(model, prompts, cfg.sample, **kw), args.repeats, args.device)
        n = b * args.new_tokens
        print(f"| {b} | {max(len(p) for p in prompts)} | {n / w_kv:,.0f} / {n / c_kv:,.0f} | "
              f"{n / w_f:,.0f} / {n / c_f:,.0f} | {w_f / w_kv:.1f}× / {c_f / c_kv:.1f}× | "
              f"{'yes' if a == f else 'NO'} |")

    s = cfg.sample
    print(f"\nText-to-face, batch {args.t2i_batch}, guidance {s.guidance_form} (w={s.guidance}; "
          f"cond + uncond rows in one forward), {m.num_image_tokens} tokens per image\n")
    print("| steps | images/s (wall) | images/s (CPU) | wall s per batch |")
    print("|---:|---:|---:|---:|")
    prompts = [torch.randint(3, m.text_vocab_size, (12,), generator=g).tolist() for _ in range(args.t2i_batch)]
    for steps in args.steps:
        sc = dataclasses.replace(s, steps=steps)
        w, c, _ = timed(lambda: generate_codes(model, prompts, sc, generator=torch.Generator().manual_seed(0)),
                        args.repeats, args.device)
        print(f"| {steps} | {args.t2i_batch / w:,.2f} | {args.t2i_batch / c:,.2f} | {w:.3f} |")

if __name__ == "__main__":
    main()
