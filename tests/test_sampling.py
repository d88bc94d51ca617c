"""MaskGIT text-to-face sampler invariants on the tiny recipe (random init, seeded).

    pytest tests/test_sampling.py -q
"""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from unif2ace.config import load_config
from unif2ace.inference.t2i import (codes_to_pil, generate_codes, gumbel_temperature, masked_after,
                                    save_png)
from unif2ace.model.unif2ace import UniF2ace
from unif2ace.tokens import build_t2i

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]


@pytest.fixture(scope="module")
def setup():
    # init_std 0.1 rather than 0.02: a near-uniform random model would hide prompt/guidance effects.
    cfg = load_config("tiny", ["model.init_std=0.1"])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).eval()
    return cfg, model


def sample_cfg(cfg, **kw):
    return dataclasses.replace(cfg.sample, **kw)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_schedule_hand_values():
    # cosine: floor(U0·cos(π/2·(s+1)/4)); cos(π/8)=.9239, cos(π/4)=.7071, cos(3π/8)=.3827
    assert masked_after(torch.tensor([16]), 0, 4).item() == 14
    assert [masked_after(torch.tensor([16, 10]), s, 4).tolist() for s in range(4)] == \
        [[14, 9], [11, 7], [6, 3], [0, 0]]
    assert [masked_after(torch.tensor([16]), s, 4, "linear").item() for s in range(4)] == [12, 8, 4, 0]


def test_gumbel_temperature_is_linear_not_compounding():
    # Show-o's compounding product would give 4.5·0.75·0.5 = 1.6875 at step 1.
    assert [gumbel_temperature(4.5, s, 4) for s in range(4)] == [3.375, 2.25, 1.125, 0.0]


def test_reveal_counts_follow_schedule_and_no_mask_remains(setup):
    cfg, model = setup
    known = torch.full((3, 16), -1)
    known[2, :6] = torch.tensor([1, 2, 3, 4, 5, 6])  # row 2: 10 unknown tokens
    codes, trace = generate_codes(model, PROMPTS, sample_cfg(cfg, steps=4), known_codes=known,
                                  generator=gen(1), return_trace=True)
    masked = [(t == -1).sum(1).tolist() for t in trace]
    assert masked == [[14, 14, 9], [11, 11, 7], [6, 6, 3], [0, 0, 0]]
    assert codes.shape == (3, 16) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < cfg.model.codebook_size


def test_more_steps_than_tokens_reveals_one_per_step_and_stops(setup):
    cfg, model = setup
    known = torch.arange(16).repeat(1, 1)
    known[0, 3] = known[0, 9] = -1  # two unknown tokens, eight steps
    codes, trace = generate_codes(model, PROMPTS[:1], sample_cfg(cfg, steps=8), known_codes=known,
                                  generator=gen(2), return_trace=True)
    assert [(t == -1).sum().item() for t in trace] == [1, 0]
    keep = torch.ones(16, dtype=torch.bool)
    keep[[3, 9]] = False
    assert torch.equal(codes[0, keep], known[0, keep])


def test_known_tokens_never_change(setup):
    cfg, model = setup
    known = torch.full((3, 16), -1)
    known[:, ::3] = torch.randint(0, 64, (3, 6), generator=gen(3))
    codes, trace = generate_codes(model, PROMPTS, sample_cfg(cfg, steps=6), known_codes=known,
                                  generator=gen(4), return_trace=True)
    given = known >= 0
    assert torch.equal(codes[given], known[given])
    for s, state in enumerate(trace):
        decided = state >= 0
        assert torch.equal(state[given], known[given])
        for later in trace[s + 1:] + [codes]:
            assert torch.equal(later[decided], state[decided]), f"a token decided at step {s} changed"


def test_guidance_noop_equals_conditional_path(setup):
    cfg, model = setup
    cond_only = generate_codes(model, PROMPTS, sample_cfg(cfg, guidance_form="none"), generator=gen(5))
    showo0 = generate_codes(model, PROMPTS, sample_cfg(cfg, guidance_form="showo", guidance=0.0), generator=gen(5))
    plus1 = generate_codes(model, PROMPTS, sample_cfg(cfg, guidance_form="uncond_plus", guidance=1.0),
                           generator=gen(5))
    assert torch.equal(showo0, cond_only)
    assert torch.equal(plus1, cond_only)
    guided = generate_codes(model, PROMPTS, sample_cfg(cfg, guidance_form="uncond_plus", guidance=4.0),
                            generator=gen(5))
    assert not torch.equal(guided, cond_only), "guidance had no effect: uncond rows not used"


def test_cond_and_uncond_rows_in_one_forward(setup):
    cfg, model = setup
    calls = []
    hook = model.register_forward_pre_hook(lambda mod, args: calls.append(args[0].clone()))
    try:
        generate_codes(model, PROMPTS, sample_cfg(cfg, steps=3), generator=gen(6))
    finally:
        hook.remove()
    assert len(calls) == 3
    n, tl, layout = cfg.model.num_image_tokens, cfg.model.text_len, model.layout
    empty = build_t2i(layout, [], torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool), tl)[0]
    for ids in calls:
        assert ids.shape[0] == 2 * len(PROMPTS)
        for i, p in enumerate(PROMPTS):
            want = build_t2i(layout, p, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool), tl)[0]
            assert torch.equal(ids[i, :tl + 2], want[:tl + 2])
            assert torch.equal(ids[len(PROMPTS) + i, :tl + 2], empty[:tl + 2])
            assert torch.equal(ids[i, tl + 2:], ids[len(PROMPTS) + i, tl + 2:])  # same image state
    # step 0 sees a fully masked image; the last step fewer masks than the first
    assert bool((calls[0][:, tl + 2:tl + 2 + n] == layout.mask_id).all())
    assert (calls[-1] == layout.mask_id).sum() < (calls[0] == layout.mask_id).sum()


def test_seeds_and_inputs_untouched(setup):
    cfg, model = setup
    prompts = [list(p) for p in PROMPTS]
    known = torch.full((3, 16), -1)
    known[0, :4] = 7
    known_copy = known.clone()
    feats = {"clip": torch.randn(3, 8)}
    feats_copy = {k: v.clone() for k, v in feats.items()}
    model.train()
    a = generate_codes(model, prompts, cfg.sample, known_codes=known, features=feats, generator=gen(7))
    assert model.training, "the sampler must restore the model's train/eval mode"
    model.eval()
    b = generate_codes(model, prompts, cfg.sample, known_codes=known, features=feats, generator=gen(7))
    c = generate_codes(model, prompts, cfg.sample, known_codes=known, features=feats, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert prompts == PROMPTS
    assert torch.equal(known, known_copy)
    assert feats.keys() == feats_copy.keys() and all(torch.equal(feats[k], feats_copy[k]) for k in feats)


def test_bad_inputs_are_rejected(setup):
    cfg, model = setup
    with pytest.raises(ValueError, match="known_codes has shape"):
        generate_codes(model, PROMPTS, cfg.sample, known_codes=torch.full((2, 16), -1))
    with pytest.raises(ValueError, match="steps"):
        generate_codes(model, PROMPTS, sample_cfg(cfg, steps=0))
    with pytest.raises(ValueError, match="guidance_form"):
        generate_codes(model, PROMPTS, sample_cfg(cfg, guidance_form="cfg++"))


class ColourDecoder:
    """A stand-in image tokenizer: code k → a 2×2 patch of grey level k/63 in [−1, 1]."""

    def decode_codes(self, codes, hw):
        h, w = hw
        grey = codes.float().view(-1, 1, h, w) / 63 * 2 - 1
        return grey.repeat_interleave(2, -1).repeat_interleave(2, -2).expand(-1, 3, -1, -1)


def test_decode_to_png(tmp_path):
    codes = torch.tensor([[0, 63, 21, 42]])
    (img,) = codes_to_pil(ColourDecoder(), codes)
    assert img.size == (4, 4) and img.mode == "RGB"
    px = np.asarray(img)
    assert px[0, 0].tolist() == [0, 0, 0] and px[0, 2].tolist() == [255, 255, 255]
    assert px[3, 1, 0] == 85 and px[3, 3, 0] == 170  # 21/63·255, 42/63·255
    path = save_png(img, tmp_path / "sub" / "a.png")
    assert np.array_equal(np.asarray(Image.open(path)), px)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]  # no temp file left behind
    with pytest.raises(ValueError, match="square"):
        codes_to_pil(ColourDecoder(), torch.zeros(1, 6, dtype=torch.long))


@pytest.mark.parametrize("overrides", [["model.moe.enabled=true"], ["model.seq_moe.enabled=true"]],
                         ids=["token_moe", "seq_moe"])
def test_sampler_with_moe(overrides):
    cfg = load_config("tiny", ["model.init_std=0.1", *overrides])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).eval()
    s = sample_cfg(cfg, steps=4)
    codes, trace = generate_codes(model, PROMPTS, s, generator=gen(9), return_trace=True)
    assert [(t == -1).sum(1).tolist() for t in trace] == [[14] * 3, [11] * 3, [6] * 3, [0] * 3]
    # with the sequence MoE the noise feature is drawn from the generator: a seed fixes the image
    assert torch.equal(generate_codes(model, PROMPTS, s, generator=gen(9)), codes)
    cond = generate_codes(model, PROMPTS, sample_cfg(cfg, guidance_form="none"), generator=gen(10))
    noop = generate_codes(model, PROMPTS, sample_cfg(cfg, guidance_form="showo", guidance=0.0), generator=gen(10))
    assert torch.equal(cond, noop)
