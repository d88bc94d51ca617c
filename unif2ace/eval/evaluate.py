"""Evaluate a model on SynthFace through two callables; write metrics.json, report.md and grids.

    from unif2ace.eval.evaluate import EvalConfig, evaluate
    cfg = EvalConfig(data="data/synthface", classifier="runs/classifier", out="runs/eval")
    metrics = evaluate(cfg, generate_fn=gen, answer_fn=ans)
    # gen(prompts: list[str]) -> list[PIL.Image]              one face per prompt
    # ans(ids: list[str], questions: list[str]) -> list[str]  one answer per (face id, question)

The callables are the only contact with the model, so the numbers do not depend on how the
model is loaded or sampled (``launchers/evaluate.py`` builds them from a checkpoint). Either
may be None to skip that half.

* Understanding, on the first ``num_understanding`` faces of the split: every VQA pair of the
  metadata (exact match per category with chance and majority baselines; given the classifier,
  the same questions answered from its reading of the real faces and, with ``decode_fn``, of
  the faces decoded from their own codes: what a reader of those pixels gets; and a control
  that asks the first ``image_control`` faces' questions with another face's image) and one caption per
  face (prompt ``caption_prompt``), whose attributes are parsed with SynthFace's
  ``attributes_in_text`` and scored against the reference caption (recall) and the visible
  ground truth (precision); the control also describes those faces from another face's image.
  Every answer is kept in ``answers.jsonl`` (``ANSWERS_FILE``).
* Generation, from the reference captions of the first ``num_generation`` faces: the
  attribute classifier's verdict on each prompted attribute, the same classifier on the real
  faces as a ceiling, SynthFace-FID (classifier features) and, given ``inception_weights``,
  standard FID, both against the split's real faces.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from unif2ace.eval import metrics as M

GenerateFn = Callable[[list[str]], list[Image.Image]]
AnswerFn = Callable[[list[str], list[str]], list[str]]
DecodeFn = Callable[[list[str]], list[Image.Image]]
"""Face ids → those faces decoded from their own image codes (the image tokenizer's ceiling)."""

ANSWERS_FILE = "answers.jsonl"
"""Every answer of the understanding half, one JSON object a line: ``task`` ("vqa" or
"caption"), face ``id``, ``question``, the model's whole ``answer``, ``gold``; VQA rows add
``category``, ``kind``, ``scored`` (what was compared, see ``EvalConfig.answer_after``) and
``correct``."""


@dataclass
class EvalConfig:
    """What to evaluate and where to write it."""

    data: str = ""
    """SynthFace directory (metadata.jsonl, attributes.json, images/)."""
    out: str = ""
    """Output directory: metrics.json, report.md, answers.png, generation.png."""
    classifier: str = ""
    """Attribute-classifier directory (tools/train_attribute_classifier.py); needed for generation."""
    split: str = "test"
    """Split whose faces are evaluated (splits are by identity: test people are unseen)."""
    num_understanding: int = 0
    """Faces for VQA and captioning (0 = every face of the split)."""
    num_generation: int = 64
    """Prompts (reference captions of the split's first faces) to generate from (0 = all)."""
    image_control: int = 16
    """Faces (the first of those evaluated) whose VQA questions are asked again with the next
    face's image and features: the accuracy drop is what the answers take from the face itself
    (0 = off)."""
    answer_after: str = ""
    """Score only the text after the last occurrence of this separator in each VQA answer ('' =
    the whole answer): for models trained to state what an answer rests on before it
    ("earrings, yes"). The report's examples keep the whole answer. ``launchers/evaluate.py``
    takes it from the manifest of the shards the model was trained on (precompute
    ``--grounded-answers``) when not given."""
    caption_prompt: str = "Describe this face in detail."
    """Question that asks for a caption (one of tokenizers.text.CAPTION_PROMPTS)."""
    batch_size: int = 16
    """Items per call of generate_fn / answer_fn."""
    fid_real: int = 0
    """Real faces for the FIDs (0 = every face of the split)."""
    inception_weights: str = ""
    """torch-fidelity InceptionV3 weights file for standard FID ('' = skip it)."""
    grid_rows: int = 8
    """Rows in the answers and generation grids."""
    checkpoint: str = ""
    """Shown in the report only (the model is reached through the callables)."""


def final_answer(text: str, after: str) -> str:
    """The part of ``text`` after the last ``after`` (all of it when ``after`` is '' or absent)."""
    return text.rsplit(after, 1)[-1].strip() if after else text


def _chunks(n: int, size: int):
    for i in range(0, n, max(1, size)):
        yield slice(i, min(n, i + max(1, size)))


def _call_answers(answer_fn: AnswerFn, ids: list[str], questions: list[str], bs: int) -> list[str]:
    out: list[str] = []
    for s in _chunks(len(ids), bs):
        got = list(answer_fn(ids[s], questions[s]))
        if len(got) != len(ids[s]):
            raise ValueError(f"answer_fn returned {len(got)} answers for {len(ids[s])} questions")
        out += [str(a) for a in got]
    return out


def _call_generate(generate_fn: GenerateFn, prompts: list[str], bs: int) -> list[Image.Image]:
    out: list[Image.Image] = []
    for s in _chunks(len(prompts), bs):
        got = list(generate_fn(prompts[s]))
        if len(got) != len(prompts[s]):
            raise ValueError(f"generate_fn returned {len(got)} images for {len(prompts[s])} prompts")
        out += [im.convert("RGB") for im in got]
    return out


def _open(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _visible(attrs: dict) -> dict:
    from unif2ace import synthface

    if not set(synthface.TAXONOMY) <= set(attrs):
        return dict(attrs)  # not a full SynthFace record: nothing known to be hidden
    hidden = synthface.hidden_categories(attrs)
    return {c: v for c, v in attrs.items() if c not in hidden}


class _Reader:
    """The attribute classifier's reading of the split's real faces and, with ``decode_fn``, of
    the same faces decoded from their own codes; each face is read (and decoded) once for both
    halves of the evaluation."""

    def __init__(self, path: str, decode_fn: DecodeFn | None):
        from unif2ace.eval.attribute_classifier import AttributeClassifier

        self.clf, self.decode_fn, self._memo = AttributeClassifier.load(path), decode_fn, {}

    def __call__(self, recs, decoded: bool = False) -> list[dict[str, str]]:
        todo = [r for r in recs if (r.id, decoded) not in self._memo]
        if todo:
            faces = ([im.convert("RGB") for im in self.decode_fn([r.id for r in todo])] if decoded
                     else [_open(r.image) for r in todo])
            self._memo.update({(r.id, decoded): a for r, a in zip(todo, self.clf.predict(faces))})
        return [self._memo[(r.id, decoded)] for r in recs]


def _understanding(cfg: EvalConfig, records, answer_fn: AnswerFn, num_values: dict, out: Path,
                   notes: list[str], reader: _Reader | None = None) -> dict:
    from unif2ace.atomic import atomic_write_text
    from unif2ace.synthface import attributes_in_text, is_synthface_question
    from unif2ace.synthface.text import question_kind
    from unif2ace.eval.report import answer_grid
    from unif2ace.inference.t2i import save_png

    recs = records[: cfg.num_understanding] if cfg.num_understanding else records
    kind_of = _qa_kinds(cfg.data, recs)
    owner = [i for i, r in enumerate(recs) for _ in r.qa]  # record index of each question
    pairs = [qa for r in recs for qa in r.qa]
    ids = [recs[o].id for o in owner]
    qs, golds, cats = [qa.question for qa in pairs], [qa.answer for qa in pairs], [qa.category for qa in pairs]
    kinds = [kind_of[(o, q)] for o, q in zip(owner, qs)]
    raw = _call_answers(answer_fn, ids, qs, cfg.batch_size)
    preds = [final_answer(p, cfg.answer_after) for p in raw]
    if cfg.answer_after:
        notes.append(f"VQA scores the part of each answer after its last {cfg.answer_after!r} (the model states "
                     f"what a yes/no answer rests on first: \"earrings{cfg.answer_after} yes\" is scored as \"yes\").")
    # SynthFace's yes/no questions ask about presence ("earrings?") or one value ("blonde?")
    forms = {f: [i for i, (q, k) in enumerate(zip(qs, kinds)) if k == "yesno" and question_kind(q) == f]
             for f in ("presence", "value")} if all(map(is_synthface_question, qs)) else {}

    def vqa_of(answers: list[str]) -> dict:
        v = M.vqa_scores(answers, golds, cats, kinds, num_values)
        if forms:
            v["per_yesno_form"] = {f: M.vqa_scores(*([x[i] for i in sel] for x in (answers, golds, cats, kinds)),
                                                   num_values)["overall"] for f, sel in forms.items() if sel}
        return v

    vqa = vqa_of(preds)
    refs = {}
    n_ctl = min(cfg.image_control, len(recs))
    if n_ctl >= 2:
        sel = [i for i, o in enumerate(owner) if o < n_ctl]
        other = [final_answer(p, cfg.answer_after) for p in _call_answers(
            answer_fn, [recs[(owner[i] + 1) % n_ctl].id for i in sel], [qs[i] for i in sel], cfg.batch_size)]
        score = [M.vqa_scores(p, [golds[i] for i in sel], [cats[i] for i in sel], [kinds[i] for i in sel],
                              num_values)["overall"]["accuracy"] for p in ([preds[i] for i in sel], other)]
        refs["image_control"] = {"faces": n_ctl, "questions": len(sel), "own_image": score[0],
                                 "other_image": score[1]}
    if reader is not None:  # the same questions answered from the attribute classifier's reading
        from unif2ace.synthface import answer_from_attributes

        unread = sorted(set(cats) - set(reader.clf.categories))
        foreign = [q for q in qs if not is_synthface_question(q)]
        if unread or foreign:
            notes.append("VQA references skipped: " + (f"the classifier does not read {', '.join(unread)}" if unread
                         else f"{len(foreign)} questions are not SynthFace's, e.g. {foreign[0]!r}") + ".")
        else:
            for key, decoded in (("real_reference", False), ("decoded_reference", True)):
                if decoded and reader.decode_fn is None:
                    continue
                read = reader(recs, decoded)
                refs[key] = vqa_of([answer_from_attributes(q, read[o]) for o, q in zip(owner, qs)])
    captions = _call_answers(answer_fn, [r.id for r in recs], [cfg.caption_prompt] * len(recs), cfg.batch_size)
    ref_pairs, visible = [attributes_in_text(r.caption) for r in recs], [_visible(r.attributes) for r in recs]
    cap = M.caption_attribute_scores([attributes_in_text(c) for c in captions], ref_pairs, visible)
    if "image_control" in refs:  # the same faces described from the next face's image
        other = _call_answers(answer_fn, [recs[(i + 1) % n_ctl].id for i in range(n_ctl)],
                              [cfg.caption_prompt] * n_ctl, cfg.batch_size)
        refs["image_control"].update({
            f"caption_{key}_recall": M.caption_attribute_scores([attributes_in_text(c) for c in said],
                                                                ref_pairs[:n_ctl], visible[:n_ctl])["recall"]
            for key, said in (("own", captions[:n_ctl]), ("other", other))})
    rows = min(cfg.grid_rows, len(recs))
    if rows:
        per_face = [[] for _ in range(rows)]
        for o, q, p, g in zip(owner, qs, preds, golds):
            if o < rows and len(per_face[o]) < 6:
                per_face[o].append((q, p, g))
        save_png(answer_grid([_open(r.image) for r in recs[:rows]], per_face, captions=captions[:rows]),
                 out / "answers.png")
    examples = [{"id": recs[o].id, "question": q, "prediction": p, "gold": g}
                for o, q, p, g in list(zip(owner, qs, raw, golds))[:50]]
    # Every answer, not only the examples above, so that a question's kind, category or wording can
    # be analysed after the run without answering again.
    rows = [{"task": "vqa", "id": i, "question": q, "category": c, "kind": k, "answer": r, "scored": p,
             "gold": g, "correct": M.normalize_answer(p) == M.normalize_answer(g)}
            for i, q, c, k, r, p, g in zip(ids, qs, cats, kinds, raw, preds, golds)]
    rows += [{"task": "caption", "id": r.id, "question": cfg.caption_prompt, "answer": c, "gold": r.caption}
             for r, c in zip(recs, captions)]
    atomic_write_text(out / ANSWERS_FILE, "".join(json.dumps(row) + "\n" for row in rows))
    return {"vqa": vqa, **refs, "caption": cap, "examples": examples,
            "caption_examples": [{"id": r.id, "prediction": c, "reference": r.caption}
                                 for r, c in list(zip(recs, captions))[:10]]}


def _qa_kinds(data: str, recs) -> dict[tuple[int, str], str]:
    """(record index, question) → "open" | "yesno", read from the metadata's ``kind`` field
    (the generic record loader does not keep it). Without one, a yes/no gold answer means yesno."""
    kinds: dict[str, dict[str, str]] = {}
    meta = Path(data) / "metadata.jsonl"
    if meta.exists():
        want = {r.id for r in recs}
        with open(meta, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                if str(row.get("id")) in want:
                    kinds[str(row["id"])] = {qa["q"]: qa.get("kind", "") for qa in row.get("qa", [])}
    out = {}
    for i, r in enumerate(recs):
        for qa in r.qa:
            k = kinds.get(r.id, {}).get(qa.question, "")
            out[(i, qa.question)] = k or ("yesno" if M.normalize_answer(qa.answer) in ("yes", "no") else "open")
    return out


def _fid_entry(metric, real: list[Image.Image], fake: list[Image.Image]) -> dict:
    from unif2ace.eval.fid import compute_fid, to_uint8

    def batches(ims):
        return (to_uint8(ims[s]) for s in _chunks(len(ims), 64))

    return {"value": compute_fid(metric, batches(real), batches(fake)), "n_real": len(real), "n_generated": len(fake)}


def _generation(cfg: EvalConfig, records, generate_fn: GenerateFn, num_values: dict, out: Path,
                notes: list[str], reader: _Reader | None) -> dict:
    from unif2ace.synthface import attributes_in_text
    from unif2ace.eval.fid import inception_fid, synthface_fid
    from unif2ace.eval.report import prompt_grid
    from unif2ace.inference.t2i import save_png

    if reader is None:
        raise ValueError("EvalConfig.classifier is required to judge generated faces")
    clf = reader.clf
    recs = records[: cfg.num_generation] if cfg.num_generation else records
    prompts = [r.caption for r in recs]
    prompted = [attributes_in_text(p) for p in prompts]
    fake = _call_generate(generate_fn, prompts, cfg.batch_size)
    size = clf.cfg.image_size
    judged = clf.predict(fake)
    res = {"attributes": M.generation_attribute_scores(prompted, judged, num_values),
           "real_reference": M.generation_attribute_scores(prompted, reader(recs), num_values)}
    if reader.decode_fn is not None:  # what the codes can carry at all: no generator can beat its tokenizer
        res["decoded_reference"] = M.generation_attribute_scores(prompted, reader(recs, decoded=True), num_values)
    # FID compares like with like: every face at the classifier's input size.
    real_all = records[: cfg.fid_real] if cfg.fid_real else records
    real = [_open(r.image).resize((size, size), Image.BICUBIC) for r in real_all]
    fake_s = [im.resize((size, size), Image.BICUBIC) for im in fake]
    if len(real) >= 2 and len(fake_s) >= 2:
        res["synthface_fid"] = _fid_entry(synthface_fid(clf), real, fake_s)
        if cfg.inception_weights:
            res["inception_fid"] = _fid_entry(inception_fid(cfg.inception_weights), real, fake_s)
        if len(fake_s) < 2 * clf.num_features:
            notes.append(f"FID from {len(fake_s)} generated faces (feature dimension {clf.num_features}): "
                         "biased upwards at small sample counts; compare runs only at equal counts.")
    else:
        notes.append("FID skipped: needs at least 2 real and 2 generated faces.")
    rows = min(cfg.grid_rows, len(prompts))
    if rows:
        hits = []
        for want, got in zip(prompted[:rows], judged[:rows]):
            n_ok = sum(M.normalize_answer(got.get(c, "")) == M.normalize_answer(v) for c, v in want.items())
            hits.append(f"classifier: {n_ok}/{len(want)} prompted attributes")
        save_png(prompt_grid(prompts[:rows], [[im] for im in fake[:rows]], notes=hits), out / "generation.png")
        for i, im in enumerate(fake[:rows]):
            save_png(im, out / "generated" / f"{recs[i].id}.png")
    res["examples"] = [{"id": r.id, "prompt": p, "prompted": w, "recognised": {c: j.get(c) for c in w}}
                       for r, p, w, j in list(zip(recs, prompts, prompted, judged))[:20]]
    return res


def evaluate(cfg: EvalConfig, generate_fn: GenerateFn | None = None, answer_fn: AnswerFn | None = None,
             decode_fn: DecodeFn | None = None) -> dict:
    """Run the enabled halves, write ``metrics.json`` + ``report.md`` (+ grids) into ``cfg.out``."""
    from unif2ace.atomic import atomic_write_text
    from unif2ace.data.sources import SourceConfig, load_records
    from unif2ace.eval.attribute_classifier import load_taxonomy
    from unif2ace.eval.report import write_report

    if not cfg.data or not cfg.out:
        raise ValueError("EvalConfig: set data and out")
    if generate_fn is None and answer_fn is None:
        raise ValueError("evaluate: give generate_fn, answer_fn or both")
    taxonomy = load_taxonomy(Path(cfg.data) / "attributes.json")
    num_values = {c: len(v) for c, v in taxonomy.items()}
    records = load_records(SourceConfig(root=cfg.data), split=cfg.split)
    if not records:
        raise ValueError(f"{cfg.data}: no faces in split {cfg.split!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    metrics: dict = {"info": {"checkpoint": cfg.checkpoint, "data": cfg.data, "split": cfg.split,
                              "classifier": cfg.classifier,
                              "date": _dt.datetime.now().isoformat(timespec="seconds")},
                     "config": asdict(cfg)}
    images: dict[str, str] = {}
    reader = _Reader(cfg.classifier, decode_fn) if cfg.classifier else None
    if answer_fn is not None:
        metrics["understanding"] = _understanding(cfg, records, answer_fn, num_values, out, notes, reader)
        images["answers"] = "answers.png"
    if generate_fn is not None:
        metrics["generation"] = _generation(cfg, records, generate_fn, num_values, out, notes, reader)
        images["generation"] = "generation.png"
    if cfg.classifier:
        tm = Path(cfg.classifier) / "test_metrics.json"
        if tm.exists():
            t = json.loads(tm.read_text())["test"]
            metrics["classifier"] = {"test_mean_accuracy": t["mean_accuracy"],
                                     "per_category": {c: v["accuracy"] for c, v in t["per_category"].items()}}
    metrics["notes"] = notes
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_report(out, metrics, images)
    return metrics


def answers_from_table(table: dict[tuple[str, str], str], default: str = "") -> AnswerFn:
    """An ``answer_fn`` that looks answers up by (id, question): tests and replaying saved answers."""
    def fn(ids: Sequence[str], questions: Sequence[str]) -> list[str]:
        return [table.get((i, q), default) for i, q in zip(ids, questions)]
    return fn
