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

    # the ablation command (paper Tables 4-5) on the same demo directory, shrunk to 2 steps
    variants = ["d3diff_a0.01", "mask_only", "token_and_seq_moe"]
    abl = tmp_path / "ablations"
    r = subprocess.run([sys.executable, "launchers/ablate.py", "--from", str(out), "--out", str(abl), "--steps", "2",
                        "--procs", "1", "--num-eval", "4", "--only", ",".join(variants), "train.warmup_steps=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
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
    ref = json.loads((abl / "d3diff_a0.01" / "eval" / "metrics.json").read_text())
    mo = json.loads((abl / "mask_only" / "eval" / "metrics.json").read_text())
    delta = mo["generation"]["attributes"]["overall"] - ref["generation"]["attributes"]["overall"]
    assert f"({delta:+.3f})" in table[1]
    cfg = json.loads((abl / "mask_only" / "train" / "final" / "config.json").read_text())
    assert cfg["loss"]["alpha"] == 0.0 and cfg["model"]["moe"]["enabled"] is False
    cfg = json.loads((abl / "token_and_seq_moe" / "train" / "final" / "config.json").read_text())
    assert cfg["model"]["moe"]["enabled"] and cfg["model"]["seq_moe"]["enabled"] and cfg["loss"]["alpha"] == 0.01
