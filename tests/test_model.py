"""Model wiring: layouts, activation checkpointing, gradients, init."""
import dataclasses
import pytest
import torch

from unif2ace.config import load_config
from unif2ace.losses import total_loss
from unif2ace.model.unif2ace import UniF2ace
from unif2ace.tokens import build_mmu, build_t2i, collate, mask_image_codes


def _batch(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    from unif2ace.tokens import TokenLayout
    L = TokenLayout.from_model_config(m)
    codes = torch.randint(0, m.codebook_size, (4, m.num_image_tokens), generator=g)
    masked, ratio = mask_image_codes(codes, torch.tensor([0.3, 0.9, 0.5, 0.5]), g)
    rows = [build_t2i(L, [5, 6, 7], codes[0], masked[0], m.text_len),
            build_t2i(L, [], codes[1], masked[1], m.text_len),
            build_mmu(L, codes[2], [([9, 10], [11, 12])], m.text_len),
            build_mmu(L, codes[3], [([9], [13]), ([14], [15, 16])], m.text_len)]
    b = collate(rows, [0, 0, 1, 1])
    b.mask_ratio = ratio
    return b, L


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_forward_backward_all_params_get_grads(layout):
    cfg = load_config("tiny", [f"model.block_layout={layout}"])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model)
    b, L = _batch(cfg)
    out = model(b.input_ids, b.task)
    assert out.logits.shape == (4, cfg.model.seq_len, L.vocab_size)
    loss, _ = total_loss(out, b, L, cfg.loss)
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert (model.layers[0].ffn_layernorm is not None) == (layout == "sequential")


def test_activation_checkpointing_takes_effect_and_matches():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    plain = UniF2ace(cfg.model)
    cfg_ck = load_config("tiny", ["model.activation_checkpointing=true"])
    ck = UniF2ace(cfg_ck.model)
    ck.load_state_dict(plain.state_dict())
    calls = []
    ck.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    b, L = _batch(cfg)
    grads = []
    for m in (plain, ck):
        m.train()
        loss, _ = total_loss(m(b.input_ids, b.task), b, L, cfg.loss)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert len(calls) == 2, "the block is recomputed in backward"
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_init_is_finite_and_explicit():
    cfg = load_config("tiny")
    model = UniF2ace(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.init_weights()
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
    assert model.embed_tokens.weight.std().item() == pytest.approx(cfg.model.init_std, rel=0.2)


def test_pad_rows_stay_finite():
    cfg = load_config("tiny")
    model = UniF2ace(cfg.model)
    b, _ = _batch(cfg)
    assert (b.input_ids == model.layout.pad_id).any()
    assert torch.isfinite(model(b.input_ids, b.task).logits).all()


def test_trimmed_batch_gives_the_same_losses_and_real_token_logits():
    # tokens.trim_padding rotates T2I left pads to the end and cuts all-pad columns: under rotary
    # attention with masked pads the real tokens' logits and every loss are unchanged.
    from unif2ace.tokens import trim_padding

    cfg = load_config("tiny", ["model.seq_moe.enabled=false"])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).double().eval()
    b, L = _batch(cfg)
    ids, labels = trim_padding(b.input_ids, b.labels, L.pad_id)
    assert ids.shape[1] < b.input_ids.shape[1]
    for r in range(ids.shape[0]):  # same real tokens in the same order, pads only at the end
        real = b.input_ids[r][b.input_ids[r] != L.pad_id]
        assert torch.equal(ids[r][: len(real)], real) and (ids[r][len(real):] == L.pad_id).all()
    t = dataclasses.replace(b, input_ids=ids, labels=labels)
    with torch.no_grad():
        full, cut = model(b.input_ids, b.task), model(ids, b.task)
        lf, mf = total_loss(full, b, L, cfg.loss)
        lc, mc = total_loss(cut, t, L, cfg.loss)
    torch.testing.assert_close(lc, lf, rtol=1e-10, atol=1e-10)
    for r in range(ids.shape[0]):
        keep_f = b.input_ids[r] != L.pad_id
        keep_c = ids[r] != L.pad_id
        torch.testing.assert_close(cut.logits[r][keep_c], full.logits[r][keep_f], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("moe", ["false", "true"])
def test_isolated_turns_train_the_single_turn_examples(moe):
    # model.mmu_turns=isolated: a row packing k (question, answer) turns gives every answer token
    # the logits it has in a row holding that turn alone — what evaluation and decoding see.
    from unif2ace.tokens import TokenLayout

    cfg = load_config("tiny", ["model.seq_moe.enabled=false", f"model.moe.enabled={moe}", "model.mmu_turns=isolated"])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).double().eval()
    L = TokenLayout.from_model_config(cfg.model)
    codes = torch.randint(0, cfg.model.codebook_size, (cfg.model.num_image_tokens,))
    turns = [([9, 10], [11, 12]), ([14], [15, 16, 17]), ([18, 19, 20], [21])]
    packed = collate([build_mmu(L, codes, turns, cfg.model.text_len)], [1])
    singles = collate([build_mmu(L, codes, [t], cfg.model.text_len) for t in turns], [1, 1, 1])
    with torch.no_grad():
        lp = model(packed.input_ids, packed.task).logits[0]
        ls = model(singles.input_ids, singles.task).logits
    start = 4 + cfg.model.num_image_tokens  # <|mmu|> <|soi|> image <|eoi|> <sot>, then the first question
    at = start
    for i, (q, a) in enumerate(turns):
        n = len(q) + len(a) + 1
        torch.testing.assert_close(lp[at:at + n], ls[i, start:start + n], rtol=1e-9, atol=1e-9)
        at += n
    causal = UniF2ace(dataclasses.replace(cfg.model, mmu_turns="causal")).double().eval()
    causal.load_state_dict(model.state_dict())
    with torch.no_grad():  # the default lets later turns read earlier ones: different logits
        lc = causal(packed.input_ids, packed.task).logits[0]
    n0 = len(turns[0][0]) + len(turns[0][1]) + 1
    assert not torch.allclose(lc[start + n0:at], lp[start + n0:at], atol=1e-6)
