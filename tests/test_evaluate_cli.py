"""launchers/evaluate.py end to end on a tiny random checkpoint and the shared tiny shards.

A random model answers nonsense, so this checks the wiring (shard lookup by face id, question
encoding, KV-cache decoding, MaskGIT sampling, MAGVIT decoding, classifier judging, files),
not the numbers; the numbers are checked with hand-made callables in test_evaluate_report.py.
"""
import json
from pathlib import Path

import pytest
import torch

from unif2ace.checkpoint.hf_io import save_pretrained
from unif2ace.commands import evaluate as evaluate_command
from unif2ace.config import load_config
from unif2ace.eval.checkpoint import model_callables
from unif2ace.eval.attribute_classifier import AttributeClassifier, ClassifierConfig, load_taxonomy
from unif2ace.model.unif2ace import UniF2ace

ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def setup(tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    cfg = load_config("tiny", [f"data.shards={tiny_shards}", "model.init_std=0.1", "sample.steps=3",
                               "sample.max_new_tokens=6"])
    torch.manual_seed(0)
    save_pretrained(UniF2ace(cfg.model), cfg, root / "model")
    data = tiny_shards.parent / "data"
    clf = AttributeClassifier(ClassifierConfig(categories=load_taxonomy(data / "attributes.json"), widths=[4, 8]))
    clf.save(root / "clf")
    return root, data


def test_cli_writes_metrics_and_report(setup, tmp_path, capsys):
    root, data = setup
    meta = [json.loads(x) for x in (data / "metadata.jsonl").read_text().splitlines()]
    train = [m for m in meta if m["split"] == "train"]
    out = tmp_path / "eval"
    rc = evaluate_command.main(["--checkpoint", str(root / "model"), "--data", str(data), "--classifier", str(root / "clf"),
                           "--out", str(out), "--split", "train", "--num-understanding", "2",
                           "--num-generation", "3", "--fid-real", "4", "--batch-size", "2"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    vqa = m["understanding"]["vqa"]["overall"]
    assert vqa["n"] == len(train[0]["qa"]) + len(train[1]["qa"])
    assert 0.0 <= vqa["accuracy"] <= 1.0
    assert len(m["understanding"]["caption_examples"]) == 2
    assert all(isinstance(e["prediction"], str) for e in m["understanding"]["examples"])
    gen = m["generation"]
    assert gen["synthface_fid"]["n_generated"] == 3 and gen["synthface_fid"]["n_real"] == 4
    assert gen["decoded_reference"]["n"] == gen["real_reference"]["n"] > 0  # faces decoded from their own codes
    assert len(list((out / "generated").glob("*.png"))) == 3
    assert (out / "report.md").read_text().startswith("# UniF²ace evaluation report")
    printed = json.loads(capsys.readouterr().out)
    assert printed["report"] == str(out / "report.md")
    u = m["understanding"]  # a real checkpoint through the CLI: the control and both VQA references
    assert printed["vqa_own_vs_other_image"] == [u["image_control"]["own_image"], u["image_control"]["other_image"]]
    assert printed["caption_recall_own_vs_other_image"] == [u["image_control"]["caption_own_recall"],
                                                            u["image_control"]["caption_other_recall"]]
    assert u["image_control"]["faces"] == 2 and u["image_control"]["questions"] == vqa["n"]
    assert printed["vqa_classifier_real"] == u["real_reference"]["overall"]["accuracy"]
    assert u["decoded_reference"]["overall"]["n"] == vqa["n"]


def test_unknown_face_id_is_named(setup):
    root, _ = setup
    _, answer_fn, _ = model_callables(str(root / "model"))
    with pytest.raises(KeyError, match="not-a-face"):
        answer_fn(["not-a-face"], ["What colour is the hair?"])
