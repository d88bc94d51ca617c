"""model.mmu_image_features: cached CLIP features added to the image tokens of understanding rows."""
import pytest
import torch

from unif2ace.config import load_config
from unif2ace.data.shards import ShardError, check_compatible
from unif2ace.model.image_input import features_per_image_token
from unif2ace.model.unif2ace import UniF2ace
from unif2ace.tokens import build_mmu, build_t2i, collate

ON = ["model.mmu_image_features=true", "model.seq_moe.clip_tokens=patches", "model.seq_moe.clip_dim=8"]


def test_coarser_grid_is_repeated_onto_the_codes():
    f = torch.randn(2, 4, 3)  # a 2×2 feature grid onto a 4×4 code grid
    out = features_per_image_token(f, 16)
    assert out.shape == (2, 16, 3)
    for k in range(16):
        r, c = divmod(k, 4)
        assert torch.equal(out[:, k], f[:, (r // 2) * 2 + c // 2])


def test_finer_grid_is_averaged_and_pooled_reaches_every_token():
    f = torch.randn(1, 16, 3)  # 4×4 onto 2×2: each code cell is the mean of its four feature cells
    out = features_per_image_token(f, 4)
    for k in range(4):
        r, c = divmod(k, 2)
        cells = [(2 * r + i) * 4 + 2 * c + j for i in (0, 1) for j in (0, 1)]
        torch.testing.assert_close(out[0, k], f[0, cells].mean(0))
    pooled = torch.randn(2, 3)
    assert torch.equal(features_per_image_token(pooled, 9), pooled[:, None].expand(2, 9, 3))
    with pytest.raises(ValueError, match="square"):
        features_per_image_token(torch.randn(1, 6, 3), 16)


def _rows(cfg, g):
    from unif2ace.tokens import TokenLayout
    m = cfg.model
    L = TokenLayout.from_model_config(m)
    codes = torch.randint(0, m.codebook_size, (2, m.num_image_tokens), generator=g)
    rows = [build_t2i(L, [5, 6, 7], codes[0], torch.zeros(m.num_image_tokens, dtype=torch.bool), m.text_len),
            build_mmu(L, codes[1], [([9, 10], [11, 12])], m.text_len)]
    return collate(rows, [0, 1])


def _models():
    torch.manual_seed(0)
    off = UniF2ace(load_config("tiny").model).eval()
    torch.manual_seed(0)
    on = UniF2ace(load_config("tiny", ON).model).eval()
    return off, on


def test_only_understanding_rows_read_the_features_and_other_weights_are_unchanged():
    off, on = _models()
    sd_off, sd_on = off.state_dict(), on.state_dict()
    assert set(sd_on) - set(sd_off) == {"image_input.norm.weight", "image_input.norm.bias",
                                        "image_input.proj.weight", "image_input.proj.bias"}
    assert all(torch.equal(sd_off[k], sd_on[k]) for k in sd_off)  # the same random draws
    g = torch.Generator().manual_seed(1)
    b = _rows(load_config("tiny"), g)
    f1 = {"clip_patches": torch.randn(2, 4, 8, generator=g)}
    f2 = {"clip_patches": torch.randn(2, 4, 8, generator=g)}
    with torch.no_grad():
        base = off(b.input_ids, b.task).logits
        y1 = on(b.input_ids, b.task, features=f1).logits
        y2 = on(b.input_ids, b.task, features=f2).logits
    torch.testing.assert_close(y1[0], base[0])   # the T2I row: its image is the target, untouched
    torch.testing.assert_close(y2[0], base[0])
    assert (y1[1] - base[1]).abs().max() > 1e-3  # the MMU row reads the features
    assert (y1[1] - y2[1]).abs().max() > 1e-3


def test_gradients_reach_the_map_and_bad_input_is_refused():
    _, on = _models()
    on.train()
    g = torch.Generator().manual_seed(1)
    b = _rows(load_config("tiny"), g)
    out = on(b.input_ids, b.task, features={"clip_patches": torch.randn(2, 4, 8, generator=g)})
    out.logits[1].square().mean().backward()
    assert on.image_input.proj.weight.grad.abs().sum() > 0
    # a batch of generation rows only: the map still gets a (zero) gradient, as ZeRO-1/2 needs
    on.zero_grad()
    t2i = collate([(b.input_ids[0], b.labels[0])], [0])
    out = on(t2i.input_ids, t2i.task, features={"clip_patches": torch.randn(1, 4, 8, generator=g)})
    out.logits.square().mean().backward()
    assert on.image_input.proj.weight.grad is not None and not on.image_input.proj.weight.grad.any()
    with pytest.raises(ValueError, match="clip_patches"):
        on(b.input_ids, b.task, features={"clip": torch.randn(2, 8)})
    with pytest.raises(ValueError, match="whole image span"):
        on(b.input_ids[:, :10], b.task, features={"clip_patches": torch.randn(2, 4, 8)})


def test_shards_without_the_feature_are_refused_even_without_the_sequence_moe(tmp_path):
    cfg = load_config("tiny", ON).model
    assert not cfg.seq_moe.enabled
    m = cfg
    manifest = {"complete": True, "codebook_size": m.codebook_size, "num_image_tokens": m.num_image_tokens,
                "text_vocab_size": m.text_vocab_size, "bos_id": m.bos_id, "eos_id": m.eos_id,
                "feature_shapes": {"clip": [8]}}
    with pytest.raises(ShardError, match="clip_patches"):
        check_compatible(manifest, cfg, tmp_path)
    manifest["feature_shapes"]["clip_patches"] = [4, 8]
    check_compatible(manifest, cfg, tmp_path)


# --------------------------------------------------------------------------- model.image_positions


def test_image_positions_add_one_learnt_vector_per_image_token_in_every_row():
    torch.manual_seed(0)
    off = UniF2ace(load_config("tiny").model).eval()
    torch.manual_seed(0)
    on = UniF2ace(load_config("tiny", ["model.image_positions=true"]).model).eval()
    sd_off, sd_on = off.state_dict(), on.state_dict()
    assert set(sd_on) - set(sd_off) == {"image_positions.table"}
    assert all(torch.equal(sd_off[k], sd_on[k]) for k in sd_off)  # the same random draws
    table = on.image_positions.table
    assert table.std() > 0  # initialised, not left at zero
    g = torch.Generator().manual_seed(1)
    b = _rows(load_config("tiny"), g)
    x = torch.randn(*b.input_ids.shape, on.cfg.hidden_size, generator=g)
    y = on.image_positions(x, b.input_ids)
    img = on.layout.is_image(b.input_ids)
    for r in range(2):  # the T2I row (codes, no mask) and the MMU row: the k-th image token gets table[k]
        torch.testing.assert_close(y[r][img[r]], x[r][img[r]] + table)
        torch.testing.assert_close(y[r][~img[r]], x[r][~img[r]])
    with torch.no_grad():
        assert (on(b.input_ids, b.task).logits - off(b.input_ids, b.task).logits).abs().amax(-1).amax(-1).min() > 1e-3


def test_image_positions_hold_for_masked_tokens_get_gradients_and_refuse_a_partial_span():
    cfg = load_config("tiny", ["model.image_positions=true"])
    on = UniF2ace(cfg.model).train()
    from unif2ace.tokens import TokenLayout
    m = cfg.model
    L = TokenLayout.from_model_config(m)
    codes = torch.randint(0, m.codebook_size, (m.num_image_tokens,))
    masked = torch.arange(m.num_image_tokens) % 2 == 0  # [MASK] tokens are image positions too
    b = collate([build_t2i(L, [5, 6], codes, masked, m.text_len)], [0])
    x = torch.zeros(*b.input_ids.shape, m.hidden_size)
    y = on.image_positions(x, b.input_ids)
    assert torch.equal(y[0][L.is_image(b.input_ids[0])], on.image_positions.table.detach())
    on(b.input_ids, b.task).logits.square().mean().backward()
    assert on.image_positions.table.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="whole image span"):
        on(b.input_ids[:, :-10], b.task)
