"""Train a small CLIP on image–caption pairs with open_clip's own model and loss.

    from unif2ace.features.clip_training import TrainClipConfig, train_clip
    result = train_clip(TrainClipConfig(data="runs/sf/data", text_tokenizer="runs/sf/spm.model",
                                        out="runs/sf/clip"))
    result["zero_shot"]["test"]["mean_accuracy"]

The command line is ``tools/train_clip.py``. No pretrained CLIP can be downloaded here, so a
user without internet (and the built-in demo) trains one on the data set itself: an open_clip
``VisionTransformer`` + ``TextTransformer`` registered through open_clip's config mechanism,
optimised with ``open_clip.loss.ClipLoss`` (InfoNCE both ways, learned temperature).

Why these choices (measured on SynthFace, see ``docs/demo``):

* **average-pooled ViT** (``pool_type='avg'``): the contrastive embedding is the mean of the
  projected patch tokens, so every patch token is trained directly, and the patch tokens that
  the sequence-level MoE's CLIP expert cross-attends to share the pooled embedding's space.
* **the project's SentencePiece vocabulary** for the text tower (ids end with the tokenizer's
  eos, pooled at eos): captions here are ~100 tokens, and open_clip's 49k BPE would spend most
  of the text tower on an embedding table.

Output directory (what ``ClipEncoder`` loads with ``clip.model=NAME clip.model_configs=[OUT/NAME.json]
clip.weights=OUT/open_clip_model.safetensors``): ``NAME.json`` (the architecture),
``open_clip_model.safetensors`` (``create_model_and_transforms(NAME, pretrained=FILE)`` loads it),
``metrics.json`` (zero-shot attribute accuracy and linear-probe accuracy on held-out faces),
``train_config.json``. Written atomically.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from tqdm import tqdm

from unif2ace.atomic import atomic_directory
from unif2ace.schedule import warmup_cosine

WEIGHTS_FILE = "open_clip_model.safetensors"


class ClipTrainingError(ValueError):
    """Bad input to the CLIP trainer (message names the file and the problem)."""


@dataclass
class TrainClipConfig:
    """A contrastive CLIP training run on an image–caption data set."""

    data: str = ""
    """Data set directory in the generic layout (metadata.jsonl + images; SynthFace writes it)."""
    text_tokenizer: str = ""
    """SentencePiece model or HF tokenizer directory for the text tower (the run's own)."""
    out: str = ""
    """Output directory (architecture JSON, weights, metrics)."""
    name: str = "UniF2ace-SynthFace-CLIP"
    """open_clip architecture name the model is registered under."""
    image_size: int = 64
    """Input side in pixels (images are resized to it once, when loaded)."""
    patch_size: int = 8
    """ViT patch side: 64 px / 8 = an 8×8 grid of patch tokens."""
    width: int = 128
    """Vision transformer width."""
    layers: int = 3
    """Vision transformer layers."""
    head_width: int = 64
    """Width per attention head (heads = width / head_width) in both towers."""
    embed_dim: int = 128
    """Joint embedding width (the cached CLIP feature's width: model.seq_moe.clip_dim)."""
    text_width: int = 64
    """Text transformer width."""
    text_layers: int = 1
    """Text transformer layers."""
    context_length: int = 128
    """Text tokens per caption (longer captions are cut; the eos always stays)."""
    steps: int = 1500
    """Optimiser steps."""
    batch_size: int = 128
    """Image–caption pairs per step (the contrastive negatives)."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 0)."""
    warmup_steps: int = 60
    """Warm-up steps."""
    weight_decay: float = 0.05
    """AdamW weight decay (not on norms, biases, embeddings, the temperature)."""
    hflip: bool = True
    """Random horizontal flips (no SynthFace attribute depends on left/right)."""
    seed: int = 0
    """Initialisation, data order and augmentation seed."""
    threads: int = 1
    """torch CPU threads (0 = torch's default). One suits a run that shares 2 cores with others."""
    eval_images: int = 0
    """Held-out images per split for the metrics (0 = all)."""
    progress: bool = True
    """Show a tqdm progress bar."""


def architecture(cfg: TrainClipConfig, vocab_size: int, eos_id: int, pad_id: int = 0) -> dict:
    """The open_clip config dict (what ``NAME.json`` holds)."""
    if cfg.image_size % cfg.patch_size:
        raise ClipTrainingError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
    for w, what in ((cfg.width, "width"), (cfg.text_width, "text_width")):
        if w % cfg.head_width:
            raise ClipTrainingError(f"{what} {w} is not a multiple of head_width {cfg.head_width}")
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "width": cfg.width,
                       "layers": cfg.layers, "head_width": cfg.head_width, "pool_type": "avg"},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": vocab_size, "width": cfg.text_width,
                     "heads": cfg.text_width // cfg.head_width, "layers": cfg.text_layers, "pool_type": "eos",
                     "eos_id": eos_id, "pad_id": pad_id},
    }


def register(name: str, arch: dict, directory: Path) -> Path:
    """Write ``directory/NAME.json`` and register it with open_clip."""
    path = Path(directory) / f"{name}.json"
    path.write_text(json.dumps(arch, indent=1))
    open_clip.add_model_config(path)
    return path


# ----------------------------------------------------------------------------- data


def load_pairs(data: str, split: str, tokenizer, context_length: int, image_size: int, limit: int = 0):
    """uint8 images (N,3,S,S), caption ids (N, context_length) ending in eos (0-padded), records."""
    from PIL import Image

    from unif2ace.data.sources import SourceConfig, fit_square, load_records

    records = [r for r in load_records(SourceConfig(root=str(data)), split=split) if r.caption]
    if limit:
        records = records[:limit]
    if not records:
        raise ClipTrainingError(f"{data}: no captioned images in split {split!r}")
    imgs = np.zeros((len(records), image_size, image_size, 3), np.uint8)
    text = np.zeros((len(records), context_length), np.int64)
    for i, r in enumerate(records):
        try:
            with Image.open(r.image) as im:
                imgs[i] = np.asarray(fit_square(im.convert("RGB"), image_size))
        except (OSError, ValueError) as e:
            raise ClipTrainingError(f"{r.where}: unreadable image: {e}") from None
        ids = tokenizer.encode(r.caption)[: context_length - 1] + [tokenizer.eos_id]
        text[i, : len(ids)] = ids
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(text), records


def normalise(x_u8: torch.Tensor, mean, std) -> torch.Tensor:
    x = x_u8.float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- metrics


@torch.no_grad()
def embed_images(model, images_u8: torch.Tensor, batch: int = 256) -> torch.Tensor:
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    out = [model.encode_image(normalise(images_u8[s:s + batch], mean, std), normalize=True)
           for s in range(0, len(images_u8), batch)]
    return torch.cat(out)


def prompt_texts() -> dict[str, dict[str, str]]:
    """category → value → a zero-shot prompt in the captions' own words ("a face with green eyes.",
    "a face with a goatee."), from SynthFace's lexicon; one-valued categories have no choice."""
    from unif2ace import synthface

    out: dict[str, dict[str, str]] = {}
    for _, (nouns, cats) in synthface.NOUN_GROUPS.items():
        for cat, values in cats.items():
            out[cat] = {v: f"a face with {words[0]} {nouns[0]}." for v, words in values.items()}
    for cat, values in synthface.PHRASES.items():
        if len(values) > 1 and cat not in out:
            out[cat] = {v: f"a face with {words[0]}." for v, words in values.items()}
    return out


@torch.no_grad()
def zero_shot(model, tokenizer, context_length: int, emb: torch.Tensor, records) -> dict:
    """Per attribute category: pick the value whose prompt ("a face with <phrase>.") is closest.
    Only SynthFace-style records (with ``attributes``) and visible attributes count."""
    from unif2ace import synthface

    per = {}
    for cat, texts in prompt_texts().items():
        names = sorted(texts)
        prompts = []
        for v in names:
            ids = tokenizer.encode(texts[v])[: context_length - 1] + [tokenizer.eos_id]
            prompts.append(ids + [0] * (context_length - len(ids)))
        t = model.encode_text(torch.tensor(prompts), normalize=True)
        pred = (emb @ t.T).argmax(1)
        hits = []
        for i, r in enumerate(records):
            a = r.attributes or {}
            if cat in a and a[cat] in names and cat not in synthface.hidden_categories(a):
                hits.append(names[int(pred[i])] == a[cat])
        if hits:
            per[cat] = {"accuracy": float(np.mean(hits)), "n": len(hits), "chance": 1 / len(names)}
    return {"mean_accuracy": float(np.mean([v["accuracy"] for v in per.values()])) if per else float("nan"),
            "per_category": per}


def linear_probe(train_emb, train_recs, test_emb, test_recs, steps: int = 300) -> dict:
    """A logistic-regression probe per category on frozen embeddings, train split → held-out split:
    how much of each attribute the embedding carries linearly (the probe never touches the CLIP)."""
    from unif2ace import synthface

    per = {}
    for cat in synthface.TAXONOMY:
        def labelled(emb, recs):
            rows, ys = [], []
            for i, r in enumerate(recs):
                a = r.attributes or {}
                if cat in a and cat not in synthface.hidden_categories(a):
                    rows.append(i)
                    ys.append(a[cat])
            return emb[rows], ys
        xtr, ytr = labelled(train_emb, train_recs)
        xte, yte = labelled(test_emb, test_recs)
        values = sorted(set(ytr))
        if len(values) < 2 or not yte:
            continue
        idx = {v: j for j, v in enumerate(values)}
        ytr_t = torch.tensor([idx[v] for v in ytr])
        head = torch.nn.Linear(xtr.shape[1], len(values))
        opt = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(head(xtr), ytr_t) + 1e-4 * head.weight.square().sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            pred = head(xte).argmax(1)
        acc = float(np.mean([values[int(p)] == y for p, y in zip(pred, yte)]))
        per[cat] = {"accuracy": acc, "n": len(yte), "chance": 1 / len(values)}
    return {"mean_accuracy": float(np.mean([v["accuracy"] for v in per.values()])) if per else float("nan"),
            "per_category": per}


# ----------------------------------------------------------------------------- training


def train_clip(cfg: TrainClipConfig) -> dict:
    """Train, evaluate and save (atomically into ``cfg.out``); returns the metrics dict."""
    if not cfg.data or not Path(cfg.data).is_dir():
        raise ClipTrainingError(f"--data {cfg.data!r} is not a directory")
    if not cfg.out:
        raise ClipTrainingError("--out is required")
    from unif2ace.runtime import torch_threads

    with torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: TrainClipConfig) -> dict:
    from safetensors.torch import save_file

    from unif2ace.tokenizers.text import TextTokenizer

    t0 = time.time()
    tok = TextTokenizer.load(cfg.text_tokenizer)
    arch = architecture(cfg, vocab_size=tok.vocab_size, eos_id=tok.eos_id)
    x, text, train_recs = load_pairs(cfg.data, "train", tok, cfg.context_length, cfg.image_size)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out) as tmp:
        register(cfg.name, arch, tmp)
        torch.manual_seed(cfg.seed)
        model = open_clip.create_model(cfg.name, pretrained_image=False, pretrained_text=False)
        mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        sched = warmup_cosine(opt, cfg.warmup_steps, cfg.steps)
        loss_fn = ClipLoss()
        g = torch.Generator().manual_seed(cfg.seed)
        n, bs = len(x), min(cfg.batch_size, len(x))
        order, pos = torch.randperm(n, generator=g), 0
        losses = []
        bar = tqdm(range(cfg.steps), desc="clip", disable=not cfg.progress, mininterval=2)
        model.train()
        for _ in bar:
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos:pos + bs]
            pos += bs
            xb = normalise(x[idx], mean, std)
            if cfg.hflip:
                flip = torch.rand(bs, generator=g) < 0.5
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            img, txt, scale = model(xb, text[idx])
            loss = loss_fn(img, txt, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # CLIP's clamp: a temperature above 100 destabilises training
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        train_s = time.time() - t0
        model.eval()
        metrics: dict = {"steps": cfg.steps, "train_seconds": round(train_s, 1), "final_loss": float(np.mean(losses[-20:])),
                         "first_loss": losses[0] if losses else None, "zero_shot": {}, "linear_probe": {}}
        tr_emb, tr_recs = embed_images(model, x[:2000]), train_recs[:2000]  # the probe's training faces
        for split in ("val", "test"):
            try:
                xs, _, recs = load_pairs(cfg.data, split, tok, cfg.context_length, cfg.image_size, cfg.eval_images)
            except ClipTrainingError:
                continue
            emb = embed_images(model, xs)
            metrics["zero_shot"][split] = zero_shot(model, tok, cfg.context_length, emb, recs)
            metrics["linear_probe"][split] = linear_probe(tr_emb, tr_recs, emb, recs)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (tmp / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    # register the final location's JSON too, for a caller that builds an encoder next
    open_clip.add_model_config(out / f"{cfg.name}.json")
    metrics["seconds"] = round(time.time() - t0, 1)
    return metrics
