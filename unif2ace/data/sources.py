"""Read face data sets from local disk: images + captions + question/answer pairs.

    from unif2ace.data.sources import SourceConfig, load_records, open_image
    cfg = SourceConfig(root="data/synthface")                       # SynthFace layout (the default)
    cfg = SourceConfig.from_dict({"root": "data/ffhq", "metadata": ["ann/*.parquet"],
                                  "image_column": "image", "caption_column": "text",
                                  "qa_column": "", "question_column": "question",
                                  "answer_column": "answer", "group_by_id": True})
    records = load_records(cfg, split="train")                      # list[Record], file order
    image, notes = open_image(records[0])                           # RGB PIL image, conversions done

Metadata files (JSON, JSONL or parquet) are read with ``datasets.load_dataset``; column names
are mapped by :class:`SourceConfig`. An image is a path (relative to ``root/image_dir`` or
absolute), raw encoded bytes, or a Hugging Face ``Image`` struct ``{"bytes", "path"}``.
QA pairs are either one list column of ``{q, a, category}`` objects (SynthFace), or
question/answer columns holding a string or a list each; with ``group_by_id`` rows that share
an id are merged (one QA pair per row layouts).

Unreadable images raise :class:`BadInput` with the reason; fixable ones are converted
(grayscale / palette / CMYK / 16-bit → RGB, alpha composited on white, EXIF rotation).
"""
from __future__ import annotations

import glob
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from PIL import Image, ImageOps


class BadInput(Exception):
    """A record that cannot be used; ``str(e)`` is the reason."""


@dataclass
class SourceConfig:
    """Where a data set is and which columns hold what. Defaults read SynthFace's layout."""

    root: str = ""
    """Data set directory; metadata globs and relative image paths are resolved against it."""
    metadata: list[str] = field(default_factory=lambda: ["metadata.jsonl"])
    """Metadata files or globs (relative to root), all with the same columns."""
    format: Literal["auto", "json", "parquet"] = "auto"
    """Metadata format; auto picks from the extension (.json / .jsonl → json, .parquet → parquet)."""
    image_dir: str = ""
    """Folder (relative to root) that relative image paths start from; '' = root."""
    image_column: str = "file"
    """Column with the image: a path, encoded bytes, or an HF Image struct {bytes, path}."""
    id_column: str = "id"
    """Column with a unique sample id; '' = the row number."""
    split_column: str = "split"
    """Column with the split name; '' or a missing column = default_split."""
    default_split: str = "train"
    """Split of rows that have none."""
    identity_column: str = "identity"
    """Column with the person id ('' or missing = the sample id: every sample its own identity)."""
    caption_column: str = "caption"
    """Column with the dense caption ('' = no captions)."""
    qa_column: str = "qa"
    """Column with a list of QA objects ('' = use question_column / answer_column)."""
    qa_question_key: str = "q"
    """Key of the question inside a QA object."""
    qa_answer_key: str = "a"
    """Key of the answer inside a QA object."""
    qa_category_key: str = "category"
    """Key of the attribute category inside a QA object ('' = none)."""
    question_column: str = ""
    """Column with a question (string) or questions (list), used when qa_column is ''."""
    answer_column: str = ""
    """Column with the matching answer(s)."""
    category_column: str = ""
    """Column with the matching category / categories ('' = none)."""
    attributes_column: str = "attributes"
    """Column with a mapping of ground-truth attributes ('' or missing = none)."""
    group_by_id: bool = False
    """Merge rows with the same id (QA lists concatenated, first non-empty caption kept)."""
    cache_dir: str = ""
    """datasets cache directory for the parsed metadata ('' = the datasets default)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SourceConfig":
        """Typed build; unknown keys and wrong types raise ConfigError naming the key."""
        from unif2ace.config import build  # the repo's one typed-dataclass builder

        return build(cls, dict(data), "source.")


@dataclass
class QA:
    question: str
    answer: str
    category: str = ""


@dataclass
class Record:
    """One sample of a source, before tokenizing."""

    id: str
    split: str
    identity: str
    image: Any
    """Absolute path, encoded bytes, an object with ``read() -> bytes`` (an archive member or a
    video frame, read in place), or None when the row has no image."""
    caption: str
    qa: list[QA]
    attributes: dict
    where: str
    """How to find the sample in a report: its image path, or metadata file + id for bytes."""


def _files(cfg: SourceConfig) -> list[str]:
    root = Path(cfg.root).expanduser()
    out: list[str] = []
    for pattern in cfg.metadata:
        p = Path(pattern).expanduser()
        full = str(p if p.is_absolute() else root / p)
        hits = sorted(glob.glob(full))
        if not hits:
            raise FileNotFoundError(f"metadata {full!r} matches no file (source root {root})")
        out += hits
    return out


def _format(cfg: SourceConfig, files: list[str]) -> str:
    if cfg.format != "auto":
        return cfg.format
    kinds = {"parquet" if f.endswith(".parquet") else "json" if f.endswith((".json", ".jsonl")) else "?" for f in files}
    if "?" in kinds or len(kinds) != 1:
        raise ValueError(f"cannot tell the metadata format of {files}; set source format: json | parquet")
    return kinds.pop()


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _qa(cfg: SourceConfig, row: dict, where: str) -> list[QA]:
    out: list[QA] = []
    if cfg.qa_column:
        value = row.get(cfg.qa_column)
        if isinstance(value, str) and value.strip():  # a list stored as JSON text (common in parquet)
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: column {cfg.qa_column!r} is text that is not JSON ({e.msg})") from None
        for item in _as_list(value):
            if not isinstance(item, dict):
                raise ValueError(f"{where}: column {cfg.qa_column!r} holds {item!r}, not a QA object; "
                                 "describe other layouts with a source spec (unif2ace/data/spec.py)")
            q, a = item.get(cfg.qa_question_key), item.get(cfg.qa_answer_key)
            if q is None or a is None:
                continue
            cat = item.get(cfg.qa_category_key) if cfg.qa_category_key else ""
            out.append(QA(str(q), str(a), "" if cat is None else str(cat)))
    elif cfg.question_column and cfg.answer_column:
        qs, as_ = _as_list(row.get(cfg.question_column)), _as_list(row.get(cfg.answer_column))
        cats = _as_list(row.get(cfg.category_column)) if cfg.category_column else []
        for i, (q, a) in enumerate(zip(qs, as_)):
            if q is None or a is None:
                continue
            out.append(QA(str(q), str(a), str(cats[i]) if i < len(cats) and cats[i] is not None else ""))
    return out


def _image(cfg: SourceConfig, value) -> str | bytes | None:
    if isinstance(value, dict):  # HF Image struct (decode=False)
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    if not value:
        return None
    p = Path(str(value)).expanduser()
    if not p.is_absolute():
        p = (Path(cfg.root).expanduser() / cfg.image_dir / p).absolute()
    return str(p)


def _attributes(value) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):  # stored as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {"value": value}
    return dict(value) if isinstance(value, dict) else {"value": value}


def iter_records(cfg: SourceConfig) -> Iterator[Record]:
    """Every row of the metadata, in file order (rows sharing an id merged if group_by_id)."""
    import datasets

    files = _files(cfg)
    fmt = _format(cfg, files)
    try:
        ds = datasets.load_dataset(fmt, data_files=files, split="train", cache_dir=cfg.cache_dir or None)
    except Exception as e:  # DatasetGenerationError & co: one line naming the files, not a traceback
        cause = e.__cause__ or e.__context__
        why = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}" if cause else str(e)
        raise ValueError(f"{files if len(files) > 1 else files[0]}: datasets cannot read these {fmt} files as one "
                         f"table ({type(e).__name__}; {why[:300]}). Files with different columns (captions and "
                         "VQA apart) need a source spec that joins them: unif2ace/data/spec.py") from None
    cols = set(ds.column_names)
    for name in ("image_column", "caption_column", "qa_column", "question_column", "answer_column"):
        col = getattr(cfg, name)
        if col and col not in cols:
            raise ValueError(f"{files[0]}: column {col!r} (source {name}) not found; columns: {sorted(cols)}")
    if isinstance(ds.features.get(cfg.image_column), datasets.Image):
        # Keep the encoded bytes: decoding happens once, in the precompute worker.
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    merged: dict[str, Record] = {}
    order: list[str] = []
    row_no = 0
    for batch in ds.iter(batch_size=1000):
        n = len(next(iter(batch.values())))
        for i in range(n):
            row = {k: v[i] for k, v in batch.items()}
            rid = str(row[cfg.id_column]) if cfg.id_column in cols and row.get(cfg.id_column) is not None else str(row_no)
            row_no += 1
            image = _image(cfg, row.get(cfg.image_column))
            where = image if isinstance(image, str) else f"{files[0] if len(files) == 1 else 'metadata'}#id={rid}"
            split = row.get(cfg.split_column) if cfg.split_column in cols else None
            ident = row.get(cfg.identity_column) if cfg.identity_column in cols else None
            caption = row.get(cfg.caption_column) if cfg.caption_column in cols else None
            if isinstance(caption, (list, tuple, dict)):  # str() would tokenise the Python repr
                raise ValueError(f"{where}: column {cfg.caption_column!r} holds a {type(caption).__name__}, not "
                                 "one caption; a source spec expands caption lists (unif2ace/data/spec.py)")
            rec = Record(id=rid, split=str(split) if split else cfg.default_split,
                         identity=str(ident) if ident is not None else rid, image=image,
                         caption="" if caption is None else str(caption), qa=_qa(cfg, row, where),
                         attributes=_attributes(row.get(cfg.attributes_column)) if cfg.attributes_column in cols else {},
                         where=where)
            if not cfg.group_by_id:
                yield rec
                continue
            old = merged.get(rid)
            if old is None:
                merged[rid] = rec
                order.append(rid)
            else:
                old.qa += rec.qa
                old.caption = old.caption or rec.caption
                old.image = old.image or rec.image
                old.attributes = old.attributes or rec.attributes
    for rid in order:
        yield merged[rid]


def load_records(cfg: SourceConfig, split: str | None = None) -> list[Record]:
    """All records (of one split when ``split`` is given), in file order. Duplicate ids raise."""
    out, seen = [], set()
    for rec in iter_records(cfg):
        if split and rec.split != split:
            continue
        if rec.id in seen:
            raise ValueError(f"source {cfg.root}: duplicate sample id {rec.id!r} ({rec.where}); "
                             "ids must be unique (or set group_by_id: true to merge such rows)")
        seen.add(rec.id)
        out.append(rec)
    return out


def texts_for_tokenizer(records: list[Record]) -> Iterator[str]:
    """Captions and QA text of ``records``, as the precompute step formats them."""
    from unif2ace.tokenizers.text import ANSWER_TEMPLATE, CAPTION_PROMPTS, QUESTION_TEMPLATE

    for p in CAPTION_PROMPTS:
        yield QUESTION_TEMPLATE.format(q=p)
    for r in records:
        if r.caption.strip():
            yield r.caption
        for qa in r.qa:
            yield QUESTION_TEMPLATE.format(q=qa.question.strip()) + ANSWER_TEMPLATE.format(a=qa.answer.strip())


# --------------------------------------------------------------------------- images


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        notes.append("palette→RGB")
        if im.mode == "RGB":
            return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels hold arbitrary colour: composite on white rather than dropping alpha.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"{im.mode} alpha composited on white")
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # convert("RGB") would clip >255; rescale high-bit-depth data to 8 bits instead.
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        if hi > 255:
            a = a * (255.0 / hi)
        notes.append(f"{im.mode}→RGB")
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB")
    notes.append(f"{im.mode}→RGB")
    return im.convert("RGB")


def open_image(rec: Record, min_size: int = 16) -> tuple[Image.Image, list[str]]:
    """Decode ``rec``'s image to RGB. Returns (image, notes on conversions applied).

    Raises :class:`BadInput` for a missing file, undecodable / truncated data, or an image whose
    shorter side is below ``min_size`` pixels (too little signal to upsample into a face).
    """
    if rec.image is None:
        raise BadInput("no image in the metadata row")
    notes: list[str] = []
    try:
        if isinstance(rec.image, bytes):
            src = io.BytesIO(rec.image)
        elif isinstance(rec.image, str):
            src = rec.image
        else:  # read in place: an archive member or a video frame (unif2ace.data.spec)
            src = io.BytesIO(rec.image.read())
        with Image.open(src) as im:
            im.load()  # decodes now, so truncation surfaces here
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im, notes)
            rgb.load()
    except FileNotFoundError:
        raise BadInput("missing file") from None
    except Image.UnidentifiedImageError:
        raise BadInput("not a readable image (corrupt or unknown format)") from None
    except Exception as e:  # truncated streams raise OSError, broken headers SyntaxError/ValueError
        raise BadInput(f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    w, h = rgb.size
    if min(w, h) < min_size:
        raise BadInput(f"too small: {w}x{h} (shorter side below {min_size} px)")
    return rgb, notes


def fit_square(im: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size``² (bicubic), the image tokenizer's input."""
    w, h = im.size
    s = min(w, h)
    if w != h:
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    if s != size:
        im = im.resize((size, size), Image.BICUBIC)
    return im
