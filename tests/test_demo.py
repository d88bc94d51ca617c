"""README command 1 (launchers/demo.py), shrunk: every step runs through the real tools, the
report is written, and a re-run resumes by skipping finished steps."""
import json
import subprocess
import sys

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SMALL = ["--num-images", "80", "--tokenizer-steps", "5", "--classifier-steps", "5", "--procs", "1",
         "--num-eval", "4", "train.steps=3", "train.warmup_steps=1", "train.save_every=0"]


def test_demo_end_to_end_and_resume(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "launchers/demo.py", "--out", str(out), *SMALL], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    steps = ["synthface", "text_tokenizer", "image_tokenizer", "precompute", "train", "classifier", "convert",
             "evaluate"]
    assert list(json.loads((out / "timings.json").read_text())) == steps
    report = (out / "report.md").read_text()
    assert "## Summary" in report and "VQA exact-match accuracy" in report
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["understanding"] and metrics["generation"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "eval" / "generation.png").is_file()
    again = subprocess.run([sys.executable, "launchers/demo.py", "--out", str(out), *SMALL], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert again.stdout.count("done before, skipped") == len(steps)
