"""Train a small face-identity recogniser on SynthFace (ArcFace loss) and export it for insightface.

    from unif2ace.features.face_training import FaceTrainConfig, train_face_recognizer
    result = train_face_recognizer(FaceTrainConfig(data="data/synthface", out="runs/face"))
    result["test"]["accuracy"], result["test"]["auc"]

The command line is ``tools/train_face_recognizer.py``. Each train-split identity is a class; a
CNN maps a face to a ``dim``-d embedding and an additive-angular-margin head (ArcFace:
logit ``s·cos(θ+m)`` for the true class, ``s·cos θ`` for the others) trains it. Held-out
people (the val and test splits) measure pair verification: all same-identity pairs plus as
many random different-identity pairs, cosine similarity, the accuracy-maximising threshold
chosen on val and applied to test, and ROC AUC.

Output directory (written whole, atomically):

* ``rec.onnx``: insightface's ArcFace contract — input ``(batch, 3, 112, 112)`` RGB scaled
  ``(x − 127.5) / 127.5`` (insightface's ``ArcFaceONNX`` does that from a BGR crop), one
  ``(batch, dim)`` output, dynamic batch. The network is trained at ``input_size`` px; when that
  is not 112 the graph starts with a bilinear resize to it, and training feeds the same 112² crops
  through the same resize, so ONNX and torch embeddings agree.
* ``metrics.json``: verification on val and test, the threshold, timings.
* ``train_config.json``: this run's settings and the network's architecture.
* ``model.safetensors``: the torch weights (``load_recognizer(OUT)`` rebuilds the network).

Use it as ``face.mode=aligned face.rec_path=OUT/rec.onnx`` (or ``face.model_dir=OUT``; aligned
mode needs no detector). The 112² crops here are ``face.resize_aligned``'s, the very resize
``FaceEncoder`` applies in aligned mode.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unif2ace.schedule import warmup_cosine, warmup_steps_for

REC_SIZE = 112
"""Side of the exported model's input: insightface routes square inputs ≥ 112 to ArcFace."""
ONNX_NAME = "rec.onnx"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "train_config.json"
INPUT_NAME = "input.1"
OUTPUT_NAME = "embedding"


class FaceTrainError(ValueError):
    """Unusable training data or settings; the message names the file or setting."""


@dataclass
class RecognizerConfig:
    """Architecture of the identity-embedding CNN."""

    input_size: int = 64
    """Side the convolutions run at. SynthFace renders are 64 px: 64 sees all their detail at a third
    of 112's cost; the exported graph resizes its 112² input to this first."""
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    """Channels per stage; the stem halves the resolution, each later stage halves it again."""
    dim: int = 512
    """Embedding width (face.dim must match)."""
    dropout: float = 0.0
    """Dropout on the flattened feature map before the embedding layer (training only)."""


@dataclass
class FaceTrainConfig:
    """Recogniser training run."""

    data: str = ""
    """SynthFace directory (metadata.jsonl with id, split, identity, file; images/)."""
    out: str = ""
    """Output directory: rec.onnx, metrics.json, train_config.json."""
    steps: int = 400
    """Optimiser steps (fixed cost whatever the data size): ~45 CPU seconds at the defaults."""
    batch_size: int = 32
    """Images per step. For a fixed CPU budget small batches won on SynthFace (4k images): 400×32
    reached 0.96 held-out verification accuracy in 53 CPU s, 200×64 0.95 in 36 s, 100×128 0.94 in 32 s."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over 5% of the steps, cosine to 0)."""
    weight_decay: float = 5e-4
    """AdamW weight decay."""
    margin: float = 0.3
    """Additive angular margin m (radians)."""
    scale: float = 32.0
    """Logit scale s."""
    hflip: bool = True
    """Random horizontal flips (SynthFace identities are left/right symmetric)."""
    seed: int = 0
    """Initialisation, shuffling, augmentation and negative-pair seed."""
    threads: int = 1
    """torch CPU threads (0 = torch's default). One: the run shares a small machine with others."""
    model: RecognizerConfig = field(default_factory=RecognizerConfig)
    """Architecture."""
    progress: bool = True
    """Show a tqdm progress bar."""


# --------------------------------------------------------------------------- model


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout)]


class FaceRecognizer(nn.Module):
    """(B, 3, 112, 112) RGB in [-1, 1] → (B, dim) embedding (not normalised, as ArcFace models output).

    VGG-style stages of conv-BN-PReLU pairs, then ArcFace's "BN-Dropout-FC-BN" output layer: the
    final feature map is flattened, not pooled, so where a feature sits on the face still counts.
    """

    def __init__(self, cfg: RecognizerConfig):
        super().__init__()
        if cfg.input_size % 2 ** len(cfg.widths) or not cfg.widths:
            raise FaceTrainError(f"model.input_size={cfg.input_size} must be divisible by 2^len(widths)="
                                 f"{2 ** len(cfg.widths)}")
        self.cfg = cfg
        layers: list[nn.Module] = _conv(3, cfg.widths[0], 2) + _conv(cfg.widths[0], cfg.widths[0])
        for cin, cout in zip(cfg.widths[:-1], cfg.widths[1:]):
            layers += [nn.MaxPool2d(2)] + _conv(cin, cout) + _conv(cout, cout)
        side = cfg.input_size // 2 ** len(cfg.widths)
        self.trunk = nn.Sequential(*layers, nn.BatchNorm2d(cfg.widths[-1]))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.widths[-1] * side * side, cfg.dim), nn.BatchNorm1d(cfg.dim))
        # channels-last convolutions are ~1.5x faster on CPU (oneDNN).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.input_size
        if s != REC_SIZE:
            # Plain bilinear (no antialias): it exports to one ONNX Resize at opset 17. The 112² input
            # is itself an enlarged 64-px render, smooth enough not to alias when shrunk to 64.
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self.head(self.trunk(x.contiguous(memory_format=torch.channels_last)))


class ArcMarginHead(nn.Module):
    """Additive angular margin softmax logits (ArcFace): ``s·cos(θ_y + m)`` for the label, ``s·cos θ_j`` else.

    Where θ_y + m would pass π (cos not monotonic any more) the target logit falls back to
    ``cos θ_y − m·sin m``, as insightface's own training code does.
    """

    def __init__(self, dim: int, num_classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)
        self.margin, self.scale = margin, scale
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.th, self.mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1.0, 1.0)
        target = cos.gather(1, labels[:, None])
        sin = torch.sqrt((1.0 - target * target).clamp_min(1e-7))  # clamp: finite gradient at |cos| = 1
        with_margin = torch.where(target > self.th, target * self.cos_m - sin * self.sin_m, target - self.mm)
        return self.scale * cos.scatter(1, labels[:, None], with_margin)


# --------------------------------------------------------------------------- data


def to_input(crops: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, 112, 112) RGB → float in [-1, 1]: ArcFace's (x − 127.5) / 127.5."""
    return (crops.float() - 127.5) / 127.5


def load_faces(data: str | os.PathLike) -> dict[str, tuple[torch.Tensor, list[str], list[str]]]:
    """{split: (uint8 (N, 3, 112, 112) RGB aligned-mode crops, identities, sample ids)} of a SynthFace dir."""
    from unif2ace.data.sources import BadInput, SourceConfig, load_records, open_image
    from unif2ace.features.face import resize_aligned

    root = Path(data).expanduser()
    if not root.is_dir():
        raise FaceTrainError(f"--data {root}: not a directory (expected a SynthFace data set: "
                             f"metadata.jsonl + images/; make one with tools/make_synthface.py)")
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise FaceTrainError(f"{meta}: not found (a SynthFace data set has metadata.jsonl + images/; "
                             f"make one with tools/make_synthface.py)")
    try:
        records = load_records(SourceConfig(root=str(root), caption_column="", qa_column="", attributes_column=""))
    except Exception as e:  # malformed JSON lines, missing columns: datasets' own error, with the file named
        raise FaceTrainError(f"{meta}: cannot read the metadata: {e}") from None
    out: dict[str, tuple[list, list, list]] = {}
    for r in records:
        try:
            im, _ = open_image(r)
        except BadInput as e:
            raise FaceTrainError(f"{r.where}: {e}") from None
        crop = resize_aligned(np.asarray(im), REC_SIZE)
        imgs, ids, sids = out.setdefault(r.split, ([], [], []))
        imgs.append(crop)
        ids.append(r.identity)
        sids.append(r.id)
    return {s: (torch.from_numpy(np.stack(v[0])).permute(0, 3, 1, 2).contiguous(), v[1], v[2]) for s, v in out.items()}


# --------------------------------------------------------------------------- verification


def verification_pairs(identities: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (P, 2) and same-identity flags (P,): every same-identity pair, then as many distinct
    random different-identity pairs (seeded)."""
    by_id: dict[str, list[int]] = {}
    for i, ident in enumerate(identities):
        by_id.setdefault(ident, []).append(i)
    pos = [(a, b) for idx in by_id.values() for k, a in enumerate(idx) for b in idx[k + 1:]]
    n = len(identities)
    max_neg = n * (n - 1) // 2 - len(pos)
    if not pos or max_neg < len(pos):
        raise FaceTrainError(f"verification needs >= 2 identities with >= 2 images each (and enough "
                             f"different-identity pairs); got {len(by_id)} identities, {n} images")
    rng = np.random.default_rng(seed)
    neg: set[tuple[int, int]] = set()
    while len(neg) < len(pos):
        a, b = rng.integers(0, n, size=2)
        if identities[a] != identities[b]:
            neg.add((int(min(a, b)), int(max(a, b))))
    pairs = np.array(pos + sorted(neg), dtype=np.int64)
    same = np.zeros(len(pairs), dtype=bool)
    same[:len(pos)] = True
    return pairs, same


def best_threshold(sims: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of "same identity iff similarity >= threshold"."""
    order = np.argsort(-sims, kind="stable")
    s, y = sims[order], same[order]
    n_pos = int(y.sum())
    tp = np.concatenate([[0], np.cumsum(y)])          # positives among the top k, k = 0..N
    k = np.arange(len(s) + 1)
    correct = tp + (len(s) - n_pos) - (k - tp)         # TP + TN when the top k are called "same"
    correct[1:-1][s[1:] == s[:-1]] = -1                # a cut between equal similarities is no threshold
    best = int(np.argmax(correct))
    if best == 0:
        thr = float(s[0]) + 1e-6
    elif best == len(s):
        thr = float(s[-1])
    else:
        thr = float(s[best - 1] + s[best]) / 2
    return thr, float(correct[best]) / len(s)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half.
    (Written out: torchmetrics has it, but importing torchmetrics costs ~20 s on a busy 2-core machine.)"""
    neg = np.sort(scores[~positive])
    below = np.searchsorted(neg, scores[positive], side="left")
    ties = np.searchsorted(neg, scores[positive], side="right") - below
    return float((below + 0.5 * ties).sum() / (positive.sum() * len(neg)))


def verify(emb: torch.Tensor, identities: list[str], seed: int, threshold: float | None = None) -> dict:
    """Pair verification on unit-norm embeddings: AUC, best accuracy and its threshold, and the
    accuracy at ``threshold`` when given (the one chosen on another split)."""
    pairs, same = verification_pairs(identities, seed)
    sims = (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(1).numpy()
    thr, acc = best_threshold(sims, same)
    out = {"identities": len(set(identities)), "images": len(identities), "pairs": len(pairs),
           "positive_pairs": int(same.sum()), "auc": roc_auc(sims, same),
           "best_accuracy": acc, "best_threshold": thr,
           "mean_sim_same": float(sims[same].mean()), "mean_sim_different": float(sims[~same].mean())}
    if threshold is not None:
        out["threshold"] = threshold
        out["accuracy"] = float(((sims >= threshold) == same).mean())
    return out


@torch.no_grad()
def embed(model: FaceRecognizer, crops: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Unit-norm embeddings of uint8 112² crops with the model in eval mode."""
    model.eval()
    return torch.cat([F.normalize(model(to_input(crops[i:i + batch]))) for i in range(0, len(crops), batch)])


# --------------------------------------------------------------------------- export


def export_onnx(model: FaceRecognizer, path: str | os.PathLike) -> None:
    """insightface ArcFace layout: input.1 (batch, 3, 112, 112) → embedding (batch, dim), dynamic batch."""
    model.eval()
    torch.onnx.export(model, (torch.zeros(2, 3, REC_SIZE, REC_SIZE),), str(path), dynamo=False, opset_version=17,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def load_recognizer(out: str | os.PathLike) -> FaceRecognizer:
    """The torch network of a directory written by ``train_face_recognizer`` (eval mode)."""
    from safetensors.torch import load_file

    from unif2ace.jsonfile import read_json

    out = Path(out)
    try:
        config = read_json(out / CONFIG_NAME, FaceTrainError)
        state = load_file(str(out / WEIGHTS_NAME))
    except FileNotFoundError as e:
        raise FaceTrainError(f"{e.filename}: not found (not a face-recogniser directory?)") from None
    try:
        model = FaceRecognizer(RecognizerConfig(**config["model"]))
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as e:
        raise FaceTrainError(f"{out}: {CONFIG_NAME} and {WEIGHTS_NAME} do not match: {e}") from None
    return model.eval()


def check_export(path: Path, model: FaceRecognizer, crops: torch.Tensor) -> float:
    """Load ``path`` the way the feature pipeline does and return the largest |ONNX − torch| embedding
    difference on ``crops``; raise if insightface would not treat it as an ArcFace recogniser."""
    from PIL import Image

    from unif2ace.features.config import FaceConfig
    from unif2ace.features.face import FaceEncoder

    enc = FaceEncoder(FaceConfig(rec_path=str(path), mode="aligned", dim=model.cfg.dim, threads=1,
                                 providers=["CPUExecutionProvider"]))
    if (enc.rec.input_mean, enc.rec.input_std) != (127.5, 127.5):
        raise RuntimeError(f"{path}: insightface reads this graph as pre-normalised (mxnet layout): "
                           f"input_mean={enc.rec.input_mean}, input_std={enc.rec.input_std}")
    onnx_emb, _ = enc.encode([Image.fromarray(c.permute(1, 2, 0).numpy()) for c in crops])
    return float(np.abs(onnx_emb - embed(model, crops).numpy()).max())


# --------------------------------------------------------------------------- training


def train_face_recognizer(cfg: FaceTrainConfig) -> dict:
    """Train on the train split's identities, export to ``cfg.out``, return (and write) the metrics."""
    if not cfg.data or not cfg.out:
        raise FaceTrainError("train_face_recognizer: set both data and out")
    if cfg.steps < 1 or cfg.batch_size < 2:
        raise FaceTrainError(f"steps={cfg.steps} must be >= 1 and batch_size={cfg.batch_size} >= 2")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FaceTrainError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (out / CONFIG_NAME).is_file():
        # The output directory is replaced whole: never clobber a directory this tool did not write.
        raise FaceTrainError(f"--out {out}: exists and is not a face-recogniser directory (no {CONFIG_NAME}); "
                             f"choose a new or empty directory")
    from unif2ace.runtime import torch_threads

    with torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: FaceTrainConfig) -> dict:
    from safetensors.torch import save_file
    from tqdm import tqdm

    from unif2ace.atomic import atomic_directory

    t0, c0 = time.time(), time.process_time()
    splits = load_faces(cfg.data)
    for name in ("train", "val", "test"):
        if name not in splits:
            raise FaceTrainError(f"{cfg.data}: no images in split {name!r} (have: {sorted(splits)})")
    x_tr, ident_tr, _ = splits["train"]
    classes = sorted(set(ident_tr))
    if len(classes) < 2:
        raise FaceTrainError(f"{cfg.data}: the train split has {len(classes)} identity; need >= 2")
    label_of = {c: i for i, c in enumerate(classes)}
    y_tr = torch.tensor([label_of[c] for c in ident_tr])
    t_load = time.time() - t0

    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = FaceRecognizer(cfg.model)
    # What the untrained network already separates (random conv features are not useless on faces):
    # the bar the training has to clear.
    baseline = {k: verify(embed(model, splits[k][0]), splits[k][1], seed)["auc"]
                for k, seed in (("val", cfg.seed), ("test", cfg.seed + 1))}
    head = ArcMarginHead(cfg.model.dim, len(classes), cfg.margin, cfg.scale)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(x_tr)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the ragged last batch: BatchNorm needs a real batch
    sched = warmup_cosine(opt, warmup_steps_for(cfg.steps), cfg.steps)
    bar = tqdm(total=cfg.steps, desc="face recogniser", unit="step", disable=not cfg.progress, mininterval=1.0)
    t1 = time.time()
    loss_ema = first_loss = None
    model.train()
    for step in range(cfg.steps):
        s = step % steps_per_epoch
        if s == 0:
            perm = torch.randperm(n, generator=g)  # a fresh order every epoch
        idx = perm[s * bs:(s + 1) * bs]
        xb = to_input(x_tr[idx])
        if cfg.hflip:
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = F.cross_entropy(head(model(xb), y_tr[idx]), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"face recogniser: loss is {lv} at step {step}; lower --lr or --scale")
        if first_loss is None:
            first_loss = lv
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    t_train = time.time() - t1

    t2 = time.time()
    val = verify(embed(model, splits["val"][0]), splits["val"][1], cfg.seed)
    test = verify(embed(model, splits["test"][0]), splits["test"][1], cfg.seed + 1, threshold=val["best_threshold"])
    t_eval = time.time() - t2
    result = {
        "threshold": val["best_threshold"],
        "val": val,
        "test": test,
        "untrained_auc": baseline,
        "train": {"identities": len(classes), "images": n, "steps": cfg.steps, "batch_size": bs,
                  "epochs": round(cfg.steps * bs / n, 1), "first_loss": first_loss,
                  "final_loss": loss_ema},
        "seconds": {"load": round(t_load, 1), "train": round(t_train, 1), "eval": round(t_eval, 1)},
        "threads": torch.get_num_threads(),
        "data": str(cfg.data),
        "protocol": "pairs: every same-identity pair of a split + as many random different-identity pairs; "
                    "cosine similarity of unit-norm embeddings; threshold = best accuracy on val, "
                    "test accuracy at that threshold",
    }
    config = {"format": "unif2ace-face-recognizer", **asdict(cfg), "num_classes": len(classes),
              "onnx": {"file": ONNX_NAME, "input": INPUT_NAME, "output": OUTPUT_NAME,
                       "input_shape": ["batch", 3, REC_SIZE, REC_SIZE], "input_mean": 127.5, "input_std": 127.5,
                       "channels": "RGB (insightface's ArcFaceONNX swaps its BGR crop)"}}
    config.pop("progress")
    with atomic_directory(cfg.out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_NAME))
        export_onnx(model, tmp / ONNX_NAME)
        # Round-trip through the feature pipeline on a few held-out faces before anything is published.
        result["onnx_max_abs_diff"] = check_export(tmp / ONNX_NAME, model, splits["test"][0][:8])
        if not result["onnx_max_abs_diff"] < 1e-3:
            raise RuntimeError(f"{cfg.out}/{ONNX_NAME}: ONNX embeddings differ from torch's by "
                               f"{result['onnx_max_abs_diff']:.2e}")
        result["seconds"]["total"] = round(time.time() - t0, 1)
        # CPU seconds of this process: the cost on an idle core, whatever else shares the machine.
        result["seconds"]["cpu"] = round(time.process_time() - c0, 1)
        (tmp / METRICS_NAME).write_text(json.dumps(result, indent=2) + "\n")
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return result


def format_report(result: dict) -> str:
    """Two lines: held-out verification and what the run cost."""
    v, t, tr = result["val"], result["test"], result["train"]
    return (f"verification on held-out identities: test accuracy {t['accuracy']:.3f} at val threshold "
            f"{result['threshold']:.3f} (test best {t['best_accuracy']:.3f}), test AUC {t['auc']:.3f}, "
            f"val accuracy {v['best_accuracy']:.3f} AUC {v['auc']:.3f} ({t['pairs']} test / {v['pairs']} val pairs)\n"
            f"{tr['identities']} train identities, {tr['images']} images, {tr['steps']} steps ({tr['epochs']} epochs), "
            f"{result['seconds']['train']} s training, {result['seconds']['total']} s in all "
            f"({result['seconds']['cpu']} CPU s) on {result['threads']} thread(s)")
