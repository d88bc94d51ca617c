"""Dataset adapters: SynthFace layout, JSON / JSONL / parquet with mapped columns, image decoding."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unif2ace.config import ConfigError
from unif2ace import synthface
from unif2ace.data.sources import (BadInput, Record, SourceConfig, fit_square, load_records, open_image,
                                   texts_for_tokenizer)


def _png(color=(200, 30, 40), size=(24, 24), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _cfg(root, **kw):
    return SourceConfig(root=str(root), cache_dir=str(root / ".hf_cache"), **kw)


def test_synthface_layout_is_the_default(tmp_path):
    synthface.write_dataset(tmp_path, num=12, progress=False)
    meta = [json.loads(x) for x in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    recs = load_records(_cfg(tmp_path))
    assert [r.id for r in recs] == [m["id"] for m in meta]  # file order
    for r, m in zip(recs, meta):
        assert r.split == m["split"] and r.identity == str(m["identity"]) and r.caption == m["caption"]
        assert r.image == str(tmp_path / m["file"]) and r.where == r.image
        assert [(q.question, q.answer, q.category) for q in r.qa] == [(x["q"], x["a"], x["category"]) for x in m["qa"]]
        assert r.attributes == m["attributes"]
        img, notes = open_image(r)
        assert img.mode == "RGB" and img.size == (64, 64) and notes == []
    train = load_records(_cfg(tmp_path), split="train")
    assert train and all(r.split == "train" for r in train)
    assert len(train) == sum(m["split"] == "train" for m in meta)
    texts = list(texts_for_tokenizer(recs))
    assert recs[0].caption in texts and any(recs[0].qa[0].question in t for t in texts)


def test_json_with_mapped_columns_and_image_dir(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.png").write_bytes(_png())
    rows = [{"key": "x", "img": "a/x.png", "text": "a red face", "person": 7, "part": "val",
             "vqa": [{"question": "Colour?", "answer": "red", "cat": "skin"}], "gt": {"skin": "red"}},
            {"key": "y", "img": str(tmp_path / "imgs" / "a" / "x.png"), "text": None, "person": None,
             "part": None, "vqa": [], "gt": None}]
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    cfg = _cfg(tmp_path, metadata=["ann.json"], image_dir="imgs", image_column="img", id_column="key",
               caption_column="text", identity_column="person", split_column="part", qa_column="vqa",
               qa_question_key="question", qa_answer_key="answer", qa_category_key="cat", attributes_column="gt",
               default_split="train")
    x, y = load_records(cfg)
    assert (x.id, x.split, x.identity, x.caption) == ("x", "val", "7", "a red face")
    assert x.image == str(tmp_path / "imgs" / "a" / "x.png")
    assert [(q.question, q.answer, q.category) for q in x.qa] == [("Colour?", "red", "skin")]
    assert x.attributes == {"skin": "red"}
    # Missing values: default split, identity = own id, empty caption, absolute path kept.
    assert (y.split, y.identity, y.caption, y.qa, y.attributes) == ("train", "y", "", [], {})
    assert y.image == str(tmp_path / "imgs" / "a" / "x.png")


def test_parquet_embedded_bytes_and_question_answer_columns(tmp_path):
    table = pa.table({"image": [_png((10, 20, 30)), _png((40, 50, 60), mode="RGB")],
                      "caption": ["one", "two"],
                      "questions": [["q1", "q2"], ["q3"]], "answers": [["a1", "a2"], ["a3"]],
                      "cats": [["c1", "c2"], ["c3"]]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    cfg = _cfg(tmp_path, metadata=["*.parquet"], image_column="image", id_column="", split_column="",
               identity_column="", qa_column="", question_column="questions", answer_column="answers",
               category_column="cats", attributes_column="")
    a, b = load_records(cfg)
    assert (a.id, b.id) == ("0", "1")  # row numbers when there is no id column
    assert isinstance(a.image, bytes) and a.image == table.column("image")[0].as_py()
    assert "part-0.parquet#id=0" in a.where
    assert [(q.question, q.answer, q.category) for q in a.qa] == [("q1", "a1", "c1"), ("q2", "a2", "c2")]
    assert open_image(b)[0].getpixel((0, 0)) == (40, 50, 60)


def test_parquet_with_hf_image_feature_keeps_bytes(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["p"], "image": [Image.new("RGB", (20, 20), (1, 2, 3))], "caption": ["c"]},
                                    features=datasets.Features({"id": datasets.Value("string"),
                                                                "image": datasets.Image(),
                                                                "caption": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    (r,) = load_records(_cfg(tmp_path, metadata=["hf.parquet"], image_column="image", qa_column=""))
    assert isinstance(r.image, bytes)  # not decoded to PIL by datasets
    assert open_image(r)[0].getpixel((5, 5)) == (1, 2, 3)


def test_group_by_id_merges_one_qa_per_row(tmp_path):
    (tmp_path / "f.png").write_bytes(_png())
    lines = [{"id": "s", "file": "f.png", "caption": "", "question": "q1", "answer": "a1"},
             {"id": "t", "file": "f.png", "caption": "other", "question": "q9", "answer": "a9"},
             {"id": "s", "file": "f.png", "caption": "cap", "question": "q2", "answer": "a2"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    kw = dict(metadata=["m.jsonl"], qa_column="", question_column="question", answer_column="answer")
    s, t = load_records(_cfg(tmp_path, group_by_id=True, **kw))
    assert s.id == "s" and s.caption == "cap" and [q.question for q in s.qa] == ["q1", "q2"]
    assert t.id == "t" and len(t.qa) == 1
    with pytest.raises(ValueError, match="duplicate sample id 's'"):
        load_records(_cfg(tmp_path, **kw))


def test_config_and_column_errors(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "file": "x.png", "caption": "c"}) + "\n")
    with pytest.raises(ValueError, match="'qa'"):
        load_records(_cfg(tmp_path, metadata=["m.jsonl"]))  # the default qa column is absent
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        load_records(_cfg(tmp_path, metadata=["nothing.jsonl"]))
    with pytest.raises(ConfigError, match="source.caption_col"):
        SourceConfig.from_dict({"root": str(tmp_path), "caption_col": "x"})
    with pytest.raises(ConfigError, match="source.format"):
        SourceConfig.from_dict({"root": str(tmp_path), "format": "csv"})


def _rec(tmp_path, name, data: bytes | None = None, image=None):
    if data is not None:
        (tmp_path / name).write_bytes(data)
    return Record(name, "train", name, image if image is not None else str(tmp_path / name), "c", [], {}, name)


def _save(im: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_open_image_converts_fixable_modes(tmp_path):
    gray, notes = open_image(_rec(tmp_path, "g.png", _save(Image.new("L", (20, 20), 77))))
    assert gray.mode == "RGB" and gray.getpixel((3, 3)) == (77, 77, 77) and notes == ["L→RGB"]
    cmyk, notes = open_image(_rec(tmp_path, "c.jpg", _save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG")))
    r, g, b = cmyk.getpixel((10, 10))
    assert cmyk.mode == "RGB" and r > 200 and g < 50 and b < 50 and notes == ["CMYK→RGB"]  # cyan-free = red
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out, notes = open_image(_rec(tmp_path, "a.png", _save(rgba)))
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 255)
    assert notes == ["RGBA alpha composited on white"]
    deep = Image.fromarray(np.full((20, 20), 65535 // 2, dtype=np.uint16))
    out, notes = open_image(_rec(tmp_path, "d.png", _save(deep)))
    assert out.mode == "RGB" and out.getpixel((0, 0))[0] == 255 and notes  # rescaled, not clipped garbage
    pal = Image.new("P", (20, 20), 3)
    pal.putpalette([0, 0, 0] * 3 + [9, 8, 7] + [0, 0, 0] * 252)
    out, notes = open_image(_rec(tmp_path, "p.png", _save(pal)))
    assert out.getpixel((1, 1)) == (9, 8, 7) and notes == ["palette→RGB"]


def test_open_image_rejects_broken_inputs(tmp_path):
    good = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(BadInput, match="missing file"):
        open_image(_rec(tmp_path, "absent.png"))
    with pytest.raises(BadInput, match="corrupt"):
        open_image(_rec(tmp_path, "junk.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10))
    with pytest.raises(BadInput, match="corrupt or truncated"):
        open_image(_rec(tmp_path, "cut.png", good[: len(good) // 2]))
    with pytest.raises(BadInput, match="too small: 8x8"):
        open_image(_rec(tmp_path, "tiny.png", _save(Image.new("RGB", (8, 8)))))
    with pytest.raises(BadInput, match="no image"):
        open_image(Record("n", "train", "n", None, "c", [], {}, "n"))
    assert open_image(_rec(tmp_path, "ok.png", good), min_size=64)[0].size == (64, 64)


def test_fit_square_crops_the_centre():
    im = Image.new("RGB", (60, 40), (0, 0, 0))
    im.paste((255, 255, 255), (10, 0, 50, 40))  # the central 40×40 is white, the sides black
    out = fit_square(im, 20)
    assert out.size == (20, 20)
    a = np.asarray(out)
    assert a.min() >= 250


def test_flat_source_reads_json_text_qa_and_refuses_what_it_cannot_express(tmp_path):
    """JSON-text QA lists are parsed, not dropped; caption lists and tables that do not stack
    are refused in one line that points at source specs."""
    (tmp_path / "f.png").write_bytes(_png())
    pq.write_table(pa.table({"id": ["a"], "file": ["f.png"], "caption": ["c"],
                             "qa": [json.dumps([{"q": "Hair?", "a": "Red.", "category": "hair"}])]}),
                   tmp_path / "m.parquet")
    (r,) = load_records(_cfg(tmp_path, metadata=["m.parquet"], attributes_column=""))
    assert [(q.question, q.answer, q.category) for q in r.qa] == [("Hair?", "Red.", "hair")]
    (tmp_path / "l.jsonl").write_text(json.dumps({"id": "b", "file": "f.png", "caption": ["c1", "c2"], "qa": []}))
    with pytest.raises(ValueError, match="holds a list, not one caption; a source spec expands"):
        load_records(_cfg(tmp_path, metadata=["l.jsonl"]))
    (tmp_path / "caps.jsonl").write_text(json.dumps({"id": "c", "file": "f.png", "caption": "x", "qa": []}) + "\n")
    (tmp_path / "vqa.jsonl").write_text(json.dumps({"image": "f.png", "qa": [{"q": 1}], "extra": {"k": [1]}}) + "\n")
    with pytest.raises(ValueError, match="datasets cannot read these json files as one table.*source spec"):
        load_records(_cfg(tmp_path, metadata=["caps.jsonl", "vqa.jsonl"]))
