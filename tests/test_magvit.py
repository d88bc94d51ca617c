"""MAGVIT-v2 tokenizer + LFQ: checkpoint key compatibility, round trips, quantiser properties.

    pytest -q tests/test_magvit.py

The showlab/magvitv2 key set below is written out from a reading of Show-o's
``models/modeling_magvitv2.py`` / ``common_modules.py`` (taming-style ResnetBlock with
``nin_shortcut`` when widths change, no ``temb_proj`` since temb_ch=0, AttnBlock only in
``mid`` because attn_resolutions=[5] never matches, LFQuantizer buffers) — not from our class.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from unif2ace.checkpoint.hf_io import CheckpointError
from unif2ace.config import ConfigError
from unif2ace.tokenizers import lfq
from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2


def showlab_magvitv2_shapes() -> dict[str, tuple[int, ...]]:
    """Key → shape of showlab/magvitv2, hard-coded from the reference module's structure."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(p, cin, cout, k):
        keys[f"{p}.weight"] = (cout, cin, k, k)
        keys[f"{p}.bias"] = (cout,)

    def norm(p, c):
        keys[f"{p}.weight"] = (c,)
        keys[f"{p}.bias"] = (c,)

    def res(p, cin, cout):
        norm(f"{p}.norm1", cin)
        conv(f"{p}.conv1", cin, cout, 3)
        norm(f"{p}.norm2", cout)
        conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.nin_shortcut", cin, cout, 1)

    def mid(p, c):
        res(f"{p}.block_1", c, c)
        norm(f"{p}.attn_1.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.attn_1.{n}", c, c, 1)
        res(f"{p}.block_2", c, c)

    # Encoder: (in, out, blocks, downsample) per level for ch=128, ch_mult [1,2,2,4,4], blocks [4,3,4,3,4].
    conv("encoder.conv_in", 3, 128, 3)
    for i, (cin, cout, nb, down) in enumerate([(128, 128, 4, True), (128, 256, 3, True), (256, 256, 4, True),
                                               (256, 512, 3, True), (512, 512, 4, False)]):
        for j in range(nb):
            res(f"encoder.down.{i}.block.{j}", cin if j == 0 else cout, cout)
        if down:
            conv(f"encoder.down.{i}.downsample.conv", cout, cout, 3)
    mid("encoder.mid", 512)
    norm("encoder.norm_out", 512)
    conv("encoder.conv_out", 512, 13, 3)
    conv("encoder.quant_conv", 13, 13, 1)
    # Decoder: built from level 4 (coarsest, 512) down to level 0; ch_mult [1,1,2,2,4], blocks [4,4,3,4,3].
    conv("decoder.conv_in", 13, 512, 3)
    mid("decoder.mid", 512)
    for i, (cin, cout, nb, up) in [(4, (512, 512, 3, True)), (3, (512, 256, 4, True)), (2, (256, 256, 3, True)),
                                   (1, (256, 128, 4, True)), (0, (128, 128, 4, False))]:
        for j in range(nb):
            res(f"decoder.up.{i}.block.{j}", cin if j == 0 else cout, cout)
        if up:
            conv(f"decoder.up.{i}.upsample.conv", cout, cout, 3)
    norm("decoder.norm_out", 128)
    conv("decoder.conv_out", 128, 3, 3)
    conv("decoder.post_quant_conv", 13, 13, 1)
    keys["quantize.embedding"] = (8192, 13)
    keys["quantize.power_vals"] = (13,)
    return keys


SHOWLAB = showlab_magvitv2_shapes()


def test_reference_key_list_itself():
    # Counted by hand from the reference: encoder 190, decoder 190, quantizer 2 buffers.
    assert len(SHOWLAB) == 382
    assert SHOWLAB["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert SHOWLAB["encoder.down.3.downsample.conv.weight"] == (512, 512, 3, 3)
    assert SHOWLAB["decoder.up.3.block.0.conv1.weight"] == (256, 512, 3, 3)
    assert SHOWLAB["decoder.up.1.upsample.conv.weight"] == (128, 128, 3, 3)
    assert "encoder.down.4.downsample.conv.weight" not in SHOWLAB


@pytest.fixture(scope="module")
def showlab_model():
    return MagvitV2(MagvitConfig())  # built once; ~95M parameters, never run forward here


def test_default_config_matches_showlab_keys_and_shapes(showlab_model):
    sd = showlab_model.state_dict()
    assert set(sd) == set(SHOWLAB)
    wrong = {k: (tuple(v.shape), SHOWLAB[k]) for k, v in sd.items() if tuple(v.shape) != SHOWLAB[k]}
    assert not wrong
    assert sd["quantize.power_vals"].dtype == torch.long
    n = showlab_model.num_params()
    assert 94e6 < n < 96.5e6, n  # the design's "≈95M"


def test_random_showlab_checkpoint_loads_strictly(tmp_path, showlab_model):
    g = torch.Generator().manual_seed(0)
    # fp16 keeps the file small; the loader casts to the model's float32.
    sd = {k: torch.randn(s, generator=g, dtype=torch.float32).half() for k, s in SHOWLAB.items()
          if not k.startswith("quantize.")}
    sd["quantize.embedding"] = torch.tensor([[1.0 if (c >> (12 - b)) & 1 else -1.0 for b in range(13)]
                                             for c in range(8192)])
    sd["quantize.power_vals"] = torch.tensor([2 ** (12 - b) for b in range(13)])
    torch.save(sd, tmp_path / "pytorch_model.bin")
    # Show-o's checkpoint ships a diffusers-style config.json with metadata only.
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", "_diffusers_version": "0.29"}))
    model = MagvitV2.from_pretrained(tmp_path)
    loaded = model.state_dict()
    for k in ("encoder.conv_in.weight", "decoder.up.3.block.0.nin_shortcut.bias", "encoder.mid.attn_1.q.weight"):
        assert torch.equal(loaded[k], sd[k].float())
    assert loaded["encoder.conv_in.weight"].dtype == torch.float32
    assert not any(t.is_meta for t in loaded.values())


def test_partial_or_foreign_checkpoints_are_refused_by_name(showlab_model):
    own = showlab_model.state_dict()
    good = {k: torch.zeros_like(v) for k, v in own.items() if not k.startswith("quantize.")}
    bad = dict(good)
    del bad["decoder.mid.attn_1.k.bias"]
    bad["decoder.extra.weight"] = torch.zeros(3)
    bad["encoder.conv_out.weight"] = torch.zeros(8, 512, 3, 3)
    with pytest.raises(CheckpointError) as e:
        showlab_model.load_checked(bad, "bad.bin")
    msg = str(e.value)
    for name in ("bad.bin", "decoder.mid.attn_1.k.bias", "decoder.extra.weight", "encoder.conv_out.weight"):
        assert name in msg
    flipped = dict(good, **{"quantize.power_vals": torch.tensor([2 ** b for b in range(13)])})  # LSB-first
    with pytest.raises(CheckpointError, match="bit layout"):
        showlab_model.load_checked(flipped, "lsb.bin")


def test_roundtrip_shapes_and_save_pretrained(tmp_path):
    torch.manual_seed(0)
    cfg = MagvitConfig.tiny()
    assert (cfg.codebook_size, cfg.downsample) == (64, 8)  # the tiny recipe: 32² → 4×4 codes of 64
    model = MagvitV2(cfg).eval()
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    codes = model.encode(images)
    assert codes.shape == (3, 16) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    out = model.decode_codes(codes)
    assert out.shape == (3, 3, 32, 32) and float(out.abs().max()) <= 1.0
    rect = model.encode(torch.rand(2, 3, 32, 48) * 2 - 1)
    assert rect.shape == (2, 24)
    assert model.decode_codes(rect, (4, 6)).shape == (2, 3, 32, 48)
    with pytest.raises(ValueError, match="multiple"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="square"):
        model.decode_codes(rect)
    with pytest.raises(ValueError, match="outside"):
        model.decode_codes(torch.full((1, 16), 64))

    model.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    assert ((tmp_path / "tok" / "model.safetensors").stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600
    again = MagvitV2.from_pretrained(tmp_path / "tok")
    assert again.config == cfg
    assert torch.equal(again.encode(images), codes)
    assert torch.allclose(again.decode_codes(codes), out)
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"ch": 16, "chanels": 3}))
    with pytest.raises(ConfigError, match="chanels"):
        MagvitV2.from_pretrained(tmp_path / "tok")


def test_synthface_preset_fits_recipe():
    from unif2ace.config import load_config

    rec = load_config("synthface").model
    cfg = MagvitConfig.synthface16()  # the recipe's tokenizer: 16×16 codes of 8 bits
    h, w = cfg.grid(64, 64)
    assert (cfg.codebook_size, h * w) == (rec.codebook_size, rec.num_image_tokens)
    model = MagvitV2(cfg)
    out = model(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert out["recon"].shape == (2, 3, 64, 64) and out["codes"].shape == (2, 16, 16)
    assert out["latents"].shape == (2, 8, 16, 16)
    coarse = MagvitConfig.synthface()  # the older 8×8 preset stays available
    assert coarse.grid(64, 64) == (8, 8) and coarse.codebook_size == rec.codebook_size
    with pytest.raises(ConfigError, match="norm_groups"):
        MagvitConfig(ch=20)


# --------------------------------------------------------------------------- LFQ


def test_lfq_code_bit_bijection_and_order():
    for bits in (1, 4, 8):
        codes = torch.arange(2 ** bits)
        b = lfq.codes_to_bits(codes, bits)
        assert b.shape == (2 ** bits, bits) and set(b.unique().tolist()) == {-1.0, 1.0}
        assert torch.equal(lfq.bits_to_codes(b, dim=-1), codes)
        assert len({tuple(r) for r in b.tolist()}) == 2 ** bits
    # MSB first: 0b1010 = 10 → channels [+, -, +, -].
    assert lfq.codes_to_bits(torch.tensor([10]), 4).tolist() == [[1.0, -1.0, 1.0, -1.0]]
    assert lfq.bits_to_codes(torch.tensor([[0.3, -2.0, 5.0, 0.0]]), dim=-1).tolist() == [10]
    with pytest.raises(ValueError):
        lfq.codes_to_bits(torch.tensor([16]), 4)


def test_lfq_quantizer_codes_in_range_and_embed_inverts():
    torch.manual_seed(0)
    q = lfq.LFQuantizer(6)
    z = torch.randn(4, 6, 5, 3) * 3
    zq, codes = q(z)
    assert codes.shape == (4, 5, 3) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    assert torch.equal(zq, torch.where(z > 0, 1.0, -1.0))
    assert torch.equal(q.embed(codes), zq)
    assert torch.equal(q.codes(q.embed(codes)), codes)
    assert lfq.quantize(torch.zeros(2)).tolist() == [-1.0, -1.0]


def test_straight_through_gradient_is_identity():
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(2, 4, 3, 3)
    (lfq.straight_through(z) * w).sum().backward()
    assert torch.equal(z.grad, w)


def test_entropy_loss_known_values_and_gradients():
    k = 5
    ln2 = math.log(2)
    # Every vector undecided (z = 0): both entropies are K·ln2, the loss is 0.
    t = lfq.entropy_terms(torch.zeros(7, k, 2, 2))
    assert t.sample.item() == pytest.approx(k * ln2, rel=1e-5)
    assert t.codebook.item() == pytest.approx(k * ln2, rel=1e-5)
    # Confident and all 2**K codes used equally: the minimum, −K·ln2.
    all_codes = lfq.codes_to_bits(torch.arange(2 ** k), k) * 20  # (32, K)
    t = lfq.entropy_terms(all_codes, dim=-1)
    assert t.sample.item() == pytest.approx(0.0, abs=1e-4)
    assert t.loss.item() == pytest.approx(-k * ln2, rel=1e-4)
    # Confident but one code only: collapse costs ~0 codebook entropy.
    assert lfq.entropy_terms(torch.full((9, k), 20.0), dim=-1).codebook.item() == pytest.approx(0.0, abs=1e-4)
    # Perfectly correlated bits (all + or all −): 2 codes used → ln2 over the full codebook,
    # while per-bit marginals see K·ln2 (the bound is loose when bits are dependent).
    corr = torch.cat([torch.full((4, k), 20.0), torch.full((4, k), -20.0)])
    assert lfq.entropy_terms(corr, dim=-1).codebook.item() == pytest.approx(ln2, rel=1e-4)
    assert lfq.entropy_terms(corr, dim=-1, full_codebook=False).codebook.item() == pytest.approx(k * ln2, rel=1e-4)
    z = torch.randn(3, 8, 4, 4, requires_grad=True)
    for full in (True, False):
        loss = lfq.entropy_loss(z, full_codebook=full) + lfq.commitment_loss(z)
        assert torch.isfinite(loss)
        (g,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_commitment_and_usage():
    z = torch.tensor([[0.5, -2.0], [1.0, -1.0]])
    assert lfq.commitment_loss(z).item() == pytest.approx((0.25 + 1.0 + 0 + 0) / 4)
    used, ppl = lfq.code_usage(torch.tensor([0, 0, 1, 3]), 8)
    assert used == pytest.approx(3 / 8)
    assert ppl == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))))
