"""Evaluation metrics as pure functions: VQA accuracy, caption attribute recall/precision,
generation attribute accuracy.

    from unif2ace.eval.metrics import vqa_scores, caption_attribute_scores, generation_attribute_scores
    vqa = vqa_scores(preds, golds, categories, kinds, num_values={"hair_colour": 5, ...})
    vqa["per_category"]["hair_colour"]      # {"n", "accuracy", "chance", "majority", ...}
    cap = caption_attribute_scores(parsed_preds, parsed_refs, truths)   # dicts category → value
    gen = generation_attribute_scores(prompted, recognised)             # dicts category → value

Nothing here reads files, models or the SynthFace parser: callers parse text into
``{category: value}`` dicts (``unif2ace.synthface.attributes_in_text``) and pass them in,
so each number can be checked by hand.
"""
from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from typing import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation → space, articles dropped, whitespace collapsed (SQuAD-style).

    Punctuation becomes a space rather than vanishing so "light-brown" equals "light brown".
    """
    text = str(text).lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _ratio(num: float, den: float) -> float | None:
    # None (JSON null) rather than 0 when there is nothing to measure: 0 would read as a failure.
    return num / den if den else None


def vqa_scores(predictions: Sequence[str], golds: Sequence[str], categories: Sequence[str],
               kinds: Sequence[str], num_values: Mapping[str, int]) -> dict:
    """Exact-match VQA accuracy per attribute category, with two baselines.

    ``kinds[i]`` is ``"open"`` (the answer is one of the category's values) or ``"yesno"``.
    ``num_values[c]`` is how many values category ``c`` has. Per category (and overall):

    * ``accuracy``: fraction of normalised predictions equal to the normalised gold answer;
    * ``chance``: expected accuracy of a uniform guess, question by question — 1/|values| for
      open questions, 0.5 for yes/no — averaged over the category's questions;
    * ``majority``: accuracy of always answering the most frequent gold answer of the question's
      (category, kind) group, a baseline for skewed answer distributions.

    ``mean_over_categories`` averages the per-category numbers with equal weight per category;
    ``per_kind`` gives the same numbers over all open and over all yes/no questions. A model
    that has learnt each question's answer prior but not to read the face sits at ``majority``
    there; kept apart, the two kinds show which of them it has begun to read.
    """
    n = len(predictions)
    if not (len(golds) == len(categories) == len(kinds) == n):
        raise ValueError(f"vqa_scores: lengths differ: {n} predictions, {len(golds)} golds, "
                         f"{len(categories)} categories, {len(kinds)} kinds")
    gold_n = [normalize_answer(g) for g in golds]
    groups: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for g, c, k in zip(gold_n, categories, kinds):
        groups[(c, k)][g] += 1
    # Ties between equally frequent answers: the first seen wins (Counter keeps insertion order).
    majority = {key: cnt.most_common(1)[0][0] for key, cnt in groups.items()}

    def tally() -> dict[str, float]:
        return {"n": 0, "correct": 0, "chance": 0.0, "majority": 0, "n_open": 0, "n_yesno": 0}

    by_cat: dict[str, dict] = defaultdict(tally)
    by_kind: dict[str, dict] = defaultdict(tally)
    total = tally()
    for p, g, c, k in zip(predictions, gold_n, categories, kinds):
        if k == "open":
            if c not in num_values or num_values[c] < 1:
                raise ValueError(f"vqa_scores: no value count for open-question category {c!r}")
            chance = 1.0 / num_values[c]
        elif k == "yesno":
            chance = 0.5
        else:
            raise ValueError(f"vqa_scores: question kind {k!r} (category {c!r}) is neither 'open' nor 'yesno'")
        right = int(normalize_answer(p) == g)
        for a in (by_cat[c], by_kind[k], total):
            a["n"] += 1
            a["correct"] += right
            a["chance"] += chance
            a["majority"] += int(g == majority[(c, k)])
            a["n_" + k] += 1

    def finish(a: dict) -> dict:
        return {"n": a["n"], "n_open": a["n_open"], "n_yesno": a["n_yesno"],
                "accuracy": _ratio(a["correct"], a["n"]), "chance": _ratio(a["chance"], a["n"]),
                "majority": _ratio(a["majority"], a["n"])}

    per_cat = {c: finish(by_cat[c]) for c in sorted(by_cat)}
    per_kind = {k: finish(by_kind[k]) for k in ("open", "yesno") if k in by_kind}
    overall = finish(total)
    mean = {k: _ratio(sum(v[k] for v in per_cat.values()), len(per_cat)) for k in ("accuracy", "chance", "majority")}
    return {"overall": overall, "mean_over_categories": mean, "per_category": per_cat, "per_kind": per_kind}


def _norm_pairs(d: Mapping[str, str]) -> dict[str, str]:
    return {str(c): normalize_answer(v) for c, v in d.items()}


def caption_attribute_scores(predicted: Sequence[Mapping[str, str]], reference: Sequence[Mapping[str, str]],
                             truth: Sequence[Mapping[str, str]] | None = None) -> dict:
    """Attribute recall/precision of predicted captions, micro-averaged over all pairs.

    Each argument holds one ``{category: value}`` dict per image: ``predicted`` parsed from the
    model's caption, ``reference`` parsed from the reference caption, ``truth`` the image's full
    ground-truth attributes (default: ``reference``).

    * recall = reference pairs the prediction states with the same value / reference pairs;
    * precision = predicted pairs that agree with the ground truth / predicted pairs (a true
      attribute the reference caption happens not to mention is still correct).
    """
    truth = reference if truth is None else truth
    if not (len(predicted) == len(reference) == len(truth)):
        raise ValueError(f"caption_attribute_scores: lengths differ: {len(predicted)} predicted, "
                         f"{len(reference)} reference, {len(truth)} truth")
    cnt: dict[str, Counter] = defaultdict(Counter)
    for pred, ref, tru in zip(predicted, reference, truth):
        pred, ref, tru = _norm_pairs(pred), _norm_pairs(ref), _norm_pairs(tru)
        for c, v in ref.items():
            for key in (c, None):
                cnt[key]["ref"] += 1
                cnt[key]["recalled"] += int(pred.get(c) == v)
        for c, v in pred.items():
            for key in (c, None):
                cnt[key]["pred"] += 1
                cnt[key]["precise"] += int(tru.get(c) == v)

    def finish(k: Counter) -> dict:
        r, p = _ratio(k["recalled"], k["ref"]), _ratio(k["precise"], k["pred"])
        f1 = None if r is None or p is None else (2 * r * p / (r + p) if r + p else 0.0)
        return {"recall": r, "precision": p, "f1": f1, "reference_pairs": k["ref"], "predicted_pairs": k["pred"]}

    out = finish(cnt[None])
    out["n_images"] = len(predicted)
    out["per_category"] = {c: finish(k) for c, k in sorted(cnt.items(), key=lambda kv: str(kv[0])) if c is not None}
    return out


def generation_attribute_scores(prompted: Sequence[Mapping[str, str]], recognised: Sequence[Mapping[str, str]],
                                num_values: Mapping[str, int] | None = None) -> dict:
    """Fraction of prompted attributes that the classifier recognises in the generated image.

    ``prompted[i]``: the ``{category: value}`` pairs the i-th prompt asked for;
    ``recognised[i]``: the classifier's prediction for the i-th generated image. A prompted
    category the classifier has no head for cannot be judged: it is counted in ``unjudged``
    and left out of the accuracy. ``overall`` is micro-averaged over all judged pairs,
    ``mean_over_categories`` weights categories equally. With ``num_values`` each category also
    reports ``chance`` = 1/|values| (what a face unrelated to its prompt would score).
    """
    if len(prompted) != len(recognised):
        raise ValueError(f"generation_attribute_scores: {len(prompted)} prompts but {len(recognised)} predictions")
    cnt: dict[str, Counter] = defaultdict(Counter)
    unjudged: Counter = Counter()
    for want, got in zip(prompted, recognised):
        want, got = _norm_pairs(want), _norm_pairs(got)
        for c, v in want.items():
            if c not in got:
                unjudged[c] += 1
                continue
            for key in (c, None):
                cnt[key]["n"] += 1
                cnt[key]["hit"] += int(got[c] == v)
    per_cat = {}
    for c, k in sorted(cnt.items(), key=lambda kv: str(kv[0])):
        if c is None:
            continue
        per_cat[c] = {"n": k["n"], "accuracy": _ratio(k["hit"], k["n"])}
        if num_values and c in num_values:
            per_cat[c]["chance"] = 1.0 / num_values[c]
    accs = [v["accuracy"] for v in per_cat.values()]
    return {"overall": _ratio(cnt[None]["hit"], cnt[None]["n"]), "n": cnt[None]["n"],
            "mean_over_categories": _ratio(sum(accs), len(accs)), "per_category": per_cat,
            "unjudged": dict(sorted(unjudged.items()))}
