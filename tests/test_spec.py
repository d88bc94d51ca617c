"""Declarative source specs: every example spec in specs/ read from small files written here
(a tar shard, parquet with JSON-text QA, split files, LLaVA conversations, a JSON object of
caption lists), joins, splits and leakage, and the problems a broken source reports."""
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unif2ace import synthface
from unif2ace.data.sources import SourceConfig, load_records, open_image
from unif2ace.data.archive import ArchiveMember
from unif2ace.data.spec import SpecError, load_spec, load_spec_records, read_source, spec_from_dict

SPECS = Path(__file__).resolve().parents[1] / "specs"


def _png(color, size=(24, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _spec(tmp_path, name, **edit):
    """The shipped example, copied next to the files the test wrote (root: . = that folder)."""
    dst = tmp_path / name
    shutil.copy(SPECS / name, dst)
    if edit:
        import yaml
        data = yaml.safe_load(dst.read_text())
        data.update(edit)
        dst.write_text(yaml.safe_dump(data))
    return load_spec(dst)


def _by_id(records):
    return {r.id: r for r in records}


def test_synthface_spec_reads_what_the_flat_source_reads(tmp_path):
    synthface.write_dataset(tmp_path, num=10, size=32, progress=False)
    result = read_source(_spec(tmp_path, "synthface.yaml"))
    assert not result.errors, result.problems
    flat = load_records(SourceConfig(root=str(tmp_path), cache_dir=str(tmp_path / ".c")))
    assert [(r.id, r.split, r.identity, r.image, r.caption, r.qa, r.attributes) for r in result.records] == \
        [(r.id, r.split, r.identity, r.image, r.caption, r.qa, r.attributes) for r in flat]


def _unif2aced_files(root: Path, leak=False):
    """Images: three in a tar shard, one in a folder. Captions split by file; VQA in parquet
    with the QA list stored as JSON text, keyed by bare stems."""
    (root / "images").mkdir()
    with tarfile.open(root / "images" / "part-000.tar", "w") as t:
        for i, name in enumerate(["ffhq_001.png", "ffhq_002.png", "celebv_003.png"]):
            data = _png((10 * i, 20, 30))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    (root / "images" / "mm_004.png").write_bytes(_png((200, 100, 0)))
    (root / "captions").mkdir()
    train = [{"image": "ffhq/ffhq_001.png", "caption": "A young woman with wavy hair.", "identity": "p1"},
             {"image": "ffhq/ffhq_002.png", "caption": "An old man with a beard.", "identity": "p2"},
             {"image": "mm/mm_004.png", "caption": "A smiling woman.", "identity": "p4"}]
    test = [{"image": "celebv/celebv_003.png", "caption": "A man in glasses.", "identity": "p1" if leak else "p3"}]
    (root / "captions" / "train.json").write_text(json.dumps(train))
    (root / "captions" / "test.json").write_text(json.dumps(test))
    (root / "vqa").mkdir()
    qa = {"ffhq_001": [{"question": "Hair?", "answer": "Wavy.", "category": "hair"},
                       {"question": "Age?", "answer": "Young.", "category": "age"}],
          "celebv_003": [{"question": "Glasses?", "answer": "Yes.", "category": "accessory"}]}
    pq.write_table(pa.table({"image": list(qa), "qa": [json.dumps(v) for v in qa.values()]}),
                   root / "vqa" / "part-0.parquet")


def test_unif2aced_style_joins_captions_vqa_and_tar_images(tmp_path):
    _unif2aced_files(tmp_path)
    result = read_source(_spec(tmp_path, "unif2aced-1m.yaml"))
    assert not result.errors, [str(p) for p in result.problems]
    recs = _by_id(result.records)
    assert set(recs) == {"ffhq_001", "ffhq_002", "celebv_003", "mm_004"}
    a = recs["ffhq_001"]
    assert (a.split, a.identity, a.caption) == ("train", "p1", "A young woman with wavy hair.")
    assert [(q.question, q.answer, q.category) for q in a.qa] == [("Hair?", "Wavy.", "hair"), ("Age?", "Young.", "age")]
    c = recs["celebv_003"]
    assert c.split == "test" and [q.answer for q in c.qa] == ["Yes."]  # VQA row joined, split from its file
    assert recs["ffhq_002"].qa == []
    # tar members are read in place; the folder image is a path
    assert isinstance(a.image, ArchiveMember) and a.image.name == "ffhq_001.png"
    assert open_image(a)[0].getpixel((0, 0)) == (0, 20, 30)
    assert open_image(c)[0].getpixel((0, 0)) == (20, 20, 30)
    assert recs["mm_004"].image == str(tmp_path / "images" / "mm_004.png")
    assert result.splits()["test"] == {"samples": 1, "images": 1, "identities": 1, "qa_pairs": 1}
    assert [r.id for r in load_spec_records(_spec(tmp_path, "unif2aced-1m.yaml"), split="test")] == ["celebv_003"]


def test_identity_in_two_splits_is_refused_unless_allowed(tmp_path):
    _unif2aced_files(tmp_path, leak=True)
    spec = _spec(tmp_path, "unif2aced-1m.yaml")
    errs = [str(p) for p in read_source(spec).errors]
    assert len(errs) == 1 and "identity 'p1' is in splits test (1, e.g. celebv_003), train (1, e.g. ffhq_001)" in errs[0]
    with pytest.raises(SpecError, match="(?s)1 error.*identity 'p1'"):
        load_spec_records(spec)
    allowed = _spec(tmp_path, "unif2aced-1m.yaml", allow_split_overlap=True)
    res = read_source(allowed)
    assert not res.errors and any("identity 'p1'" in str(p) for p in res.problems)


def test_llava_conversations_become_qa_turns_without_image_markers(tmp_path):
    (tmp_path / "images").mkdir()
    for n in ("a.jpg", "b.jpg"):
        Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "images" / n)
    train = [{"id": "1", "image": "a.jpg", "identity": "x", "conversations": [
                {"from": "human", "value": "<image>\nWhat is the hair colour?"}, {"from": "gpt", "value": "Black."},
                {"from": "human", "value": "Is the person smiling?"}, {"from": "gpt", "value": "Yes."}]},
             {"id": "2", "image": "a.jpg", "identity": "x", "conversations": [
                 {"from": "human", "value": "Describe the eyes.\n<image>"}, {"from": "gpt", "value": "Brown, narrow."}]}]
    test = [{"id": "3", "image": "b.jpg", "identity": "y", "conversations": [
        {"from": "human", "value": "<image>\nAge?"}, {"from": "gpt", "value": "About 30."},
        {"from": "human", "value": "Gender?"}]}]  # a last question without an answer
    (tmp_path / "llava_train.json").write_text(json.dumps(train))
    (tmp_path / "llava_test.json").write_text(json.dumps(test))
    result = read_source(_spec(tmp_path, "llava-conversations.yaml"))
    assert not result.errors
    a, b = result.records
    assert (a.id, a.split, b.id, b.split) == ("a", "train", "b", "test")
    assert [(q.question, q.answer) for q in a.qa] == [("What is the hair colour?", "Black."),
                                                      ("Is the person smiling?", "Yes."),
                                                      ("Describe the eyes.", "Brown, narrow.")]
    assert all("<image>" not in q.question and q.question != q.answer for q in a.qa + b.qa)
    assert [str(p) for p in result.problems] == [f"warning: {tmp_path / 'llava_test.json'}:1: last question has no answer"]


def test_celeba_hq_caption_lists_are_expanded(tmp_path):
    (tmp_path / "CelebA-HQ-img").mkdir()
    for n in ("0.jpg", "1.jpg", "2.jpg"):
        Image.new("RGB", (20, 20), (5, 5, 5)).save(tmp_path / "CelebA-HQ-img" / n)
    caps = {"0.jpg": ["She has blond hair.", "The woman is young.", "She wears earrings."],
            "1.jpg": ["He has a beard."], "2.jpg": ["A smiling face.", "Arched eyebrows."]}
    (tmp_path / "captions.json").write_text(json.dumps(caps))
    ids = [{"image": "0.jpg", "celeb_id": 10, "split": "train"}, {"image": "1.jpg", "celeb_id": 11, "split": "train"},
           {"image": "2.jpg", "celeb_id": 12, "split": "test"}]
    (tmp_path / "identities.jsonl").write_text("\n".join(json.dumps(x) for x in ids))
    result = read_source(_spec(tmp_path, "celeba-hq-multicaption.yaml"))
    assert not result.errors, result.problems
    recs = _by_id(result.records)
    assert set(recs) == {"0#0", "0#1", "0#2", "1", "2#0", "2#1"}
    assert [recs[f"0#{i}"].caption for i in range(3)] == caps["0.jpg"]  # not "['She has …', …]"
    assert {recs[f"2#{i}"].split for i in range(2)} == {"test"} and recs["2#1"].identity == "12"
    assert recs["0#1"].image == recs["0#0"].image == str(tmp_path / "CelebA-HQ-img" / "0.jpg")
    assert result.splits()["train"]["images"] == 2 and result.splits()["train"]["samples"] == 4
    first = read_source(_spec(tmp_path, "celeba-hq-multicaption.yaml", captions="first")).records
    assert [r.caption for r in first] == ["She has blond hair.", "He has a beard.", "A smiling face."]


def _break(root: Path) -> None:
    """A caption file that is not JSON, a VQA row whose JSON text is cut, a missing image, an
    empty caption, duplicate keys."""
    (root / "captions" / "test.json").write_text('[{"image": "celebv_003.png", "caption": ')
    pq.write_table(pa.table({"image": ["ffhq_002"], "qa": ['[{"question": "Hair?", "answer": "Gr']}),
                   root / "vqa" / "part-1.parquet")
    train = json.loads((root / "captions" / "train.json").read_text())
    train += [{"image": "ghost_009.png", "caption": "Nobody.", "identity": "p9"},
              {"image": "ffhq_002.png", "caption": "Again.", "identity": "p2"},
              {"image": "mm/mm_004.png", "caption": "", "identity": "p4"}]
    train[2]["caption"] = ""
    (root / "captions" / "train.json").write_text(json.dumps(train))


def test_broken_source_reports_every_problem_in_one_line_each(tmp_path):
    _unif2aced_files(tmp_path)
    _break(tmp_path)
    result = read_source(_spec(tmp_path, "unif2aced-1m.yaml"))
    lines = [str(p) for p in result.problems]
    assert all("\n" not in x and "Traceback" not in x for x in lines)
    train_f, test_f = tmp_path / "captions" / "train.json", tmp_path / "captions" / "test.json"
    expect = [f"error: {test_f}", "cannot be read as json",
              f"error: {tmp_path / 'vqa' / 'part-1.parquet'}:1: qa is text that starts like JSON but does not parse",
              f"error: {train_f}:5: duplicate key 'ffhq_002' (first at {train_f}:2)",
              f"error: {train_f}:6: duplicate key 'mm_004'",
              f"warning: {train_f}:4: missing image: 'ghost_009.png'"]
    # the VQA row of the image whose caption file is unreadable has no split: not silently train
    expect.append(f"error: {tmp_path / 'vqa' / 'part-0.parquet'}: 1 key(s) have a split in no table (e.g. 'celebv_003')")
    for e in expect:
        assert any(e in x for x in lines), (e, lines)
    assert len(result.errors) == 5


def test_spec_errors_name_the_file_and_key(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("tables:\n  - files: x.json\n    fields: {caption_text: c}\n")
    with pytest.raises(SpecError, match=r"s.yaml: unknown key spec.tables\[0\].fields.caption_text"):
        load_spec(p)
    p.write_text("tables:\n  - files: nothing/*.json\n    fields: {key: image}\n")
    with pytest.raises(SpecError, match="nothing/\\*.json matches no file"):
        read_source(load_spec(p))
    with pytest.raises(SpecError, match=r"tables\[0\] needs fields.key or fields.image"):
        spec_from_dict({"tables": [{"files": "x.json", "fields": {"caption": "c"}}]})
    with pytest.raises(SpecError, match="'tables' must be a non-empty list"):
        spec_from_dict({"root": "."})


def test_inspect_tool_reports_a_broken_source(tmp_path):
    import subprocess
    import sys

    tool = [sys.executable, str(SPECS.parent / "tools" / "inspect_source.py")]
    _unif2aced_files(tmp_path)
    spec = _spec(tmp_path, "unif2aced-1m.yaml").path
    ok = subprocess.run(tool + [spec, "--decode", "10"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "train: 3 samples, 3 images, 3 identities, 2 QA pairs" in ok.stdout
    assert "test: 1 samples, 1 images, 1 identities, 1 QA pairs" in ok.stdout
    assert "T2I prompt: A young woman with wavy hair." in ok.stdout
    assert "MMU turn:   USER: Hair? ASSISTANT: Wavy." in ok.stdout
    assert "problems: 0 error(s), 0 warning(s)" in ok.stdout
    _break(tmp_path)
    bad = subprocess.run(tool + [spec], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stdout + bad.stderr
    assert "problems: 5 error(s), 2 warning(s)" in bad.stdout
    assert f"error: {tmp_path / 'captions' / 'test.json'}: cannot be read as json" in bad.stdout
    assert "NOT ok" in bad.stdout
    missing = subprocess.run(tool + [str(tmp_path / "absent.yaml")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stdout.startswith("error: ") and "Traceback" not in missing.stderr


def test_webdataset_table_and_video_frames_with_derived_identity(tmp_path):
    """A webdataset shard (png + json per sample) read through datasets' loader, images kept
    in place; CelebV-HQ-style clips whose image is a frame of a video and whose identity is
    the video id inside the clip key."""
    import cv2
    import numpy as np
    import yaml

    with tarfile.open(tmp_path / "shard-0.tar", "w") as t:
        for key, colour in (("vid7_clip1", (90, 0, 0)), ("vid7_clip2", (0, 90, 0)), ("vid8_clip1", (0, 0, 90))):
            for name, data in ((f"{key}.png", _png(colour)),
                               (f"{key}.json", json.dumps({"caption": f"face {key}", "qa": [["Q?", "A."]]}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    w = cv2.VideoWriter(str(tmp_path / "vid9.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    for i in range(4):
        w.write(np.full((32, 32, 3), 60 * i, np.uint8))
    w.release()
    (tmp_path / "clips.jsonl").write_text(json.dumps({"clip": "vid9_clip1", "video": "vid9.avi", "frame": 2,
                                                      "caption": "a frame"}) + "\n")
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({"tables": [
        {"files": {"train": "shard-0.tar"}, "fields": {"key": "__key__", "image": "png", "caption": "json.caption",
                                                      "qa": "json.qa"}, "identity_regex": "^(vid\\d+)_"},
        {"files": {"test": "clips.jsonl"}, "fields": {"key": "clip", "video": "video", "frame": "frame",
                                                      "caption": "caption"}, "identity_regex": "^(vid\\d+)_"}]}))
    result = read_source(load_spec(spec_file))
    assert not result.errors, [str(p) for p in result.problems]
    recs = _by_id(result.records)
    assert [recs[k].identity for k in ("vid7_clip1", "vid7_clip2", "vid8_clip1", "vid9_clip1")] == \
        ["vid7", "vid7", "vid8", "vid9"]
    r = recs["vid7_clip2"]
    assert isinstance(r.image, ArchiveMember) and r.caption == "face vid7_clip2"
    assert [(q.question, q.answer) for q in r.qa] == [("Q?", "A.")]
    assert open_image(r)[0].getpixel((3, 3)) == (0, 90, 0)
    frame, _ = open_image(recs["vid9_clip1"])
    assert frame.size == (32, 32) and abs(frame.getpixel((16, 16))[0] - 120) < 12  # frame 2 of 0, 60, 120, 180
