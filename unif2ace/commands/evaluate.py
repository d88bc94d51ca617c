#!/usr/bin/env python
"""Evaluate a checkpoint on SynthFace: VQA, captions, generated faces; metrics.json + report.md.

    python launchers/evaluate.py --checkpoint runs/synthface/model --data data/synthface \\
        --classifier runs/classifier --out runs/eval [--shards runs/synthface/shards] \\
        [--num-understanding 200] [--num-generation 64] [--inception-weights FILE] [--skip-generation]

``--checkpoint`` is a model directory or a DeepSpeed checkpoint (``unif2ace.checkpoint.load``);
the tokenizers and the faces' precomputed codes and features come from the shards
(default: the checkpoint's ``data.shards``), so questions are asked about exactly what the
model was trained to see. The evaluation itself is ``unif2ace.eval.evaluate.evaluate``
(re-exported here), which only sees two callables:

    from unif2ace.eval.evaluate import EvalConfig, evaluate
    generate_fn, answer_fn, decode_fn = model_callables("runs/synthface/model")   # defined in this file
    evaluate(EvalConfig(data=..., classifier=..., out=...), generate_fn, answer_fn)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from unif2ace.eval.evaluate import AnswerFn, DecodeFn, EvalConfig, GenerateFn, evaluate

__all__ = ["evaluate", "EvalConfig", "model_callables", "main"]


def model_callables(checkpoint: str, shards: str | None = None, device: str = "cpu",
                    seed: int | None = None) -> tuple[GenerateFn, AnswerFn, DecodeFn]:
    """(generate_fn, answer_fn, decode_fn) for ``evaluate`` from a checkpoint and its shards.

    ``answer_fn`` looks each face id up in the shards (image codes + cached CLIP / face / noise
    features) and decodes greedily with the KV cache; ``generate_fn`` runs MaskGIT sampling with
    the checkpoint's ``sample`` settings, one seeded generator across calls (``seed`` defaults to
    ``sample.seed``), and decodes the codes with the image tokenizer; ``decode_fn`` decodes faces
    from their own shard codes (what the image tokenizer lets any generator reach).
    """
    import numpy as np
    import torch

    from unif2ace.data import shards as S
    from unif2ace.inference.assets import load_assets
    from unif2ace.inference.mmu import generate_answers, mmu_prompts
    from unif2ace.inference.t2i import codes_to_pil, generate_codes

    assets = load_assets(checkpoint, shards, device)
    model, cfg = assets.model, assets.cfg
    shard_dir = Path(shards or cfg.data.shards)
    shapes = {k: list(v) for k, v in assets.manifest["feature_shapes"].items()}
    where: dict[str, tuple] = {}
    for s in assets.manifest["shards"]:
        view = S.ShardView(shard_dir / s["name"], shapes)
        for r, sid in enumerate(view.ids()):
            where[str(sid)] = (view, r)
    gen = torch.Generator().manual_seed(cfg.sample.seed if seed is None else seed)

    def answer_fn(ids: list[str], questions: list[str]) -> list[str]:
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"{shard_dir}: face ids not in the shards: {missing[:5]}")
        rows = [where[i] for i in ids]
        codes = torch.from_numpy(np.stack([v.codes[r] for v, r in rows]).astype(np.int64))
        feats = {k: torch.from_numpy(np.stack([v.features[k][r] for v, r in rows]).astype(np.float32)) for k in shapes}
        feats["face_found"] = torch.tensor([bool(v.face_found[r]) for v, r in rows])
        prompts = mmu_prompts(model.layout, codes, [assets.text.encode_question(q) for q in questions])
        out = generate_answers(model, prompts, cfg.sample, features=feats)
        return [assets.text.decode(o).strip() for o in out]

    def generate_fn(prompts: list[str]) -> list:
        codes = generate_codes(model, [assets.text.encode(p) for p in prompts], cfg.sample, generator=gen)
        return codes_to_pil(assets.image_tokenizer, codes)

    def decode_fn(ids: list[str]) -> list:
        codes = torch.from_numpy(np.stack([where[i][0].codes[where[i][1]] for i in ids]).astype(np.int64))
        return codes_to_pil(assets.image_tokenizer, codes)

    return generate_fn, answer_fn, decode_fn


def main(argv: list[str] | None = None) -> int:
    d = EvalConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model directory or DeepSpeed checkpoint directory")
    p.add_argument("--data", required=True, help="SynthFace directory (metadata.jsonl, attributes.json, images/)")
    p.add_argument("--classifier", default="", help="attribute-classifier directory (needed for generation)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shards", default=None, help="precomputed shards (default: the checkpoint's data.shards)")
    p.add_argument("--split", default=d.split)
    p.add_argument("--num-understanding", type=int, default=d.num_understanding, help="faces for VQA/captions (0 = all)")
    p.add_argument("--num-generation", type=int, default=d.num_generation, help="prompts to generate from (0 = all)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--fid-real", type=int, default=d.fid_real, help="real faces for FID (0 = the whole split)")
    p.add_argument("--inception-weights", default="", help="torch-fidelity InceptionV3 weights for standard FID")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=None, help="generation seed (default: the checkpoint's sample.seed)")
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--skip-understanding", action="store_true")
    a = p.parse_args(argv)
    cfg = EvalConfig(data=a.data, out=a.out, classifier=a.classifier, split=a.split,
                     num_understanding=a.num_understanding, num_generation=a.num_generation,
                     batch_size=a.batch_size, fid_real=a.fid_real, inception_weights=a.inception_weights,
                     checkpoint=a.checkpoint)
    generate_fn, answer_fn, decode_fn = model_callables(a.checkpoint, a.shards, a.device, a.seed)
    m = evaluate(cfg, None if a.skip_generation else generate_fn, None if a.skip_understanding else answer_fn,
                 decode_fn)
    summary = {"vqa_accuracy": m.get("understanding", {}).get("vqa", {}).get("overall", {}).get("accuracy"),
               "caption_recall": m.get("understanding", {}).get("caption", {}).get("recall"),
               "caption_precision": m.get("understanding", {}).get("caption", {}).get("precision"),
               "generation_attribute_accuracy": m.get("generation", {}).get("attributes", {}).get("overall"),
               "decoded_attribute_accuracy": m.get("generation", {}).get("decoded_reference", {}).get("overall"),
               "synthface_fid": m.get("generation", {}).get("synthface_fid", {}).get("value"),
               "report": str(Path(a.out) / "report.md")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
