"""Does a model read its T2I prompt? The teacher-forced masked-code loss of generation rows with
each face's own caption, another face's caption and no caption, under the same masks.

    from unif2ace.eval.prompt_probe import prompt_losses
    losses = prompt_losses(model, cfg, codes, captions, features, ratios=(0.3, 0.6, 0.9))
    losses[0.9]["other"] - losses[0.9]["own"]   # > 0: the prompt is read

The command is ``tools/probe_prompt.py``. Two readings: a model that reads the prompt has a
lower loss with its own caption than with another face's (the gap grows with the mask ratio,
as fewer codes are left to predict from); a model whose loss does not fall as fewer codes are
masked does not use the visible codes either. "none" is the unconditional row of
classifier-free guidance (no caption, features zeroed as in ``data.cond_drop``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from unif2ace.losses import t2i_losses
from unif2ace.tokens import TASK_T2I, TokenLayout, build_t2i, collate, mask_image_codes

CONDITIONS = ("own", "other", "none")


def unconditional(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The features of a dropped-condition row, as the training loader makes them."""
    return {k: (v if k == "noise" else torch.zeros_like(v)) for k, v in features.items()}


@torch.no_grad()
def prompt_losses(model, cfg, codes: torch.Tensor, captions: Sequence[Sequence[int]],
                  features: dict[str, torch.Tensor], ratios: Sequence[float] = (0.3, 0.6, 0.9),
                  seed: int = 0) -> dict[float, dict[str, float]]:
    """{ratio: {condition: mean L_mask over the faces}}. ``codes`` (n, N) and ``features`` (rows
    as codes) are n faces, ``captions`` their token ids; "other" gives face i the caption of face
    i + 1 (mod n). Every condition of a ratio sees the same masked positions."""
    n = codes.shape[0]
    if n < 2 or len(captions) != n:
        raise ValueError(f"prompt_losses needs at least two faces and one caption each (got {n} faces, "
                         f"{len(captions)} captions)")
    layout = TokenLayout.from_model_config(cfg.model)
    prompts = {"own": list(captions), "other": list(captions[1:]) + [captions[0]], "none": [[] for _ in range(n)]}
    feats = {"own": features, "other": features, "none": unconditional(features)}
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out: dict[float, dict[str, float]] = {}
    try:
        for ratio in ratios:
            masked, applied = mask_image_codes(codes, torch.full((n,), float(ratio)), generator=g)
            out[ratio] = {}
            for cond in CONDITIONS:
                rows = [build_t2i(layout, p, codes[i], masked[i], cfg.model.text_len) for i, p in enumerate(prompts[cond])]
                b = collate(rows, [TASK_T2I] * n)
                logits = model(b.input_ids, b.task, feats[cond]).logits
                out[ratio][cond] = float(t2i_losses(logits, b.labels, applied, layout, cfg.loss)["l_mask"].mean())
    finally:
        model.train(was_training)
    return out
