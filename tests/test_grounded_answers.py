"""tools/grounded_answers.py: shards whose yes/no answers name the attribute they rest on.

    pytest tests/test_grounded_answers.py -q
"""
import json

import numpy as np
import pytest

from unif2ace.commands import grounded_answers
from unif2ace.config import DataConfig, load_config
from unif2ace.data import shards as S
from unif2ace.data.loader import ShardLoader
from unif2ace.synthface.text import question_kind
from unif2ace.tokenizers.text import TextTokenizer, grounded_answer


def _rows(shard_dir):
    import datasets

    man = S.read_manifest(shard_dir)
    out = []
    for sh in man["shards"]:
        out += datasets.Dataset.from_file(str(shard_dir / sh["name"] / S.DATA_FILE)).to_list()
    return out


def test_grounded_answer_words():
    attrs = {"earrings": "yes", "necklace": "no", "glasses": "round", "hat": "none", "hair_colour": "black",
             "five_o_clock_shadow": "yes"}
    assert grounded_answer("yes", "earrings", attrs) == "earrings, yes"
    assert grounded_answer("no", "necklace", attrs) == "none, no"
    assert grounded_answer("yes", "glasses", attrs) == "round, yes"
    assert grounded_answer("no", "hat", attrs) == "none, no"
    assert grounded_answer("no", "hair_colour", attrs) == "black, no"  # "Is the hair blonde?"
    assert grounded_answer("yes", "five_o_clock_shadow", attrs) == "five o clock shadow, yes"
    assert grounded_answer("blonde", "hair_colour", attrs) == "blonde"  # open answers unchanged


def test_copy_grounds_every_yes_no_answer_and_changes_nothing_else(tiny_shards, tmp_path):
    out = tmp_path / "grounded"
    assert grounded_answers.main(["--shards", str(tiny_shards), "--out", str(out)]) == 0
    assert S.verify(out) == []
    man = S.read_manifest(out)
    assert man["answer_separator"] == ","  # what evaluation reads to score only the verdict
    tok = TextTokenizer.load(man["text_tokenizer"]["source"])
    src, copy = _rows(tiny_shards), _rows(out)
    assert [r["id"] for r in src] == [r["id"] for r in copy]
    n_yesno = 0
    for a, b in zip(src, copy):
        for k in a:
            if k != "qa_answer_ids":
                assert np.array_equal(np.asarray(a[k], dtype=object), np.asarray(b[k], dtype=object)), k
        attrs = json.loads(a["attributes"])
        for q, old, new, cat in zip(a["qa_question_ids"], a["qa_answer_ids"], b["qa_answer_ids"], a["qa_category"]):
            said = tok.decode(old).strip()
            if said in ("yes", "no"):
                n_yesno += 1
                head, verdict = tok.decode(new).strip().rsplit(",", 1)
                assert verdict.strip() == said
                v = attrs[cat]  # the named attribute is the face's own
                assert head == ("none" if v in ("none", "no") else cat.replace("_", " ") if v == "yes" else v)
                question = tok.decode(q).strip().removeprefix("USER:").removesuffix("ASSISTANT:").strip()
                if question_kind(question) == "presence":
                    assert (head == "none") == (said == "no")
            else:
                assert new == old
    assert n_yesno > 0 and man["grounded_answers"]["grounded"] == n_yesno
    # the training loader reads the copy like any shards
    model = load_config("tiny", ["model.seq_moe.enabled=true"]).model
    batch = next(iter(ShardLoader(DataConfig(shards=str(out), t2i_fraction=0.0, caption_fraction=0.0), model, 0, 1, 4)))
    assert batch.input_ids.shape[0] == 4


def test_errors(tiny_shards, tmp_path):
    with pytest.raises(SystemExit, match="other than its source"):
        grounded_answers.main(["--shards", str(tiny_shards), "--out", str(tiny_shards)])
    other = tmp_path / "other.model"
    from unif2ace.tokenizers.text import train_sentencepiece
    train_sentencepiece([f"face {i} has hair {i * 7} and eyes {i * 13}, yes or no" for i in range(300)], other,
                        vocab_size=300)
    with pytest.raises(SystemExit, match="not the text tokenizer"):
        grounded_answers.main(["--shards", str(tiny_shards), "--out", str(tmp_path / "x"), "--text-tokenizer", str(other)])


def test_precompute_grounded_answers_equal_the_copy_and_evaluation_scores_the_verdict(tiny_shards, tiny_precompute,
                                                                                      tmp_path):
    import torch

    from unif2ace.checkpoint.hf_io import save_pretrained
    from unif2ace.eval.checkpoint import model_callables
    from unif2ace.model.unif2ace import UniF2ace

    assert tiny_precompute(tmp_path / "pre", "--grounded-answers") == 0
    assert grounded_answers.main(["--shards", str(tiny_shards), "--out", str(tmp_path / "copy")]) == 0
    pre, copy = _rows(tmp_path / "pre"), _rows(tmp_path / "copy")
    assert [r["qa_answer_ids"] for r in pre] == [r["qa_answer_ids"] for r in copy]  # two ways, one answer
    assert [r["codes"] for r in pre] == [r["codes"] for r in copy]
    assert S.read_manifest(tmp_path / "pre")["answer_separator"] == ","
    assert "answer_separator" not in S.read_manifest(tiny_shards)
    # evaluation takes the separator from the shards the model was trained on
    for shards, sep in ((tmp_path / "pre", ","), (tiny_shards, "")):
        cfg = load_config("tiny", [f"data.shards={shards}", "sample.max_new_tokens=3"])
        torch.manual_seed(0)
        save_pretrained(UniF2ace(cfg.model), cfg, tmp_path / f"model{len(sep)}")
        _, answer_fn, _ = model_callables(str(tmp_path / f"model{len(sep)}"), str(tiny_shards))
        assert answer_fn.answer_separator == sep


def test_precompute_grounded_answers_need_the_attribute(tiny_shards, tiny_precompute, tmp_path, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_shards.parent / "data", data)
    meta = [json.loads(x) for x in (data / "metadata.jsonl").read_text().splitlines()]
    cat = next(qa["category"] for qa in meta[0]["qa"] if qa["a"] in ("yes", "no"))
    del meta[0]["attributes"][cat]
    (data / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    assert tiny_precompute(tmp_path / "out", "--data", str(data), "--grounded-answers") != 0  # the shard fails
    assert "00000000.png: grounded_answers needs the attribute" in caplog.text and f"no '{cat}' attribute" in caplog.text
