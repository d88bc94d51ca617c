"""Offline precompute: images → MAGVIT codes + cached features, text → ids, written as shards.

    from unif2ace.data.precompute import PrecomputeConfig, run
    summary = run(PrecomputeConfig(out="runs/sf/shards", image_tokenizer="runs/sf/magvit",
                                   text_tokenizer="runs/sf/spm.model", image_size=64),
                  SourceConfig(root="data/synthface"), FeatureConfig.from_dict({...}))

The command line is ``tools/precompute_tokens.py``. Records are cut into shards of
``shard_size`` in file order; each shard is one unit of work (one process of the pool),
written atomically, and skipped on a re-run when its directory is complete and its plan hash
(the ids it must hold) matches, so a killed run resumes where it stopped. A bad input never
stops the run: fixable images are converted, the rest are skipped, and both are listed in
``bad_inputs.jsonl`` and the summary. The shard format is in ``unif2ace.data.shards``.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from unif2ace.atomic import atomic_write_text
from unif2ace.data import shards as S
from unif2ace.data.sources import BadInput, Record, SourceConfig, fit_square, load_records, open_image
from unif2ace.data.spec import SourceSpec, load_spec_records
from unif2ace.tokenizers.text import GROUNDED_SEPARATOR, grounded_answer

log = logging.getLogger(__name__)


@dataclass
class PrecomputeConfig:
    """What to write and how to parallelise it."""

    out: str = ""
    """Output shard directory (manifest.json, shard-*/, bad_inputs.jsonl)."""
    image_tokenizer: str = ""
    """MAGVIT-v2 directory or weights file (``MagvitV2.from_pretrained``)."""
    text_tokenizer: str = ""
    """SentencePiece .model file or Hugging Face tokenizer directory."""
    image_size: int = 0
    """Square side the image tokenizer sees (multiple of its downsampling)."""
    split: str = ""
    """Only records of this split ('' = every split; the loader filters by data.split)."""
    shard_size: int = 1000
    """Records per shard (the unit of resumption and of parallel work)."""
    batch_size: int = 32
    """Images per tokenizer / encoder call."""
    workers: int = 1
    """Worker processes (1 = in this process); each handles whole shards."""
    threads: int = 0
    """torch threads per worker (0 = cores // workers)."""
    device: str = "cpu"
    """Device of the image tokenizer ('cpu', 'cuda', 'auto'); encoders have their own."""
    min_image_size: int = 16
    """Images whose shorter side is below this are skipped as too small."""
    require_caption: bool = True
    """Skip records with an empty caption; False keeps them for VQA only (if they have QA)."""
    limit: int = 0
    """Use only the first N records (0 = all); for trials."""
    grounded_answers: bool = False
    """Write each yes/no answer with the attribute it rests on first ("earrings, yes", "none, no";
    ``tokenizers.text.grounded_answer``), from the record's attributes: the first answer word is then
    specific to the category, as an open answer's is; with a few thousand understanding rows
    the yes/no questions then leave their answer prior (docs/design.md §12). The manifest names the separator, and
    ``launchers/evaluate.py`` scores only the verdict after it."""
    command: str = ""
    """The command line that made the shards, kept in the manifest so that an error about a
    damaged shard can say exactly how to rebuild it."""


# --------------------------------------------------------------------------- worker state


@dataclass
class _Models:
    image_tok: Any
    text_tok: Any
    encoders: Any
    device: Any


_WORKER: dict[str, Any] = {}


def _image_tokenizer_hash(model) -> str:
    """sha256 of the config and every weight tensor (file format and path do not matter)."""
    import torch

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_models(cfg: PrecomputeConfig, feature_cfg) -> _Models:
    import torch

    from unif2ace.features import build_encoders
    from unif2ace.tokenizers.magvit import MagvitV2
    from unif2ace.tokenizers.text import TextTokenizer

    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    image_tok = MagvitV2.from_pretrained(cfg.image_tokenizer).to(dev)
    return _Models(image_tok, TextTokenizer.load(cfg.text_tokenizer), build_encoders(feature_cfg), torch.device(dev))


def _init_worker(cfg: PrecomputeConfig, feature_cfg, progress_q, threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING)
    _WORKER["cfg"] = cfg
    _WORKER["models"] = load_models(cfg, feature_cfg)
    _WORKER["q"] = progress_q


def _worker_shard(index: int, records: list[Record], plan_hash: str, n_tokens: int, feature_shapes: dict) -> dict:
    q = _WORKER["q"]
    return process_shard(_WORKER["cfg"], _WORKER["models"], index, records, plan_hash, n_tokens, feature_shapes,
                         progress=lambda n: q.put(n))


# --------------------------------------------------------------------------- one shard


def _entry(rec: Record, reason: str, action: str) -> dict:
    return {"path": rec.where, "id": rec.id, "reason": reason, "action": action}


def images_to_tensor(images, size: int):
    import torch

    arr = np.stack([np.asarray(fit_square(im, size), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _encode_batch(models: _Models, cfg: PrecomputeConfig, recs: list[Record], images: list) -> tuple[np.ndarray, dict]:
    import torch

    x = images_to_tensor(images, cfg.image_size).to(models.device)
    with torch.inference_mode():
        codes = models.image_tok.encode(x).cpu().numpy()
    feats = models.encoders.encode(images, [r.id for r in recs])
    return codes, feats


def process_shard(cfg: PrecomputeConfig, models: _Models, index: int, records: list[Record], plan_hash: str,
                  n_tokens: int, feature_shapes: dict, progress: Callable[[int], None] | None = None) -> dict:
    """Decode, tokenize and embed ``records``; write shard ``index``; return its meta."""
    from unif2ace.data.shards import code_dtype

    tok = models.text_tok
    codebook = models.image_tok.config.codebook_size
    cols: dict[str, list] = {k: [] for k in ("id", "split", "identity", "caption", "caption_ids", "qa_question_ids",
                                             "qa_answer_ids", "qa_category", "attributes")}
    code_rows, feat_rows = [], {k: [] for k in list(feature_shapes) + ["face_found"]}
    report: list[dict] = []
    for start in range(0, len(records), cfg.batch_size):
        batch = records[start:start + cfg.batch_size]
        good, images = [], []
        for rec in batch:
            caption = rec.caption.strip()
            if not caption and (cfg.require_caption or not rec.qa):
                report.append(_entry(rec, "empty caption" + ("" if rec.qa else " and no QA"), "skipped"))
                continue
            try:
                im, notes = open_image(rec, cfg.min_image_size)
            except BadInput as e:
                report.append(_entry(rec, str(e), "skipped"))
                continue
            if min(im.size) < cfg.image_size:
                notes.append(f"upscaled from {im.size[0]}x{im.size[1]}")
            if not caption:
                notes.append("empty caption: kept for VQA only")
            if notes:
                report.append(_entry(rec, "; ".join(notes), "converted"))
            good.append(rec)
            images.append(im)
        if good:
            try:
                codes, feats = _encode_batch(models, cfg, good, images)
                results = [(good, codes, feats)]
            except Exception as e:  # isolate the input that breaks the batch, keep the rest
                log.warning("shard %d: batch failed (%s: %s); retrying image by image", index, type(e).__name__, e)
                results = []
                for rec, im in zip(good, images):
                    try:
                        c, f = _encode_batch(models, cfg, [rec], [im])
                        results.append(([rec], c, f))
                    except Exception as e1:
                        report.append(_entry(rec, f"tokenizer/encoder failed ({type(e1).__name__}: {e1})", "skipped"))
            for recs, codes, feats in results:
                if codes.max(initial=0) >= codebook:
                    raise ValueError(f"image tokenizer returned code {codes.max()} ≥ codebook {codebook}")
                code_rows.append(codes.astype(code_dtype(codebook)))
                for k in feat_rows:
                    feat_rows[k].append(np.asarray(feats[k]))
                for rec in recs:
                    cols["id"].append(rec.id)
                    cols["split"].append(rec.split)
                    cols["identity"].append(rec.identity)
                    cols["caption"].append(rec.caption.strip())
                    cols["caption_ids"].append(tok.encode(rec.caption.strip()) if rec.caption.strip() else [])
                    cols["qa_question_ids"].append([tok.encode_question(qa.question) for qa in rec.qa])
                    cols["qa_answer_ids"].append([tok.encode_answer(_answer(qa, rec, cfg)) for qa in rec.qa])
                    cols["qa_category"].append([qa.category for qa in rec.qa])
                    cols["attributes"].append(json.dumps(rec.attributes, sort_keys=True, default=str))
        if progress:
            progress(len(batch))
    n = len(cols["id"])
    columns: dict[str, Any] = dict(cols)
    columns["codes"] = (np.concatenate(code_rows) if code_rows else np.zeros((0, n_tokens), dtype=code_dtype(codebook)))
    for k, rows in feat_rows.items():
        if k == "face_found":
            columns[k] = np.concatenate(rows).astype(bool) if rows else np.zeros(0, dtype=bool)
        else:
            shape = feature_shapes[k]
            columns[k] = (np.concatenate(rows).astype(np.float16).reshape(n, *shape) if rows
                          else np.zeros((0, *shape), dtype=np.float16))
    features = S.shard_features(n_tokens, codebook, feature_shapes)
    meta = {"plan_hash": plan_hash, "records": len(records), "bad": report}
    return S.write_shard(cfg.out, index, columns, features, meta)


def _answer(qa, rec: Record, cfg: PrecomputeConfig) -> str:
    if not cfg.grounded_answers or qa.answer.strip() not in ("yes", "no"):
        return qa.answer
    if qa.category not in rec.attributes:
        raise ValueError(f"{rec.where}: grounded_answers needs the attribute each yes/no answer rests on, "
                         f"but the record has no {qa.category or '(no category)'!r} attribute "
                         f"(question {qa.question!r}); precompute without grounded_answers")
    return grounded_answer(qa.answer.strip(), qa.category, rec.attributes)


# --------------------------------------------------------------------------- the run


def _plan_hash(ids: list[str], extra: dict) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for i in ids:
        h.update(i.encode() + b"\0")
    return h.hexdigest()


def _probe(models: _Models, cfg: PrecomputeConfig) -> tuple[int, dict[str, list[int]]]:
    """Tokens per image and feature shapes, from one grey image (so empty shards know them too)."""
    from PIL import Image

    img = Image.new("RGB", (cfg.image_size, cfg.image_size), (128, 128, 128))
    codes, feats = _encode_batch(models, cfg, [Record("probe", "", "", None, "", [], {}, "probe")], [img])
    shapes = {k: list(np.asarray(v).shape[1:]) for k, v in feats.items() if k != "face_found"}
    return int(codes.shape[1]), shapes


def _header(cfg: PrecomputeConfig, models: _Models, n_tokens: int, shapes: dict, source: SourceConfig,
            records_hash: str, num_records: int, num_shards: int) -> dict:
    from unif2ace.tokenizers.text import CAPTION_PROMPTS

    tok = models.text_tok
    return S.new_manifest(
        codebook_size=models.image_tok.config.codebook_size, num_image_tokens=n_tokens,
        text_vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id, feature_shapes=shapes,
        caption_prompt_ids=[tok.encode_question(p) for p in CAPTION_PROMPTS],
        hashes={"image_tokenizer": _image_tokenizer_hash(models.image_tok), "text_tokenizer": tok.config_hash(),
                "encoders": models.encoders.config_hash()},
        num_shards=num_shards, command=cfg.command, image_size=cfg.image_size, caption_prompts=list(CAPTION_PROMPTS),
        image_tokenizer={"path": str(Path(cfg.image_tokenizer).absolute()), "config": models.image_tok.config.to_dict()},
        text_tokenizer=tok.describe(), encoders=models.encoders.describe(),
        feature_config=dataclasses.asdict(models.encoders.cfg), source=dataclasses.asdict(source),
        plan={"records_hash": records_hash, "num_records": num_records, "shard_size": cfg.shard_size,
              "split": cfg.split, "limit": cfg.limit, "image_size": cfg.image_size,
              "min_image_size": cfg.min_image_size, "require_caption": cfg.require_caption},
        **({"answer_separator": GROUNDED_SEPARATOR} if cfg.grounded_answers else {}))


# Header keys that must agree between a resumed run and the shards already on disk.
_RESUME_KEYS = ("codebook_size", "num_image_tokens", "image_size", "text_vocab_size", "bos_id", "eos_id",
                "feature_shapes", "hashes", "plan")


def _check_resume(out: Path, header: dict) -> None:
    try:
        old = S.read_manifest(out)
    except S.ShardError:
        if (out / S.MANIFEST).exists():
            raise
        return
    diff = []
    for k in _RESUME_KEYS:
        a, b = old.get(k), header.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [f"{k}.{sub}: on disk {str(a.get(sub))[:24]} vs now {str(b.get(sub))[:24]}"
                     for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)]
        elif a != b:
            diff.append(f"{k}: on disk {a} vs now {b}")
    if diff:
        detail = "; ".join(diff)
        raise S.ShardError(f"{out}: holds shards made with different inputs ({detail}). "
                           f"Use another --out, or --overwrite to replace them.")


def overwrite(out: Path) -> None:
    """Remove what a previous run wrote to ``out`` (manifest, report, shard-*), nothing else."""
    import shutil

    for p in list(out.glob("shard-*")) + list(out.glob(f"{S.TMP_PREFIX}*")):
        shutil.rmtree(p, ignore_errors=True)
    for name in (S.MANIFEST, S.BAD_INPUTS):
        (out / name).unlink(missing_ok=True)


def run(cfg: PrecomputeConfig, source: SourceConfig | SourceSpec, feature_cfg, progress: bool = True,
        records: list[Record] | None = None, model_cfg=None) -> dict:
    """Write (or finish writing) the shards; returns the summary (also printed by the tool).

    ``model_cfg`` (a ``ModelConfig``): fail before any work if the tokenizers do not produce
    what that model expects (codebook, image tokens, text vocabulary, bos/eos).
    """
    import torch
    from tqdm import tqdm

    if not cfg.out or not cfg.image_tokenizer or not cfg.text_tokenizer:
        raise ValueError("precompute needs out, image_tokenizer and text_tokenizer")
    if cfg.image_size <= 0:
        raise ValueError("precompute needs image_size > 0 (or a recipe to derive it from)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stale = S.clean_temp(out)
    if stale:
        log.warning("%s: removed %d half-written shard(s) of an interrupted run", out, stale)
    if records is None:
        if isinstance(source, SourceSpec):  # a declarative spec; its errors stop the run here
            records = load_spec_records(source, split=cfg.split or None)
        else:
            records = load_records(source, split=cfg.split or None)
    if cfg.limit:
        records = records[:cfg.limit]
    if not records:
        raise ValueError(f"source {source.root}: no records" + (f" in split {cfg.split!r}" if cfg.split else ""))
    plan = [records[i:i + cfg.shard_size] for i in range(0, len(records), cfg.shard_size)]
    opts = {"shard_size": cfg.shard_size, "image_size": cfg.image_size, "min_image_size": cfg.min_image_size,
            "require_caption": cfg.require_caption}
    if cfg.grounded_answers:  # only when on, so that shards written before the option keep their hashes
        opts["grounded_answers"] = True
    plan_hashes = [_plan_hash([r.id for r in p], opts) for p in plan]
    records_hash = _plan_hash(plan_hashes, {})

    workers = max(1, cfg.workers)
    cores = os.cpu_count() or 1
    threads = cfg.threads or max(1, cores // workers)
    torch.set_num_threads(threads)
    models = load_models(cfg, feature_cfg)
    n_tokens, shapes = _probe(models, cfg)
    header = _header(cfg, models, n_tokens, shapes, source, records_hash, len(records), len(plan))
    if model_cfg is not None:
        bad = [f"{k}: tokenizers give {header[k]}, model.{k} is {getattr(model_cfg, k)}"
               for k in ("codebook_size", "num_image_tokens", "text_vocab_size", "bos_id", "eos_id")
               if header[k] != getattr(model_cfg, k)]
        if bad:
            raise S.ShardError(f"{cfg.image_tokenizer} / {cfg.text_tokenizer} do not fit the model: " + "; ".join(bad))
    _check_resume(out, header)

    metas: dict[int, dict] = {}
    pending = []
    for i, p in enumerate(plan):
        meta = S.read_shard_meta(out / S.shard_name(i))
        if meta is None or meta.get("plan_hash") != plan_hashes[i]:
            pending.append(i)
            continue
        damaged = S.file_problems(out, meta, checksum=True)  # truncated / overwritten / bit rot
        if damaged:
            log.warning("%s; rewriting that shard", "; ".join(damaged))
            pending.append(i)
        else:
            metas[i] = meta
    done_records = sum(len(plan[i]) for i in metas)
    S.write_manifest(out, S.with_shards(header, metas, False))
    failures: dict[int, str] = {}
    t0 = time.time()
    bar = tqdm(total=len(records), initial=done_records, unit="img", desc=f"precompute {out.name}",
               disable=not progress, smoothing=0.1)

    def finished(i: int, meta: dict) -> None:
        metas[i] = meta
        S.write_manifest(out, S.with_shards(header, metas, False))

    if workers == 1 or len(pending) <= 1:
        for i in pending:
            try:
                finished(i, process_shard(cfg, models, i, plan[i], plan_hashes[i], n_tokens, shapes,
                                           progress=bar.update))
            except Exception as e:  # a failed shard leaves no files; the others still run
                failures[i] = f"{type(e).__name__}: {e}"
                log.error("shard %d failed: %s", i, failures[i])
    else:
        del models  # each worker loads its own copy
        # Not fork: this process already ran torch / onnxruntime thread pools, which a forked
        # child can deadlock on. A fork server is a fresh interpreter that imports the heavy
        # modules once and forks every worker from that clean state (spawn would import per worker).
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["unif2ace.data.precompute", "unif2ace.features.clip", "unif2ace.features.face",
                                    "unif2ace.tokenizers.magvit"])
        q = ctx.Queue()
        with cf.ProcessPoolExecutor(min(workers, len(pending)), mp_context=ctx, initializer=_init_worker,
                                    initargs=(cfg, feature_cfg, q, threads)) as pool:
            futs = {pool.submit(_worker_shard, i, plan[i], plan_hashes[i], n_tokens, shapes): i for i in pending}
            left = set(futs)
            while left:
                done, left = cf.wait(left, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                while True:
                    try:
                        bar.update(q.get_nowait())
                    except queue_mod.Empty:
                        break
                for f in done:
                    i = futs[f]
                    try:
                        finished(i, f.result())
                    except Exception as e:
                        failures[i] = f"{type(e).__name__}: {e}"
                        log.error("shard %d failed: %s", i, failures[i])
    bar.close()
    complete = not failures and len(metas) == len(plan)
    manifest = S.with_shards(header, metas, complete)
    S.write_manifest(out, manifest)
    bad = [b for i in sorted(metas) for b in metas[i]["bad"]]
    atomic_write_text(out / S.BAD_INPUTS, "".join(json.dumps(b) + "\n" for b in bad))
    elapsed = time.time() - t0
    todo = sum(len(plan[i]) for i in pending)
    return {
        "out": str(out), "complete": complete, "num_records": len(records), "num_samples": manifest["num_samples"],
        "num_shards": len(plan), "skipped_shards": len(plan) - len(pending), "written_shards": len(pending) - len(failures),
        "failed_shards": failures, "skipped": [b for b in bad if b["action"] == "skipped"],
        "converted": [b for b in bad if b["action"] == "converted"],
        "reasons": dict(Counter(b["reason"].split(" (")[0].split(":")[0] for b in bad if b["action"] == "skipped")),
        "seconds": elapsed, "images_per_s": todo / elapsed if elapsed > 0 and todo else 0.0,
    }
