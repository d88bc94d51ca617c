"""KV-cache understanding decoding against Show-o-style full recomputation (tiny recipe, seeded).

    pytest tests/test_kv_decode.py -q
"""
import dataclasses

import pytest
import torch

from unif2ace.config import load_config
from unif2ace.inference.mmu import (decode_full_recompute, generate_answers, left_pad, mmu_prompts,
                                    sample_next)
from unif2ace.model.unif2ace import UniF2ace

QUESTIONS = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14, 15, 16]]  # different lengths → left pads
NEW = 12


def make(overrides=()):
    # init_std 0.1: with 0.02 attention is nearly uniform and a wrong position would go unseen.
    cfg = load_config("tiny", ["model.init_std=0.1", *overrides])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).eval()
    codes = torch.randint(0, cfg.model.codebook_size, (len(QUESTIONS), cfg.model.num_image_tokens),
                          generator=torch.Generator().manual_seed(1))
    return cfg, model, mmu_prompts(model.layout, codes, QUESTIONS)


@pytest.fixture(scope="module")
def setup():
    return make()


def test_left_pad_aligns_ends(setup):
    cfg, model, prompts = setup
    ids = left_pad(prompts, model.layout.pad_id)
    lens = [len(p) for p in prompts]
    assert ids.shape == (3, max(lens)) and len(set(lens)) == 3
    for row, p in zip(ids, prompts):
        assert torch.equal(row[-len(p):], p)
        assert bool((row[:-len(p)] == model.layout.pad_id).all())


def test_kv_cache_greedy_equals_full_recompute(setup):
    cfg, model, prompts = setup
    kv = generate_answers(model, prompts, cfg.sample, max_new_tokens=NEW, stop_at_eos=False)
    full = decode_full_recompute(model, prompts, cfg.sample, max_new_tokens=NEW, stop_at_eos=False)
    assert [len(r) for r in kv] == [NEW] * 3
    assert kv == full
    assert len({tuple(r) for r in kv}) == 3, "rows should differ (different images and questions)"
    assert all(0 <= t < cfg.model.text_vocab_size for r in kv for t in r)


def test_batch_equals_rows_alone(setup):
    """Left pads are hidden: a padded row decodes as it does alone."""
    cfg, model, prompts = setup
    batch = generate_answers(model, prompts, cfg.sample, max_new_tokens=NEW, stop_at_eos=False)
    alone = [generate_answers(model, [p], cfg.sample, max_new_tokens=NEW, stop_at_eos=False)[0] for p in prompts]
    assert batch == alone


def test_stops_at_eos_per_row(setup):
    cfg, model, prompts = setup
    free = generate_answers(model, prompts, cfg.sample, max_new_tokens=NEW, stop_at_eos=False)
    eos = free[0][3]  # make row 0's 4th token the end-of-text
    cfg2, model2, _ = make([f"model.eos_id={eos}"])
    model2.load_state_dict(model.state_dict())
    want = [r[: r.index(eos)] if eos in r else r for r in free]
    assert len(want[0]) <= 3 and max(len(r) for r in want) == NEW  # both cases occur
    kv = generate_answers(model2, prompts, cfg2.sample, max_new_tokens=NEW)
    full = decode_full_recompute(model2, prompts, cfg2.sample, max_new_tokens=NEW)
    assert kv == want
    assert full == want


def test_sampling_seeded_and_consistent(setup):
    cfg, model, prompts = setup
    s = dataclasses.replace(cfg.sample, mmu_temperature=1.0, top_p=0.9)
    run = lambda fn, seed: fn(model, prompts, s, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                              max_new_tokens=NEW, stop_at_eos=False)
    a, b, c = run(generate_answers, 0), run(generate_answers, 0), run(generate_answers, 1)
    assert a == b and a != c
    assert run(decode_full_recompute, 0) == a
    tiny_p = dataclasses.replace(s, top_p=1e-6)  # nucleus of one token = greedy
    greedy = generate_answers(model, prompts, cfg.sample, max_new_tokens=NEW, stop_at_eos=False)
    assert generate_answers(model, prompts, tiny_p, max_new_tokens=NEW, stop_at_eos=False) == greedy


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(400, 4)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, 0.7, g).tolist()) == {0, 1}      # 0.5 + 0.3 ≥ 0.7
    assert set(sample_next(logits, 1.0, 0.5, g).tolist()) == {0}         # 0.5 ≥ 0.5
    assert set(sample_next(logits, 1.0, 1.0, g).tolist()) == {0, 1, 2, 3}
    assert sample_next(logits[:2], 0.0, 1.0, None).tolist() == [0, 0]


def test_inputs_untouched_and_mode_restored(setup):
    cfg, model, prompts = setup
    copies = [p.clone() for p in prompts]
    model.train()
    generate_answers(model, prompts, cfg.sample, max_new_tokens=4)
    assert model.training
    model.eval()
    assert all(torch.equal(p, c) for p, c in zip(prompts, copies))


MOE = {"token_moe": ["model.moe.enabled=true"], "seq_moe": ["model.seq_moe.enabled=true"],
       "both": ["model.moe.enabled=true", "model.seq_moe.enabled=true"],
       "showo_mmu_mask": ["model.mmu_attention=showo"],  # left pads stay hidden under it too
       "image_features": ["model.mmu_image_features=true"],  # image tokens found by id in left-padded prompts
       "image_positions": ["model.image_positions=true"]}


@pytest.mark.parametrize("variant", list(MOE))
def test_kv_cache_equals_full_recompute_with_moe(variant):
    cfg, model, prompts = make(MOE[variant])
    s, g = cfg.model.seq_moe, torch.Generator().manual_seed(2)

    def feats():
        return {"clip": torch.randn(3, s.clip_dim, generator=g), "face": torch.randn(3, s.face_dim, generator=g),
                "face_found": torch.tensor([True, False, True])}

    f1, f2 = feats(), feats()
    kw = dict(max_new_tokens=8, stop_at_eos=False)
    kv = generate_answers(model, prompts, cfg.sample, features=f1, **kw)
    assert kv == decode_full_recompute(model, prompts, cfg.sample, features=f1, **kw)
    alone = [generate_answers(model, [p], cfg.sample, features={k: v[i:i + 1] for k, v in f1.items()}, **kw)[0]
             for i, p in enumerate(prompts)]
    assert kv == alone
    if cfg.model.seq_moe.enabled or cfg.model.mmu_image_features:  # features are read: other features, other answers
        assert generate_answers(model, prompts, cfg.sample, features=f2, **kw) != kv


def test_isolated_turns_decode_as_causal_up_to_the_answer_end():
    # model.mmu_turns=isolated changes only rows that pack several turns; a decoder prompt is one
    # turn, so until its <eot> (where decoding stops) the answers are those of the causal model.
    cfg, model, prompts = make(["model.mmu_turns=isolated", "model.moe.enabled=true"])
    causal = UniF2ace(dataclasses.replace(cfg.model, mmu_turns="causal")).eval()
    causal.load_state_dict(model.state_dict())
    kw = dict(max_new_tokens=12)
    kv = generate_answers(model, prompts, cfg.sample, **kw)
    assert kv == decode_full_recompute(model, prompts, cfg.sample, **kw)
    assert kv == generate_answers(causal, prompts, cfg.sample, **kw)


def _ngrams(row, n):
    return [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]


def test_no_repeat_ngram_bans_repeats_and_keeps_the_rest():
    cfg, model, prompts = make()
    kw = dict(max_new_tokens=40, stop_at_eos=False)
    free = generate_answers(model, prompts, cfg.sample, **kw)
    assert any(len(set(_ngrams(r, 2))) < len(_ngrams(r, 2)) for r in free), "greedy should loop here"
    s = dataclasses.replace(cfg.sample, no_repeat_ngram=2)
    banned = generate_answers(model, prompts, s, **kw)
    assert banned == decode_full_recompute(model, prompts, s, **kw)
    for f, b in zip(free, banned):
        assert len(set(_ngrams(b, 2))) == len(_ngrams(b, 2))
        # identical up to the token that would have closed the first repeated bigram
        first = next((i for i in range(1, len(f)) if tuple(f[i - 1:i + 1]) in _ngrams(f[:i], 2)), len(f))
        assert b[:first] == f[:first]
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        generate_answers(model, prompts, dataclasses.replace(cfg.sample, no_repeat_ngram=-1), **kw)


def test_repetition_penalty_fewer_repeats_same_on_both_paths_and_with_early_stops():
    cfg, model, prompts = make()
    kw = dict(max_new_tokens=40, stop_at_eos=False)
    free = generate_answers(model, prompts, cfg.sample, **kw)
    s = dataclasses.replace(cfg.sample, repetition_penalty=2.0)
    pen = generate_answers(model, prompts, s, **kw)
    assert pen == decode_full_recompute(model, prompts, s, **kw)
    repeats = lambda rows: sum(len(r) - len(set(r)) for r in rows)  # noqa: E731
    assert repeats(pen) < repeats(free)
    # Rows that stop early hold [PAD] (outside the text scores) while the others go on.
    eos = next(t for t in pen[0][3:] if t not in pen[0][:3] and any(t not in r for r in pen[1:]))
    cfg2, model2, _ = make([f"model.eos_id={eos}"])
    model2.load_state_dict(model.state_dict())
    want = [r[: r.index(eos)] if eos in r else r for r in pen]
    assert 3 <= len(want[0]) < 40 and max(len(r) for r in want) == 40
    s2 = dataclasses.replace(cfg2.sample, repetition_penalty=2.0)
    assert generate_answers(model2, prompts, s2, max_new_tokens=40) == want
    with pytest.raises(ValueError, match="repetition_penalty"):
        generate_answers(model, prompts, dataclasses.replace(cfg.sample, repetition_penalty=0.0), **kw)
