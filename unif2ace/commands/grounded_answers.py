"""Copy precomputed shards with each yes/no answer preceded by the attribute it rests on (a diagnostic).

    python tools/grounded_answers.py --shards runs/demo/shards --out runs/grounded/shards
    python launchers/train.py --config synthface data.shards=runs/grounded/shards ...
    python launchers/evaluate.py --shards runs/demo/shards_unseen ...

SynthFace's yes/no questions stay at their answer prior where its open ones are learnt
(docs/design.md §12): an open answer word belongs to one category, so its logit can add what
the features say to the question's prior, while "yes" must depend on the question *times* the
features. In the copy a yes/no answer names the face's attribute first ("earrings, yes",
"none, no", "black, no" to "Is the person's hair blonde?"; ``tokenizers.text.grounded_answer``),
so its first word is category-specific like an open answer's and the verdict follows from
it. The manifest records the separator as precompute's ``--grounded-answers`` does, so
``launchers/evaluate.py`` scores only the verdict after it; the evaluation shards need no
copy (their answers are not read). Everything but the yes/no answers is copied unchanged;
the manifest of the copy records the source.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unif2ace.data import shards as S

def write_grounded(src: Path, out: Path, text_tokenizer: str = "") -> dict:
    """Write the copy (shard by shard, atomically) and its manifest; returns the manifest."""
    from unif2ace.tokenizers.text import GROUNDED_SEPARATOR, TextTokenizer, grounded_answer

    man = S.read_manifest(src)
    path = text_tokenizer or man.get("text_tokenizer", {}).get("source", "")
    if not path:
        raise SystemExit(f"{src}: the manifest names no text tokenizer; give --text-tokenizer")
    tok = TextTokenizer.load(path)
    if tok.config_hash() != man["hashes"]["text_tokenizer"]:
        raise SystemExit(f"{path} is not the text tokenizer that wrote {src} (its hash differs from the manifest's)")
    verdict = {tuple(tok.encode_answer(w)): w for w in ("yes", "no")}
    counts = {"grounded": 0, "unchanged": 0}

    def edit(cols: dict) -> dict:
        rows = []
        for sid, attrs, answers, cats in zip(cols["id"], cols["attributes"], cols["qa_answer_ids"], cols["qa_category"]):
            attrs = json.loads(attrs) if attrs else {}
            row = []
            for ids, cat in zip(answers, cats):
                word = verdict.get(tuple(ids))
                if word is None:
                    counts["unchanged"] += 1
                    row.append(ids)
                    continue
                if cat not in attrs:
                    raise SystemExit(f"{src}: sample {sid} answers {word!r} about {cat!r}, which its attributes "
                                     f"do not hold ({', '.join(sorted(attrs)) or 'none'}); a grounded answer needs it")
                counts["grounded"] += 1
                row.append(tok.encode_answer(grounded_answer(word, cat, attrs)))
            rows.append(row)
        cols["qa_answer_ids"] = rows
        return cols

    stamp = {"grounded_answers": {"source": str(src)}, "answer_separator": GROUNDED_SEPARATOR}
    copy = S.copy_shards(src, out, edit, stamp, desc="grounded shards")
    copy["grounded_answers"].update(counts)
    S.write_manifest(out, copy)
    return copy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="source shard directory (manifest.json inside)")
    p.add_argument("--out", required=True, help="where the copy goes (a new directory)")
    p.add_argument("--text-tokenizer", default="", help="the shards' text tokenizer (default: the one the manifest names)")
    a = p.parse_args(argv)
    src, out = Path(a.shards), Path(a.out)
    try:
        man = write_grounded(src, out, a.text_tokenizer)
    except S.ShardError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"out": str(out), "samples": sum(s["count"] for s in man["shards"]), **man["grounded_answers"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
