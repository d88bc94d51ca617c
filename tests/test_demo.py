"""README command 1 (launchers/demo.py), shrunk: every step runs through the real tools (the
encoders retrained too), the report is written, and a re-run resumes by skipping finished steps."""
import json
import shutil
import subprocess
import sys

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SMALL = ["--num-images", "200", "--num-heldout", "24", "--retrain-encoders", "--tokenizer-steps", "5", "--clip-steps", "5",
         "--face-steps", "5", "--classifier-steps", "5", "--procs", "1", "--num-eval", "3", "train.steps=3",
         "train.warmup_steps=1", "train.save_every=0", "sample.steps=3", "sample.max_new_tokens=12"]
# The whole pipeline (4 encoder trainers, 2 precomputes, training, 2 evaluations) on a loaded 2-core
# machine can take several minutes; the limit only guards against a hang.
LIMIT = 1800


def test_demo_end_to_end_and_resume(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "launchers/demo.py", "--out", str(out), *SMALL], cwd=ROOT,
                       capture_output=True, text=True, timeout=LIMIT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    steps = ["synthface", "synthface_unseen", "text_tokenizer", "image_tokenizer", "clip", "face", "precompute",
             "precompute_unseen", "classifier", "train", "convert", "codes", "evaluate", "evaluate_unseen"]
    timings = json.loads((out / "timings.json").read_text())
    assert sorted(timings["steps"]) == sorted(steps)
    assert list(timings["stages"]) == ["data", "text_tokenizer", "encoders", "prepare", "train", "convert", "evaluate"]
    report = (out / "report.md").read_text()
    assert report.count("VQA exact-match accuracy") == 2 and "unseen SynthFace seed" in report
    assert "Sequence-level MoE routing" in report and "understanding (MMU)" in report
    assert "![MoE routing heat maps](routing.png)" in report and (out / "routing.png").read_bytes()[:4] == b"\x89PNG"
    codes = json.loads((out / "codes.json").read_text())  # the tokenizer's ceiling, judged by the run's judge
    assert codes["classifier"] == str(out / "classifier") and codes["tokenizers"][0]["path"] == str(out / "encoders" / "magvit")
    assert f"| real | {codes['real']['mean_accuracy']:.3f} |" in report and "decoded from their own" in report
    for ev in ("eval", "eval_unseen"):
        metrics = json.loads((out / ev / "metrics.json").read_text())
        assert metrics["understanding"] and metrics["generation"]
    manifest = json.loads((out / "shards_unseen" / "manifest.json").read_text())
    assert manifest["feature_shapes"]["clip_patches"] == [64, 128]  # the run's own CLIP, patch tokens
    # the unseen seed renders other faces: no image of it is byte-equal to a training image
    unseen = {(out / "data_unseen" / json.loads(x)["file"]).read_bytes()
              for x in (out / "data_unseen" / "metadata.jsonl").read_text().splitlines()}
    seen = {(out / "data" / json.loads(x)["file"]).read_bytes()
            for x in (out / "data" / "metadata.jsonl").read_text().splitlines()}
    assert len(unseen) == 24 and not unseen & seen
    assert (out / "model" / "model.safetensors").is_file() and (out / "eval" / "generation.png").is_file()
    again = subprocess.run([sys.executable, "launchers/demo.py", "--out", str(out), *SMALL], cwd=ROOT,
                           capture_output=True, text=True, timeout=LIMIT)
    assert again.returncode == 0
    assert again.stdout.count("done before, skipped") == len(steps)

    # without --retrain-encoders the committed judge is copied, never trained: a copy of the finished
    # run with its classifier and evaluations removed, pointed at these encoders plus that judge
    enc = out / "encoders"
    shutil.copytree(out / "classifier", enc / "classifier")
    out2 = tmp_path / "demo2"
    shutil.copytree(out, out2)
    shutil.rmtree(out2 / "classifier")
    (out2 / "classifier.log").unlink()
    for name in ("classifier", "codes", "evaluate", "evaluate_unseen"):
        (out2 / f".done-{name}").unlink()
    small = [a for a in SMALL if a != "--retrain-encoders"]
    r = subprocess.run([sys.executable, "launchers/demo.py", "--out", str(out2), "--encoders", str(enc), *small],
                       cwd=ROOT, capture_output=True, text=True, timeout=LIMIT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "[demo] classifier" not in r.stdout and not (out2 / "classifier.log").exists()
    assert (out2 / "classifier" / "model.safetensors").read_bytes() == (enc / "classifier" / "model.safetensors").read_bytes()
    assert json.loads((out2 / "eval" / "metrics.json").read_text())["generation"]

    # the ablation command (paper Tables 4-5) on the same demo directory, shrunk to 2 steps
    variants = ["unif2ace", "mask_only", "dense"]
    abl = tmp_path / "ablations"
    r = subprocess.run([sys.executable, "launchers/ablate.py", "--from", str(out), "--out", str(abl), "--steps", "2",
                        "--procs", "1", "--seeds", "1", "--num-eval", "3", "--only", ",".join(variants),
                        "train.warmup_steps=1", "sample.steps=3", "sample.max_new_tokens=12"],
                       cwd=ROOT, capture_output=True, text=True, timeout=LIMIT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    table = [line for line in (abl / "report.md").read_text().splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == variants
    for name, line in zip(variants, table):
        m = json.loads((abl / name / "eval" / "metrics.json").read_text())
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3].startswith(f"{m['generation']['attributes']['overall']:.3f}")
        assert cells[5].startswith(f"{m['understanding']['vqa']['overall']['accuracy']:.3f}")
        rows = [json.loads(x) for x in (abl / name / "train" / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in rows if "event" not in x] == [1, 2]
    ref = json.loads((abl / "unif2ace" / "eval" / "metrics.json").read_text())
    mo = json.loads((abl / "mask_only" / "eval" / "metrics.json").read_text())
    delta = mo["generation"]["attributes"]["overall"] - ref["generation"]["attributes"]["overall"]
    assert f"({delta:+.3f})" in table[1]
    cfg = json.loads((abl / "mask_only" / "train" / "final" / "config.json").read_text())
    assert cfg["loss"]["alpha"] == 0.0 and cfg["model"]["moe"]["enabled"] and cfg["model"]["seq_moe"]["enabled"]
    cfg = json.loads((abl / "dense" / "train" / "final" / "config.json").read_text())
    assert not cfg["model"]["moe"]["enabled"] and not cfg["model"]["seq_moe"]["enabled"] and cfg["loss"]["alpha"] == 0.01
