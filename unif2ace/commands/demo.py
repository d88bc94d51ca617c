"""The built-in end-to-end run on SynthFace, on CPU (README command 1).

    python launchers/demo.py                       # everything, into runs/demo
    python launchers/demo.py --fresh               # start over (what the 20-minute budget is measured on)
    python launchers/demo.py --retrain-encoders    # also retrain the committed encoders and judge (see below)
    python launchers/demo.py --out runs/d2 --num-images 3000 train.steps=600

Steps (each is one of the project's real tools, run as a user would; a finished step is skipped
on re-run, so an interrupted demo resumes; steps of one stage run side by side on the cores):

 data      tools/make_synthface.py              the training faces (seed 0) and unseen faces (seed 1)
 encoders  tools/train_text_tokenizer.py        only with --retrain-encoders (else: assets/synthface):
           tools/train_image_tokenizer.py       MAGVIT-v2 / LFQ, 64 px → 16×16 codes of 8 bits
           tools/train_clip.py                  open_clip ViT + contrastive loss → CLIP patch tokens
           tools/train_face_recognizer.py       ArcFace-loss identity CNN → insightface ONNX
 prepare   tools/precompute_tokens.py (×2)      codes, text ids, CLIP / face / noise features → shards
           tools/train_attribute_classifier.py  the independent judge of generated faces: only with
                                                --retrain-encoders (in the background from here into
                                                training), else assets/synthface/classifier is copied
 train     deepspeed launchers/train.py         ZeRO-2, 2 CPU processes, the synthface recipe (UniF²ace:
                                                grouped token MoE + grouped sequence MoE + D3Diff)
 convert   tools/convert_checkpoint.py          ZeRO checkpoint → model directory
           tools/judge_tokenizer.py             the judge on test faces decoded from their own codes
 evaluate  launchers/evaluate.py (×2)           test split of seed 0, and faces of the unseen seed 1

No pretrained weights can be downloaded here, so the encoders are the project's own, trained on
SynthFace seed 0's training faces by the same tools; ``assets/synthface/README.md`` gives the
command that reproduces the committed copies, and ``--retrain-encoders`` retrains them inside
the run. The judge (attribute classifier, trained on the labels of the same faces) is committed
beside them: trained in the run, it took a third process's share of the two cores from the
transformer's training, and a fixed judge scores every run alike. Timings per step and per stage
go into OUT/timings.json and OUT/report.md, MoE routing heat maps of the last 50 training steps
into OUT/routing.png (shown in the report).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from unif2ace.atomic import atomic_directory
from unif2ace.eval.routing import routing_from_log, routing_table, save_routing_heatmaps

ROOT = Path(__file__).resolve().parents[2]  # the checkout (scripts and assets are run from it)
ASSETS = ROOT / "assets" / "synthface"
HELDOUT_SEED = 1


def _load_timings(out: Path) -> dict:
    p = out / "timings.json"
    t = json.loads(p.read_text()) if p.exists() else {}
    if t and "steps" not in t:  # an older flat {step: seconds}
        t = {"steps": t, "stages": {}}
    return t or {"steps": {}, "stages": {}}


def run_stage(stage: str, steps: list[tuple[str, list[str], dict | None]], out: Path, timings: dict) -> None:
    """Run the stage's steps side by side (each a subprocess), skipping those that finished before
    (``out/.done-NAME``). Each step's wall time goes into ``timings['steps']``, the stage's into
    ``timings['stages']`` (the run's total is the sum of its stages)."""
    todo = [(n, c, e) for n, c, e in steps if not (out / f".done-{n}").exists()]
    for n, _, _ in steps:
        if (out / f".done-{n}").exists():
            print(f"[demo] {n}: done before, skipped")
    if not todo:
        return
    t0 = time.time()
    procs = []
    for name, cmd, env in todo:
        print(f"[demo] {name}: {' '.join(cmd)}", flush=True)
        log = open(out / f"{name}.log", "w") if len(todo) > 1 else None
        p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
        procs.append((name, p, time.time(), log))
    failed, running = [], list(procs)
    while running:  # poll, so each step's own end time is recorded, not the order we wait in
        time.sleep(0.2)
        for item in list(running):
            name, p, start, log = item
            rc = p.poll()
            if rc is None:
                continue
            running.remove(item)
            if log:
                log.close()
            if rc != 0:
                failed.append(name)
                continue
            timings["steps"][name] = round(time.time() - start, 1)
            timings.setdefault("stage_of", {})[name] = stage
            (out / f".done-{name}").touch()
    timings["stages"][stage] = round(timings["stages"].get(stage, 0.0) + time.time() - t0, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    if failed:
        logs = ", ".join(str(out / f"{n}.log") for n in failed if (out / f"{n}.log").exists())
        raise SystemExit(f"[demo] step(s) {failed} failed{' (logs: ' + logs + ')' if logs else ''}; fix and "
                         f"re-run (finished steps are skipped)")


class Background:
    """A step started now and joined later (``join``), so that it fills a core the next stages leave
    idle; its wall time goes into ``timings['steps']``, and the wait at ``join`` into the joining
    stage's wall time (the total stays the sum of the stages)."""

    def __init__(self, stage: str, name: str, cmd: list[str], out: Path, env: dict | None = None):
        self.stage, self.name, self.out = stage, name, out  # the stage it starts with (for the report)
        self.done = (out / f".done-{name}").exists()
        if self.done:
            print(f"[demo] {name}: done before, skipped")
            return
        print(f"[demo] {name} (in the background): {' '.join(cmd)}", flush=True)
        self.log = open(out / f"{name}.log", "w")
        self.start = time.time()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self.log,
                                     stderr=self.log)

    @classmethod
    def finished(cls, name: str) -> "Background":
        """A step with nothing to run (its result is already there)."""
        self = cls.__new__(cls)
        self.name, self.done = name, True
        return self

    def join(self, stage: str, timings: dict) -> None:
        if self.done:
            return
        t0 = time.time()
        rc = self.proc.wait()
        self.log.close()
        timings["stages"][stage] = round(timings["stages"].get(stage, 0.0) + time.time() - t0, 1)
        if rc != 0:
            (self.out / "timings.json").write_text(json.dumps(timings, indent=1))
            raise SystemExit(f"[demo] step {self.name} failed (log: {self.out / (self.name + '.log')}); fix and re-run")
        timings["steps"][self.name] = round(time.time() - self.start, 1)
        timings.setdefault("stage_of", {})[self.name] = self.stage
        (self.out / f".done-{self.name}").touch()
        (self.out / "timings.json").write_text(json.dumps(timings, indent=1))
        self.done = True

    def kill(self) -> None:
        if not self.done and self.proc.poll() is None:
            self.proc.kill()


def run_step(name: str, cmd: list[str], out: Path, timings: dict, env: dict | None = None) -> None:
    """One step as its own stage (kept for launchers/ablate.py)."""
    if "steps" not in timings:  # a caller's flat dict
        timings.setdefault("steps", {})
        timings.setdefault("stages", {})
    run_stage(name, [(name, cmd, env)], out, timings)


def cpu_env(py: str, threads: int = 1) -> dict[str, str]:
    """Environment for the CPU runs: this interpreter's ``deepspeed`` on PATH, gloo, the compiled-op
    cache in the checkout, and ``threads`` OpenMP threads per process (steps share 2 cores)."""
    return {"PATH": str(Path(py).parent) + os.pathsep + os.environ.get("PATH", ""), "DS_ACCELERATOR": "cpu",
            "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions"),
            "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "OMP_NUM_THREADS": str(threads)}


def deepspeed_launch(py: str, procs: int) -> list[str]:
    """This interpreter's ``deepspeed`` launcher for ``procs`` local processes on a free port (the
    default 29500 may be held by another job on the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(py).parent / "deepspeed"), "--num_gpus", str(procs), "--master_port", str(port)]


def train_command(py: str, procs: int, ds_config: str | Path, recipe: str, shards: str | Path, out_dir: str | Path,
                  steps: int, *overrides: str, save_every: int | None = None) -> list[str]:
    """``deepspeed launchers/train.py`` of ``recipe`` on ``shards`` for ``steps`` steps into ``out_dir``
    (checkpoint at the end unless ``save_every``; no progress bar, the logs are files); ``overrides``
    come last, so they win."""
    return [*deepspeed_launch(py, procs), "launchers/train.py", "--deepspeed", str(ds_config), "--config", recipe,
            f"data.shards={shards}", f"train.out_dir={out_dir}", f"train.steps={steps}",
            f"train.save_every={save_every or steps}", "train.progress_bar=false", *overrides]


def encoder_paths(enc: Path) -> dict[str, Path]:
    return {"spm": enc / "spm.model", "magvit": enc / "magvit", "clip": enc / "clip", "face": enc / "face"}


def feature_flags(enc: Path) -> list[str]:
    """precompute's --feature flags for the run's own CLIP (patch tokens) and face recogniser."""
    p = encoder_paths(enc)
    name = json.loads((p["clip"] / "train_config.json").read_text())["name"]
    return ["--feature", f"clip.model={name}", "--feature", f"clip.model_configs=[{p['clip'] / (name + '.json')}]",
            "--feature", f"clip.weights={p['clip'] / 'open_clip_model.safetensors'}",
            "--feature", "clip.patch_tokens=true", "--feature", f"face.rec_path={p['face'] / 'rec.onnx'}",
            "--feature", "face.mode=aligned", "--feature", "face.threads=1"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="everything goes here")
    ap.add_argument("--num-images", type=int, default=4000, help="SynthFace images of the training seed")
    ap.add_argument("--num-heldout", type=int, default=400, help="SynthFace images of the unseen seed")
    ap.add_argument("--retrain-encoders", action="store_true",
                    help=f"train the text/image tokenizers, CLIP, face model and attribute classifier in this "
                         f"run (else {ASSETS})")
    ap.add_argument("--encoders", default=str(ASSETS), help="committed encoders to use without --retrain-encoders")
    ap.add_argument("--tokenizer-steps", type=int, default=10000, help="image tokenizer steps (--retrain-encoders)")
    ap.add_argument("--clip-steps", type=int, default=1500, help="CLIP steps (--retrain-encoders)")
    ap.add_argument("--face-steps", type=int, default=600, help="face recogniser steps (--retrain-encoders)")
    ap.add_argument("--classifier-steps", type=int, default=600, help="attribute classifier steps (--retrain-encoders)")
    ap.add_argument("--train-steps", type=int, default=560,
                    help="UniF²ace training steps (× 2 ranks × train.micro_batch rows): what fits the 20-minute "
                         "budget on 2 cores")
    ap.add_argument("--ds-config", default="ds_configs/zero2.json",
                    help="DeepSpeed JSON of the training step. ZeRO-2: the 13M-parameter model needs no "
                         "partitioned weights, and ZeRO-3's per-layer gathers make a CPU step ~1.2x slower "
                         "(benchmarks/bench_zero_stage.py)")
    ap.add_argument("--procs", type=int, default=2, help="training processes (DeepSpeed on CPU)")
    ap.add_argument("--grounded-answers", action="store_true",
                    help="train yes/no answers with the attribute they rest on first, 'earrings, yes' (precompute "
                         "--grounded-answers; off: at the demo's budget it measured no gain, docs/design.md §12)")
    ap.add_argument("--num-eval", type=int, default=64, help="faces / prompts per evaluation")
    ap.add_argument("--fresh", action="store_true", help="delete OUT first")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for training (synthface recipe)")
    args = ap.parse_args(argv)
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = _load_timings(out)
    py = sys.executable
    data, held = out / "data", out / "data_unseen"
    shards, held_shards = out / "shards", out / "shards_unseen"
    clf = out / "classifier"
    env1 = cpu_env(py, 1)
    t_start = time.time()

    run_stage("data", [
        ("synthface", [py, "tools/make_synthface.py", "--out", str(data), "--num", str(args.num_images), "--size", "64",
                       "--workers", "1", "--quiet", "--grid", str(out / "synthface_grid.png")], env1),
        ("synthface_unseen", [py, "tools/make_synthface.py", "--out", str(held), "--num", str(args.num_heldout),
                              "--size", "64", "--seed", str(HELDOUT_SEED), "--val-frac", "0", "--test-frac", "0.9",
                              "--workers", "1", "--quiet"], env1)], out, timings)

    if args.retrain_encoders:
        enc = out / "encoders"
        p = encoder_paths(enc)
        run_stage("text_tokenizer", [("text_tokenizer", [py, "tools/train_text_tokenizer.py", "--data", str(data),
                                                         "--vocab-size", "1024", "--out", str(p["spm"])], env1)],
                  out, timings)
        run_stage("encoders", [
            ("image_tokenizer", [py, "tools/train_image_tokenizer.py", "--train-dir", str(data / "images" / "train"),
                                 "--val-dir", str(data / "images" / "val"), "--preset", "synthface16",
                                 "--batch-size", "8", "--max-val", "256", "--threads", "1", "--no-progress",
                                 "--steps", str(args.tokenizer_steps), "--out", str(p["magvit"])], env1),
            ("clip", [py, "tools/train_clip.py", "--data", str(data), "--text-tokenizer", str(p["spm"]),
                      "--out", str(p["clip"]), "--steps", str(args.clip_steps), "--threads", "1", "--no-progress"], env1),
            ("face", [py, "tools/train_face_recognizer.py", "--data", str(data), "--out", str(p["face"]),
                      "--steps", str(args.face_steps), "--batch-size", "128", "--threads", "1", "--no-progress"], env1)],
                  out, timings)
    else:
        enc = Path(args.encoders)
        missing = [str(v) for v in [*encoder_paths(enc).values(), enc / "classifier"] if not v.exists()]
        if missing:
            raise SystemExit(f"[demo] encoders missing: {missing}; run with --retrain-encoders, or see "
                             f"{ASSETS / 'README.md'}")
    p = encoder_paths(enc)
    pre = [py, "tools/precompute_tokens.py", "--image-tokenizer", str(p["magvit"]), "--text-tokenizer", str(p["spm"]),
           "--recipe", "synthface", "--workers", "1", "--no-progress", *feature_flags(enc)]
    if args.grounded_answers:
        pre.append("--grounded-answers")
    if args.retrain_encoders:
        # The judge trains while the shards are written and on into training: its core would idle otherwise.
        judge = Background("prepare", "classifier", [py, "tools/train_attribute_classifier.py", "--data", str(data),
                                                     "--out", str(clf), "--steps", str(args.classifier_steps),
                                                     "--no-progress"], out, env1)
    else:
        judge = Background.finished("classifier")
        if not clf.exists():  # evaluate and ablate read OUT/classifier
            with atomic_directory(clf) as tmp:
                shutil.copytree(enc / "classifier", tmp, dirs_exist_ok=True)
    try:
        run_stage("prepare", [
            ("precompute", [*pre, "--data", str(data), "--out", str(shards)], env1),
            ("precompute_unseen", [*pre, "--data", str(held), "--out", str(held_shards)], env1)], out, timings)
        train_and_evaluate(args, py, out, timings, judge, env1, p["magvit"])
    finally:
        judge.kill()
    (out / "report.md").write_text(report(out, timings, time.time() - t_start))
    print((out / "report.md").read_text())
    print(f"[demo] report: {out / 'report.md'}")
    return 0


def train_and_evaluate(args, py: str, out: Path, timings: dict, judge: Background, env1: dict,
                       magvit: Path) -> None:
    data, held = out / "data", out / "data_unseen"
    shards, held_shards = out / "shards", out / "shards_unseen"
    train_dir, model, clf = out / "train", out / "model", out / "classifier"

    train = train_command(py, args.procs, args.ds_config, "synthface", shards, train_dir, args.train_steps,
                          "train.wandb=offline", *args.overrides, save_every=max(1, args.train_steps // 2))
    run_stage("train", [("train", train, env1)], out, timings)
    judge.join("convert", timings)  # with --retrain-encoders it finished during training
    run_stage("convert", [
        ("convert", [py, "tools/convert_checkpoint.py", str(train_dir / "checkpoints"), "--out", str(model)], env1),
        # the image tokenizer's ceiling, on the core convert leaves idle
        ("codes", [py, "tools/judge_tokenizer.py", "--data", str(data), "--classifier", str(clf), "--tokenizer",
                   str(magvit), "--threads", "1", "--out", str(out / "codes.json")], env1)], out, timings)
    ev = [py, "launchers/evaluate.py", "--checkpoint", str(model), "--classifier", str(clf),
          "--num-understanding", str(args.num_eval), "--num-generation", str(args.num_eval)]
    run_stage("evaluate", [
        ("evaluate", [*ev, "--data", str(data), "--shards", str(shards), "--out", str(out / "eval")], env1),
        ("evaluate_unseen", [*ev, "--data", str(held), "--shards", str(held_shards), "--out", str(out / "eval_unseen")],
         env1)], out, timings)


def report(out: Path, timings: dict, this_run: float) -> str:
    total = sum(timings["stages"].values())
    lines = ["# UniF²ace built-in demo (SynthFace, CPU)", "",
             f"Total {total / 60:.1f} min (sum of the stages' wall times; this invocation {this_run / 60:.1f} min; "
             f"load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores).", "",
             "| stage | seconds | steps (seconds each, side by side) |", "| --- | ---: | --- |"]
    for stage, secs in timings["stages"].items():
        names = [n for n in timings["steps"] if timings.get("stage_of", {}).get(n) == stage]
        lines.append(f"| {stage} | {secs} | " + ", ".join(f"{n} {timings['steps'][n]}" for n in names) + " |")
    for title, ev in (("Test split of the training seed (people never trained on)", out / "eval"),
                      (f"Faces of an unseen SynthFace seed ({HELDOUT_SEED}; nobody tuned on them)", out / "eval_unseen")):
        if (ev / "report.md").exists():
            lines += ["", f"## {title}", "", f"Full report: [{ev.name}/report.md]({ev.name}/report.md).", "",
                      _summary(ev / "report.md")]
    if (out / "codes.json").exists():
        lines += ["", _codes_section(json.loads((out / "codes.json").read_text()))]
    matrices, labels = routing_from_log(out / "train", last=50)
    routing = routing_table(matrices, labels)
    if routing:
        lines += ["", "## Sequence-level MoE routing (share of each group's (sequence, expert) choices, "
                  "mean over layers and the last 50 steps)", "", routing]
    if matrices:
        save_routing_heatmaps(matrices, out / "routing.png", labels, title="routing, mean over the last 50 steps")
        lines += ["", "Per layer, token- and sequence-level (mean over the last 50 steps):", "",
                  "![MoE routing heat maps](routing.png)"]
    return "\n".join(lines) + "\n"


def _codes_section(codes: dict) -> str:
    """What the image codes carry: the judge on real test faces and on the same faces decoded."""
    real, tok = codes["real"], codes["tokenizers"][0]
    acc = {c: v["accuracy"] for c, v in tok["per_category"].items() if v["accuracy"] is not None}
    ref = {c: real["per_category"][c]["accuracy"] for c in acc}
    low = sorted(acc, key=lambda c: acc[c] - ref[c])[:4]
    return "\n".join([
        f"## What the image codes carry (the judge on the {codes['num_faces']} {codes['split']} faces of the "
        "training seed; tools/judge_tokenizer.py)", "",
        "| faces | the judge's mean accuracy over categories |", "|---|---|",
        f"| real | {real['mean_accuracy']:.3f} |",
        f"| decoded from their own {tok['tokens_per_image']} codes (codebook {tok['codebook_size']}) | "
        f"**{tok['mean_accuracy']:.3f}** |", "",
        "Most lost in the codes: " + ", ".join(
            f"{c.replace('_', ' ')} {acc[c]:.2f} (real {ref[c]:.2f})" for c in low) + "."])


def _summary(report: Path) -> str:
    """The evaluation report's summary table (its first section)."""
    text = report.read_text()
    start = text.find("## Summary")
    end = text.find("\n## ", start + 1)
    return text[start:end].replace("## Summary", "").strip() if start >= 0 else text


if __name__ == "__main__":
    sys.exit(main())
