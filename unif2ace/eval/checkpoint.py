"""The three callables ``unif2ace.eval.evaluate.evaluate`` needs, from a checkpoint and its shards.

    from unif2ace.eval.evaluate import EvalConfig, evaluate
    from unif2ace.eval.checkpoint import model_callables
    generate_fn, answer_fn, decode_fn = model_callables("runs/synthface/model")
    evaluate(EvalConfig(data=..., classifier=..., out=...), generate_fn, answer_fn, decode_fn)
"""
from __future__ import annotations

from pathlib import Path

from unif2ace.eval.evaluate import AnswerFn, DecodeFn, GenerateFn


def model_callables(checkpoint: str, shards: str | None = None, device: str = "cpu",
                    seed: int | None = None) -> tuple[GenerateFn, AnswerFn, DecodeFn]:
    """(generate_fn, answer_fn, decode_fn) for ``evaluate`` from a checkpoint and its shards.

    ``answer_fn`` looks each face id up in the shards (image codes + cached CLIP / face / noise
    features) and decodes greedily with the KV cache; ``generate_fn`` runs MaskGIT sampling with
    the checkpoint's ``sample`` settings, one seeded generator across calls (``seed`` defaults to
    ``sample.seed``), and decodes the codes with the image tokenizer; ``decode_fn`` decodes faces
    from their own shard codes (what the image tokenizer lets any generator reach).
    ``answer_fn.answer_separator`` is the separator the model's training shards wrote between
    a grounded answer and its verdict ('' when they did not; ``EvalConfig.answer_after``).
    """
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
        codes, feats = S.codes_and_features([where[i] for i in ids])
        prompts = mmu_prompts(model.layout, codes, [assets.text.encode_question(q) for q in questions])
        out = generate_answers(model, prompts, cfg.sample, features=feats)
        return [assets.text.decode(o).strip() for o in out]

    trained_on = Path(cfg.data.shards)
    manifest = S.read_manifest(trained_on) if (trained_on / S.MANIFEST).is_file() else assets.manifest
    answer_fn.answer_separator = manifest.get("answer_separator", "")

    def generate_fn(prompts: list[str]) -> list:
        codes = generate_codes(model, [assets.text.encode(p) for p in prompts], cfg.sample, generator=gen)
        return codes_to_pil(assets.image_tokenizer, codes)

    def decode_fn(ids: list[str]) -> list:
        codes, _ = S.codes_and_features([where[i] for i in ids])
        return codes_to_pil(assets.image_tokenizer, codes)

    return generate_fn, answer_fn, decode_fn
