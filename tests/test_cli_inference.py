"""generate.py / answer.py on a tiny checkpoint made here, from our model dir."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from unif2ace.checkpoint.hf_io import save_pretrained
from unif2ace.checkpoint.load import load_model
from unif2ace.config import load_config
from unif2ace.model.unif2ace import UniF2ace

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tiny_shards, tmp_path_factory):
    cfg = load_config("tiny", [f"data.shards={tiny_shards}", "model.init_std=0.1"])
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt") / "model"
    save_pretrained(UniF2ace(cfg.model), cfg, d)
    return d


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_generate_cli_writes_pngs(ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a smiling man with a beard\n\na woman with red hair\n")
    out = tmp_path / "samples"
    r = _run("launchers/generate.py", "--checkpoint", ckpt, "--prompts", prompts, "--num", "2", "--out", out,
             "sample.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    assert [e["prompt"] for e in index] == ["a smiling man with a beard"] * 2 + ["a woman with red hair"] * 2
    for e in index:
        im = Image.open(out / e["file"])
        assert im.size == (32, 32) and im.mode == "RGB"
    # same seed → same images (deterministic), different samples of a prompt differ
    again = tmp_path / "again"
    assert _run("launchers/generate.py", "--checkpoint", ckpt, "--prompts", prompts, "--num", "2", "--out", again,
                "sample.steps=3").returncode == 0
    assert (out / "00000.png").read_bytes() == (again / "00000.png").read_bytes()
    assert (out / "00000.png").read_bytes() != (out / "00001.png").read_bytes()


def test_answer_cli_prints_answers(ckpt, tiny_shards, tmp_path):
    img = next((tiny_shards.parent / "data" / "images").rglob("*.png"))
    r = _run("launchers/answer.py", "--checkpoint", ckpt, "--image", img, "--question", "What colour is the hair?",
             "--caption")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Q: ") == 2 and r.stdout.count("A: ") == 2


def test_cli_errors_are_clear(ckpt, tmp_path):
    r = _run("launchers/answer.py", "--checkpoint", ckpt, "--image", tmp_path / "nope.png", "--question", "x")
    assert r.returncode == 2 and "nope.png" in r.stderr
    r = _run("launchers/generate.py", "--checkpoint", tmp_path, "--prompt", "x", "--out", tmp_path / "o")
    assert r.returncode == 2 and "neither a unif2ace model directory" in r.stderr


def test_load_model_reads_our_dir(ckpt):
    model, cfg = load_model(ckpt)
    assert cfg.name == "tiny" and isinstance(model, UniF2ace)
