"""What an image tokenizer's codes carry: the attribute classifier's accuracy on faces decoded
from their own codes, beside the same faces as rendered.

    from unif2ace.eval.codes import judge_codes
    result = judge_codes("data/synthface", "assets/synthface/classifier", ["assets/synthface/magvit"])
    result["real"]["mean_accuracy"], result["tokenizers"][0]["mean_accuracy"]

No transformer can generate an attribute its tokenizer's decoder cannot render, nor read one
from codes that lost it, so this is the ceiling the image tokens put on both tasks. The measure
is the classifier's own test measure (``classifier_training.accuracy``: per category over the
faces whose attribute is visible, then the mean over categories), so the ``real`` row is the
classifier's test accuracy on that split. Nothing here trains anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


@torch.no_grad()
def decode_own_codes(tokenizer, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """uint8 (N, 3, H, W) → the same faces encoded to codes and decoded back, uint8."""
    from unif2ace.tokenizers.training import to_model_range, to_uint8

    tokenizer.eval()
    out = [to_uint8(tokenizer.decode_codes(tokenizer.encode(to_model_range(images[i:i + batch_size]))))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else images.new_zeros(images.shape)


def judge_codes(data: str | Path, classifier: str | Path, tokenizers: Sequence[str | Path],
                split: str = "test", limit: int = 0, batch_size: int = 64) -> dict:
    """The classifier on ``split``'s real faces and on each tokenizer's reconstructions of them:
    ``{"real": accuracy, "tokenizers": [accuracy + {"path", "tokens_per_image", "codebook_size"}]}``."""
    from unif2ace.eval.attribute_classifier import AttributeClassifier
    from unif2ace.eval.classifier_training import accuracy, load_split
    from unif2ace.tokenizers.magvit import MagvitV2

    clf = AttributeClassifier.load(classifier)
    toks = [MagvitV2.from_pretrained(p) for p in tokenizers]  # a bad path fails before any work
    x, y, ids = load_split(data, split, clf.categories, limit)
    result = {"data": str(data), "split": split, "classifier": str(classifier), "num_faces": len(ids),
              "real": accuracy(clf, x, y), "tokenizers": []}
    for path, tok in zip(tokenizers, toks):
        h, w = tok.config.grid(x.shape[2], x.shape[3])
        entry = accuracy(clf, decode_own_codes(tok, x, batch_size), y)
        entry.update(path=str(path), tokens_per_image=h * w, codebook_size=tok.config.codebook_size)
        result["tokenizers"].append(entry)
    return result


def format_table(result: dict) -> str:
    """Per-category accuracy: real faces, then one column per tokenizer, then the means."""
    cols = [("real", result["real"])] + [(f"tok{i}", t) for i, t in enumerate(result["tokenizers"])]
    cats = list(result["real"]["per_category"])
    lines = [f"{'category':22s} " + " ".join(f"{name:>7s}" for name, _ in cols)]
    for c in cats:
        vals = [r["per_category"][c]["accuracy"] for _, r in cols]
        lines.append(f"{c:22s} " + " ".join("      -" if v is None else f"{v:7.3f}" for v in vals))
    lines.append(f"{'mean':22s} " + " ".join(f"{r['mean_accuracy']:7.3f}" for _, r in cols))
    lines += [f"tok{i} = {t['path']} ({t['tokens_per_image']} codes of {t['codebook_size']})"
              for i, t in enumerate(result["tokenizers"])]
    lines.append(f"{result['num_faces']} faces of split {result['split']!r} of {result['data']}")
    return "\n".join(lines)
