"""Token layout, sequence builders and the omni-attention mask on hand-built sequences."""
import torch

from unif2ace.tokens import (IGNORE, SPECIAL_TOKENS, TokenLayout, build_mmu, build_mmu_prompt, build_t2i, collate,
                             mask_image_codes, mask_ratio, mmu_turn_index, mmu_turn_positions, omni_attention_mask)

PHI = TokenLayout(text_vocab_size=50295, codebook_size=8192, bos_id=50256, eos_id=50256)
L = TokenLayout(text_vocab_size=100, codebook_size=16, bos_id=1, eos_id=2)


def test_showo_layout_numbers():
    # Show-o: [PAD]=50295, <|soi|>=50296 … <|lvg|>=50304, code k at 50305+k, [MASK]=58497, total 58498
    assert PHI.pad_id == 50295
    assert PHI.soi == 50296 and PHI.special("<|lvg|>") == 50304 and len(SPECIAL_TOKENS) == 9
    assert PHI.t2i == 50300 and PHI.mmu == 50301
    assert PHI.image_offset == 50305 and PHI.mask_id == 58497 and PHI.vocab_size == 58498


def test_t2i_row_format():
    codes = torch.arange(4)
    masked = torch.tensor([True, False, True, False])
    ids, labels = build_t2i(L, [10, 11], codes, masked, text_len=6)
    soi, eoi, m = L.soi, L.eoi, L.mask_id
    o = L.image_offset
    assert ids.tolist() == [100, 100, L.t2i, 1, 10, 11, 2, soi, m, o + 1, m, o + 3, eoi]
    assert labels.tolist() == [IGNORE] * 7 + [soi, o + 0, IGNORE, o + 2, IGNORE, eoi]


def test_t2i_truncates_long_prompt():
    ids, _ = build_t2i(L, list(range(3, 50)), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool), 6)
    assert len(ids) == 6 + 4 + 3 and ids[1].item() == 1 and ids[6].item() == 2  # <sot> … <eot> kept


def test_mmu_row_format_and_labels():
    codes = torch.tensor([0, 1])
    ids, labels = build_mmu(L, codes, [([20, 21], [30]), ([22], [31, 32])], text_len=10)
    o = L.image_offset
    # every answer is closed by <eot> (2), which is supervised: the decoder learns where answers end
    assert ids.tolist() == [L.mmu, L.soi, o, o + 1, L.eoi, 1, 20, 21, 30, 2, 22, 31, 32, 2, 100]
    assert labels.tolist() == [IGNORE] * 8 + [30, 2, IGNORE, 31, 32, 2, IGNORE]
    # rows of both tasks have the same length → they mix in one batch
    t2i, _ = build_t2i(L, [5], codes, torch.tensor([True, True]), 10)
    assert len(t2i) == len(ids)
    b = collate([(ids, labels), (t2i, _)], [1, 0])
    assert b.input_ids.shape == (2, 15) and b.task.tolist() == [1, 0]


def test_mmu_drops_turns_that_do_not_fit():
    ids, labels = build_mmu(L, torch.tensor([0]), [([20], [30]), ([21] * 9, [31])], text_len=5)
    assert ids.tolist()[4:] == [1, 20, 30, 2, 100]


def test_mmu_prompt_is_prefix_of_training_row():
    codes = torch.tensor([3, 4, 5])
    full, _ = build_mmu(L, codes, [([20, 21], [30])], text_len=8)
    p = build_mmu_prompt(L, codes, [20, 21])
    assert full[: len(p)].tolist() == p.tolist()


def _mask(ids):
    return omni_attention_mask(torch.tensor([ids]), L)[0, 0]


def test_omni_mask_t2i_left_pads_and_image_span():
    P, T, S, E, M = L.pad_id, L.t2i, L.soi, L.eoi, L.mask_id
    ids = [P, P, T, 1, 10, 2, S, M, M, M, E]
    a = _mask(ids)
    n = len(ids)
    for q in range(n):
        for k in range(n):
            if q != k and ids[k] == P:
                assert not a[q, k], "pad keys are hidden"
    # text is causal: <sot> does not see the prompt token after it
    assert not a[3, 4] and a[4, 3]
    # image tokens see later image tokens and the <|eoi|>; <|soi|> sees the whole span
    assert a[7, 9] and a[7, 10] and a[6, 10] and a[10, 6]
    # image sees all preceding real text
    assert a[8, 2] and a[8, 5]
    # text never sees the image that follows it
    assert not a[5, 6] and not a[5, 7]
    assert a.diagonal().all()  # every query sees itself (finite pad rows)


def test_omni_mask_mmu_right_pads():
    o = L.image_offset
    P = L.pad_id
    ids = [L.mmu, L.soi, o, o + 1, L.eoi, 1, 20, 30, 2, P, P]
    a = _mask(ids)
    assert a[2, 3] and a[3, 2] and a[2, 4]  # bidirectional inside the image
    assert not a[0, 1] and a[1, 0]          # <|mmu|> before the image is causal
    assert a[6, 3] and not a[6, 7]          # question sees the image, not the answer
    assert not a[8, 9] and not a[9, 10] and a[9, 9]
    assert not a[5, 6]


def test_isolated_turns_see_the_image_and_themselves_only():
    o, P = L.image_offset, L.pad_id
    #      0      1      2  3      4      5  6   7   8  9   10  11  12 13
    ids = [L.mmu, L.soi, o, o + 1, L.eoi, 1, 20, 30, 2, 21, 31, 32, 2, P]
    t = torch.tensor([ids])
    assert mmu_turn_index(t, L)[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
    # the second turn restarts right after <sot>, where a single-turn row puts its question
    assert mmu_turn_positions(t, L)[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 6, 7, 8, 9, 13]
    iso, causal = omni_attention_mask(t, L, turns="isolated")[0, 0], omni_attention_mask(t, L)[0, 0]
    assert causal[10, 7] and not iso[10, 7]    # the second answer does not read the first one
    assert iso[10, 3] and iso[10, 5] and iso[10, 9] and not iso[10, 11]
    assert torch.equal(iso[:9], causal[:9])     # the first turn is unchanged
    # a single-turn row (and a decoder prompt) is the same under both
    one = torch.tensor([[P, L.mmu, L.soi, o, L.eoi, 1, 20, 21]])
    assert torch.equal(omni_attention_mask(one, L, turns="isolated"), omni_attention_mask(one, L))
    assert mmu_turn_positions(one, L)[0].tolist() == list(range(8))


def test_isolated_turns_leave_t2i_rows_alone():
    ids, _ = build_t2i(L, [10, 2, 11], torch.arange(3), torch.tensor([True, False, True]), text_len=7)
    t = ids[None]
    assert (mmu_turn_index(t, L) == 0).all()
    assert torch.equal(omni_attention_mask(t, L, turns="isolated"), omni_attention_mask(t, L))


def test_two_image_spans_do_not_see_each_other_forward():
    o = L.image_offset
    ids = [L.soi, o, L.eoi, 1, L.soi, o + 1, L.eoi]
    a = _mask(ids)
    assert a[5, 1] and not a[1, 5] and a[4, 6]


def test_masking_counts_and_schedule():
    g = torch.Generator().manual_seed(0)
    codes = torch.zeros(5, 100, dtype=torch.long)
    r = torch.tensor([0.0, 0.004, 0.5, 0.999, 1.0])
    masked, applied = mask_image_codes(codes, r, g)
    assert masked.sum(1).tolist() == [1, 1, 50, 100, 100]  # at least one masked
    assert torch.allclose(applied, masked.float().mean(1))
    t = torch.tensor([0.0, 1.0])
    assert torch.allclose(mask_ratio(t, "cosine"), torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(mask_ratio(torch.tensor([0.25]), "linear"), torch.tensor([0.75]))
