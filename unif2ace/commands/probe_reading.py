"""How fast can the recipe's transformer learn to *read* a face? A five-minute probe (a diagnostic).

    python tools/probe_reading.py --features tokens --steps 750
    python tools/probe_reading.py --features tokens --set model.seq_moe.feature_gate_init=2

SynthFace VQA rows whose image is replaced by features that state the answer outright, so
that what is measured is only whether the transformer learns to use the question to pick
what to read. No image is rendered or tokenised and nothing is precomputed: the faces'
attributes are sampled, their questions written by ``make_qa``, the words mapped to ids by a
word vocabulary of their own. One process, torch AdamW, the library's model, batches and loss.

``--features``
  tokens  one feature token per category (its category one-hot and its value one-hot) that
          the CLIP expert's resampler cross-attends to: the selection is possible there;
  pooled  one vector holding every (category, value) one-hot: the resampler has nothing to
          select, the product of question and feature must be formed in the FFNs;
  codes   no features; the image span holds one code per category, the id of its
          (category, value): self-attention reads it.

Every ``--eval-every`` steps it prints the teacher-forced accuracy of the first answer token
on faces of another SynthFace seed, per kind of question (open, yes/no about presence, yes/no
about one value), beside the majority answer of each kind; ``--out`` writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

KINDS = ("open", "presence", "value")
FEATURES = ("tokens", "pooled", "codes")


class Words:
    """Word-level ids for SynthFace's questions and answers (ids from 3: 1/2 are <sot>/<eot>)."""

    def __init__(self, limit: int):
        self.ids: dict[str, int] = {}
        self.limit = limit

    def __call__(self, text: str) -> list[int]:
        out = []
        for w in re.findall(r"[\w'-]+|[?.,]", text.lower()):
            if w not in self.ids:
                if 3 + len(self.ids) >= self.limit:
                    raise ValueError(f"more than {self.limit - 3} words: raise model.text_vocab_size")
                self.ids[w] = 3 + len(self.ids)
            out.append(self.ids[w])
        return out


def make_rows(cfg, seed: int, n: int, features: str, words: Words, image_tokens: int):
    """``n`` faces of SynthFace ``seed`` → [(input_ids, labels, feature (N, D), kinds, categories)]."""
    import torch

    from unif2ace.synthface.taxonomy import CATEGORIES, TAXONOMY, sample_face
    from unif2ace.synthface.text import make_qa, question_kind
    from unif2ace.tokens import TokenLayout, build_mmu

    m = cfg.model
    layout = TokenLayout.from_model_config(m)
    cats = [c.name for c in CATEGORIES]
    slots = {s: i for i, s in enumerate((c, v) for c in cats for v in TAXONOMY[c].values)}
    width = m.seq_moe.clip_dim
    need = {"tokens": len(cats) + len(slots), "pooled": len(slots), "codes": 0}[features]
    if need > width:
        raise SystemExit(f"--features {features} needs a {need}-wide feature; model.seq_moe.clip_dim is {width}")
    if features == "codes" and len(slots) > m.codebook_size:
        raise SystemExit(f"{len(slots)} (category, value) codes do not fit model.codebook_size={m.codebook_size}")
    rows = []
    for i in range(n):
        attrs = sample_face(seed, i).attributes
        qa = make_qa(attrs, np.random.default_rng([seed, 7, i]))
        feat = torch.zeros(len(cats) if features == "tokens" else 1, width)
        if features == "tokens":
            for j, c in enumerate(cats):
                feat[j, j] = 4.0
                feat[j, len(cats) + slots[(c, attrs[c])]] = 4.0
        elif features == "pooled":
            for c in cats:
                feat[0, slots[(c, attrs[c])]] = 4.0
        if features == "codes":
            codes = torch.tensor([slots[(c, attrs[c])] for c in cats])
        else:  # an image span of uninformative codes, so the row keeps an image prefix
            codes = torch.randint(0, m.codebook_size, (image_tokens,),
                                  generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
        ids, labels = build_mmu(layout, codes, [(words(t["q"]), words(t["a"])) for t in qa], m.text_len)
        rows.append((ids, labels, feat, [question_kind(t["q"]) for t in qa], [t["category"] for t in qa]))
    return rows


def collate(rows, key: str | None, pad_id: int):
    """The library's MMU batch of ``rows`` (trimmed to the longest), with its features."""
    import torch

    from unif2ace.tokens import TASK_MMU, collate as collate_rows

    batch = collate_rows([r[:2] for r in rows], [TASK_MMU] * len(rows), trim_pad_id=pad_id)
    batch.features = {key: torch.stack([r[2] for r in rows])} if key else {}
    return batch


def first_answer_positions(labels) -> list[int]:
    """Positions of each turn's first answer token (a label after an ignored one)."""
    from unif2ace.tokens import IGNORE

    lab = labels.tolist()
    return [i for i in range(1, len(lab)) if lab[i] != IGNORE and lab[i - 1] == IGNORE]


def evaluate(model, rows, key, layout, batch: int = 16) -> dict[str, float]:
    """Teacher-forced accuracy of the first answer token, per kind."""
    import torch

    hits: dict[str, list[bool]] = {k: [] for k in KINDS}
    was = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            part = rows[s:s + batch]
            bt = collate(part, key, layout.pad_id)
            logits, labels = model(bt.input_ids, bt.task, bt.features).logits, bt.labels
            for b, row in enumerate(part):
                pos = first_answer_positions(labels[b])
                if len(pos) != len(row[3]):
                    raise AssertionError(f"{len(pos)} answers in the row for {len(row[3])} questions")
                for kind, i in zip(row[3], pos):
                    pred = int(logits[b, i - 1, :layout.text_vocab_size].argmax())
                    hits[kind].append(pred == int(labels[b, i]))
    model.train(was)
    return {k: float(np.mean(v)) for k, v in hits.items() if v}


def majority(rows) -> dict[str, float]:
    """Per kind, the accuracy of always giving the most frequent first answer token of each
    (category, kind): what a model that ignores the face can reach (the evaluator's baseline)."""
    answers: dict[tuple[str, str], Counter] = {}
    for _, labels, _, kinds, cats in rows:
        for kind, cat, i in zip(kinds, cats, first_answer_positions(labels)):
            answers.setdefault((kind, cat), Counter())[int(labels[i])] += 1
    hit, total = Counter(), Counter()
    for (kind, _), c in answers.items():
        hit[kind] += c.most_common(1)[0][1]
        total[kind] += sum(c.values())
    return {k: hit[k] / total[k] for k in KINDS if total[k]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", choices=FEATURES, default="tokens")
    p.add_argument("--recipe", default="synthface", help="recipe whose model is probed (default synthface)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--steps", type=int, default=750)
    p.add_argument("--batch", type=int, default=8, help="rows per step (default 8, the recipe's 2 × 4)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--faces", type=int, default=3000, help="training faces, SynthFace seed 0")
    p.add_argument("--eval-faces", type=int, default=300, help="held-out faces, SynthFace seed 1")
    p.add_argument("--image-tokens", type=int, default=16, help="uninformative codes in each row's "
                   "image span for --features tokens / pooled (default 16; the recipe's 256 is slower "
                   "and, measured, gives the same picture)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--out", default="", help="write the evaluations here as JSON")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.faces < 1 or a.eval_faces < 1 or a.eval_every < 1:
        p.error("--steps, --batch, --faces, --eval-faces and --eval-every must be ≥ 1")

    import torch

    from unif2ace.config import load_config
    from unif2ace.losses import total_loss
    from unif2ace.model.unif2ace import UniF2ace
    from unif2ace.tokens import TokenLayout

    if a.threads:
        torch.set_num_threads(a.threads)
    # The probe's image span is not an image (a few codes, none of them a face's), so no image
    # feature can be laid on it: the features reach the model through the CLIP expert only. Nor
    # is it the recipe's image grid, so the recipe's image positions do not fit it either.
    over = ["model.mmu_image_features=false", "model.image_positions=false", *a.set] + (["model.seq_moe.enabled=false"] if a.features == "codes" else [])
    cfg = load_config(a.recipe, over)
    if cfg.model.mmu_image_features:
        raise SystemExit("model.mmu_image_features=true does not apply to the probe: its rows hold no image "
                         "for the features to be laid on")
    if cfg.model.image_positions:
        raise SystemExit("model.image_positions=true does not apply to the probe: its image span is a few codes, "
                         "not the recipe's image grid")
    if a.features != "codes" and not (cfg.model.seq_moe.enabled and "clip" in cfg.model.seq_moe.und_experts):
        raise SystemExit(f"--features {a.features} is read by the CLIP expert: the recipe needs "
                         "model.seq_moe.enabled=true with clip among model.seq_moe.und_experts")
    layout = TokenLayout.from_model_config(cfg.model)
    key = cfg.model.seq_moe.feature_key("clip") if a.features != "codes" else None
    words = Words(cfg.model.text_vocab_size)
    train = make_rows(cfg, 0, a.faces, a.features, words, a.image_tokens)
    held = make_rows(cfg, 1, a.eval_faces, a.features, words, a.image_tokens)
    base = majority(held)
    print(f"{len(train)} training rows, {len(held)} held-out rows; majority answer "
          + " ".join(f"{k} {v:.3f}" for k, v in base.items()), flush=True)

    torch.manual_seed(a.seed)
    model = UniF2ace(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(a.seed)
    log, t0 = [], time.time()
    for step in range(1, a.steps + 1):
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, step / max(a.warmup, 1))
        bt = collate([train[i] for i in rng.integers(0, len(train), a.batch)], key, layout.pad_id)
        loss, _ = total_loss(model(bt.input_ids, bt.task, bt.features), bt, layout, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.eval_every == 0 or step == a.steps:
            acc = evaluate(model, held, key, layout)
            log.append({"step": step, "loss": loss.item(), "seconds": round(time.time() - t0, 1), "accuracy": acc})
            print(f"step {step:5d}  loss {loss.item():.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items())
                  + f"  ({time.time() - t0:.0f} s)", flush=True)
    if a.out:
        from unif2ace.atomic import atomic_write_text

        atomic_write_text(Path(a.out), json.dumps({"args": vars(a), "majority": base, "evaluations": log}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
