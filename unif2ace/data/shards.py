"""Precomputed shard format: Arrow files written through ``datasets``, a manifest, checks.

    python -m unif2ace.data.shards verify runs/synthface/shards     # recompute every checksum
    python -m unif2ace.data.shards info runs/synthface/shards       # counts, sizes, hashes

Layout of a shard directory ``OUT``::

    OUT/manifest.json          format, sizes (codebook, image tokens, text vocab, features),
                               tokenizer / encoder config hashes, per-shard counts + sha256
    OUT/bad_inputs.jsonl       one line per skipped or converted input: path, id, reason, action
    OUT/shard-00000/data.arrow one Arrow record batch (``datasets.Dataset.from_file``, mmap)
    OUT/shard-00000/meta.json  the shard's own count, checksum, plan hash and bad inputs

A shard directory only ever appears complete: it is written under ``OUT/.tmp-*`` and moved
into place by one rename (unif2ace/atomic.py). Columns (one row per image):

    id, split, identity   string
    codes                 fixed list<uint16>[num_image_tokens]  (uint32 if codebook > 65536)
    caption               string (raw text, for evaluation prompts)
    caption_ids           list<int32>     text ids, no bos/eos
    qa_question_ids       list<list<int32>>  QUESTION_TEMPLATE-formatted questions
    qa_answer_ids         list<list<int32>>  ANSWER_TEMPLATE-formatted answers
    qa_category           list<string>
    attributes            string (JSON object of ground-truth attributes)
    face_found            bool
    clip, face, noise, …  fixed list<float16>[prod(shape)]; shapes in manifest["feature_shapes"]
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unif2ace.atomic import atomic_directory, atomic_write_text
from unif2ace.checksum import file_sha256
from unif2ace.jsonfile import read_json

FORMAT = "unif2ace-shards"
VERSION = 1
MANIFEST = "manifest.json"
BAD_INPUTS = "bad_inputs.jsonl"
DATA_FILE = "data.arrow"
META_FILE = "meta.json"
TMP_PREFIX = ".tmp-"


class ShardError(ValueError):
    """Shards are missing, incomplete, corrupt, or do not match the model / caller."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"




# --------------------------------------------------------------------------- writing


def code_dtype(codebook_size: int) -> str:
    return "uint16" if codebook_size <= 1 << 16 else "uint32"


def shard_features(num_image_tokens: int, codebook_size: int, feature_shapes: dict[str, list[int]]):
    """The ``datasets.Features`` schema of a shard."""
    from datasets import Features, List, Value

    cols = {
        "id": Value("string"), "split": Value("string"), "identity": Value("string"),
        "codes": List(Value(code_dtype(codebook_size)), length=num_image_tokens),
        "caption": Value("string"),
        "caption_ids": List(Value("int32")),
        "qa_question_ids": List(List(Value("int32"))),
        "qa_answer_ids": List(List(Value("int32"))),
        "qa_category": List(Value("string")),
        "attributes": Value("string"),
        "face_found": Value("bool"),
    }
    for name, shape in feature_shapes.items():
        cols[name] = List(Value("float16"), length=int(math.prod(shape)))
    return Features(cols)


def write_shard(out_dir: str | os.PathLike, index: int, columns: dict[str, Any], features, meta: dict) -> dict:
    """Write one shard atomically; returns its meta (count + per-file sha256 added).

    ``columns``: column name → list (strings, id lists) or numpy array (codes (n, N), features
    (n, *shape), face_found (n,)). Nothing is visible under the final name until complete.
    """
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    out_dir = Path(out_dir)
    final = out_dir / shard_name(index)
    n = len(columns["id"])
    arrays = {}
    for name in features:
        v = columns[name]
        if isinstance(v, np.ndarray) and v.ndim >= 2:  # fixed-size rows: no per-element Python objects
            flat = np.ascontiguousarray(v.reshape(n, -1))
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        else:
            arrays[name] = pa.array(v.tolist() if isinstance(v, np.ndarray) else v)
    table = pa.table(arrays).cast(features.arrow_schema)
    with atomic_directory(final, prefix=f"{TMP_PREFIX}{shard_name(index)}-") as tmp:
        writer = ArrowWriter(features=features, path=str(tmp / DATA_FILE), writer_batch_size=max(n, 1))
        # One record batch per shard: the loader then reads every column zero-copy.
        writer.write_table(table, writer_batch_size=max(n, 1))
        writer.finalize()
        writer.close()
        meta = dict(meta, index=index, name=final.name, count=n,
                    files={DATA_FILE: {"sha256": file_sha256(tmp / DATA_FILE), "bytes": (tmp / DATA_FILE).stat().st_size}})
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1))
    # an existing shard (a stale one from an older plan: the caller decided to replace it) is replaced whole
    return meta


def read_shard_meta(path: str | os.PathLike) -> dict | None:
    """The meta of a finished shard directory, or None if it is absent or unreadable."""
    try:
        return json.loads((Path(path) / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def clean_temp(out_dir: str | os.PathLike) -> int:
    """Remove half-written shard directories left by a killed run; returns how many."""
    n = 0
    for p in Path(out_dir).glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


# --------------------------------------------------------------------------- manifest


def read_manifest(shard_dir: str | os.PathLike) -> dict:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{shard_dir}: no {MANIFEST} (run tools/precompute_tokens.py --out {shard_dir})")
    m = read_json(path, ShardError)
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise ShardError(f"{path}: format {m.get('format')!r} v{m.get('version')} is not {FORMAT} v{VERSION}")
    return m


def new_manifest(*, codebook_size: int, num_image_tokens: int, text_vocab_size: int, bos_id: int, eos_id: int,
                 feature_shapes: dict[str, list[int]], caption_prompt_ids: list[list[int]],
                 hashes: dict[str, str], num_shards: int, **extra) -> dict:
    """The manifest header (everything but the shard list); ``extra`` adds descriptive keys."""
    return {"format": FORMAT, "version": VERSION, "complete": False, "codebook_size": codebook_size,
            "num_image_tokens": num_image_tokens, "code_dtype": code_dtype(codebook_size),
            "text_vocab_size": text_vocab_size, "bos_id": bos_id, "eos_id": eos_id,
            "feature_shapes": {k: list(v) for k, v in feature_shapes.items()},
            "caption_prompt_ids": [list(p) for p in caption_prompt_ids], "hashes": dict(hashes),
            "num_shards": num_shards, **extra}


def with_shards(header: dict, metas: dict[int, dict], complete: bool) -> dict:
    """``header`` plus the shard list (name, count, files) and totals, from the shards' metas."""
    m = dict(header)
    m["complete"] = complete
    m["shards"] = [{"name": metas[i]["name"], "count": metas[i]["count"], "files": metas[i]["files"]}
                   for i in sorted(metas)]
    m["num_samples"] = sum(s["count"] for s in m["shards"])
    bad = [b for i in metas for b in metas[i].get("bad", [])]
    m["bad_inputs"] = {a: sum(1 for b in bad if b["action"] == a) for a in ("skipped", "converted")}
    return m


def write_manifest(shard_dir: str | os.PathLike, manifest: dict) -> None:
    atomic_write_text(Path(shard_dir) / MANIFEST, json.dumps(manifest, indent=1))


def copy_shards(src: str | os.PathLike, out: str | os.PathLike, edit, stamp: dict, desc: str = "shards") -> dict:
    """Copy the shard directory ``src`` to ``out`` with ``edit`` applied to each shard's columns.

    ``edit(columns) -> columns`` gets one shard's columns as ``write_shard`` takes them (numpy
    arrays for codes and features, lists otherwise) and returns what to write; the schema stays
    the source's. Shards are written one by one, each atomically, and the manifest last, with
    ``stamp`` added under its own keys: the copy is only ever complete or absent as a whole.
    Raises ShardError if ``out`` is ``src`` or already holds shards.
    """
    import datasets
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ShardError(f"{out}: the copy must go to a directory other than its source (the source is read "
                         "while the copy is written)")
    if (out / MANIFEST).exists():
        raise ShardError(f"{out} already holds shards; give a new directory")
    man = read_manifest(src)
    shapes = man["feature_shapes"]
    schema = shard_features(man["num_image_tokens"], man["codebook_size"], shapes)
    out.mkdir(parents=True, exist_ok=True)
    metas = []
    for sh in tqdm(man["shards"], desc=desc, unit="shard"):
        table = datasets.Dataset.from_file(str(src / sh["name"] / DATA_FILE)).data.table
        n = table.num_rows
        cols = {}
        for name in schema:
            if name in shapes or name == "codes":
                cols[name] = table.column(name).combine_chunks().values.to_numpy().reshape(n, -1)
            elif name == "face_found":
                cols[name] = table.column(name).combine_chunks().to_numpy(zero_copy_only=False)
            else:
                cols[name] = table.column(name).to_pylist()
        meta = {k: v for k, v in (read_shard_meta(src / sh["name"]) or {}).items()
                if k not in ("files", "count", "name", "index")}
        metas.append(write_shard(out, int(sh["name"].rsplit("-", 1)[1]), edit(cols), schema, meta))
    copy = dict(man, shards=[dict(sh, count=m["count"], files=m["files"]) for sh, m in zip(man["shards"], metas)],
                **stamp)
    write_manifest(out, copy)
    return copy


def check_compatible(manifest: dict, model_cfg, shard_dir: str | os.PathLike,
                     expect_hashes: dict[str, str] | None = None) -> None:
    """Raise ShardError naming ``shard_dir`` and every mismatch between shards and model / caller."""
    problems = []
    if not manifest.get("complete"):
        done = len(manifest.get("shards", []))
        problems.append(f"precompute has not finished ({done} of {manifest.get('num_shards', '?')} shards); "
                        "re-run tools/precompute_tokens.py with the same arguments to resume")
    for key in ("codebook_size", "num_image_tokens", "text_vocab_size", "bos_id", "eos_id"):
        have, want = manifest.get(key), getattr(model_cfg, key)
        if have != want:
            problems.append(f"{key}: shards {have} vs model.{key} {want}")
    sm = getattr(model_cfg, "seq_moe", None)
    image_input = getattr(model_cfg, "mmu_image_features", False)
    if sm is not None and (sm.enabled or image_input):
        shapes = manifest.get("feature_shapes", {})
        used = (set(sm.und_experts) | set(sm.gen_experts)) if sm.enabled else set()
        if image_input:
            used.add("clip")
        for name, dim in (("clip", sm.clip_dim), ("face", sm.face_dim), ("noise", sm.noise_dim)):
            key = sm.feature_key(name)
            if name in used and (key not in shapes or shapes[key][-1] != dim):
                have = shapes[key][-1] if key in shapes else "absent"
                hint = " (precompute with --feature clip.patch_tokens=true)" if key == "clip_patches" and key not in shapes else ""
                problems.append(f"feature {key}: shards width {have} vs model.seq_moe.{name}_dim {dim}{hint}")
    for key, want in (expect_hashes or {}).items():
        have = manifest.get("hashes", {}).get(key)
        if want and have != want:
            problems.append(f"{key} hash: shards {str(have)[:16]}… vs expected {want[:16]}…")
    if problems:
        raise ShardError(f"{Path(shard_dir) / MANIFEST}: shards do not match: " + "; ".join(problems))


REBUILD = ("re-run tools/precompute_tokens.py with the same arguments; it resumes and rewrites only "
           "the shards that are missing or damaged")


def rebuild_hint(manifest: dict | None) -> str:
    """How to rebuild damaged shards: the recorded command when the manifest has one."""
    cmd = (manifest or {}).get("command")
    return f"rebuild: {cmd} (resumes; rewrites only missing or damaged shards)" if cmd else f"rebuild: {REBUILD}"


def file_problems(shard_dir: str | os.PathLike, shard: dict, checksum: bool = False) -> list[str]:
    """What is wrong with one shard's files against its manifest entry: missing, size (always;
    a stat per file), sha256 (with ``checksum``). One message per file, naming it."""
    problems = []
    for fname, info in shard["files"].items():
        p = Path(shard_dir) / shard["name"] / fname
        if not p.is_file():
            problems.append(f"{p}: missing")
            continue
        size, want = p.stat().st_size, info.get("bytes")
        if want is not None and size != want:
            what = "truncated" if size < want else "longer than written"
            problems.append(f"{p}: {size} bytes, the manifest says {want} ({what})")
        elif checksum and file_sha256(p) != info["sha256"]:
            problems.append(f"{p}: sha256 differs from the manifest (corrupted)")
    return problems


def check_files(shard_dir: str | os.PathLike, manifest: dict, checksum: bool = False) -> None:
    """Raise one ShardError line naming the first damaged file, how many more there are, and how
    to rebuild them. Sizes always; sha256 with ``checksum`` (data.verify)."""
    problems = [q for s in manifest.get("shards", []) for q in file_problems(shard_dir, s, checksum)]
    if problems:
        more = f" (and {len(problems) - 1} more damaged file(s))" if len(problems) > 1 else ""
        raise ShardError(f"{problems[0]}{more}; {rebuild_hint(manifest)}")


def verify(shard_dir: str | os.PathLike) -> list[str]:
    """Recompute every file checksum; returns a list of problems (empty = all good)."""
    m = read_manifest(shard_dir)
    return [q for s in m.get("shards", []) for q in file_problems(shard_dir, s, checksum=True)]


# --------------------------------------------------------------------------- reading


def _column(table, name: str):
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # ours have one chunk


class Ragged:
    """Row i of a list<int32> column as a numpy slice (zero-copy over the mmapped file)."""

    def __init__(self, arr):
        self.offsets = arr.offsets.to_numpy()
        self.values = arr.values.to_numpy(zero_copy_only=False)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]


class Ragged2:
    """Row i of a list<list<int32>> column as a list of numpy slices."""

    def __init__(self, arr):
        self.outer = arr.offsets.to_numpy()
        self.inner = Ragged(arr.values)

    def __getitem__(self, i: int) -> list[np.ndarray]:
        return [self.inner[j] for j in range(self.outer[i], self.outer[i + 1])]


class ShardView:
    """Memory-mapped numpy views of one shard (no per-row Arrow → Python conversion)."""

    def __init__(self, path: str | os.PathLike, feature_shapes: dict[str, list[int]]):
        import datasets

        self.path = Path(path)
        file = self.path / DATA_FILE
        if not file.is_file():
            raise ShardError(f"{file}: missing (shard listed in the manifest); rebuild: {REBUILD}")
        try:
            self.dataset = datasets.Dataset.from_file(str(file))  # memory-mapped
            t = self.dataset.data.table
            _column(t, "codes")
        except (OSError, ValueError, KeyError) as e:  # pyarrow's errors name no file
            raise ShardError(f"{file}: unreadable ({type(e).__name__}: {e}); rebuild: {REBUILD}") from None
        self.n = t.num_rows
        codes = _column(t, "codes")
        self.codes = codes.values.to_numpy().reshape(self.n, -1)
        self.caption_ids = Ragged(_column(t, "caption_ids"))
        self.questions = Ragged2(_column(t, "qa_question_ids"))
        self.answers = Ragged2(_column(t, "qa_answer_ids"))
        self.face_found = _column(t, "face_found").to_numpy(zero_copy_only=False)
        self.split = _column(t, "split").to_pylist()
        self.features = {name: _column(t, name).values.to_numpy().reshape(self.n, *shape)
                         for name, shape in feature_shapes.items()}

    def ids(self) -> list[str]:
        return self.dataset.data.table.column("id").to_pylist()

    def __len__(self) -> int:
        return self.n


def codes_and_features(rows: Sequence[tuple[ShardView, int]]):
    """Shard rows ``(view, row)`` → (image codes (n, N) long, features {name: (n, *shape) float32
    for every feature column, 'face_found': (n,) bool}), the model's inputs for those samples
    (used by the training loader, the periodic sampler and evaluation)."""
    import torch

    if not rows:
        raise ValueError("codes_and_features: no rows")
    codes = torch.from_numpy(np.stack([v.codes[r] for v, r in rows]).astype(np.int64))
    feats = {k: torch.from_numpy(np.stack([v.features[k][r] for v, r in rows]).astype(np.float32))
             for k in rows[0][0].features}
    feats["face_found"] = torch.tensor([bool(v.face_found[r]) for v, r in rows], dtype=torch.bool)
    return codes, feats


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("verify", "info"):
        print(__doc__)
        return 0 if argv in (["-h"], ["--help"]) else 2
    cmd, d = argv
    if cmd == "verify":
        problems = verify(d)
        print("\n".join(problems + [rebuild_hint(read_manifest(d))]) if problems
              else f"{d}: all shard checksums match")
        return 1 if problems else 0
    m = read_manifest(d)
    print(json.dumps({k: v for k, v in m.items() if k != "shards"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
