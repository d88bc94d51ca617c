"""Declarative source specs: one YAML file per data set says which files hold what and how
their rows join; reading it gives the records precompute tokenizes plus every problem found.

    from unif2ace.data.spec import load_spec, read_source
    spec = load_spec("data/specs/unif2aced.yaml")
    result = read_source(spec)             # .records (list[Record]), .problems, .splits()
    for p in result.problems: print(p)     # "error: captions/test.json:12: …", one line each

    python tools/inspect_source.py data/specs/unif2aced.yaml      # the same, as a report
    python tools/precompute_tokens.py --spec data/specs/unif2aced.yaml …

A spec (every key optional except ``tables``)::

    root: /data/UniF2aceD-1M     # relative paths start here (default: the spec's folder)
    join_on: stem                # how keys of different tables compare: stem | name | path
    images:                      # where an image named by a key or an image field is looked up
      - dir: images
      - tar: "images/*.tar"      # archives are indexed and read in place, not unpacked
    captions: expand             # list-valued captions: expand (one sample each) | first | join
    default_split: train
    allow_split_overlap: false   # an image or identity in two splits is an error unless true
    tables:
      - files: {train: captions/train.json, test: captions/test.json}   # split per file
        fields: {key: image, caption: text, identity: celeb_id}
      - files: vqa/*.parquet     # str, list, or {split: globs}
        fields: {key: image, qa: qa}          # a list of {question, answer} or its JSON text
        qa_keys: {question: q, answer: a}
        rows_per_key: many       # one QA pair per row: rows with the same key are merged
      - files: llava.json
        fields: {key: image, conversations: conversations}   # [{from, value}, …]
      - files: shards/*.tar
        format: webdataset       # datasets' webdataset loader; image fields are read in place
        fields: {key: __key__, image: jpg, caption: json.caption}

Fields are dotted paths into a row (``meta.caption``, ``annotations.0.text``). ``layout:
mapping`` reads one JSON object keyed by image name (the key is the object's key);
``records: annotations`` reads the row list under that key of a JSON file. Tables are read
with ``datasets`` (json / parquet / webdataset, streaming, file by file so that every
problem names its file and row); a file ``datasets`` cannot read is a problem, not a
traceback. ``identity_regex`` derives a person id from the identity field or, without one,
from the key (e.g. a CelebV-HQ clip's video id); ``image_template`` builds an image path from
fields (``frames/{video}/{frame:05d}.jpg``); ``video`` + ``frame`` fields name a frame of a
video file, decoded with OpenCV. Field parsing lives in ``spec_fields.py``, images read in
place (tar members, video frames, the name index) in ``archive.py``.
"""
from __future__ import annotations

import dataclasses
import glob
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml

from unif2ace.data.archive import ImageIndex, VideoFrame, join_key
from unif2ace.data.sources import QA, Record
from unif2ace.data.spec_fields import (FieldError, captions, conversation, get_path, json_text, qa_items,
                                       split_questions)

# --------------------------------------------------------------------------- the spec


@dataclass
class FileGroup:
    globs: list[str] = field(default_factory=list)
    """Files or globs (relative to root)."""
    split: str = ""
    """Split of every row of these files ('' = the split field, else default_split)."""


@dataclass
class Fields:
    """Dotted paths into a row; '' = the table has no such field."""

    key: str = ""
    """Join key (mapping layout: the object's key; '' = the image field)."""
    image: str = ""
    """Image reference: a path or name (looked up under images), bytes, or an HF Image struct."""
    caption: str = ""
    """A caption, a list of captions, or the JSON text of a list."""
    qa: str = ""
    """A list of QA objects (keys in qa_keys) or [question, answer] pairs, or its JSON text."""
    question: str = ""
    """One question (or a list) per row, with answer (and category) beside it."""
    answer: str = ""
    """The answer(s) matching question."""
    category: str = ""
    """The category / categories matching question."""
    conversations: str = ""
    """LLaVA-style turns [{from: human|gpt, value}, …], or their JSON text."""
    identity: str = ""
    """Person id (see identity_regex)."""
    split: str = ""
    """Split name per row."""
    attributes: str = ""
    """Mapping of ground-truth attributes, or its JSON text."""
    video: str = ""
    """Path of a video file whose frame (field frame) is the image."""
    frame: str = ""
    """Frame index into video."""


@dataclass
class QAKeys:
    question: str = "question"
    answer: str = "answer"
    category: str = "category"


@dataclass
class ConversationKeys:
    role: str = "from"
    text: str = "value"
    user: list[str] = field(default_factory=lambda: ["human", "user"])
    assistant: list[str] = field(default_factory=lambda: ["gpt", "assistant"])


@dataclass
class Table:
    files: list[FileGroup] = field(default_factory=list)
    """``path``, ``[paths]`` or ``{split: paths}``."""
    format: Literal["auto", "json", "parquet", "webdataset"] = "auto"
    """auto: by extension (.json/.jsonl, .parquet, .tar)."""
    layout: Literal["rows", "mapping"] = "rows"
    """rows: a list / JSON lines / table of records; mapping: one JSON object {key: record}."""
    records: str = ""
    """JSON files only: the key holding the row list (datasets' json ``field``)."""
    fields: Fields = field(default_factory=Fields)
    qa_keys: QAKeys = field(default_factory=QAKeys)
    conversation_keys: ConversationKeys = field(default_factory=ConversationKeys)
    image_template: str = ""
    """Image path built from fields, e.g. ``frames/{video_id}/{frame:05d}.jpg``."""
    identity_regex: str = ""
    """First group of this regex over the identity field (or the key when there is none)."""
    rows_per_key: Literal["one", "many"] = "one"
    """many: several rows per key are expected and merged; one: a repeated key is a problem."""


@dataclass
class ImageRoot:
    dir: str = ""
    tar: str = ""


@dataclass
class SourceSpec:
    tables: list[Table] = field(default_factory=list)
    root: str = ""
    join_on: Literal["stem", "name", "path"] = "stem"
    images: list[ImageRoot] = field(default_factory=list)
    captions: Literal["expand", "first", "join"] = "expand"
    default_split: str = "train"
    allow_split_overlap: bool = False
    name: str = ""
    path: str = ""
    """The spec file (set by load_spec)."""


class SpecError(ValueError):
    """A spec that cannot be read, or a source with errors; the message names the file."""


def _norm_files(value, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"globs": [value]}]
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value):
            return value
        return [{"globs": [str(v) for v in value]}]
    if isinstance(value, dict):
        return [{"globs": [v] if isinstance(v, str) else list(v), "split": str(k)} for k, v in value.items()]
    raise SpecError(f"{where}: files must be a path, a list of paths or {{split: paths}}, got {value!r}")


def spec_from_dict(data: dict, path: str = "") -> SourceSpec:
    """Typed build (unknown keys and wrong types raise SpecError naming the key)."""
    from unif2ace.config import ConfigError, build  # the repo's one typed-dataclass builder

    data = dict(data)
    tables = data.get("tables")
    if not isinstance(tables, list) or not tables:
        raise SpecError(f"{path or 'spec'}: 'tables' must be a non-empty list")
    norm = []
    for i, t in enumerate(tables):
        if not isinstance(t, dict) or "files" not in t:
            raise SpecError(f"{path or 'spec'}: tables[{i}] needs 'files'")
        norm.append({**t, "files": _norm_files(t["files"], f"{path}: tables[{i}]")})
    data["tables"] = norm
    data["images"] = [{"dir": v} if isinstance(v, str) else v for v in data.get("images", [])]
    try:
        spec = build(SourceSpec, data, "spec.")
    except ConfigError as e:
        raise SpecError(f"{path or 'spec'}: {e}") from None
    for i, t in enumerate(spec.tables):
        f = t.fields
        if t.layout == "rows" and not (f.key or f.image):
            raise SpecError(f"{path or 'spec'}: tables[{i}] needs fields.key or fields.image (what joins its rows)")
        if bool(f.video) != bool(f.frame) and f.frame:
            raise SpecError(f"{path or 'spec'}: tables[{i}]: fields.frame needs fields.video")
    spec.path = path
    base = Path(path).parent if path else Path(".")
    spec.root = str((base / Path(spec.root).expanduser()) if spec.root else base)
    return spec


def load_spec(path: str | Path) -> SourceSpec:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with 'tables'")
    return spec_from_dict(data, str(path))


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    level: Literal["error", "warning"]
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


# --------------------------------------------------------------------------- reading tables


def _format_of(table: Table, files: list[str]) -> str:
    if table.format != "auto":
        return table.format
    kinds = set()
    for f in files:
        low = f.lower()
        kinds.add("parquet" if low.endswith(".parquet") else "json" if low.endswith((".json", ".jsonl"))
                  else "webdataset" if low.endswith(".tar") else "?")
    if "?" in kinds or len(kinds) != 1:
        raise SpecError(f"cannot tell the format of {files}; set the table's format: json | parquet | webdataset")
    return kinds.pop()


def _iter_file(spec: SourceSpec, table: Table, fmt: str, path: str) -> Iterator[dict]:
    """Rows of one file, through ``datasets`` (streaming: nothing is copied to a cache)."""
    if table.layout == "mapping":
        from unif2ace.jsonfile import read_json

        obj = read_json(path, FieldError)
        if table.records:
            obj = get_path(obj, table.records)
        if not isinstance(obj, dict):
            raise FieldError(f"layout mapping expects one JSON object keyed by image, got {type(obj).__name__}")
        for k, v in obj.items():
            yield {"__key__": k, **(v if isinstance(v, dict) else {"value": v})}
        return
    import datasets

    kw: dict[str, Any] = {}
    if fmt == "json" and table.records:
        kw["field"] = table.records
    ds = datasets.load_dataset(fmt, data_files=[path], split="train", streaming=True, **kw)
    if fmt == "webdataset" or any(isinstance(f, datasets.Image) for f in (ds.features or {}).values()):
        ds = ds.decode(False)  # keep images encoded: they are decoded once, in precompute
    yield from ds


@dataclass
class _Entry:
    """What the tables say about one key."""

    key: str
    rows: list[str] = field(default_factory=list)
    image: Any = None
    name: str = ""
    """The key as first written (e.g. ffhq/00012.png): where to look when no image field names one."""
    captions: list[str] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    identity: str | None = None
    split: str | None = None
    split_from: str = ""
    attributes: dict = field(default_factory=dict)


def _image_ref(spec: SourceSpec, table: Table, row: dict, index: ImageIndex, fmt: str):
    """The image a row names: bytes, a lazy archive member / video frame, or a name to look up."""
    f = table.fields
    if f.video:
        video, frame = get_path(row, f.video), get_path(row, f.frame) if f.frame else 0
        if video is None:
            return None
        p = Path(str(video)).expanduser()
        try:
            return VideoFrame(str(p if p.is_absolute() else Path(spec.root) / p), int(frame or 0))
        except (TypeError, ValueError):
            raise FieldError(f"frame {frame!r} is not an integer")
    if table.image_template:
        try:
            return table.image_template.format(**{k: v for k, v in row.items() if isinstance(k, str)})
        except (KeyError, ValueError, IndexError) as e:
            raise FieldError(f"image_template {table.image_template!r}: {type(e).__name__} {e}")
    if not f.image:
        return None
    value = get_path(row, f.image)
    if fmt == "webdataset" and isinstance(value, dict) and row.get("__url__"):
        # datasets read the bytes while streaming; keep a lazy reference instead of holding them
        ext = f.image.split(".")[0]
        m = index.tar_members(row["__url__"]).get(f"{row['__key__']}.{ext}")
        if m is not None:
            return m
    if isinstance(value, dict):  # HF Image struct
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    return str(value) if value not in (None, "") else None


def _files_of(spec: SourceSpec, group: FileGroup, where: str) -> list[str]:
    out = []
    for g in group.globs:
        p = Path(g).expanduser()
        full = str(p if p.is_absolute() else Path(spec.root) / p)
        hits = sorted(glob.glob(full))
        if not hits:
            raise SpecError(f"{where}: {full} matches no file")
        out += hits
    return out


# --------------------------------------------------------------------------- the whole source


@dataclass
class SourceRead:
    records: list[Record]
    problems: list[Problem]
    files: list[tuple[str, int]]
    """(file, rows read) per table file, in order."""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    def splits(self) -> dict[str, dict[str, int]]:
        """Per split: samples, distinct images (keys), identities, QA pairs."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.records:
            s = out.setdefault(r.split, {"samples": 0, "images": set(), "identities": set(), "qa_pairs": 0})
            s["samples"] += 1
            s["images"].add(r.id.split("#")[0])
            s["identities"].add(r.identity)
            s["qa_pairs"] += len(r.qa)
        return {k: {**v, "images": len(v["images"]), "identities": len(v["identities"])} for k, v in sorted(out.items())}


def read_source(spec: SourceSpec, check_images: bool = True) -> SourceRead:
    """Read every table, join rows on their keys, resolve images, check the result.

    Never raises on bad data: every problem is collected (one line each, naming file and
    row). Raises SpecError only when the spec itself is unusable (a glob that matches nothing).
    """
    index = ImageIndex(spec.root, [r.dir for r in spec.images if r.dir], [r.tar for r in spec.images if r.tar], spec.join_on)
    entries: dict[str, _Entry] = {}
    problems: list[Problem] = []
    files_read: list[tuple[str, int]] = []
    has_identity = any(t.fields.identity or t.identity_regex for t in spec.tables)
    for ti, table in enumerate(spec.tables):
        where_t = f"{spec.path or 'spec'}: tables[{ti}]"
        seen_here: dict[str, str] = {}
        for group in table.files:
            files = _files_of(spec, group, where_t)
            fmt = _format_of(table, files)
            for path in files:
                n = 0
                try:
                    for n, row in enumerate(_iter_file(spec, table, fmt, path), 1):
                        _take_row(spec, table, fmt, group, row, f"{path}:{n}", index, entries, seen_here, problems)
                except Exception as e:  # datasets / pyarrow / json: one line naming the file
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    cause = e.__cause__ or e.__context__
                    if cause is not None and str(cause).strip():
                        msg += f" ({type(cause).__name__}: {str(cause).strip().splitlines()[0]})"
                    problems.append(Problem("error", f"{path}:{n + 1}" if n else path,
                                            f"cannot be read as {fmt} ({type(e).__name__}: {msg[:300]})"))
                files_read.append((path, n))
    _check_unsplit(spec, entries, problems)
    records = _records(spec, entries, index, problems, check_images)
    if not has_identity:
        problems.append(Problem("warning", spec.path or "spec", "no identity field: every image counts as its own "
                                "person, so the splits cannot be checked for people who appear in several"))
    _check_overlap(spec, records, problems)
    return SourceRead(records, problems, files_read)


def _take_row(spec, table, fmt, group, row, where, index, entries, seen_here, problems) -> None:
    f = table.fields
    try:
        raw_key = row.get("__key__") if table.layout == "mapping" else get_path(row, f.key or f.image)
        image = _image_ref(spec, table, row, index, fmt)
        if raw_key is None or isinstance(raw_key, (dict, bytes)):
            raw_key = image if isinstance(image, str) else None
        if raw_key is None or str(raw_key).strip() == "":
            problems.append(Problem("error", where, f"no key (field '{f.key or f.image}' is empty or missing)"))
            return
        key = join_key(str(raw_key), spec.join_on)
        if key in seen_here and table.rows_per_key == "one":
            problems.append(Problem("error", where, f"duplicate key {key!r} (first at {seen_here[key]}); set "
                                    "rows_per_key: many if this table has several rows per image"))
        seen_here.setdefault(key, where)
        e = entries.setdefault(key, _Entry(key, name=str(raw_key)))
        e.rows.append(where)
        if image is not None:
            if e.image is not None and e.image != image and not (isinstance(image, str) and isinstance(e.image, str)
                                                                  and join_key(image, "path") == join_key(e.image, "path")):
                problems.append(Problem("warning", where, f"key {key!r} names another image than {e.rows[0]}; "
                                        "keeping the first"))
            else:
                e.image = image
        if f.caption:
            e.captions += [c for c in captions(get_path(row, f.caption)) if c not in e.captions]
        if f.qa:
            e.qa += qa_items(get_path(row, f.qa), table.qa_keys)
        if f.question:
            e.qa += split_questions(row, f)
        if f.conversations:
            pairs, notes = conversation(get_path(row, f.conversations), table.conversation_keys)
            e.qa += pairs
            problems += [Problem("warning", where, n) for n in notes]
        split = group.split or (get_path(row, f.split) if f.split else None)
        if split not in (None, ""):
            split = str(split)
            if e.split is not None and e.split != split:
                problems.append(Problem("error", where, f"key {key!r} is in split {split!r} here but {e.split!r} "
                                        f"at {e.split_from}"))
            elif e.split is None:
                e.split, e.split_from = split, where
        ident = get_path(row, f.identity) if f.identity else None
        if table.identity_regex:
            src = key if ident in (None, "") else str(ident)
            m = re.search(table.identity_regex, src)
            if m is None:
                problems.append(Problem("warning", where, f"identity_regex {table.identity_regex!r} does not "
                                        f"match {src!r}"))
            ident = m.group(1) if m and m.groups() else (m.group(0) if m else ident)
        if ident not in (None, ""):
            if e.identity is not None and e.identity != str(ident):
                problems.append(Problem("error", where, f"key {key!r}: identity {ident!r} here but "
                                        f"{e.identity!r} in an earlier row"))
            e.identity = str(ident)
        if f.attributes:
            attrs = json_text(get_path(row, f.attributes), "attributes")
            if attrs is not None:
                e.attributes.update(attrs if isinstance(attrs, dict) else {"value": attrs})
    except FieldError as err:
        problems.append(Problem("error", where, str(err)))


def _records(spec, entries, index, problems, check_images) -> list[Record]:
    out = []
    for key, e in entries.items():
        where = e.rows[0]
        image = e.image
        if image is None or isinstance(image, str) and not Path(image).is_absolute():
            names = [image] if image is not None else [e.name, e.name.rsplit("/", 1)[-1], key]
            found = next((f for f in map(index.find, dict.fromkeys(names)) if f is not None), None)
            if found is None:  # precompute skips it and lists it as a bad input
                if check_images:
                    problems.append(Problem("warning", where, f"missing image: {names[0]!r} is in none of "
                                            f"{[str(d) for d in index.dirs] + index.tars or [spec.root]}"))
                image = str((index.dirs[0] if index.dirs else index.root) / names[0])
            else:
                image = found
        elif isinstance(image, str) and check_images and not Path(image).is_file():
            problems.append(Problem("warning", where, f"missing image: {image}"))
        if not e.captions and not e.qa:
            problems.append(Problem("warning", where, f"key {key!r} has neither a caption nor QA pairs"))
        split = e.split or spec.default_split
        ident = e.identity if e.identity is not None else key
        caps = e.captions
        if spec.captions == "first":
            caps = caps[:1]
        elif spec.captions == "join":
            caps = [" ".join(caps)] if caps else []
        shown = str(image) if image is not None and not isinstance(image, bytes) else where
        if len(caps) <= 1:
            out.append(Record(key, split, ident, image, caps[0] if caps else "", e.qa, e.attributes, shown))
            continue
        for i, c in enumerate(caps):  # one sample per caption; QA once (on the first), not repeated
            out.append(Record(f"{key}#{i}", split, ident, image, c, e.qa if i == 0 else [], e.attributes, shown))
    return out


def _check_unsplit(spec: SourceSpec, entries: dict[str, _Entry], problems: list[Problem]) -> None:
    """Where the spec gives splits, a key no table gives one (e.g. a VQA row whose caption row
    is absent) would fall into default_split silently: possibly a test face in training."""
    if not any(g.split for t in spec.tables for g in t.files) and not any(t.fields.split for t in spec.tables):
        return
    by_file: dict[str, list[str]] = defaultdict(list)
    for e in entries.values():
        if e.split is None:
            by_file[e.rows[0].rsplit(":", 1)[0]].append(e.key)
    for f, keys in by_file.items():
        problems.append(Problem("error", f, f"{len(keys)} key(s) have a split in no table (e.g. "
                                f"{', '.join(map(repr, keys[:3]))}); give them one (files: {{split: …}} or "
                                f"fields: {{split: …}}) or drop them"))


def _check_overlap(spec: SourceSpec, records: list[Record], problems: list[Problem]) -> None:
    """An identity or an image in more than one split leaks test faces into training."""
    level = "warning" if spec.allow_split_overlap else "error"
    for what, get in (("identity", lambda r: r.identity), ("image", lambda r: str(r.image) if r.image is not None
                                                              and not isinstance(r.image, bytes) else None)):
        by: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            k = get(r)
            if k is not None:
                by[k][r.split].append(r.id)
        for k, splits in by.items():
            if len(splits) > 1:
                parts = ", ".join(f"{s} ({len(ids)}, e.g. {ids[0]})" for s, ids in sorted(splits.items()))
                problems.append(Problem(level, spec.path or "spec", f"{what} {k!r} is in splits {parts}"
                                        + ("" if spec.allow_split_overlap else
                                           " (leakage; set allow_split_overlap: true if intended)")))


def load_spec_records(spec: SourceSpec, split: str | None = None) -> list[Record]:
    """Records for precompute; raises SpecError listing every error (one line each)."""
    result = read_source(spec)
    errs = result.errors
    if errs:
        shown = "\n".join(str(p) for p in errs[:20]) + (f"\n… {len(errs) - 20} more" if len(errs) > 20 else "")
        raise SpecError(f"{spec.path or 'spec'}: {len(errs)} error(s); run tools/inspect_source.py for the "
                        f"full report\n{shown}")
    return [r for r in result.records if not split or r.split == split]


def describe(spec: SourceSpec) -> dict:
    """The spec as a plain dict (kept in the shard manifest)."""
    return dataclasses.asdict(spec)
