"""SynthFace generation speed on one core: images/s at 64×64 and 128×128.

    python benchmarks/bench_synthface.py                    # 1000 images per size, one process
    python benchmarks/bench_synthface.py --num 300 --sizes 64 --repeats 5
    python benchmarks/bench_synthface.py --write-workers 2  # also the whole CLI path on disk

"full" is everything one image costs in ``tools/make_synthface.py`` except the file write:
sampling, rendering, caption, QA and PNG encoding (``make_record``); "render" is
``render_face`` alone. Reports the median of --repeats runs after a warm-up, as wall-clock
images/s and as images per process-CPU second (on a shared machine the CPU rate is what one
uncontended core would do). Target from the design: >= 200 images/s on one core at 64×64.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


from unif2ace import synthface as sf


def rate(fn, num: int, repeats: int) -> tuple[float, float]:
    """Median images/s over ``repeats`` runs of ``num`` images: (wall, per CPU second)."""
    fn(range(min(num, 50)))  # warm-up: caches, imports
    wall, cpu = [], []
    for r in range(repeats):
        idx = range(r * num, (r + 1) * num)
        t, c = time.perf_counter(), time.process_time()
        fn(idx)
        wall.append(num / (time.perf_counter() - t))
        cpu.append(num / max(1e-9, time.process_time() - c))
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=1000, help="images per timed run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-workers", type=int, default=0,
                    help="also time write_dataset with this many processes (0 = skip)")
    args = ap.parse_args(argv)
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    print("| size | what | images/s (wall) | images/s per CPU-second |")
    print("| --- | --- | ---: | ---: |")
    for size in args.sizes:
        cfg = sf.SynthFaceConfig(size=size)

        def full(idx, cfg=cfg):
            for i in idx:
                sf.make_record(cfg, i)

        faces = [sf.sample_face(0, i) for i in range(args.num)]

        def render(idx, size=size):
            for i in idx:
                f = faces[i % len(faces)]
                sf.render_face(f.attributes, size, np.random.default_rng(f.render_seed), f.geometry)

        for name, fn in (("full", full), ("render", render)):
            w, c = rate(fn, args.num, args.repeats)
            print(f"| {size} | {name} | {w:.0f} | {c:.0f} |")
        if args.write_workers:
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                sf.write_dataset(d, args.num, size, workers=args.write_workers, progress=False)
                w = args.num / (time.perf_counter() - t)
            print(f"| {size} | write_dataset, {args.write_workers} workers | {w:.0f} | – |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
