"""evaluate(): metrics.json, report.md and grids from dummy callables on real SynthFace output.

Ground-truth callables must score 1.0 (VQA, caption recall) and reproduce the classifier's
verdict on the real faces; wrong ones must score 0.
"""
import json

import pytest
import torch
from PIL import Image

from unif2ace import synthface
from unif2ace.eval.attribute_classifier import AttributeClassifier, ClassifierConfig, load_taxonomy, to_input
from unif2ace.eval.evaluate import EvalConfig, answers_from_table, evaluate
from unif2ace.synthface.text import _PRESENCE_Q


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "synthface"
    counts = synthface.write_dataset(data, num=96, size=64, seed=3, test_frac=0.3, val_frac=0.0, progress=False)
    assert counts["test"] >= 12
    torch.manual_seed(0)
    clf = AttributeClassifier(ClassifierConfig(categories=load_taxonomy(data / "attributes.json"),
                                               widths=[8, 16, 24]))
    # Untrained, but with BatchNorm statistics of real faces so its features are O(1) in scale.
    for m in clf.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    faces = [Image.open(p).convert("RGB") for p in sorted((data / "images").glob("*/*.png"))]
    with torch.no_grad():
        clf.train()(to_input(faces, 64))
    clf.save(root / "clf")
    meta = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    test = [m for m in meta if m["split"] == "test"]
    return data, root / "clf", test


def _cfg(setup, out, **kw):
    data, clf, test = setup
    return EvalConfig(data=str(data), classifier=str(clf), out=str(out), batch_size=5, grid_rows=4, **kw)


def test_ground_truth_callables_score_one(setup, tmp_path):
    data, clf_dir, test = setup
    cfg = _cfg(setup, tmp_path / "gt", num_understanding=8, num_generation=10, fid_real=10)
    table = {(m["id"], qa["q"]): qa["a"] for m in test for qa in qa_list(m)}
    table.update({(m["id"], cfg.caption_prompt): m["caption"] for m in test})
    by_caption = {m["caption"]: data / m["file"] for m in test}
    calls = []

    def generate(prompts):  # the real face each prompt describes
        calls.append(len(prompts))
        return [Image.open(by_caption[p]).convert("RGB") for p in prompts]

    m = evaluate(cfg, generate_fn=generate, answer_fn=answers_from_table(table))
    assert calls == [5, 5]  # batched by batch_size
    vqa = m["understanding"]["vqa"]
    n_q = sum(len(qa_list(t)) for t in test[:8])
    assert vqa["overall"]["n"] == n_q and vqa["overall"]["accuracy"] == 1.0
    assert all(v["accuracy"] == 1.0 for v in vqa["per_category"].values())
    assert vqa["overall"]["n_open"] > 0 and vqa["overall"]["n_yesno"] > 0  # kinds read from the metadata
    cap = m["understanding"]["caption"]
    assert cap["recall"] == 1.0 and cap["precision"] == 1.0 and cap["n_images"] == 8
    gen = m["generation"]
    # generated == real faces: same verdicts, and FID of a set against itself is 0
    assert gen["attributes"] == gen["real_reference"]
    assert gen["attributes"]["n"] > 10 * 3
    assert abs(gen["synthface_fid"]["value"]) < 1e-3 and gen["synthface_fid"]["n_real"] == 10
    # files
    out = tmp_path / "gt"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    report = (out / "report.md").read_text()
    assert "## Understanding" in report and "## Generation" in report
    assert "![face → answers](answers.png)" in report and "![prompt → generated faces](generation.png)" in report
    assert f"| VQA exact-match accuracy ({n_q} questions) | **1.000** |" in report
    pk = vqa["per_kind"]
    assert pk["open"]["n"] + pk["yesno"]["n"] == n_q and pk["open"]["n"] == vqa["overall"]["n_open"]
    assert f"| VQA on open / yes-no questions ({pk['open']['n']} / {pk['yesno']['n']}) | 1.000 / 1.000 |" in report
    pf = vqa["per_yesno_form"]  # SynthFace's yes/no questions: is the attribute there / has it this value
    presence = sum(qa["q"] in _PRESENCE_Q.values() for t in test[:8] for qa in t["qa"])
    assert pf["presence"]["n"] == presence > 0 and pf["value"]["n"] == pk["yesno"]["n"] - presence > 0
    assert f"| VQA on yes-no questions about presence / one value ({pf['presence']['n']} / {pf['value']['n']}) " \
           "| 1.000 / 1.000 |" in report
    for name in ("answers.png", "generation.png"):
        with Image.open(out / name) as im:
            assert im.width > 200 and im.height >= 4 * 128
    assert len(list((out / "generated").glob("*.png"))) == 4
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    vqa_rows = [r for r in rows if r["task"] == "vqa"]
    assert len(vqa_rows) == n_q and all(r["correct"] and r["answer"] == r["gold"] for r in vqa_rows)
    assert {(r["id"], r["question"]) for r in vqa_rows} == {(t["id"], qa["q"]) for t in test[:8] for qa in t["qa"]}
    assert sum(r["kind"] == "open" for r in vqa_rows) == pk["open"]["n"]
    assert [r["answer"] for r in rows if r["task"] == "caption"] == [t["caption"] for t in test[:8]]


def qa_list(meta):
    return meta["qa"]


def test_wrong_callables_score_zero(setup, tmp_path):
    cfg = _cfg(setup, tmp_path / "wrong", num_understanding=6, num_generation=8, fid_real=8)
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    m = evaluate(cfg, generate_fn=lambda ps: [grey] * len(ps), answer_fn=answers_from_table({}, default="purple"))
    u = m["understanding"]
    assert u["vqa"]["overall"]["accuracy"] == 0.0
    assert u["caption"]["recall"] == 0.0 and u["caption"]["precision"] is None  # "purple" names no attribute
    g = m["generation"]
    # every generated face identical: one verdict for all; far from the real faces in feature space
    assert g["synthface_fid"]["value"] > 1e-3
    assert g["attributes"]["overall"] != g["real_reference"]["overall"]
    report = (tmp_path / "wrong" / "report.md").read_text()
    assert "| VQA exact-match accuracy" in report and "**0.000**" in report
    rows = [json.loads(line) for line in (tmp_path / "wrong" / "answers.jsonl").read_text().splitlines()]
    assert rows and not any(r["correct"] for r in rows if r["task"] == "vqa")


def test_understanding_only_and_errors(setup, tmp_path):
    cfg = _cfg(setup, tmp_path / "u", num_understanding=3)
    m = evaluate(cfg, answer_fn=lambda ids, qs: ["yes"] * len(ids))
    assert "generation" not in m and (tmp_path / "u" / "answers.png").exists()
    assert not (tmp_path / "u" / "generation.png").exists()
    # "yes" to everything: right exactly on the yes/no questions whose gold answer is yes
    v = m["understanding"]["vqa"]["overall"]
    assert 0 < v["accuracy"] < 1
    with pytest.raises(ValueError, match="returned 1 answers for 5 questions"):
        evaluate(cfg, answer_fn=lambda ids, qs: ["yes"])
    with pytest.raises(ValueError, match="give generate_fn, answer_fn or both"):
        evaluate(cfg)


def test_vqa_references_answer_from_the_classifier_reading(setup, tmp_path):
    # The references answer every question from the classifier's reading of each face: a model
    # whose answers are exactly that reading of the real faces scores exactly the real reference.
    data, clf_dir, test = setup
    cfg = _cfg(setup, tmp_path / "ref", num_understanding=7)
    clf = AttributeClassifier.load(clf_dir)
    faces = test[:7]
    read = clf.predict([Image.open(data / m["file"]).convert("RGB") for m in faces])
    table = {(m["id"], qa["q"]): synthface.answer_from_attributes(qa["q"], r) for m, r in zip(faces, read)
             for qa in m["qa"]}
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    by_id = {m["id"]: data / m["file"] for m in test}
    m = evaluate(cfg, answer_fn=answers_from_table(table),
                 decode_fn=lambda ids: [Image.open(by_id[i]).convert("RGB") for i in ids])
    u = m["understanding"]
    assert u["vqa"] == u["real_reference"] == u["decoded_reference"]  # decoded = real faces here
    assert u["vqa"]["overall"]["n"] == sum(len(f["qa"]) for f in faces)
    m2 = evaluate(cfg, answer_fn=answers_from_table(table), decode_fn=lambda ids: [grey] * len(ids))
    d, r = m2["understanding"]["decoded_reference"], m2["understanding"]["real_reference"]
    assert d["overall"]["n"] == r["overall"]["n"] and d["per_category"] != r["per_category"]
    report = (tmp_path / "ref" / "report.md").read_text()
    assert "answered from the attribute classifier's reading of the real faces" in report
    assert "| category | questions (open / yes-no) | accuracy | chance | majority | classifier, real | " \
           "classifier, decoded |" in report


def test_image_control_asks_with_another_face(setup, tmp_path):
    data, clf_dir, test = setup
    table = {(m["id"], qa["q"]): qa["a"] for m in test for qa in m["qa"]}
    cfg = _cfg(setup, tmp_path / "ctl", num_understanding=6, image_control=4)
    table.update({(m["id"], cfg.caption_prompt): m["caption"] for m in test})
    c = evaluate(cfg, answer_fn=answers_from_table(table))["understanding"]["image_control"]
    # an oracle that reads each face answers its own questions; shown another face it is wrong
    # wherever the two faces differ, and describes the other face
    assert c["faces"] == 4 and c["questions"] == sum(len(m["qa"]) for m in test[:4])
    assert c["own_image"] == 1.0 and c["other_image"] < 0.9
    assert c["caption_own_recall"] == 1.0 and c["caption_other_recall"] < 0.9
    report = (tmp_path / "ctl" / "report.md").read_text()
    assert f"| VQA on 4 faces' {c['questions']} questions, asked with each face's own image" in report
    assert "| caption recall on 4 faces, described from each face's own image / from another face's | 1.000 / " in report
    one_caption = test[0]["caption"]  # the same description whatever the face
    blind = evaluate(cfg, answer_fn=lambda ids, qs: [one_caption if q == cfg.caption_prompt else "yes" for q in qs])
    blind = blind["understanding"]["image_control"]
    assert 0 < blind["own_image"] == blind["other_image"]  # answers that ignore the face do not move
    assert 0 < blind["caption_own_recall"] == blind["caption_other_recall"]
    off = evaluate(_cfg(setup, tmp_path / "off", num_understanding=3, image_control=0),
                   answer_fn=answers_from_table(table))["understanding"]
    assert "image_control" not in off


def test_vqa_references_skip_questions_synthface_does_not_ask(setup, tmp_path):
    import shutil

    data, clf_dir, test = setup
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    meta = [json.loads(x) for x in (copy / "metadata.jsonl").read_text().splitlines()]
    first = next(m for m in meta if m["split"] == "test")
    first["qa"][0]["q"] = "Is this person a pilot?"
    (copy / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    cfg = EvalConfig(data=str(copy), classifier=str(clf_dir), out=str(tmp_path / "o"), num_understanding=3)
    m = evaluate(cfg, answer_fn=lambda ids, qs: ["yes"] * len(qs))
    assert "real_reference" not in m["understanding"] and "vqa" in m["understanding"]
    assert any("'Is this person a pilot?'" in n for n in m["notes"])


def test_answer_after_scores_the_final_answer_and_keeps_the_whole_one(setup, tmp_path):
    data, clf_dir, test = setup
    # "<what the answer rests on>, <answer>": right only when the part after the comma is
    table = {(m["id"], qa["q"]): f"because, {qa['a']}" for m in test for qa in m["qa"]}
    cfg = _cfg(setup, tmp_path / "whole", num_understanding=4, image_control=0)
    whole = evaluate(cfg, answer_fn=answers_from_table(table))["understanding"]
    assert whole["vqa"]["overall"]["accuracy"] == 0.0
    cut = evaluate(_cfg(setup, tmp_path / "cut", num_understanding=4, image_control=3, answer_after=","),
                   answer_fn=answers_from_table(table))["understanding"]
    assert cut["vqa"]["overall"]["accuracy"] == 1.0 and cut["image_control"]["own_image"] == 1.0
    assert cut["examples"][0]["prediction"].startswith("because, ")  # the report shows what was said
    assert "VQA scores the part of each answer after its last ','" in (tmp_path / "cut" / "report.md").read_text()
    rows = [json.loads(line) for line in (tmp_path / "cut" / "answers.jsonl").read_text().splitlines()]
    assert all(r["answer"] == f"because, {r['gold']}" and r["scored"] == r["gold"] and r["correct"]
               for r in rows if r["task"] == "vqa")
