"""tools/judge_tokenizer.py (unif2ace.eval.codes): the attribute classifier on a split's faces and
on the same faces decoded from an image tokenizer's own codes."""
import json

import pytest
import torch

from unif2ace.commands import judge_tokenizer, train_attribute_classifier
from unif2ace.eval.attribute_classifier import AttributeClassifier
from unif2ace.eval.classifier_training import accuracy, load_split
from unif2ace.eval.codes import decode_own_codes, judge_codes
from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2


@pytest.fixture(scope="module")
def setup(tiny_shards, tmp_path_factory):
    root = tiny_shards.parent  # conftest: SynthFace data/ (40 faces, 32 px) and a random tiny magvit/
    clf = tmp_path_factory.mktemp("judge") / "clf"
    rc = train_attribute_classifier.main(["--data", str(root / "data"), "--out", str(clf), "--steps", "6",
                                          "--batch-size", "8", "--no-progress"])
    assert rc == 0
    torch.manual_seed(1)
    other = tmp_path_factory.mktemp("judge") / "magvit2"
    MagvitV2(MagvitConfig.tiny()).save_pretrained(other)
    return root / "data", clf, root / "magvit", other


def test_real_column_is_the_classifiers_own_test_accuracy(setup):
    data, clf, tok, _ = setup
    result = judge_codes(data, clf, [tok])
    # written by the classifier's training tool, which evaluated the same split its own way
    own = json.loads((clf / "test_metrics.json").read_text())["test"]
    assert result["num_faces"] == own["n_images"] > 0
    assert result["real"]["mean_accuracy"] == pytest.approx(own["mean_accuracy"], abs=1e-6)
    for c, v in own["per_category"].items():
        assert result["real"]["per_category"][c]["n"] == v["n"]


def test_decoded_column_judges_the_tokenizers_reconstructions(setup):
    data, clf_dir, tok_dir, _ = setup
    clf = AttributeClassifier.load(clf_dir)
    x, y, _ = load_split(data, "test", clf.categories)
    tok = MagvitV2.from_pretrained(tok_dir).eval()
    with torch.no_grad():  # one batch through the public API, by hand
        rec = ((tok.decode_codes(tok.encode(x.float() / 127.5 - 1)) + 1) * 127.5).round().to(torch.uint8)
    assert x.shape[0] > 3
    mine = decode_own_codes(tok, x, batch_size=3)  # batches of 3 concatenated in order
    assert mine.dtype == torch.uint8 and mine.shape == x.shape
    assert torch.equal(mine, rec)
    assert not torch.equal(mine, x)  # a random tokenizer cannot give the faces back
    entry = judge_codes(data, clf_dir, [tok_dir], batch_size=3)["tokenizers"][0]
    assert entry["mean_accuracy"] == pytest.approx(accuracy(clf, rec, y)["mean_accuracy"], abs=1e-6)
    assert entry["tokens_per_image"] == 16 and entry["codebook_size"] == 64  # tiny: 32 px → 4×4 codes of 6 bits


def test_cli_compares_tokenizers_and_writes_json(setup, tmp_path, capsys):
    data, clf, tok, other = setup
    out = tmp_path / "judge.json"
    rc = judge_tokenizer.main(["--data", str(data), "--classifier", str(clf), "--tokenizer", str(tok),
                               "--tokenizer", str(other), "--limit", "5", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    line = json.loads(printed.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    assert saved["num_faces"] == 5 and [t["path"] for t in saved["tokenizers"]] == [str(tok), str(other)]
    assert line["real"] == saved["real"]["mean_accuracy"]
    assert line["decoded"] == {t["path"]: t["mean_accuracy"] for t in saved["tokenizers"]}
    assert "eye_colour" in printed and "tok1" in printed


def test_cli_names_a_missing_tokenizer(setup, tmp_path, capsys):
    data, clf, _, _ = setup
    rc = judge_tokenizer.main(["--data", str(data), "--classifier", str(clf), "--tokenizer", str(tmp_path / "nope")])
    assert rc == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
