"""What precompute would read from a source spec, before anyone spends hours in precompute.

    python tools/inspect_source.py specs/unif2aced-1m.yaml
    python tools/inspect_source.py my.yaml --rows 5 --split test     # more example rows, one split
    python tools/inspect_source.py my.yaml --decode 200              # also decode 200 images

Prints: the files read (rows each), counts per split (samples, images, identities, QA pairs),
the first rows as the model sees them (the T2I caption and the MMU turns in the prompt
format of unif2ace.tokenizers.text), and every problem found, one line each naming file and
row: unreadable files, fields that do not parse, duplicate keys, rows of one key in two
splits, an image or identity in two splits (an error unless the spec sets
allow_split_overlap: true), missing images, samples with neither caption nor QA.

Exit status: 0 no errors (warnings allowed), 1 errors (precompute --spec would refuse), 2 the
spec itself is unusable.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter


from unif2ace.data.sources import BadInput, open_image
from unif2ace.data.spec import Problem, SpecError, load_spec, read_source
from unif2ace.tokenizers.text import ANSWER_TEMPLATE, QUESTION_TEMPLATE


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def report(spec_path: str, rows: int = 3, split: str | None = None, decode: int = 0,
           max_problems: int = 200) -> tuple[str, int]:
    """The report text and the exit status."""
    try:
        spec = load_spec(spec_path)
        result = read_source(spec)
    except SpecError as e:
        return f"error: {e}", 2
    out = [f"source spec {spec_path} (root {spec.root})", "", "files read:"]
    out += [f"  {f}: {n} rows" for f, n in result.files]
    records = [r for r in result.records if not split or r.split == split]
    problems = list(result.problems)
    if decode:
        for r in records[:decode]:
            try:
                open_image(r)
            except BadInput as e:
                problems.append(Problem("warning", str(r.where), f"image of {r.id!r}: {e}"))
    out += ["", "per split:"]
    for name, c in result.splits().items():
        if not split or name == split:
            out.append(f"  {name}: {c['samples']} samples, {c['images']} images, {c['identities']} identities, "
                       f"{c['qa_pairs']} QA pairs")
    out += ["", f"first {min(rows, len(records))} samples as the model sees them:"]
    for r in records[:rows]:
        out.append(f"  [{r.id}] split={r.split} identity={r.identity} image={r.where}")
        out.append(f"    T2I prompt: {_short(r.caption) if r.caption else '(none: VQA only)'}")
        for qa in r.qa[:4]:
            out.append("    MMU turn:   " + _short(QUESTION_TEMPLATE.format(q=qa.question)
                                                  + ANSWER_TEMPLATE.format(a=qa.answer)))
        if len(r.qa) > 4:
            out.append(f"    … {len(r.qa) - 4} more QA pairs")
    errors = [p for p in problems if p.level == "error"]
    kinds = Counter(p.level for p in problems)
    out += ["", f"problems: {kinds['error']} error(s), {kinds['warning']} warning(s)"]
    shown = sorted(problems, key=lambda p: p.level != "error")[:max_problems]
    out += [f"  {p}" for p in shown]
    if len(problems) > len(shown):
        out.append(f"  … {len(problems) - len(shown)} more")
    out.append("")
    out.append("ok: precompute --spec would read this source" if not errors else
               "NOT ok: fix the errors above (precompute --spec refuses a source with errors)")
    return "\n".join(out), 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="source spec YAML")
    ap.add_argument("--rows", type=int, default=3, help="example samples to show")
    ap.add_argument("--split", default=None, help="only this split")
    ap.add_argument("--decode", type=int, default=0, help="also decode the first N images")
    ap.add_argument("--max-problems", type=int, default=200, help="problems listed (all are counted)")
    args = ap.parse_args(argv)
    text, code = report(args.spec, args.rows, args.split, args.decode, args.max_problems)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
