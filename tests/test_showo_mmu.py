"""Show-o's understanding mask (model.mmu_attention=showo): the mask itself against one built
from a reading of Show-o's ``create_attention_mask_for_mmu`` (training/prompting_utils.py),
and an imported Show-o checkpoint reproducing Show-o's MMU logits.

Show-o's function, as read: start from a lower-triangular (causal) (N, 1, L, L) boolean
mask, find the <|eoi|> positions, and set every query's keys 0 … (first <|eoi|>) to True.
"""
import dataclasses

import pytest
import torch
from test_import_phi import random_phi

from unif2ace.checkpoint.adapters import import_checkpoint
from unif2ace.config import load_config
from unif2ace.model.unif2ace import UniF2ace
from unif2ace.tokens import TASK_MMU, TokenLayout, build_mmu, build_mmu_prompt, build_t2i, omni_attention_mask

L = TokenLayout(text_vocab_size=100, codebook_size=16, bos_id=1, eos_id=2)


def showo_mmu_mask(seq: torch.Tensor, eoi_id: int) -> torch.Tensor:
    """Written from the reading above; no code of ours involved. (N, 1, L, L) bool."""
    n, l = seq.shape
    mask = torch.zeros(n, 1, l, l, dtype=torch.bool)
    eoi = [j for j in range(l) if seq[0, j].item() == eoi_id][0]  # Show-o takes the batch's first
    for q in range(l):
        for k in range(l):
            mask[:, 0, q, k] = k <= q or k <= eoi
    return mask


def _mmu_rows(layout, n_img, text_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for turns in ([([20, 21], [30, 31])], [([22], [32]), ([23, 24], [33])], [([25] * 3, [34] * 4)]):
        codes = torch.randint(0, layout.codebook_size, (n_img,), generator=g)
        rows.append(build_mmu(layout, codes, turns, text_len)[0])
    return torch.stack(rows)


def test_showo_mask_matches_the_reading_on_training_rows_and_prompts():
    ids = _mmu_rows(L, 4, 12)
    ours = omni_attention_mask(ids, L, "showo")
    ref = showo_mmu_mask(ids, L.eoi)
    real = ids != L.pad_id
    # Every query that is not [PAD] sees exactly what Show-o lets it see. (Show-o does not
    # hide [PAD] keys; MMU pads are on the right, so only pad queries, which carry no loss,
    # could differ.)
    for b in range(len(ids)):
        assert torch.equal(ours[b, 0][real[b]], ref[b, 0][real[b]])
    # inference prefixes have no pads: the whole matrix agrees
    p = build_mmu_prompt(L, torch.arange(4), [20, 21, 22])[None]
    assert torch.equal(omni_attention_mask(p, L, "showo"), showo_mmu_mask(p, L.eoi))
    # the omni default differs in exactly one place: the <|mmu|> query row before the image
    omni = omni_attention_mask(ids, L)
    diff = (omni != ours)[:, 0] & real[:, :, None]
    assert diff.any(-1).nonzero()[:, 1].unique().tolist() == [0]


def test_showo_mask_leaves_t2i_rows_alone():
    codes = torch.arange(4)
    ids, _ = build_t2i(L, [10, 11], codes, torch.tensor([True, False, True, False]), text_len=6)
    assert torch.equal(omni_attention_mask(ids[None], L, "showo"), omni_attention_mask(ids[None], L))
    with pytest.raises(ValueError, match="unknown MMU attention 'causal'"):
        omni_attention_mask(ids[None], L, "causal")


def _fake_showo_checkpoint(tmp_path, layout):
    """Show-o's Phi (transformers, qk_layernorm as Show-o) saved the way Show-o saves it."""
    import json

    from safetensors.torch import save_file

    phi = random_phi(layout.vocab_size, qk_layernorm=True, seed=0)  # qk_layernorm as Show-o
    d = tmp_path / "showo"
    d.mkdir()
    save_file({"showo." + k: v.clone().contiguous() for k, v in phi.state_dict().items()},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({
        "_class_name": "Showo", "llm_vocab_size": layout.text_vocab_size, "vocab_size": layout.vocab_size,
        "codebook_size": layout.codebook_size, "num_vq_tokens": 16}))
    return phi, d


def test_imported_showo_reproduces_showo_mmu_logits(tmp_path):
    base = load_config("tiny")  # text 512, codebook 64, 16 image tokens
    layout = TokenLayout.from_model_config(base.model)
    phi, d = _fake_showo_checkpoint(tmp_path, layout)
    model, cfg = import_checkpoint(d, base)
    model.eval()
    assert cfg.model.mmu_attention == "showo"  # set by the importer for Show-o checkpoints
    ids = _mmu_rows(layout, 16, 24, seed=1)
    real = ids != layout.pad_id
    task = torch.full((len(ids),), TASK_MMU)
    with torch.no_grad():
        ref = phi(input_ids=ids, attention_mask=showo_mmu_mask(ids, layout.eoi)).logits
        ours = model(ids, task).logits
        omni = UniF2ace(dataclasses.replace(cfg.model, mmu_attention="omni"))
        omni.load_state_dict(model.state_dict())
        under_omni = omni.eval()(ids, task).logits
    err = (ours - ref).abs()[real].max().item()
    assert err < 1e-5, err
    # the default mask on the same weights does not reproduce them: the <|mmu|> state differs
    first_text = 16 + 3  # <|mmu|> <|soi|> img×16 <|eoi|> then <sot>
    gap = (under_omni - ref).abs()[:, first_text].max().item()
    assert gap > 50 * max(err, 1e-6), (gap, err)  # random tiny weights: ~1e-3 (Show-o 512: up to 1.8)
