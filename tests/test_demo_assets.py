"""The committed encoders of the built-in demo (assets/synthface) load through the project's own
paths, fit the synthface recipe, and do their jobs on faces they were not trained on."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "synthface"


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from unif2ace import synthface
    from unif2ace.data.sources import SourceConfig, load_records

    d = tmp_path_factory.mktemp("unseen") / "data"
    synthface.write_dataset(d, num=24, size=64, seed=7, progress=False)  # a seed no encoder saw
    return load_records(SourceConfig(root=str(d)))


def test_text_and_image_tokenizers_fit_the_recipe(faces):
    from PIL import Image

    from unif2ace.config import load_config
    from unif2ace.tokenizers.magvit import MagvitV2
    from unif2ace.tokenizers.text import TextTokenizer

    m = load_config("synthface").model
    tok = TextTokenizer.load(ASSETS / "spm.model")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (m.text_vocab_size, m.bos_id, m.eos_id)
    magvit = MagvitV2.from_pretrained(ASSETS / "magvit").eval()
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(r.image).convert("RGB"), np.float32)).permute(2, 0, 1)
                     for r in faces]) / 127.5 - 1
    with torch.no_grad():
        codes = magvit.encode(x)
        rec = magvit.decode_codes(codes)
    assert codes.shape == (len(faces), m.num_image_tokens) and int(codes.max()) < m.codebook_size
    psnr = 10 * torch.log10(4 / ((rec - x) ** 2).mean())
    assert psnr > 20, f"reconstruction PSNR {psnr:.1f} dB"


def test_clip_gives_patch_tokens_of_the_recipe_width(faces):
    from unif2ace.config import load_config
    from unif2ace.features.clip import ClipEncoder
    from unif2ace.features.config import ClipConfig

    cfg = json.loads((ASSETS / "clip" / "train_config.json").read_text())
    name = cfg["name"]
    enc = ClipEncoder(ClipConfig(model=name, model_configs=[str(ASSETS / "clip" / f"{name}.json")],
                                 weights=str(ASSETS / "clip" / "open_clip_model.safetensors"), patch_tokens=True,
                                 device="cpu"))
    from PIL import Image
    out = enc.encode([Image.open(r.image) for r in faces])
    sm = load_config("synthface").model.seq_moe
    assert out["clip_patches"].shape[1:] == ((64 // cfg["patch_size"]) ** 2, sm.clip_dim)
    # zero-shot attribute accuracy recorded at training time beats chance on held-out faces
    zs = json.loads((ASSETS / "clip" / "metrics.json").read_text())["zero_shot"]["test"]
    chance = np.mean([c["chance"] for c in zs["per_category"].values()])
    assert zs["mean_accuracy"] > chance + 0.1


def test_face_recogniser_separates_people(faces):
    from PIL import Image

    from unif2ace.features.config import FaceConfig
    from unif2ace.features.face import FaceEncoder

    enc = FaceEncoder(FaceConfig(rec_path=str(ASSETS / "face" / "rec.onnx"), mode="aligned", threads=1))
    emb, found = enc.encode([Image.open(r.image) for r in faces])
    assert found.all() and emb.shape == (len(faces), 512)
    ident = np.array([r.identity for r in faces])
    sim = emb @ emb.T
    same = ident[:, None] == ident[None, :]
    off = ~np.eye(len(faces), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.3


def test_committed_judge_reads_unseen_faces(faces):
    """The evaluation's judge (assets/synthface/classifier) reads faces of a seed it never saw about
    as well as its recorded test accuracy says, far above chance."""
    from PIL import Image

    from unif2ace.eval.attribute_classifier import AttributeClassifier

    clf = AttributeClassifier.load(ASSETS / "classifier")
    pred = clf.predict([Image.open(r.image).convert("RGB") for r in faces])
    hits = [p[c] == r.attributes[c] for p, r in zip(pred, faces) for c in clf.categories if c in r.attributes]
    chance = np.mean([1 / len(v) for v in clf.categories.values()])
    recorded = json.loads((ASSETS / "classifier" / "test_metrics.json").read_text())["test"]["mean_accuracy"]
    assert len(hits) > 20 * len(faces) and np.mean(hits) > max(chance + 0.3, recorded - 0.1), (np.mean(hits), recorded)


def test_committed_image_codes_keep_what_the_judge_reads(faces, tmp_path):
    """Faces of an unseen seed decoded from the committed tokenizer's own codes keep most of what the
    judge reads on the real faces; a random tokenizer of the same shape keeps far less."""
    from unif2ace.eval.codes import judge_codes
    from unif2ace.tokenizers.magvit import MagvitV2

    data = Path(faces[0].image).parents[2]  # data/images/<split>/<file>
    torch.manual_seed(0)
    MagvitV2(MagvitV2.from_pretrained(ASSETS / "magvit").config).save_pretrained(tmp_path / "random")
    # every split of seed 7 is unseen; "train" holds the most faces (16 of 24)
    r = judge_codes(data, ASSETS / "classifier", [ASSETS / "magvit", tmp_path / "random"], split="train")
    real, (ours, rand) = r["real"]["mean_accuracy"], [t["mean_accuracy"] for t in r["tokenizers"]]
    assert r["num_faces"] == 16
    assert ours > real - 0.15 and ours > rand + 0.15, (real, ours, rand)
