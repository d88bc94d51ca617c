"""Cached-feature encoders with weights the tests make themselves.

    pytest tests/test_features.py -q

CLIP: a tiny open_clip config registered with add_model_config, random weights saved to a
local safetensors file and loaded back. Face: a SCRFD-shaped detector and an ArcFace-shaped
recogniser defined in torch and exported to ONNX here. The detector's box and keypoint heads
have zero weights and set biases, so its output is controlled: the 'gated' one detects, on
every stride-32 cell that is not black, a fixed-size box with 5 template keypoints (score
sigmoid(1000·(cell mean + 0.9)), exactly 1.0 or 0.0 in float32); the 'never' one detects nothing. Real photos come from
skimage (astronaut, LFW crops).
"""
from __future__ import annotations

import json
import logging
import shutil

import cv2
import insightface
import numpy as np
import open_clip
import pytest
import skimage.data
import torch
import torch.nn as nn
import torch.nn.functional as F
from insightface.utils import face_align
from PIL import Image

from unif2ace.config import ConfigError
from unif2ace.features import FeatureConfig, build_encoders
from unif2ace.features.noise import NoiseEmbedder


TEST_CLIP = "Test-Tiny-CLIP"
TEST_CLIP_CFG = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 500, "width": 32, "heads": 2, "layers": 1},
}
DET_SIZE = 128
HALF = 40.0  # half side of every detected box, in detector-input pixels
# Keypoints: insightface's ArcFace template, centred on the box centre and scaled to the box.
KPS_OFFSETS = (face_align.arcface_dst - 56.0) * (2 * HALF / 112.0)  # (5, 2)


# --------------------------------------------------------------------------- test models


class TinySCRFD(nn.Module):
    """SCRFD output layout: 9 outputs = scores, boxes, keypoints for strides 8/16/32, 2 anchors per cell,
    rows ordered (y, x, anchor). Distances are in stride units, as insightface multiplies by the stride.
    Score = sigmoid(1000·(cell mean + gate)) at stride 32, 0 at strides 8 and 16."""

    strides = (8, 16, 32)
    anchors = 2

    def __init__(self, gate: float):
        super().__init__()
        self.score = nn.ModuleList()
        self.box = nn.ModuleList()
        self.kps = nn.ModuleList()
        for s in self.strides:
            a = self.anchors
            sc, bx, kp = nn.Conv2d(1, a, 1), nn.Conv2d(1, 4 * a, 1), nn.Conv2d(1, 10 * a, 1)
            with torch.no_grad():
                sc.weight.fill_(1000.0)
                sc.bias.fill_(1000.0 * (gate if s == 32 else -2.0))  # only stride 32 ever fires
                for conv, values in ((bx, np.full(4, HALF)), (kp, KPS_OFFSETS.reshape(-1))):
                    conv.weight.zero_()
                    conv.bias.copy_(torch.tensor(np.tile(values / s, self.anchors), dtype=torch.float32))
            self.score.append(sc)
            self.box.append(bx)
            self.kps.append(kp)

    @staticmethod
    def rows(t: torch.Tensor, c: int) -> torch.Tensor:
        """(1, anchors·c, h, w) → (h·w·anchors, c), the row order insightface's anchor centres use."""
        return t.permute(0, 2, 3, 1).reshape(-1, c)

    def forward(self, x):
        m = x.mean(1, keepdim=True)
        scores, boxes, kps = [], [], []
        for i, s in enumerate(self.strides):
            cell = F.avg_pool2d(m, s)
            scores.append(self.rows(torch.sigmoid(self.score[i](cell)), 1))
            boxes.append(self.rows(self.box[i](cell), 4))
            kps.append(self.rows(self.kps[i](cell), 10))
        return (*scores, *boxes, *kps)


class TinyArcFace(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 8, stride=8)
        self.fc = nn.Linear(8 * 14 * 14, 512)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


def export(model: nn.Module, path, dynamic: dict, n_out: int) -> None:
    names = [f"out{i}" for i in range(n_out)]
    size = DET_SIZE if n_out > 1 else 112
    torch.onnx.export(model.eval(), (torch.randn(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                      input_names=["input.1"], output_names=names, dynamic_axes=dynamic)


@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("face")
    spatial = {"input.1": {2: "h", 3: "w"}}  # like the public SCRFD files: batch 1, dynamic size
    export(TinySCRFD(gate=0.9), d / "det_gated.onnx", spatial, 9)
    export(TinySCRFD(gate=-2.0), d / "det_never.onnx", spatial, 9)
    recs = {}
    for seed in (0, 1):
        recs[seed] = TinyArcFace(seed).eval()
        export(recs[seed], d / f"rec{seed}.onnx", {"input.1": {0: "batch"}, "out0": {0: "batch"}}, 1)
    return {"dir": d, "det": d / "det_gated.onnx", "never": d / "det_never.onnx",
            "rec": d / "rec0.onnx", "rec1": d / "rec1.onnx", "torch_rec": recs[0]}


def photos(n_lfw: int = 5) -> list[Image.Image]:
    lfw = skimage.data.lfw_subset()[:n_lfw]  # 25×25 grayscale floats in [0, 1]
    return [Image.fromarray(skimage.data.astronaut())] + [Image.fromarray((x * 255).astype(np.uint8)) for x in lfw]


def face_cfg(models, **kw) -> dict:
    base = {"det_path": str(models["det"]), "rec_path": str(models["rec"]), "det_size": DET_SIZE}
    return {"clip": {"model": "UniF2ace-Tiny-CLIP", "fallback": "random-init"}, "face": {**base, **kw}}


def reference_embedding(rec: nn.Module, crop_bgr: np.ndarray) -> np.ndarray:
    """ArcFace preprocessing written out here: RGB, (x − 127.5) / 127.5, NCHW, then L2 norm."""
    x = (crop_bgr[:, :, ::-1].astype(np.float32) - 127.5) / 127.5
    with torch.no_grad():
        y = rec(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])[0].numpy()
    return y / np.linalg.norm(y)


# --------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("clip")
    cfg_path = d / f"{TEST_CLIP}.json"
    cfg_path.write_text(json.dumps(TEST_CLIP_CFG))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model(TEST_CLIP).eval()
    weights = d / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {"cfg": cfg_path, "weights": weights, "model": model}


def test_clip_weights_load_back_from_local_file(clip_weights):
    from unif2ace.features.clip import ClipEncoder
    from unif2ace.features.config import ClipConfig

    model = clip_weights["model"]
    enc = ClipEncoder(ClipConfig(model=TEST_CLIP, weights=str(clip_weights["weights"]),
                                 model_configs=[str(clip_weights["cfg"])], patch_tokens=True, batch_size=2))
    imgs = photos(2)
    out = enc.encode(imgs)
    tf = open_clip.image_transform(64, is_train=False)  # open_clip's own inference preprocessing
    x = torch.stack([tf(im.convert("RGB")) for im in imgs])
    seen = {}
    hook = model.visual.ln_post.register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", o))
    with torch.no_grad():
        ref = F.normalize(model.encode_image(x), dim=-1).numpy()
        ref_patches = (seen["tokens"][:, 1:] @ model.visual.proj).numpy()  # drop the class token
    hook.remove()
    assert out["clip"].shape == (3, 48) and out["clip_patches"].shape == (3, 16, 48)
    np.testing.assert_allclose(out["clip"], ref, atol=1e-5)
    np.testing.assert_allclose(out["clip_patches"], ref_patches, atol=1e-4)
    assert not np.allclose(out["clip"][0], out["clip"][1])


def test_clip_tensor_input_matches_pil(clip_weights):
    from unif2ace.features.clip import ClipEncoder
    from unif2ace.features.config import ClipConfig

    enc = ClipEncoder(ClipConfig(model=TEST_CLIP, weights=str(clip_weights["weights"]),
                                 model_configs=[str(clip_weights["cfg"])]))
    big = skimage.data.astronaut()
    small = np.asarray(Image.fromarray(big).resize((64, 64), Image.BICUBIC))
    # At the model's size no resize happens: uint8, float and PIL inputs give the same embedding.
    pil = enc.encode([Image.fromarray(small)])["clip"]
    t = torch.from_numpy(small.copy()).permute(2, 0, 1)[None]
    u8 = enc.encode(t)["clip"]
    fl = enc.encode(t.float() / 255)["clip"]
    np.testing.assert_allclose(u8, pil, atol=1e-5)
    np.testing.assert_allclose(fl, pil, atol=1e-5)
    # Larger inputs: torch's antialiased bicubic vs PIL's bicubic differ only slightly.
    a = enc.encode([Image.fromarray(big)])["clip"][0]
    b = enc.encode(torch.from_numpy(big.copy()).permute(2, 0, 1)[None])["clip"][0]
    assert float(a @ b) > 0.99
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        enc.encode(torch.full((1, 3, 64, 64), 200.0))


def test_clip_fallback_policy(tmp_path, caplog):
    from unif2ace.features.clip import ClipEncoder
    from unif2ace.features.config import ClipConfig

    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ClipEncoder(ClipConfig(model="UniF2ace-Tiny-CLIP", weights=str(missing), fallback="error"))
    with pytest.raises(FileNotFoundError, match="clip.weights is not set"):
        ClipEncoder(ClipConfig(model="UniF2ace-Tiny-CLIP"))
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        ClipEncoder(ClipConfig(model="No-Such-CLIP", fallback="random-init"))
    rng_before = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="unif2ace.features.clip"):
        a = ClipEncoder(ClipConfig(model="UniF2ace-Tiny-CLIP", weights=str(missing), fallback="random-init"))
    assert any(r.levelno == logging.WARNING and "random-init" in r.getMessage() and str(missing) in r.getMessage()
               for r in caplog.records)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the fixed-seed init used a private RNG
    b = ClipEncoder(ClipConfig(model="UniF2ace-Tiny-CLIP", fallback="random-init"))
    c = ClipEncoder(ClipConfig(model="UniF2ace-Tiny-CLIP", fallback="random-init", fallback_seed=1))
    imgs = photos(1)
    ea, eb, ec = (e.encode(imgs)["clip"] for e in (a, b, c))
    assert ea.shape == (2, 512)
    np.testing.assert_array_equal(ea, eb)
    assert not np.allclose(ea, ec)


# --------------------------------------------------------------------------- face


def test_face_detect_path_on_real_photos(face_models):
    from unif2ace.features.config import FaceConfig
    from unif2ace.features.face import FaceEncoder

    enc = FaceEncoder(FaceConfig(det_path=str(face_models["det"]), rec_path=str(face_models["rec"]),
                                 det_size=DET_SIZE, batch_size=4))
    black = Image.new("RGB", (200, 160))
    imgs = photos(5)
    imgs.insert(2, black)
    emb, found = enc.encode(imgs)
    assert emb.shape == (7, 512) and emb.dtype == np.float32
    assert found.tolist() == [True, True, False, True, True, True, True]
    assert np.all(emb[2] == 0)
    assert np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb[found], axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[1]) and not np.allclose(emb[1], emb[3])

    # Independent reference: insightface's detector on its own, norm_crop, the torch recogniser.
    det = insightface.model_zoo.get_model(str(face_models["det"]))
    det.prepare(0, input_size=(DET_SIZE, DET_SIZE), det_thresh=0.5)
    for i in (0, 1, 4):
        bgr = np.ascontiguousarray(np.asarray(imgs[i].convert("RGB"))[:, :, ::-1])
        boxes, kpss = det.detect(bgr, max_num=1)
        assert boxes.shape[0] == 1
        # The decoded box/keypoints are the layout built into TinySCRFD: a 2·HALF box centred on a
        # stride-32 anchor, keypoints at the template offsets, all scaled back by the detector's resize.
        scale = DET_SIZE / max(bgr.shape[:2])
        centre = (boxes[0, :2] + boxes[0, 2:4]) / 2
        np.testing.assert_allclose(boxes[0, 2:4] - boxes[0, :2], 2 * HALF / scale, rtol=1e-4)
        np.testing.assert_allclose(centre * scale / 32, np.round(centre * scale / 32), atol=1e-3)
        np.testing.assert_allclose(kpss[0], centre + KPS_OFFSETS / scale, atol=1e-2)
        crop = face_align.norm_crop(bgr, landmark=kpss[0], image_size=112)
        ref = reference_embedding(face_models["torch_rec"], crop)
        np.testing.assert_allclose(emb[i], ref, atol=1e-4)
    # astronaut 512² → the most central anchor is the image centre
    bgr0 = np.asarray(imgs[0])[:, :, ::-1]
    boxes0, _ = det.detect(np.ascontiguousarray(bgr0), max_num=1)
    np.testing.assert_allclose(boxes0[0, :4], [256 - 160, 256 - 160, 256 + 160, 256 + 160], atol=1e-2)


def test_face_batching_equals_one_by_one(face_models):
    from unif2ace.features.config import FaceConfig
    from unif2ace.features.face import FaceEncoder

    imgs = photos(6)
    kw = dict(det_path=str(face_models["det"]), rec_path=str(face_models["rec"]), det_size=DET_SIZE)
    batched = FaceEncoder(FaceConfig(batch_size=8, **kw))
    single = FaceEncoder(FaceConfig(batch_size=1, **kw))
    assert batched.rec_batch == 8  # dynamic batch axis → real batches
    eb, fb = batched.encode(imgs)
    es = np.concatenate([single.encode([im])[0] for im in imgs])
    assert fb.all()
    np.testing.assert_allclose(eb, es, atol=1e-5)


def test_face_never_detects_gives_zeros(face_models):
    enc = build_encoders(face_cfg(face_models, det_path=str(face_models["never"])))
    out = enc.encode(photos(3), ["a", "b", "c", "d"])
    assert out["face_found"].dtype == bool and not out["face_found"].any()
    assert out["face"].dtype == np.float16 and out["face"].shape == (4, 512)
    assert np.all(out["face"] == 0)


def test_face_aligned_mode_without_detector(face_models):
    from unif2ace.features.config import FaceConfig
    from unif2ace.features.face import FaceEncoder

    # No det_path needed in aligned mode.
    enc = FaceEncoder(FaceConfig(rec_path=str(face_models["rec"]), mode="aligned"))
    assert enc.det is None
    imgs = photos(3)[1:] + [Image.fromarray(skimage.data.astronaut()).resize((64, 64))]
    emb, found = enc.encode(imgs)
    assert found.all()
    for im, e in zip(imgs, emb):
        bgr = np.asarray(im.convert("RGB"))[:, :, ::-1]
        crop = cv2.resize(np.ascontiguousarray(bgr), (112, 112), interpolation=cv2.INTER_LINEAR)  # enlarging
        np.testing.assert_allclose(e, reference_embedding(face_models["torch_rec"], crop), atol=1e-4)


def test_face_model_dir_routing_and_errors(face_models, tmp_path, caplog):
    from unif2ace.features.config import FaceConfig
    from unif2ace.features.face import FaceEncoder

    ante = tmp_path / "antelopev2"
    ante.mkdir()
    shutil.copy(face_models["det"], ante / "scrfd_10g_bnkps.onnx")
    shutil.copy(face_models["rec"], ante / "glintr100.onnx")
    imgs = photos(2)
    by_dir = FaceEncoder(FaceConfig(model_dir=str(ante), det_size=DET_SIZE)).encode(imgs)[0]
    by_path = FaceEncoder(FaceConfig(det_path=str(face_models["det"]), rec_path=str(face_models["rec"]),
                                     det_size=DET_SIZE)).encode(imgs)[0]
    np.testing.assert_array_equal(by_dir, by_path)

    shutil.copy(face_models["rec1"], ante / "w600k_r50.onnx")
    with pytest.raises(ValueError, match="several recognition models"):
        FaceEncoder(FaceConfig(model_dir=str(ante)))
    with pytest.raises(ValueError, match="routes this model to detection"):
        FaceEncoder(FaceConfig(det_path=str(face_models["det"]), rec_path=str(face_models["det"])))
    gone = tmp_path / "buffalo_missing"
    with pytest.raises(FileNotFoundError, match=str(gone)):
        FaceEncoder(FaceConfig(model_dir=str(gone)))
    with pytest.raises(FileNotFoundError, match=r"no face detection and recognition model configured"):
        FaceEncoder(FaceConfig())
    # antelopev2.zip unpacks into antelopev2/antelopev2/: the outer directory is named in the error
    with pytest.raises(FileNotFoundError, match="one level down"):
        FaceEncoder(FaceConfig(model_dir=str(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="unif2ace.features.face"):
        none = FaceEncoder(FaceConfig(model_dir=str(gone), fallback="none"))
    assert any("fallback 'none'" in r.getMessage() and str(gone) in r.getMessage() for r in caplog.records)
    emb, found = none.encode(imgs)
    assert not found.any() and np.all(emb == 0) and emb.shape == (3, 512)


# --------------------------------------------------------------------------- noise, config, hash


def test_noise_is_reproducible_per_id():
    a, b = NoiseEmbedder(dim=4096, seed=7), NoiseEmbedder(dim=4096, seed=7)
    x = a.encode(["id-1", "id-2"])
    np.testing.assert_array_equal(x, b.encode(["id-1", "id-2"]))
    np.testing.assert_array_equal(x[::-1], b.encode(["id-2", "id-1"]))  # order independent
    assert not np.allclose(x[0], x[1])
    assert not np.allclose(x[0], NoiseEmbedder(dim=4096, seed=8).encode(["id-1"])[0])
    assert abs(float(x.mean())) < 0.05 and 0.95 < float(x.std()) < 1.05


def test_build_encoders_outputs_and_config_hash(face_models, tmp_path):
    cfg = face_cfg(face_models)
    cfg["clip"]["patch_tokens"] = True
    cfg["noise"] = {"dim": 16, "seed": 3}
    enc = build_encoders(cfg)
    imgs, ids = photos(2), ["x0", "x1", "x2"]
    out = enc.encode(imgs, ids)
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
        "clip": (np.float16, (3, 512)), "clip_patches": (np.float16, (3, 64, 512)),
        "face": (np.float16, (3, 512)), "face_found": (np.bool_, (3,)), "noise": (np.float16, (3, 16))}
    np.testing.assert_array_equal(out["noise"], NoiseEmbedder(16, 3).encode(ids).astype(np.float16))
    with pytest.raises(ValueError, match="3 images but 2 ids"):
        enc.encode(imgs, ids[:2])
    assert enc.fallbacks == {"clip": "random-init"}
    desc = json.loads(json.dumps(enc.describe()))  # JSON-able
    assert desc["config_hash"] == enc.config_hash() and desc["fallbacks"] == {"clip": "random-init"}

    h = enc.config_hash()
    assert build_encoders(cfg).config_hash() == h
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(face_models["det"], moved / "det.onnx")
    shutil.copy(face_models["rec"], moved / "rec.onnx")
    same = face_cfg(face_models, det_path=str(moved / "det.onnx"), rec_path=str(moved / "rec.onnx"))
    same["clip"]["patch_tokens"], same["noise"] = True, {"dim": 16, "seed": 3}
    assert build_encoders(same).config_hash() == h  # paths are not part of the hash
    for change in ({"noise": {"dim": 16, "seed": 4}}, {"face": {**cfg["face"], "rec_path": str(face_models["rec1"])}},
                   {"face": {**cfg["face"], "det_thresh": 0.6}}, {"clip": {**cfg["clip"], "fallback_seed": 1}},
                   {"face": {"fallback": "none"}}):
        assert build_encoders({**cfg, **change}).config_hash() != h, change


def test_feature_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="features.clip.modle"):
        FeatureConfig.from_dict({"clip": {"modle": "x"}})
    with pytest.raises(ConfigError, match="features.face.mode"):
        FeatureConfig.from_dict({"face": {"mode": "guess"}})
    assert FeatureConfig.from_dict({"face": {"fallback": "none"}}).face.fallback == "none"
