"""Offline precompute (tools/precompute_tokens.py): shards, bad inputs, resumption, manifest."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unif2ace.config import load_config
from unif2ace.data import shards as S
from unif2ace import synthface
from unif2ace.data.precompute import PrecomputeConfig, overwrite, run
from unif2ace.data.sources import SourceConfig, fit_square, load_records, texts_for_tokenizer
from unif2ace.features import FeatureConfig
from unif2ace.features.noise import NoiseEmbedder
from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2
from unif2ace.tokenizers.text import TextTokenizer, train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["clip.model=UniF2ace-Tiny-CLIP", "clip.fallback=random-init", "clip.batch_size=8",
            "face.mode=aligned", "face.fallback=none", "noise.dim=16", "noise.seed=3"]
BROKEN = ("corrupt", "truncated", "gray", "cmyk", "rgba", "tiny", "missing", "nocaption")
SKIPPED = {"corrupt": "not a readable image", "truncated": "corrupt or truncated", "tiny": "too small",
           "missing": "missing file", "nocaption": "empty caption"}


def _img_bytes(im: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """SynthFace (16 images) + one broken record of every kind, a tiny MAGVIT, a SentencePiece model."""
    root = tmp_path_factory.mktemp("pre")
    data = root / "data"
    synthface.write_dataset(data, num=16, size=32, progress=False)
    meta = [json.loads(x) for x in (data / "metadata.jsonl").read_text().splitlines()]
    src = Image.open(data / meta[0]["file"]).convert("RGB")
    png = _img_bytes(src)
    files = {"corrupt": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "truncated": png[: len(png) // 2],
             "gray": _img_bytes(src.convert("L")), "cmyk": _img_bytes(src.convert("CMYK"), "JPEG"),
             "rgba": _img_bytes(src.convert("RGBA")), "tiny": _img_bytes(src.resize((4, 4))), "nocaption": png}
    (data / "broken").mkdir()
    for kind in BROKEN:
        rel = f"broken/{kind}.{'jpg' if kind == 'cmyk' else 'png'}"
        if kind in files:
            (data / rel).write_bytes(files[kind])
        meta.append({**meta[1], "id": f"bad-{kind}", "split": "train", "file": rel,
                     "caption": "" if kind == "nocaption" else meta[1]["caption"]})
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    torch.manual_seed(0)
    MagvitV2(MagvitConfig.tiny()).save_pretrained(root / "magvit")
    recs = load_records(SourceConfig(root=str(data)))
    train_sentencepiece(texts_for_tokenizer(recs), root / "spm.model", vocab_size=512)
    return {"root": root, "data": data, "meta": meta, "magvit": root / "magvit", "spm": root / "spm.model"}


def _cfg(assets, out, **kw):
    kw.setdefault("shard_size", 8)
    return PrecomputeConfig(out=str(out), image_tokenizer=str(assets["magvit"]), text_tokenizer=str(assets["spm"]),
                            image_size=32, batch_size=4, **kw)


def _features():
    from unif2ace.config import merge, parse_overrides

    return FeatureConfig.from_dict(merge({}, parse_overrides(FEATURES)))


@pytest.fixture(scope="module")
def first_run(assets):
    """The CLI, once, over all 24 records (3 shards); later tests copy its output."""
    from unif2ace.commands import precompute_tokens

    out = assets["root"] / "shards"
    argv = ["--data", str(assets["data"]), "--out", str(out), "--image-tokenizer", str(assets["magvit"]),
            "--text-tokenizer", str(assets["spm"]), "--image-size", "32", "--shard-size", "8", "--batch-size", "4",
            "--no-progress"] + [a for f in FEATURES for a in ("--feature", f)]
    rc = precompute_tokens.main(argv)
    return rc, out


def test_bad_inputs_reported_and_good_ones_written(assets, first_run, capsys):
    rc, out = first_run
    assert rc == 0
    m = S.read_manifest(out)
    assert m["complete"] and m["num_shards"] == 3 and len(m["shards"]) == 3
    n_good = 16 + 3  # gray, CMYK and RGBA are converted and kept
    assert m["num_samples"] == sum(s["count"] for s in m["shards"]) == n_good
    bad = [json.loads(x) for x in (out / S.BAD_INPUTS).read_text().splitlines()]
    skipped = {b["id"].removeprefix("bad-"): b for b in bad if b["action"] == "skipped"}
    assert set(skipped) == set(SKIPPED)
    for kind, why in SKIPPED.items():
        assert why in skipped[kind]["reason"]
        assert skipped[kind]["path"] == str(assets["data"] / "broken" / f"{kind}.png")  # reported by path
    converted = {b["id"].removeprefix("bad-"): b["reason"] for b in bad if b["action"] == "converted"}
    assert {"gray", "cmyk", "rgba"} <= set(converted)
    assert "L→RGB" in converted["gray"] and "CMYK" in converted["cmyk"] and "alpha" in converted["rgba"]
    assert m["bad_inputs"] == {"skipped": 5, "converted": len(converted)}
    assert not list(out.glob(f"{S.TMP_PREFIX}*"))
    assert S.verify(out) == []


def test_shard_contents_match_independent_encoding(assets, first_run):
    _, out = first_run
    m = S.read_manifest(out)
    assert (m["codebook_size"], m["num_image_tokens"], m["code_dtype"]) == (64, 16, "uint16")
    assert m["feature_shapes"] == {"clip": [512], "face": [512], "noise": [16]}
    tok = TextTokenizer.load(assets["spm"])
    assert (m["text_vocab_size"], m["bos_id"], m["eos_id"]) == (512, 1, 2)
    assert m["hashes"]["text_tokenizer"] == tok.config_hash()
    magvit = MagvitV2.from_pretrained(assets["magvit"])
    views = [S.ShardView(out / s["name"], m["feature_shapes"]) for s in m["shards"]]
    ids = [i for v in views for i in v.ids()]
    want = [x["id"] for x in assets["meta"] if x["id"].removeprefix("bad-") not in SKIPPED]
    assert ids == want  # file order, bad ones dropped
    by_id = {x["id"]: x for x in assets["meta"]}
    noise = NoiseEmbedder(16, 3)
    for v in views:
        for r, sid in enumerate(v.ids()):
            rec = by_id[sid]
            img = Image.open(assets["data"] / rec["file"])
            img = img.convert("RGB") if img.mode != "RGBA" else Image.alpha_composite(
                Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
            x = torch.from_numpy(np.array(fit_square(img, 32))).permute(2, 0, 1)[None].float() / 127.5 - 1
            assert v.codes[r].dtype == np.uint16 and (v.codes[r] == magvit.encode(x)[0].numpy()).all(), sid
            assert v.caption_ids[r].tolist() == tok.encode(rec["caption"])
            assert [q.tolist() for q in v.questions[r]] == [tok.encode_question(q["q"]) for q in rec["qa"]]
            assert [a.tolist() for a in v.answers[r]] == [tok.encode_answer(q["a"]) for q in rec["qa"]]
            np.testing.assert_array_equal(v.features["noise"][r], noise.encode([sid])[0].astype(np.float16))
            assert v.features["clip"][r].dtype == np.float16 and np.isfinite(v.features["clip"][r]).all()
            assert not v.face_found[r]  # face fallback 'none' → no face, zero vector
            assert not v.features["face"][r].any()
        table = v.dataset.data.table
        assert table.column("codes").num_chunks == 1  # one record batch: zero-copy reads
        assert json.loads(table.column("attributes")[0].as_py()) == by_id[v.ids()[0]]["attributes"]


def test_resume_redoes_only_the_unfinished_shard(assets, first_run, tmp_path):
    _, first = first_run
    out = tmp_path / "shards"
    shutil.copytree(first, out)
    original = (out / "shard-00001" / S.DATA_FILE).read_bytes()
    # Simulate a run killed while writing shard 1: its directory is only a temp dir, the
    # manifest does not list it and is not complete.
    shutil.rmtree(out / "shard-00001")
    half = out / f"{S.TMP_PREFIX}shard-00001-killed"
    half.mkdir()
    (half / S.DATA_FILE).write_bytes(original[:100])
    m = S.read_manifest(out)
    m["complete"] = False
    m["shards"] = [s for s in m["shards"] if s["name"] != "shard-00001"]
    S.write_manifest(out, m)
    untouched = {p: p.stat().st_mtime_ns for p in out.glob("shard-*/" + S.DATA_FILE)}

    s = run(_cfg(assets, out), SourceConfig(root=str(assets["data"])), _features(), progress=False)
    assert s["complete"] and s["skipped_shards"] == 2 and s["written_shards"] == 1
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched  # finished shards not rewritten
    assert (out / "shard-00001" / S.DATA_FILE).read_bytes() == original  # deterministic redo
    assert not half.exists()
    again = S.read_manifest(out)
    assert again["complete"] and again["shards"] == S.read_manifest(first)["shards"]
    assert len(s["skipped"]) == 5  # the report still lists bad inputs of skipped shards


def test_resume_refuses_shards_of_other_inputs(assets, first_run, tmp_path):
    _, first = first_run
    out = tmp_path / "shards"
    shutil.copytree(first, out)
    other = tmp_path / "other.model"
    recs = load_records(SourceConfig(root=str(assets["data"])))
    train_sentencepiece(texts_for_tokenizer(recs), other, vocab_size=480)
    cfg = _cfg(assets, out)
    cfg.text_tokenizer = str(other)
    with pytest.raises(S.ShardError, match=r"shards.*text_vocab_size.*512.*480"):
        run(cfg, SourceConfig(root=str(assets["data"])), _features(), progress=False)
    overwrite(out)
    s = run(cfg, SourceConfig(root=str(assets["data"])), _features(), progress=False)
    assert s["complete"] and S.read_manifest(out)["text_vocab_size"] == 480


def test_model_mismatch_fails_before_any_work(assets, tmp_path):
    model = load_config("tiny", ["model.codebook_size=128"]).model  # tokenizer has 64 codes
    with pytest.raises(S.ShardError, match="codebook_size: tokenizers give 64, model.codebook_size is 128"):
        run(_cfg(assets, tmp_path / "x"), SourceConfig(root=str(assets["data"])), _features(), progress=False,
            model_cfg=model)
    assert not list((tmp_path / "x").glob("shard-*"))


def test_parallel_workers_write_identical_shards(assets, first_run, tmp_path):
    _, first = first_run
    out = tmp_path / "par"
    s = run(_cfg(assets, out, workers=2, threads=1), SourceConfig(root=str(assets["data"])), _features(),
            progress=False)
    assert s["complete"] and s["written_shards"] == 3
    for i in range(3):
        name = S.shard_name(i)
        assert (out / name / S.DATA_FILE).read_bytes() == (first / name / S.DATA_FILE).read_bytes()


def test_damaged_shard_named_by_loader_and_rewritten_by_resume(assets, first_run, tmp_path):
    """A shard truncated to half (full disk) stops the loader with one line naming the file
    and the recorded rebuild command; re-running precompute rewrites that shard only."""
    from unif2ace.config import DataConfig
    from unif2ace.data.loader import ShardLoader

    _, first = first_run
    out = tmp_path / "shards"
    shutil.copytree(first, out)
    m = S.read_manifest(out)
    assert m["command"].startswith("python tools/precompute_tokens.py --data ")
    target = out / "shard-00002" / S.DATA_FILE
    original = target.read_bytes()
    target.write_bytes(original[: len(original) // 2])
    model = load_config("tiny", ["model.num_image_tokens=16", "model.codebook_size=64"]).model
    with pytest.raises(S.ShardError) as e:
        ShardLoader(DataConfig(shards=str(out), split=""), model, 0, 1, 2)
    assert str(e.value).startswith(f"{target}: {len(original) // 2} bytes, the manifest says {len(original)}")
    assert f"rebuild: {m['command']}" in str(e.value)
    # bit rot of the same size: only the checksum sees it, and resume rewrites it too
    rotten = out / "shard-00000" / S.DATA_FILE
    raw = bytearray(rotten.read_bytes())
    raw[-50] ^= 0xFF
    rotten.write_bytes(bytes(raw))
    untouched = (out / "shard-00001" / S.DATA_FILE).stat().st_mtime_ns
    s = run(_cfg(assets, out), SourceConfig(root=str(assets["data"])), _features(), progress=False)
    assert s["complete"] and s["skipped_shards"] == 1 and s["written_shards"] == 2
    assert (out / "shard-00001" / S.DATA_FILE).stat().st_mtime_ns == untouched
    for name in ("shard-00000", "shard-00002"):
        assert (out / name / S.DATA_FILE).read_bytes() == (first / name / S.DATA_FILE).read_bytes()
    assert S.verify(out) == []
