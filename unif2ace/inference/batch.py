"""Batch inference over loaded assets (``unif2ace.inference.assets``): prompts to PNGs,
(image, question) pairs to answers. The generate / answer commands are these plus flags.

    assets = load_assets("runs/synthface/model")
    images = generate_images(assets, ["A smiling woman with red hair"], sample_config(assets.cfg, ["sample.steps=16"]))
    answers = answer_questions(assets, [Image.open("face.png")], ["What colour is her hair?"])
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from tqdm import tqdm

from unif2ace.config import ConfigError, SampleConfig, build, parse_overrides
from unif2ace.inference.mmu import generate_answers, mmu_prompts
from unif2ace.inference.t2i import codes_to_pil, generate_codes, save_png


def sample_config(cfg, overrides: list[str]):
    """The checkpoint's sample section with ``sample.key=value`` overrides applied."""
    tree = parse_overrides(overrides)
    extra = set(tree) - {"sample"}
    if extra:
        raise ConfigError(f"only sample.* overrides apply here, got {sorted(extra)}")
    return build(SampleConfig, {**dataclasses.asdict(cfg.sample), **tree.get("sample", {})}, "sample.")


def generate_images(assets, prompts: list[str], scfg, num: int = 1, batch: int = 8, out: Path | None = None) -> list:
    """Images (PIL) for every prompt × num, seeds scfg.seed + i; PNGs + index.json under ``out``."""
    jobs = [(p, k) for p in prompts for k in range(num)]
    images, index = [], []
    for s in tqdm(range(0, len(jobs), batch), desc="generate", unit="batch", disable=len(jobs) <= batch):
        chunk = jobs[s:s + batch]
        ids = [assets.text.encode(p) for p, _ in chunk]
        gen = torch.Generator().manual_seed(scfg.seed + s)
        codes = generate_codes(assets.model, ids, scfg, generator=gen)
        pics = codes_to_pil(assets.image_tokenizer, codes)
        for (p, k), im in zip(chunk, pics):
            images.append(im)
            if out is not None:
                name = f"{len(index):05d}.png"
                save_png(im, out / name)
                index.append({"file": name, "prompt": p, "sample": k})
    if out is not None:
        (out / "index.json").write_text(json.dumps(index, indent=1))
    return images


def answer_questions(assets, images: list, questions: list[str], ids: list[str] | None = None, scfg=None) -> list[str]:
    """One answer per (image, question) pair, decoded in one batch."""
    ids = ids or [f"query-{i}" for i in range(len(images))]
    codes = assets.encode_images(images)
    feats = assets.features(images, ids)
    prompts = mmu_prompts(assets.model.layout, codes, [assets.text.encode_question(q) for q in questions])
    outs = generate_answers(assets.model, prompts, scfg or assets.cfg.sample, features=feats)
    return [assets.text.decode(o).strip() for o in outs]
