"""Understanding decoding (VQA, captioning): batched autoregressive answers with a KV cache.

    from unif2ace.inference.mmu import mmu_prompts, generate_answers
    prompts = mmu_prompts(model.layout, codes, [question_ids_1, question_ids_2])  # codes (B, N)
    answers = generate_answers(model, prompts, cfg.sample, features=feats)       # [[ids…], …]

Prompts of different lengths are left-padded so they all end at the same column; the prefix
(image + question) is encoded once under the omni mask with the pads hidden, then each step
feeds one token per row against the cached keys/values. Positions follow Show-o (the column,
counting left pads; rotary attention depends only on differences, so the shift is harmless).

``decode_full_recompute`` is Show-o's way (re-run the whole sequence for every new token); it
gives the same tokens and serves as the reference in tests and benchmarks/bench_inference.py.

Answers are drawn from the text vocabulary only (an answer is text; an image or special token
would also open image spans in the omni mask that the cached path never saw).
``sample.no_repeat_ngram`` and ``sample.repetition_penalty`` apply transformers' logits
processors of the same names to each row's answer so far. A row stops at
the text tokenizer's end-of-text; finished rows are fed [PAD], which no other token attends to.
The sequence-level MoE decides once per sequence: both paths pass one fresh ``layer_state``
per call and reuse it, so the decision taken on the prompt holds for the whole answer.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from unif2ace.config import SampleConfig
from unif2ace.tokens import TASK_MMU, TokenLayout, build_mmu_prompt


def mmu_prompts(layout: TokenLayout, codes: torch.Tensor, questions: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """One inference prefix per image: ``codes`` (B, N) image codes, ``questions`` B id lists."""
    if len(codes) != len(questions):
        raise ValueError(f"{len(codes)} images for {len(questions)} questions")
    return [build_mmu_prompt(layout, c, q) for c, q in zip(codes, questions)]


def left_pad(prompts: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    """Stack 1-D id tensors into (B, P), [PAD] on the left so every prompt ends at column P−1."""
    width = max(len(p) for p in prompts)
    out = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        out[i, width - len(p):] = p
    return out


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from (B, V) logits: greedy at temperature 0, else temperature + nucleus."""
    if temperature <= 0:
        return logits.argmax(-1)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
    if top_p < 1.0:
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
    dev = generator.device if generator is not None else sorted_p.device
    pick = torch.multinomial(sorted_p.to(dev), 1, generator=generator).to(order.device)
    return order.gather(-1, pick).squeeze(-1)


def _kv_stepper(model, ids, task, feats, layer_state) -> tuple[torch.Tensor, Callable]:
    """Encode the prefix once; return its last logits and a function new_tokens (B,) → logits."""
    pad = model.layout.pad_id
    out = model(ids, task, feats, use_cache=True, layer_state=layer_state)  # omni mask from ids
    state = {"cache": out.cache, "keys": ids != pad, "col": ids.shape[1]}

    def step(new: torch.Tensor) -> torch.Tensor:
        keys = torch.cat([state["keys"], (new != pad)[:, None]], dim=1)
        # The new token is text: it sees every earlier non-pad key (causal) and itself.
        mask = keys.clone()
        mask[:, -1] = True
        pos = torch.full((len(new), 1), state["col"], dtype=torch.long, device=new.device)
        o = model(new[:, None], task, feats, attention_mask=mask[:, None, None, :], position_ids=pos,
                  cache=state["cache"], use_cache=True, layer_state=layer_state)
        state.update(cache=o.cache, keys=keys, col=state["col"] + 1)
        return o.logits[:, -1]

    return out.logits[:, -1], step


def _full_stepper(model, ids, task, feats, layer_state) -> tuple[torch.Tensor, Callable]:
    """Show-o's way: every step re-runs the whole sequence under the omni mask built from ids."""
    state = {"ids": ids}

    def step(new: torch.Tensor) -> torch.Tensor:
        state["ids"] = torch.cat([state["ids"], new[:, None]], dim=1)
        return model(state["ids"], task, feats, layer_state=layer_state).logits[:, -1]

    return model(ids, task, feats, layer_state=layer_state).logits[:, -1], step


def _answer_processors(cfg: SampleConfig):
    """transformers' logits processors for ``sample.no_repeat_ngram`` / ``repetition_penalty``,
    applied to the answer's own tokens (the prompt is not searched), or None when both are off."""
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    if cfg.no_repeat_ngram < 0:
        raise ValueError(f"sample.no_repeat_ngram must be ≥ 0, got {cfg.no_repeat_ngram}")
    if cfg.repetition_penalty <= 0:
        raise ValueError(f"sample.repetition_penalty must be > 0, got {cfg.repetition_penalty}")
    procs = LogitsProcessorList()
    if cfg.no_repeat_ngram:
        procs.append(NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram))
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    return procs or None


@torch.inference_mode()
def _generate(model, prompts, cfg, features, generator, max_new_tokens, stop_at_eos, make_stepper):
    cfg = cfg or SampleConfig()
    if not prompts:
        raise ValueError("no prompts given")
    budget = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
    if budget < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {budget}")
    layout = model.layout
    device = next(model.parameters()).device
    if generator is None and cfg.mmu_temperature > 0:
        generator = torch.Generator().manual_seed(cfg.seed)
    ids = left_pad(prompts, layout.pad_id).to(device)
    b = ids.shape[0]
    task = torch.full((b,), TASK_MMU, dtype=torch.long, device=device)
    feats = {}
    for k, v in (features or {}).items():
        if v.shape[0] != b:
            raise ValueError(f"feature {k!r} has {v.shape[0]} rows for {b} prompts")
        feats[k] = v.to(device)
    layer_state = [{} for _ in model.layers]

    was_training = model.training
    model.eval()
    try:
        logits, step = make_stepper(model, ids, task, feats, layer_state)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        tokens = []
        procs = _answer_processors(cfg)
        for t in range(budget):
            scores = logits[:, :layout.text_vocab_size]
            if procs is not None and tokens:
                # finished rows hold [PAD] (outside the scores' width) and their next token is unused
                hist = torch.stack(tokens, 1).masked_fill(done[:, None], layout.eos_id)
                scores = procs(hist, scores.float())
            nxt = sample_next(scores, cfg.mmu_temperature, cfg.top_p, generator)
            nxt = torch.where(done, layout.pad_id, nxt)
            if stop_at_eos:
                done = done | (nxt == layout.eos_id)
            tokens.append(nxt)
            if bool(done.all()) or t == budget - 1:
                break
            logits = step(nxt)
    finally:
        model.train(was_training)

    answers = []
    for row in torch.stack(tokens, 1).tolist():
        if stop_at_eos and layout.eos_id in row:
            row = row[: row.index(layout.eos_id)]
        answers.append(row)
    return answers


def generate_answers(model, prompts: Sequence[torch.Tensor], cfg: SampleConfig | None = None, *,
                     features: dict | None = None, generator: torch.Generator | None = None,
                     max_new_tokens: int | None = None, stop_at_eos: bool = True) -> list[list[int]]:
    """Decode answers with the KV cache. ``prompts``: 1-D id tensors (``mmu_prompts``), any
    lengths; ``features``: per-sample cached features, B rows each. Greedy when
    ``cfg.mmu_temperature`` is 0, else temperature + top-p with ``generator`` (default: seeded
    with ``cfg.seed``). Returns each row's new token ids, without the end-of-text."""
    return _generate(model, prompts, cfg, features, generator, max_new_tokens, stop_at_eos, _kv_stepper)


def decode_full_recompute(model, prompts: Sequence[torch.Tensor], cfg: SampleConfig | None = None, *,
                          features: dict | None = None, generator: torch.Generator | None = None,
                          max_new_tokens: int | None = None, stop_at_eos: bool = True) -> list[list[int]]:
    """Same contract as ``generate_answers``, recomputing the whole sequence per token (reference)."""
    return _generate(model, prompts, cfg, features, generator, max_new_tokens, stop_at_eos, _full_stepper)
