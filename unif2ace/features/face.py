"""Face identity embeddings through insightface + onnxruntime, from local ONNX files.

    from unif2ace.features.config import FaceConfig
    from unif2ace.features.face import FaceEncoder
    enc = FaceEncoder(FaceConfig(model_dir="~/models/antelopev2"))
    emb, found = enc.encode(pil_images)   # float32 (B, 512) unit-norm, bool (B,)

Two modes (``face.mode``):

* ``detect`` (real photos): SCRFD detection at ``det_size``² → the largest, most central face
  (insightface's ``max_num=1`` ranking: area − 2·offset²) → 5-point similarity alignment with
  ``insightface.utils.face_align.norm_crop`` to 112² → ArcFace → L2-normalised. No face above
  ``det_thresh`` → ``face_found=False`` and a zero vector.
* ``aligned`` (pre-aligned crops, e.g. the SynthFace renders where the face fills the image): no
  detector; the whole image is resized to the recogniser's input (112², cv2 INTER_AREA when
  shrinking, INTER_LINEAR when enlarging) and embedded; every image counts as a face. ArcFace
  models are trained on 5-point-aligned crops, so with real ArcFace weights this mode suits only
  crops framed like that; for SynthFace it gives consistent, identity-bearing vectors, and
  ``tools/train_face_recognizer.py`` trains a recogniser for exactly these crops.

Models are loaded with ``insightface.model_zoo.get_model(path)``, which routes by ONNX shape:
≥ 5 outputs → SCRFD (9 or 15 outputs carry the keypoints alignment needs); a square input
≥ 112 divisible by 16 with one output → ArcFace. Recognition runs in batches of
``face.batch_size`` when the model's batch axis is dynamic, one by one otherwise.
Insightface expects BGR arrays; PIL images are converted here.
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Any

import cv2
import numpy as np
import onnxruntime
from insightface.model_zoo import get_model
from insightface.utils import face_align
from PIL import Image

from unif2ace.checksum import file_sha256
from unif2ace.features.config import FaceConfig

log = logging.getLogger(__name__)


def resize_aligned(image: np.ndarray, size: int) -> np.ndarray:
    """``face.mode=aligned``'s crop: the whole HWC uint8 image resized to size² (cv2 INTER_AREA when
    shrinking, INTER_LINEAR when enlarging). Per channel, so BGR and RGB give the same pixels; the
    recogniser trainer (face_training) feeds its network exactly these crops."""
    shrink = min(image.shape[:2]) > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class FaceEncoder:
    """SCRFD + ArcFace (or ArcFace alone on aligned crops); ``fallback='none'`` → no models at all."""

    def __init__(self, cfg: FaceConfig):
        self.cfg = cfg
        self.dim = int(cfg.dim)
        self.det: Any = None
        self.rec: Any = None
        self.fallback_used: str | None = None
        self.reason = ""
        det_path, rec_path, problem = self._resolve_paths()
        if problem:
            if cfg.fallback == "error":
                raise FileNotFoundError(
                    f"face models unavailable: {problem}; set face.model_dir (antelopev2 layout) or "
                    f"face.det_path/face.rec_path, or face.fallback=none to mark every image face_found=False")
            log.warning("Face: %s -> fallback 'none': every image gets face_found=False and a zero "
                        "identity vector", problem)
            self.fallback_used, self.reason = "none", problem
            return
        if cfg.mode == "detect":
            self.det = self._load(det_path, "detection")
            if not self.det.use_kps:
                raise ValueError(f"{det_path}: detector has no keypoint outputs (SCRFD needs 9 or 15 outputs "
                                 f"for 5-point alignment, this one has {len(self.det.output_names)})")
            self.det.prepare(0, input_size=(cfg.det_size, cfg.det_size), det_thresh=cfg.det_thresh)
        self.rec = self._load(rec_path, "recognition")
        w, h = self.rec.input_size
        out_dim = self.rec.output_shape[-1]
        if w != h or (w % 112 and w % 128):
            raise ValueError(f"{rec_path}: recogniser input is {w}x{h}; norm_crop needs a square multiple "
                             f"of 112 or 128")
        if isinstance(out_dim, int) and out_dim != self.dim:
            raise ValueError(f"{rec_path}: recogniser outputs {out_dim}-d embeddings but face.dim={self.dim}")
        batch_axis = self.rec.input_shape[0]
        self.rec_batch = 1 if isinstance(batch_axis, int) else max(1, cfg.batch_size)

    # ------------------------------------------------------------------ loading

    def _resolve_paths(self) -> tuple[str, str, str]:
        """(det_path, rec_path, problem) — problem is '' when everything the mode needs exists."""
        cfg = self.cfg
        need_det = cfg.mode == "detect"
        det = os.path.abspath(os.path.expanduser(cfg.det_path)) if cfg.det_path else ""
        rec = os.path.abspath(os.path.expanduser(cfg.rec_path)) if cfg.rec_path else ""
        for name, path in (("face.det_path", det if need_det else ""), ("face.rec_path", rec)):
            if path and not os.path.isfile(path):
                return "", "", f"{name} file {path} does not exist"
        wanted = [t for t, have in (("detection", det or not need_det), ("recognition", rec)) if not have]
        if wanted:
            if not cfg.model_dir:
                return "", "", f"no face {' and '.join(wanted)} model configured (face.model_dir is not set)"
            root = os.path.abspath(os.path.expanduser(cfg.model_dir))
            if not os.path.isdir(root):
                return "", "", f"face.model_dir {root} does not exist"
            found, problem = self._route_dir(root)
            if problem:
                return "", "", problem
            for task in wanted:
                key = "det" if task == "detection" else "rec"
                if not found[task]:
                    return "", "", f"no {task} model among the ONNX files in {root}"
                if len(found[task]) > 1:
                    raise ValueError(f"{root}: several {task} models {found[task]}; choose one with face.{key}_path")
                if task == "detection":
                    det = found[task][0]
                else:
                    rec = found[task][0]
        return det, rec, ""

    def _route_dir(self, root: str) -> tuple[dict[str, list[str]], str]:
        """Route every *.onnx of ``root`` through insightface (landmark/attribute models are ignored);
        returns the paths per task and a problem ('' when the directory holds ONNX files)."""
        found: dict[str, list[str]] = {"detection": [], "recognition": []}
        paths = sorted(glob.glob(os.path.join(root, "*.onnx")))
        if not paths:
            # insightface's antelopev2.zip unpacks into antelopev2/antelopev2/: point at the inner one.
            nested = sorted(glob.glob(os.path.join(root, "*", "*.onnx")))
            hint = f" (ONNX files found one level down, in {os.path.dirname(nested[0])})" if nested else ""
            return found, f"face.model_dir {root} holds no *.onnx files{hint}"
        for path in paths:
            try:
                model = get_model(path, **self._session_kwargs())
            except Exception as e:
                raise ValueError(f"{path}: cannot load as an ONNX model: {e}") from e
            task = getattr(model, "taskname", None)
            if task in found:
                found[task].append(path)
        return found, ""

    def _session_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.cfg.providers:
            kw["providers"] = list(self.cfg.providers)
        if self.cfg.threads > 0:
            so = onnxruntime.SessionOptions()
            so.intra_op_num_threads = self.cfg.threads
            kw["sess_options"] = so
        return kw

    def _load(self, path: str, task: str) -> Any:
        try:
            model = get_model(path, **self._session_kwargs())
        except Exception as e:  # corrupt or non-ONNX file
            raise ValueError(f"{path}: cannot load as an ONNX {task} model: {e}") from e
        got = getattr(model, "taskname", None)
        if got != task:
            raise ValueError(f"{path}: insightface routes this model to {got or 'nothing'}, expected {task} "
                             f"(detection: >= 5 outputs; recognition: square input >= 112, divisible by 16, "
                             f"one output)")
        return model

    # ------------------------------------------------------------------ encode

    def crop(self, image: Image.Image) -> np.ndarray | None:
        """The aligned BGR crop the recogniser sees, or None when no face is detected."""
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        size = self.rec.input_size[0]
        if self.cfg.mode == "aligned":
            return resize_aligned(bgr, size)
        boxes, kpss = self.det.detect(bgr, max_num=1)
        if boxes.shape[0] == 0:
            return None
        return face_align.norm_crop(bgr, landmark=kpss[0], image_size=size)

    def encode(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """float32 (B, dim) unit-norm identity embeddings (zeros where no face) and bool (B,) face_found."""
        emb = np.zeros((len(images), self.dim), dtype=np.float32)
        found = np.zeros(len(images), dtype=bool)
        if self.rec is None:
            return emb, found
        crops, index = [], []
        for i, im in enumerate(images):
            try:
                c = self.crop(im)
            except cv2.error as e:
                raise ValueError(f"face: image {i} ({im.size[0]}x{im.size[1]}) could not be processed: {e}") from e
            if c is not None:
                crops.append(c)
                index.append(i)
        for s in range(0, len(crops), self.rec_batch):
            feats = np.asarray(self.rec.get_feat(crops[s:s + self.rec_batch]), dtype=np.float32)
            norms = np.linalg.norm(feats, axis=1, keepdims=True)
            if not np.all(np.isfinite(feats)) or np.any(norms == 0):
                raise RuntimeError(f"{self.rec.model_file}: recogniser returned non-finite or zero embeddings")
            emb[index[s:s + self.rec_batch]] = feats / norms
        found[index] = True
        return emb, found

    def describe(self) -> dict[str, Any]:
        """What determines these features (for the config hash) and which files were used."""
        if self.rec is None:
            return {"fallback": "none", "reason": self.reason, "dim": self.dim}
        d: dict[str, Any] = {
            "mode": self.cfg.mode,
            "dim": self.dim,
            "rec": {"path": self.rec.model_file, "sha256": file_sha256(self.rec.model_file, cached=True),
                    "input_size": list(self.rec.input_size),
                    "input_mean": self.rec.input_mean, "input_std": self.rec.input_std},
        }
        if self.det is not None:
            d["det"] = {"path": self.det.model_file, "sha256": file_sha256(self.det.model_file, cached=True),
                        "input_sizes": [list(s) for s in self.det.input_sizes],
                        "thresh": self.det.det_thresh, "nms_thresh": self.det.nms_thresh}
        else:
            d["aligned_resize"] = "cv2 INTER_AREA (shrink) / INTER_LINEAR (enlarge)"
        return d
