"""The one learning-rate schedule: linear warm-up, then cosine decay to a floor.

    sched = warmup_cosine(optimizer, warmup_steps=10, total_steps=300, min_lr_ratio=0.1)
    ...; optimizer.step(); sched.step()

transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` (a ``LambdaLR``, so its state
saves and resumes with ``state_dict``): the factor is ``s / warmup`` for ``s < warmup``, then
``r + (1 - r) · ½(1 + cos(π · (s - warmup) / (total - warmup)))`` with ``r = min_lr_ratio``.
Used by the trainer (through DeepSpeed), the attribute classifier, the face recogniser and the
CLIP trainer.
"""
from __future__ import annotations

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, cosine to ``min_lr_ratio``·lr at ``total_steps``."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(total_steps, 1),
        min_lr_rate=min_lr_ratio)


def warmup_steps_for(total_steps: int, fraction: float = 0.05) -> int:
    """Warm-up length as a fraction of the run (at least one step)."""
    return max(1, int(fraction * total_steps))
