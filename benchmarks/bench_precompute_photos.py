"""Precompute throughput on real photographs in face-detect mode (one run, one process).

    python benchmarks/bench_precompute_photos.py                      # 100 LFW faces + astronaut
    python benchmarks/bench_precompute_photos.py --lfw 100 --workers 2 --json runs/bench_photos.json
    python benchmarks/bench_precompute_photos.py --det scrfd_10g_bnkps.onnx --rec glintr100.onnx

The photos are scikit-image's (LFW crops 25×25 grey, the astronaut 512²), read through a
source spec (unif2ace/data/spec.py) as a user's data would be. Face features: detect mode with
the given ONNX detector / recogniser, by default the tiny SCRFD- / ArcFace-shaped models that
tests/test_features.py defines and exports (their cost is far below the public models'; pass
--det / --rec for those). Image tokenizer: a randomly initialised MAGVIT-v2 (``--magvit``
preset: tiny = 32² → 16 codes, synthface = 64² → 64 codes); CLIP: UniF2ace-Tiny-CLIP, random
init. Reports images/s of the encode-and-write loop (model loading excluded), as precompute's
own summary counts it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from _report import report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=int, default=100, help="LFW faces (the subset holds 100)")
    ap.add_argument("--det", default="", help="ONNX face detector (default: the tests' tiny SCRFD)")
    ap.add_argument("--rec", default="", help="ONNX face recogniser (default: the tests' tiny ArcFace)")
    ap.add_argument("--magvit", default="tiny", choices=["tiny", "synthface"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import skimage.data
    import torch
    from PIL import Image

    from unif2ace.config import merge, parse_overrides
    from unif2ace.data.precompute import PrecomputeConfig, run
    from unif2ace.data.spec import load_spec, read_source
    from unif2ace.data.sources import texts_for_tokenizer
    from unif2ace.features import FeatureConfig
    from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2
    from unif2ace.tokenizers.text import train_sentencepiece

    tmp = Path(tempfile.mkdtemp(prefix="bench_photos_"))
    (tmp / "images").mkdir()
    Image.fromarray(skimage.data.astronaut()).save(tmp / "images" / "astronaut.png")
    rows = [{"image": "astronaut.png", "caption": "An astronaut smiling in front of a flag."}]
    for i, x in enumerate(skimage.data.lfw_subset()[:args.lfw]):
        Image.fromarray((x * 255).astype(np.uint8)).save(tmp / "images" / f"lfw_{i:03d}.png")
        rows.append({"image": f"lfw_{i:03d}.png", "caption": f"A grey photo of face number {i}."})
    (tmp / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp / "spec.yaml").write_text("images: [{dir: images}]\ntables:\n  - files: captions.jsonl\n"
                                   "    fields: {key: image, caption: caption}\n")
    spec = load_spec(tmp / "spec.yaml")
    records = read_source(spec).records

    det, rec = args.det, args.rec
    if not det or not rec:
        # the test suite's tiny SCRFD / ArcFace exporters, loaded by path (tests/ is not a package)
        spec = importlib.util.spec_from_file_location("test_features", ROOT / "tests" / "test_features.py")
        tf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tf)
        DET_SIZE, TinyArcFace, TinySCRFD, export = tf.DET_SIZE, tf.TinyArcFace, tf.TinySCRFD, tf.export

        det, rec = str(tmp / "det.onnx"), str(tmp / "rec.onnx")
        export(TinySCRFD(gate=0.9), det, {"input.1": {2: "h", 3: "w"}}, 9)
        export(TinyArcFace(0), rec, {"input.1": {0: "batch"}, "out0": {0: "batch"}}, 1)
        det_size = DET_SIZE
    else:
        det_size = 640
    torch.manual_seed(0)
    mcfg = MagvitConfig.tiny() if args.magvit == "tiny" else MagvitConfig.synthface()
    MagvitV2(mcfg).save_pretrained(tmp / "magvit")
    train_sentencepiece(texts_for_tokenizer(records), tmp / "spm.model", vocab_size=512)
    feats = FeatureConfig.from_dict(merge({}, parse_overrides([
        "clip.model=UniF2ace-Tiny-CLIP", "clip.fallback=random-init", "face.mode=detect", f"face.det_path={det}",
        f"face.rec_path={rec}", f"face.det_size={det_size}"])))
    size = 32 if args.magvit == "tiny" else 64
    cfg = PrecomputeConfig(out=str(tmp / "shards"), image_tokenizer=str(tmp / "magvit"),
                           text_tokenizer=str(tmp / "spm.model"), image_size=size, batch_size=args.batch_size,
                           workers=args.workers, shard_size=64)
    s = run(cfg, spec, feats, progress=False, records=records)
    found = None
    if s["complete"]:
        from unif2ace.data import shards as S

        m = S.read_manifest(cfg.out)
        found = int(sum(S.ShardView(Path(cfg.out) / x["name"], m["feature_shapes"]).face_found.sum()
                        for x in m["shards"]))
    report({"images": s["num_records"], "written": s["num_samples"], "faces_found": found,
            "image_size": size, "workers": args.workers, "torch_threads": torch.get_num_threads(),
            "seconds": round(s["seconds"], 2), "images_per_s": s["images_per_s"]}, args.json)
    return 0 if s["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
