"""The built-in end-to-end run on SynthFace, on CPU (README command 1).

    python launchers/demo.py                       # everything, into runs/demo
    python launchers/demo.py --out runs/d2 --num-images 3000 train.steps=600

Steps (each is one of the project's real tools, run as a user would; a finished step is
skipped on re-run, so an interrupted demo resumes):

 1. tools/make_synthface.py          procedural faces + captions + VQA + identities
 2. tools/train_text_tokenizer.py    SentencePiece vocabulary (1024, = synthface recipe)
 3. tools/train_image_tokenizer.py   a small MAGVIT-v2 / LFQ tokenizer (64 px → 8×8 codes of 8 bits)
 4. tools/precompute_tokens.py       image codes, text ids, CLIP / face / noise features → shards
 5. deepspeed launchers/train.py     ZeRO-3, 2 CPU processes, synthface recipe
 6. tools/train_attribute_classifier.py   the independent judge of generated faces
 7. tools/convert_checkpoint.py      ZeRO checkpoint → model directory
 8. launchers/evaluate.py            VQA / captions / generation metrics, FID, report.md

No pretrained weights can be downloaded here, so CLIP is a randomly initialised tiny CLIP
(``clip.fallback=random-init``) and no face recogniser is configured (``face.fallback=none``:
every face is ``face_found=False``); both choices are logged by the tools and recorded in the
shards' manifest. Timings per step go into OUT/timings.json and OUT/report.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_step(name: str, cmd: list[str], out: Path, timings: dict, env: dict | None = None) -> None:
    """Run one pipeline step as a subprocess unless ``out/.done-NAME`` says it finished before;
    its wall time goes into ``timings`` and ``out/timings.json``."""
    done = out / f".done-{name}"
    if done.exists():
        print(f"[demo] {name}: done before, skipped")
        return
    print(f"[demo] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"[demo] step {name} failed with exit code {r.returncode}; fix it and re-run (finished "
                         f"steps are skipped)")
    timings[name] = round(time.time() - t0, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    done.touch()


def cpu_env(py: str) -> dict[str, str]:
    """Environment for the DeepSpeed CPU runs: this interpreter's ``deepspeed`` on PATH, gloo, the
    compiled-op cache in the checkout, and one OpenMP thread per rank (two ranks share 2 cores)."""
    return {"PATH": str(Path(py).parent) + os.pathsep + os.environ.get("PATH", ""), "DS_ACCELERATOR": "cpu",
            "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions"),
            "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "OMP_NUM_THREADS": "1"}


def deepspeed_launch(py: str, procs: int) -> list[str]:
    """This interpreter's ``deepspeed`` launcher for ``procs`` local processes on a free port (the
    default 29500 may be held by another job on the machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(py).parent / "deepspeed"), "--num_gpus", str(procs), "--master_port", str(port)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="everything goes here")
    ap.add_argument("--num-images", type=int, default=2400, help="SynthFace images")
    ap.add_argument("--tokenizer-steps", type=int, default=1000, help="image tokenizer training steps")
    ap.add_argument("--classifier-steps", type=int, default=600, help="attribute classifier steps")
    ap.add_argument("--procs", type=int, default=2, help="training processes (DeepSpeed on CPU)")
    ap.add_argument("--num-eval", type=int, default=64, help="test faces / prompts for the evaluation")
    ap.add_argument("--fresh", action="store_true", help="delete OUT first")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for training (synthface recipe)")
    args = ap.parse_args(argv)
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tpath = out / "timings.json"
    timings = json.loads(tpath.read_text()) if tpath.exists() else {}
    py = sys.executable
    data, spm, magvit, shards = out / "data", out / "spm.model", out / "magvit", out / "shards"
    train_dir, model, clf, ev = out / "train", out / "model", out / "classifier", out / "eval"
    env = cpu_env(py)
    t_start = time.time()

    run_step("synthface", [py, "tools/make_synthface.py", "--out", str(data), "--num", str(args.num_images),
                       "--size", "64", "--grid", str(out / "synthface_grid.png")], out, timings)
    run_step("text_tokenizer", [py, "tools/train_text_tokenizer.py", "--data", str(data), "--vocab-size", "1024",
                            "--out", str(spm)], out, timings)
    run_step("image_tokenizer", [py, "tools/train_image_tokenizer.py", "--train_dir", str(data / "images" / "train"),
                             "--val_dir", str(data / "images" / "val"), "--preset", "synthface",
                             "--model", "ch=16", "--batch_size", "16", "--max_val", "256", "--threads", "1",
                             "--steps", str(args.tokenizer_steps), "--out", str(magvit)], out, timings)
    run_step("precompute", [py, "tools/precompute_tokens.py", "--data", str(data), "--out", str(shards),
                        "--image-tokenizer", str(magvit), "--text-tokenizer", str(spm), "--recipe", "synthface",
                        "--workers", "2", "--feature", "clip.model=UniF2ace-Tiny-CLIP",
                        "--feature", "clip.fallback=random-init", "--feature", "face.mode=aligned",
                        "--feature", "face.fallback=none"], out, timings)
    # 800 steps × 2 ranks × 8 rows ≈ 5 epochs of the 2,000 training faces: what fits the 20-minute budget.
    common = [f"data.shards={shards}", f"train.out_dir={train_dir}", "train.wandb=offline", "train.steps=800",
              "train.save_every=200"] + list(args.overrides)
    run_step("train", [*deepspeed_launch(py, args.procs), "launchers/train.py", "--deepspeed", "ds_configs/zero3.json",
                       "--config", "synthface", *common], out, timings, env)
    run_step("classifier", [py, "tools/train_attribute_classifier.py", "--data", str(data), "--out", str(clf),
                        "--steps", str(args.classifier_steps)], out, timings)
    run_step("convert", [py, "tools/convert_checkpoint.py", str(train_dir / "checkpoints"), "--out", str(model)],
         out, timings, env)
    run_step("evaluate", [py, "launchers/evaluate.py", "--checkpoint", str(model), "--data", str(data),
                      "--classifier", str(clf), "--out", str(ev), "--shards", str(shards),
                      "--num-understanding", str(args.num_eval), "--num-generation", str(args.num_eval)],
         out, timings)

    total = round(sum(timings.values()), 1)
    lines = ["# UniF²ace built-in demo (SynthFace, CPU)", "",
             f"Total {total / 60:.1f} min of steps (this invocation {(time.time() - t_start) / 60:.1f} min).", "",
             "| step | seconds |", "| --- | ---: |"] + [f"| {k} | {v} |" for k, v in timings.items()]
    lines += ["", "Full evaluation: [eval/report.md](eval/report.md) (per-category tables, image grids), "
              "`eval/metrics.json`.", "", _summary(ev / "report.md"), ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"[demo] report: {out / 'report.md'}")
    return 0


def _summary(report: Path) -> str:
    """The evaluation report's summary table (its first section)."""
    text = report.read_text()
    start = text.find("## Summary")
    end = text.find("\n## ", start + 1)
    return text[start:end].strip() if start >= 0 else text


if __name__ == "__main__":
    sys.exit(main())
