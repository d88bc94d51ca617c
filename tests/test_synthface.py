"""SynthFace: layout, determinism, identity splits, captions, QA, visibility of attributes."""
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unif2ace import synthface as sf

# A hand-written face with every presence-type attribute absent.
BASE = dict(hair_colour="brown", hair_length="short", hair_type="straight", bangs="no", bald="no",
            beard="none", moustache="no", five_o_clock_shadow="no", sideburns="no", glasses="none",
            hat="none", earrings="no", necklace="no", mask="none", skin_tone="fair", freckles="no",
            wrinkles="no", rosy_cheeks="no", lipstick="none", face_shape="oval", eye_colour="brown",
            eyebrow_shape="straight", expression="neutral")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sf")
    sf.write_dataset(out, num=160, size=64, seed=3, workers=1, per_identity=4, val_frac=0.2,
                     test_frac=0.2, progress=False)
    return out


def records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_taxonomy_mirrors_paper_groups():
    names = [c.name for c in sf.CATEGORIES]
    assert len(names) >= 20 and len(set(names)) == len(names)
    assert {"hair_colour", "hair_length", "hair_type", "bangs", "bald", "beard", "moustache",
            "five_o_clock_shadow", "sideburns", "glasses", "hat", "earrings", "mask", "skin_tone",
            "freckles", "wrinkles", "lipstick", "face_shape", "eye_colour", "eyebrow_shape",
            "expression"} <= set(names)
    assert set(sf.TAXONOMY["expression"].values) == {"neutral", "smile", "laugh", "surprised"}
    assert {"face_shape", "skin_tone", "eye_colour", "hair_colour", "eyebrow_shape"} <= set(sf.IDENTITY_CATEGORIES)
    assert sf.chance_level("glasses") == 0.25 and sf.chance_level("bangs") == 0.5


def test_layout_and_records(dataset):
    recs = records(dataset)
    assert len(recs) == 160 and [r["id"] for r in recs] == sorted(r["id"] for r in recs)
    tax = json.loads((dataset / "attributes.json").read_text())
    cats = {c["name"]: c for c in tax["categories"]}
    assert set(cats) == set(sf.TAXONOMY) and cats["skin_tone"]["identity_fixed"] is True
    for r in recs:
        assert set(r) == {"id", "split", "identity", "file", "caption", "qa", "attributes"}
        assert r["file"] == f"images/{r['split']}/{r['id']}.png"
        with Image.open(dataset / r["file"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        assert set(r["attributes"]) == set(cats)
        assert all(v in cats[c]["values"] for c, v in r["attributes"].items())
    assert not [p for p in dataset.rglob("*") if "tmp" in p.name]  # atomic writes left nothing behind
    n_png = len(list(dataset.glob("images/*/*.png")))
    assert n_png == 160


def test_same_seed_byte_identical_any_worker_count(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sf.write_dataset(a, num=24, seed=7, workers=1, progress=False)
    sf.write_dataset(b, num=24, seed=7, workers=2, progress=False)
    sf.write_dataset(c, num=24, seed=8, workers=1, progress=False)
    ta, tb, tc = tree(a), tree(b), tree(c)
    assert ta == tb
    assert ta["metadata.jsonl"] != tc["metadata.jsonl"]
    assert sum(ta[k] != tc.get(k) for k in ta if k.endswith(".png")) > 0


def test_splits_are_by_identity(dataset):
    recs = records(dataset)
    split_of_id = defaultdict(set)
    for r in recs:
        split_of_id[r["identity"]].add(r["split"])
    assert all(len(s) == 1 for s in split_of_id.values())  # one split per identity
    by_split = defaultdict(set)
    for ident, s in split_of_id.items():
        by_split[s.pop()].add(ident)
    assert set(by_split) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    # the split rule on many identities follows the requested fractions
    counts = Counter(sf.split_of(0, i, 0.1, 0.1) for i in range(4000))
    assert 0.08 < counts["test"] / 4000 < 0.12 and 0.08 < counts["val"] / 4000 < 0.12


def test_identity_keeps_identity_attributes(dataset):
    by_id = defaultdict(list)
    for r in records(dataset):
        by_id[r["identity"]].append(r["attributes"])
    assert len(by_id) == 40 and all(len(v) == 4 for v in by_id.values())
    varied = 0
    for attrs in by_id.values():
        for c in sf.IDENTITY_CATEGORIES:
            assert len({a[c] for a in attrs}) == 1, c
        varied += any(len({a[c.name] for a in attrs}) > 1 for c in sf.CATEGORIES if not c.identity_fixed)
    assert varied == len(by_id)  # every identity shows up with different expression/accessories
    # identities differ from each other
    assert len({tuple(v[0][c] for c in sf.IDENTITY_CATEGORIES) for v in by_id.values()}) > 30


def test_every_value_reachable():
    seen = defaultdict(set)
    for i in range(3000):
        for c, v in sf.sample_face(1, i).attributes.items():
            seen[c].add(v)
    for c in sf.CATEGORIES:
        assert seen[c.name] == set(c.values), c.name


def test_captions_dense_varied_and_parseable():
    n_found, openers, first_cat, captions = [], set(), Counter(), set()
    mentioned_values = set()
    for i in range(400):
        attrs = sf.sample_face(2, i).attributes
        cap, mentioned = sf.make_caption(attrs, np.random.default_rng(i))
        found = sf.attributes_in_text(cap)
        # precision: nothing parsed that contradicts the ground truth
        assert all(attrs[c] == v for c, v in found.items()), (cap, found)
        # recall of our own captions is complete
        assert all(found.get(c) == v for c, v in mentioned.items()), (cap, mentioned, found)
        assert all(c not in found for c in sf.hidden_categories(attrs)), cap
        n_found.append(len(found))
        openers.add(" ".join(cap.split()[:3]))
        first = min(found, key=lambda c: min((cap.lower().find(w) for w in _words(c, found[c])
                                              if w in cap.lower()), default=10**6))
        first_cat[first] += 1
        captions.add(cap)
        mentioned_values |= set(found.items())
    assert np.mean(n_found) >= 15, np.mean(n_found)
    assert len(captions) == 400 and len(openers) >= 5 and len(first_cat) >= 8
    every = {(c.name, v) for c in sf.CATEGORIES for v in c.values}
    # never mentioned by design: bald people's hair length/type ("none"), and "not bald"
    never = {("hair_length", "none"), ("hair_type", "none"), ("bald", "no")}
    assert every - never <= mentioned_values, (every - never) - mentioned_values


def _words(cat: str, value: str) -> list[str]:
    if cat in sf.PHRASES:
        return list(sf.PHRASES[cat].get(value, ()))
    for _, cats in sf.NOUN_GROUPS.values():
        if cat in cats:
            return list(cats[cat][value])
    return []


def test_attributes_in_text_on_handwritten_text():
    text = ("A portrait of someone with long, wavy blonde hair and green eyes. They wear no glasses "
            "and a knitted beanie. Their skin is dark and their face is heart-shaped. "
            "The person is clean-shaven and smiling, with no earrings.")
    assert sf.attributes_in_text(text) == {
        "hair_length": "long", "hair_type": "wavy", "hair_colour": "blonde", "eye_colour": "green",
        "glasses": "none", "hat": "beanie", "skin_tone": "dark", "face_shape": "heart",
        "beard": "none", "moustache": "no", "five_o_clock_shadow": "no", "expression": "smile",
        "earrings": "no"}
    # colour words bind to their own noun; sunglasses are not "no glasses"
    assert sf.attributes_in_text("brown eyes, black hair, tan skin and sunglasses") == {
        "eye_colour": "brown", "hair_colour": "black", "skin_tone": "tan", "glasses": "sunglasses"}
    assert sf.attributes_in_text("A photo of a dog on grass.") == {}


def test_qa_pairs():
    for i in range(300):
        attrs = sf.sample_face(4, i).attributes
        qa = sf.make_qa(attrs, np.random.default_rng(i))
        assert len(qa) >= 8
        kinds = Counter(q["kind"] for q in qa)
        assert kinds["open"] >= 3 and kinds["yesno"] >= 3
        hidden = sf.hidden_categories(attrs)
        for q in qa:
            assert set(q) == {"q", "a", "category", "kind"} and q["category"] not in hidden
            if q["kind"] == "open":
                assert q["a"] == attrs[q["category"]]
            else:
                assert q["a"] in ("yes", "no")
            if q["q"] == "Is the person bald?":
                assert q["a"] == attrs["bald"]
            if q["q"] == "Is the person wearing glasses?":
                assert q["a"] == ("no" if attrs["glasses"] == "none" else "yes")
            if q["q"] == "What colour is the person's hair?":
                assert q["a"] == attrs["hair_colour"]
    yes = sum(q["a"] == "yes" for i in range(200)
              for q in sf.make_qa(sf.sample_face(5, i).attributes, np.random.default_rng(i)) if q["kind"] == "yesno")
    no = sum(q["a"] == "no" for i in range(200)
             for q in sf.make_qa(sf.sample_face(5, i).attributes, np.random.default_rng(i)) if q["kind"] == "yesno")
    assert 0.25 < yes / (yes + no) < 0.75  # not answerable by always saying one word


def test_answer_from_attributes_reads_make_qa_backwards():
    asked = set()
    for i in range(300):
        attrs = sf.sample_face(6, i).attributes
        for q in sf.make_qa(attrs, np.random.default_rng(i)):
            assert sf.answer_from_attributes(q["q"], attrs) == q["a"]
            asked.add(q["q"])
            # another value of the asked category changes an open answer
            other = next(v for v in sf.TAXONOMY[q["category"]].values if v != attrs[q["category"]])
            if q["kind"] == "open":
                assert sf.answer_from_attributes(q["q"], {**attrs, q["category"]: other}) == other
    assert len(asked) > 60  # most of the question bank was exercised
    assert sf.answer_from_attributes("Is the person wearing a fedora?", dict(BASE, hat="fedora")) == "yes"
    assert sf.answer_from_attributes("Is the person wearing a fedora?", dict(BASE, hat="cap")) == "no"
    assert sf.answer_from_attributes("Is the person wearing a hat?", dict(BASE, hat="none")) == "no"
    assert sf.is_synthface_question("Is the person wearing a hat?")
    assert not sf.is_synthface_question("What is the meaning of life?")
    with pytest.raises(KeyError, match="not a SynthFace question"):
        sf.answer_from_attributes("What is the meaning of life?", BASE)


def _variant(cat: str, value: str) -> dict:
    a = dict(BASE, **{cat: value})
    if (cat == "bald" and value == "yes") or (cat in ("hair_length", "hair_type") and value == "none"):
        a.update(bald="yes", hair_length="none", hair_type="none")
    return a


def test_every_attribute_value_is_visible():
    """Each value, changed alone from a fixed face, changes many pixels at 64×64, and any two
    values of one category render differently."""
    geo = sf.sample_geometry(np.random.default_rng(5))

    def render(a):
        return np.asarray(sf.render_face(a, 64, np.random.default_rng(1), geo)).astype(int)

    base = render(BASE)
    assert np.array_equal(base, render(BASE))  # same inputs → same pixels
    for c in sf.CATEGORIES:
        imgs = {v: render(_variant(c.name, v)) for v in c.values}
        for i, v in enumerate(c.values):
            for w in c.values[i + 1:]:
                changed = (np.abs(imgs[v] - imgs[w]).max(-1) > 30).sum()
                assert changed >= 15, (c.name, v, w, changed)


@pytest.mark.parametrize("cat,value,rows", [
    ("glasses", "round", (0.35, 0.7)), ("lipstick", "red", (0.6, 0.85)), ("hat", "beanie", (0.0, 0.45)),
    ("necklace", "yes", (0.75, 1.0)), ("eye_colour", "blue", (0.4, 0.6)), ("hair_colour", "red", (0.1, 0.6)),
])
def test_attribute_changes_only_its_region(cat, value, rows):
    geo = sf.sample_geometry(np.random.default_rng(9))
    a = np.asarray(sf.render_face(BASE, 64, np.random.default_rng(2), geo)).astype(int)
    b = np.asarray(sf.render_face(_variant(cat, value), 64, np.random.default_rng(2), geo)).astype(int)
    ys = np.nonzero(np.abs(a - b).max(-1) > 0)[0]
    assert len(ys) > 0 and rows[0] * 64 <= ys.min() and ys.max() < rows[1] * 64, (ys.min(), ys.max())


def test_render_sizes_and_errors():
    face = sf.sample_face(0, 11)
    for size in (64, 128):
        im = sf.render_face(face.attributes, size, np.random.default_rng(face.render_seed), face.geometry)
        assert im.size == (size, size) and im.mode == "RGB"
    with pytest.raises(ValueError, match="glasses"):
        sf.render_face(dict(BASE, glasses="monocle"))
    with pytest.raises(ValueError, match="hat"):
        sf.render_face({k: v for k, v in BASE.items() if k != "hat"})
