"""Evaluation report: image grids (prompt → generated faces; face → answers) and report.md.

    from unif2ace.eval.report import prompt_grid, answer_grid, write_report
    prompt_grid(["a smiling person …"], [[img1, img2]]).save("generation.png")
    answer_grid([face], [[("Is she smiling?", "yes", "yes")]], captions=["A person …"])
    write_report("runs/eval", metrics, {"generation": "generation.png", "answers": "answers.png"})

Grids are drawn with PIL's built-in font so nothing needs installing; faces are upscaled with
nearest neighbour so 64×64 pixels stay visible. ``write_report`` only formats what
``metrics`` holds (the dict ``unif2ace.eval.evaluate.evaluate`` writes to metrics.json).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

WHITE, INK, GOOD, BAD, GREY = (255, 255, 255), (20, 20, 20), (20, 120, 40), (190, 30, 30), (110, 110, 110)


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow ≥ 10.1)
    except TypeError:  # older Pillow / no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _lines(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: Sequence[tuple[str, tuple]], font, step: int):
    x, y = xy
    for text, colour in lines:
        draw.text((x, y), text, fill=colour, font=font)
        y += step


def prompt_grid(prompts: Sequence[str], images: Sequence[Sequence[Image.Image]], cell: int = 128,
                text_width: int = 360, notes: Sequence[str] | None = None) -> Image.Image:
    """One row per prompt: its wrapped text (and an optional note, e.g. attributes hit), then
    the faces generated for it."""
    if len(prompts) != len(images):
        raise ValueError(f"prompt_grid: {len(prompts)} prompts but {len(images)} image rows")
    font, step = _font(), 15
    cols = max((len(r) for r in images), default=0)
    width = text_width + cols * (cell + 4) + 4
    canvas = Image.new("RGB", (width, max(1, len(prompts)) * (cell + 6)), WHITE)
    draw = ImageDraw.Draw(canvas)
    chars = max(20, text_width // 7)
    for r, (prompt, row) in enumerate(zip(prompts, images)):
        y = r * (cell + 6) + 3
        lines = [(t, INK) for t in textwrap.wrap(prompt, chars)]
        max_lines = (cell - (step if notes else 0)) // step
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [(lines[max_lines - 1][0][:chars - 1] + "…", INK)]
        if notes:
            lines.append((notes[r], GREY))
        _lines(draw, (4, y), lines, font, step)
        for c, im in enumerate(row):
            canvas.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (text_width + c * (cell + 4), y))
    return canvas


def answer_grid(faces: Sequence[Image.Image], qa: Sequence[Sequence[tuple[str, str, str]]], cell: int = 128,
                text_width: int = 560, captions: Sequence[str] | None = None) -> Image.Image:
    """One row per face: the face, then each (question, predicted, gold) in green when right,
    red (with the gold answer) when wrong, and optionally the predicted caption."""
    if len(faces) != len(qa):
        raise ValueError(f"answer_grid: {len(faces)} faces but {len(qa)} QA lists")
    from unif2ace.eval.metrics import normalize_answer

    font, step = _font(), 15
    chars = max(20, text_width // 7)
    rows = []
    for i, pairs in enumerate(qa):
        lines = []
        for q, pred, gold in pairs:
            ok = normalize_answer(pred) == normalize_answer(gold)
            lines.append((f"{q}  {pred}" + ("" if ok else f"   (gold: {gold})"), GOOD if ok else BAD))
        if captions:
            lines += [(t, GREY) for t in textwrap.wrap("Caption: " + captions[i], chars)[:4]]
        rows.append(lines)
    heights = [max(cell, len(ls) * step) + 8 for ls in rows]
    canvas = Image.new("RGB", (cell + 12 + text_width, max(1, sum(heights))), WHITE)
    draw = ImageDraw.Draw(canvas)
    y = 0
    for face, lines, h in zip(faces, rows, heights):
        canvas.paste(face.convert("RGB").resize((cell, cell), Image.NEAREST), (4, y + 4))
        _lines(draw, (cell + 12, y + 4), lines, font, step)
        y += h
    return canvas


# --------------------------------------------------------------------------- markdown


def _f(x, digits: int = 3) -> str:
    # round(...) + 0.0 turns a rounding-noise -0.0 (e.g. FID of identical sets) into 0.0
    return "–" if x is None else f"{round(x, digits) + 0.0:.{digits}f}" if isinstance(x, float) else str(x)


def _summary(m: dict) -> list[str]:
    rows = ["| metric | value | reference |", "|---|---|---|"]
    u, g = m.get("understanding") or {}, m.get("generation") or {}
    if "vqa" in u:
        o = u["vqa"]["overall"]
        rows.append(f"| VQA exact-match accuracy ({o['n']} questions) | **{_f(o['accuracy'])}** | "
                    f"chance {_f(o['chance'])}, majority answer {_f(o['majority'])} |")
        rows.append(f"| VQA accuracy, mean over categories | {_f(u['vqa']['mean_over_categories']['accuracy'])} | "
                    f"chance {_f(u['vqa']['mean_over_categories']['chance'])} |")
        pk = u["vqa"].get("per_kind", {})
        if len(pk) == 2:
            o, y = pk["open"], pk["yesno"]
            rows.append(f"| VQA on open / yes-no questions ({o['n']} / {y['n']}) | {_f(o['accuracy'])} / "
                        f"{_f(y['accuracy'])} | majority answer {_f(o['majority'])} / {_f(y['majority'])} |")
        pf = u["vqa"].get("per_yesno_form", {})
        if len(pf) == 2:
            a, b = pf["presence"], pf["value"]
            rows.append(f"| VQA on yes-no questions about presence / one value ({a['n']} / {b['n']}) | "
                        f"{_f(a['accuracy'])} / {_f(b['accuracy'])} | majority answer {_f(a['majority'])} / "
                        f"{_f(b['majority'])} |")
        if "image_control" in u:
            c = u["image_control"]
            rows.append(f"| VQA on {c['faces']} faces' {c['questions']} questions, asked with each face's own "
                        f"image / with another face's | {_f(c['own_image'])} / {_f(c['other_image'])} | "
                        f"the drop is what the answers take from the face |")
        for key, what, why in (("real_reference", "the real faces", "a reader trained on the labels, for scale"),
                               ("decoded_reference", "the faces decoded from their own image codes",
                                "what the image codes carry for that reader")):
            if key in u:
                rows.append(f"| the same questions answered from the attribute classifier's reading of {what} | "
                            f"{_f(u[key]['overall']['accuracy'])} | {why} |")
    if "caption" in u:
        c = u["caption"]
        rows.append(f"| caption attribute recall / precision ({c['n_images']} faces) | "
                    f"**{_f(c['recall'])} / {_f(c['precision'])}** | F1 {_f(c['f1'])} |")
        ctl = u.get("image_control", {})
        if "caption_own_recall" in ctl:
            rows.append(f"| caption recall on {ctl['faces']} faces, described from each face's own image / from "
                        f"another face's | {_f(ctl['caption_own_recall'])} / {_f(ctl['caption_other_recall'])} | "
                        f"the drop is what the captions take from the face |")
    if "attributes" in g:
        a, ref = g["attributes"], g.get("real_reference", {})
        rows.append(f"| generated faces carrying their prompted attributes ({a['n']} pairs) | **{_f(a['overall'])}** | "
                    f"real test faces {_f(ref.get('overall'))} (the classifier's ceiling) |")
        if "decoded_reference" in g:
            d = g["decoded_reference"]
            rows.append(f"| the same real faces decoded from their own image codes | {_f(d['overall'])} | "
                        f"mean over categories {_f(d['mean_over_categories'])} vs real "
                        f"{_f(ref.get('mean_over_categories'))} (the image tokenizer's ceiling) |")
    for key, name in (("synthface_fid", "SynthFace-FID (classifier features)"), ("inception_fid", "FID (Inception)")):
        if key in g:
            f = g[key]
            rows.append(f"| {name} | **{_f(f['value'], 2)}** | {f['n_real']} real vs {f['n_generated']} generated |")
    clf = m.get("classifier") or {}
    if clf.get("test_mean_accuracy") is not None:
        rows.append(f"| attribute classifier's own test accuracy (mean) | {_f(clf['test_mean_accuracy'])} | "
                    f"judge of the generation numbers |")
    return rows


def _vqa_table(u: dict) -> list[str]:
    v, refs = u["vqa"], [u.get(k, {}).get("per_category") for k in ("real_reference", "decoded_reference")]
    head = "| category | questions (open / yes-no) | accuracy | chance | majority |"
    extra = [name for name, r in zip(("classifier, real", "classifier, decoded"), refs) if r is not None]
    rows = [head + "".join(f" {e} |" for e in extra), "|---" * (5 + len(extra)) + "|"]
    for c, r in v["per_category"].items():
        rows.append(f"| {c} | {r['n']} ({r['n_open']} / {r['n_yesno']}) | {_f(r['accuracy'])} | {_f(r['chance'])} | "
                    f"{_f(r['majority'])} |" + "".join(f" {_f(ref[c]['accuracy'])} |" for ref in refs if ref is not None))
    return rows


def _caption_table(c: dict) -> list[str]:
    rows = ["| category | reference pairs | recall | predicted pairs | precision |", "|---|---|---|---|---|"]
    for k, r in c["per_category"].items():
        rows.append(f"| {k} | {r['reference_pairs']} | {_f(r['recall'])} | {r['predicted_pairs']} | {_f(r['precision'])} |")
    return rows


def _gen_table(a: dict, ref: dict) -> list[str]:
    rows = ["| category | prompted | generated accuracy | real faces | chance |", "|---|---|---|---|---|"]
    rp = ref.get("per_category", {})
    for k, r in a["per_category"].items():
        rows.append(f"| {k} | {r['n']} | {_f(r['accuracy'])} | {_f(rp.get(k, {}).get('accuracy'))} | "
                    f"{_f(r.get('chance'))} |")
    return rows


def render_markdown(metrics: dict, images: dict[str, str] | None = None) -> str:
    """report.md text from an evaluation's metrics dict and the grid PNGs' relative paths."""
    images = images or {}
    info = metrics.get("info", {})
    out = ["# UniF²ace evaluation report", ""]
    for k in ("checkpoint", "data", "split", "classifier", "date"):
        if info.get(k):
            out.append(f"- {k}: `{info[k]}`")
    out += ["", "## Summary", ""] + _summary(metrics) + [""]
    u, g = metrics.get("understanding") or {}, metrics.get("generation") or {}
    if u:
        out += ["## Understanding", ""]
        if "vqa" in u:
            out += ["### VQA exact match per attribute category", "",
                    "Answers are compared after lower-casing and dropping punctuation and articles. "
                    "Chance: a uniform guess (1/|values| for open questions, 1/2 for yes/no); "
                    "majority: always giving the most frequent gold answer of the category's question kind.", ""]
            if "real_reference" in u:
                out += ["'classifier': the same questions answered from the attribute classifier's reading of "
                        "the real faces and of the faces decoded from their own image codes.", ""]
            out += _vqa_table(u) + [""]
        if "caption" in u:
            out += ["### Caption attributes", "",
                    "Recall: attribute values of the reference caption that the generated caption states; "
                    "precision: stated values that are true of the face.", ""]
            out += _caption_table(u["caption"]) + [""]
        if "answers" in images:
            out += [f"![face → answers]({images['answers']})", ""]
    if g:
        out += ["## Generation", ""]
        if "attributes" in g:
            out += ["Attributes named in each prompt, judged in the generated face by the independent "
                    "attribute classifier; 'real faces' is the same classifier on the real test faces the "
                    "prompts describe.", ""]
            out += _gen_table(g["attributes"], g.get("real_reference", {})) + [""]
        if "generation" in images:
            out += [f"![prompt → generated faces]({images['generation']})", ""]
    for note in metrics.get("notes", []):
        out.append(f"> {note}")
    return "\n".join(out).rstrip() + "\n"


def write_report(out_dir: str | Path, metrics: dict, images: dict[str, str] | None = None) -> Path:
    """Write ``out_dir/report.md`` atomically; returns its path."""
    from unif2ace.atomic import atomic_write_text

    path = Path(out_dir) / "report.md"
    atomic_write_text(path, render_markdown(metrics, images))
    return path
