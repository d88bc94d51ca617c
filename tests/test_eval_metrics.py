"""Evaluation metrics on hand-made cases; every expected number is worked out in the comments."""
import math

import pytest

from unif2ace.eval.metrics import (caption_attribute_scores, generation_attribute_scores, normalize_answer,
                                   vqa_scores)


def test_normalize_answer_case_punctuation_articles_whitespace():
    assert normalize_answer("  The Blonde. ") == "blonde"
    assert normalize_answer("A  light-brown   beard!") == "light brown beard"
    assert normalize_answer("Yes,") == "yes"
    # "an" only as a word: "another" and "bandana" keep their letters.
    assert normalize_answer("another bandana") == "another bandana"
    assert normalize_answer("No") != normalize_answer("yes")


def test_vqa_scores_per_category_chance_and_majority():
    # hair (3 values): 3 open questions, 1 yes/no.  glasses (2 values): 2 yes/no.
    preds = ["Blonde", "the black.", "red", "no", "Yes", "yes"]
    golds = ["blonde", "black", "blonde", "yes", "yes", "no"]
    cats = ["hair", "hair", "hair", "hair", "glasses", "glasses"]
    kinds = ["open", "open", "open", "yesno", "yesno", "yesno"]
    out = vqa_scores(preds, golds, cats, kinds, num_values={"hair": 3, "glasses": 2})
    hair, glasses = out["per_category"]["hair"], out["per_category"]["glasses"]
    # hair: correct = blonde, black → 2 of 4
    assert hair["n"] == 4 and hair["n_open"] == 3 and hair["n_yesno"] == 1
    assert hair["accuracy"] == pytest.approx(0.5)
    # chance: (1/3 + 1/3 + 1/3 + 1/2) / 4 = 1.5 / 4
    assert hair["chance"] == pytest.approx(1.5 / 4)
    # majority: open group golds blonde, black, blonde → "blonde" right 2×; yes/no group "yes" right 1× → 3/4
    assert hair["majority"] == pytest.approx(0.75)
    # glasses: "Yes"=yes correct, "yes"≠no → 1/2; chance 0.5; majority "yes" (first of a tie) → 1/2
    assert glasses["accuracy"] == pytest.approx(0.5)
    assert glasses["chance"] == pytest.approx(0.5)
    assert glasses["majority"] == pytest.approx(0.5)
    # overall 3 correct of 6; chance (1 + 0.5 + 1) / 6
    assert out["overall"]["accuracy"] == pytest.approx(0.5)
    assert out["overall"]["chance"] == pytest.approx(2.5 / 6)
    assert out["overall"]["majority"] == pytest.approx(4 / 6)
    assert out["mean_over_categories"]["chance"] == pytest.approx((1.5 / 4 + 0.5) / 2)
    # per kind. open: blonde, black right of 3; majority per (category, kind) → hair/open "blonde" right 2×.
    op, yn = out["per_kind"]["open"], out["per_kind"]["yesno"]
    assert (op["n"], op["n_open"], op["n_yesno"]) == (3, 3, 0)
    assert op["accuracy"] == pytest.approx(2 / 3) and op["majority"] == pytest.approx(2 / 3)
    assert op["chance"] == pytest.approx(1 / 3)
    # yes/no: "no"≠yes, "Yes"=yes, "yes"≠no → 1 of 3; majority: hair "yes" right 1×, glasses "yes" right 1× → 2/3
    assert yn["n"] == 3 and yn["accuracy"] == pytest.approx(1 / 3) and yn["majority"] == pytest.approx(2 / 3)
    assert yn["chance"] == pytest.approx(0.5)
    assert set(out["per_kind"]) == {"open", "yesno"} and set(out["per_category"]) == {"hair", "glasses"}


def test_vqa_scores_errors_and_empty():
    with pytest.raises(ValueError, match="lengths differ"):
        vqa_scores(["a"], [], ["c"], ["open"], {"c": 2})
    with pytest.raises(ValueError, match="neither 'open' nor 'yesno'"):
        vqa_scores(["a"], ["a"], ["c"], ["multiple"], {"c": 2})
    with pytest.raises(ValueError, match="no value count"):
        vqa_scores(["a"], ["a"], ["c"], ["open"], {})
    empty = vqa_scores([], [], [], [], {})
    assert empty["overall"]["accuracy"] is None and empty["per_category"] == {} and empty["per_kind"] == {}
    only_open = vqa_scores(["a"], ["a"], ["c"], ["open"], {"c": 2})
    assert set(only_open["per_kind"]) == {"open"}


def test_caption_scores_recall_precision():
    # image 1: reference mentions hair=blonde, eyes=blue; truth also has glasses=none.
    #   predicted hair=blonde (right), eyes=green (wrong), glasses=none (right, not in reference).
    # image 2: reference hair=black; predicted nothing.
    ref = [{"hair": "blonde", "eyes": "blue"}, {"hair": "black"}]
    truth = [{"hair": "blonde", "eyes": "blue", "glasses": "none"}, {"hair": "black", "glasses": "round"}]
    pred = [{"hair": "Blonde", "eyes": "green", "glasses": "none"}, {}]
    out = caption_attribute_scores(pred, ref, truth)
    # recall: reference pairs 3, recalled 1 (hair of image 1)
    assert out["recall"] == pytest.approx(1 / 3)
    # precision: predicted pairs 3, correct per truth 2 (hair, glasses)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * (1 / 3) * (2 / 3) / (1 / 3 + 2 / 3))
    assert out["reference_pairs"] == 3 and out["predicted_pairs"] == 3 and out["n_images"] == 2
    pc = out["per_category"]
    assert pc["hair"]["recall"] == pytest.approx(0.5) and pc["hair"]["precision"] == pytest.approx(1.0)
    assert pc["eyes"]["recall"] == 0.0 and pc["eyes"]["precision"] == 0.0 and pc["eyes"]["f1"] == 0.0
    # glasses is never in a reference: recall undefined, precision 1/1
    assert pc["glasses"]["recall"] is None and pc["glasses"]["precision"] == 1.0
    # without truth, the reference is the truth: glasses=none becomes a wrong prediction → precision 1/3
    assert caption_attribute_scores(pred, ref)["precision"] == pytest.approx(1 / 3)


def test_caption_scores_perfect_and_length_check():
    ref = [{"hair": "blonde"}, {"hair": "red", "beard": "full"}]
    out = caption_attribute_scores(ref, ref)
    assert out["recall"] == 1.0 and out["precision"] == 1.0 and out["f1"] == 1.0
    with pytest.raises(ValueError, match="lengths differ"):
        caption_attribute_scores(ref, ref[:1])


def test_generation_attribute_scores():
    prompted = [{"hair": "blonde", "glasses": "round"}, {"hair": "black", "hat": "cap"}, {"hair": "red"}]
    recognised = [{"hair": "blonde", "glasses": "none"}, {"hair": "black", "glasses": "none"},
                  {"hair": "blonde", "glasses": "none"}]
    out = generation_attribute_scores(prompted, recognised, num_values={"hair": 4, "glasses": 3})
    # judged pairs: hair×3 (2 hits), glasses×1 (0 hits); hat has no classifier head → unjudged
    assert out["n"] == 4 and out["overall"] == pytest.approx(2 / 4)
    assert out["per_category"]["hair"] == {"n": 3, "accuracy": pytest.approx(2 / 3), "chance": 0.25}
    assert out["per_category"]["glasses"]["accuracy"] == 0.0
    assert out["mean_over_categories"] == pytest.approx((2 / 3 + 0) / 2)
    assert out["unjudged"] == {"hat": 1}
    assert "hat" not in out["per_category"]
    with pytest.raises(ValueError):
        generation_attribute_scores(prompted, recognised[:2])
    assert math.isclose(generation_attribute_scores(prompted[:1], [prompted[0]])["overall"], 1.0)
