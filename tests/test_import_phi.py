"""A dense parallel model imported from a tiny transformers Phi reproduces its logits."""
import subprocess
import sys

import pytest
import torch
from transformers import PhiConfig, PhiForCausalLM

from unif2ace.checkpoint.adapters import import_checkpoint
from unif2ace.checkpoint.hf_io import CheckpointError, load_pretrained, save_pretrained
from unif2ace.config import load_config
from unif2ace.tokens import TASK_MMU

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def random_phi(vocab_size: int, qk_layernorm: bool = False, seed: int = 0) -> PhiForCausalLM:
    """A 2-layer transformers Phi with non-trivial norms and biases, so a mapping mistake shows."""
    torch.manual_seed(seed)
    cfg = PhiConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, partial_rotary_factor=0.5, qk_layernorm=qk_layernorm,
                    bos_token_id=1, eos_token_id=2)
    phi = PhiForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in phi.named_parameters():
            if "layernorm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return phi


def _tiny_phi(tmp_path, qk_layernorm=False, seed=0):
    phi = random_phi(600, qk_layernorm, seed)
    d = tmp_path / "phi"
    phi.save_pretrained(d)
    return phi, d


@pytest.mark.parametrize("qk_layernorm", [False, True])
def test_phi_logits_match(tmp_path, qk_layernorm):
    phi, d = _tiny_phi(tmp_path, qk_layernorm)
    model, cfg = import_checkpoint(d, load_config("tiny"))
    model.eval()
    assert cfg.model.qk_layernorm == qk_layernorm and cfg.model.num_layers == 2
    ids = torch.randint(0, 512, (3, 20))
    with torch.no_grad():
        ref = phi(input_ids=ids).logits
        ours = model(ids, torch.full((3,), TASK_MMU)).logits
    text = model.layout.text_vocab_size
    assert torch.allclose(ours[..., :text], ref[..., :text], atol=1e-5, rtol=0), (ours[..., :text] - ref[..., :text]).abs().max()


def test_phi_new_rows_and_roundtrip(tmp_path):
    phi, d = _tiny_phi(tmp_path)
    model, cfg = import_checkpoint(d, load_config("tiny"))
    w = model.embed_tokens.weight
    text = model.layout.text_vocab_size
    assert w.shape[0] == model.layout.vocab_size
    assert torch.equal(w[:text], phi.model.embed_tokens.weight[:text])
    new = w[text:]
    assert torch.isfinite(new).all()
    # new rows sit near the mean of the old rows, not at a random init
    assert (new.mean(0) - phi.model.embed_tokens.weight[:text].mean(0)).abs().max() < 0.01
    out = save_pretrained(model, cfg, tmp_path / "ours")
    again, cfg2 = load_pretrained(out)
    assert cfg2 == cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_partial_load_refused_and_named(tmp_path):
    phi, d = _tiny_phi(tmp_path)
    model, cfg = import_checkpoint(d, load_config("tiny"))
    out = save_pretrained(model, cfg, tmp_path / "ours")
    from safetensors.torch import load_file, save_file
    sd = load_file(str(out / "model.safetensors"))
    sd.pop("layers.1.ffn.fc2.bias")
    sd["layers.0.ffn.fc1.weight"] = sd["layers.0.ffn.fc1.weight"][:10]
    sd["bogus.weight"] = torch.zeros(1)
    save_file(sd, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(out)
    msg = str(e.value)
    assert "layers.1.ffn.fc2.bias" in msg and "bogus.weight" in msg and "layers.0.ffn.fc1.weight" in msg
    model2, _ = load_pretrained(out, allow_partial=True)
    assert torch.equal(model2.state_dict()["layers.1.ffn.fc1.weight"], model.state_dict()["layers.1.ffn.fc1.weight"])


def _fake_showo(tmp_path, model, layout):
    """A Show-o-style directory as its save_pretrained writes it: showo.-prefixed Phi weights."""
    import json
    from safetensors.torch import save_file
    sd = {}
    for k, v in model.state_dict().items():
        k2 = k.replace(".ffn.", ".mlp.")
        sd["showo." + (k2 if k2.startswith("lm_head") else "model." + k2)] = v.clone()
    sd["mm_projector.0.weight"] = torch.zeros(4, 4)
    d = tmp_path / "showo"
    d.mkdir()
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({
        "_class_name": "Showo", "llm_model_path": "microsoft/phi-1_5", "llm_vocab_size": layout.text_vocab_size,
        "vocab_size": layout.vocab_size, "codebook_size": layout.codebook_size,
        "num_vq_tokens": 16, "w_clip_vit": False}))
    return d


def test_showo_import_cli_maps_one_to_one(tmp_path):
    from unif2ace.model.unif2ace import UniF2ace
    cfg = load_config("tiny", ["model.qk_layernorm=true"])
    torch.manual_seed(1)
    src_model = UniF2ace(cfg.model)
    d = _fake_showo(tmp_path, src_model, src_model.layout)
    out = tmp_path / "imported"
    r = subprocess.run([sys.executable, str(ROOT / "tools/import_showo.py"), "--src", str(d), "--out", str(out),
                        "--config", "tiny"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    model, cfg2 = load_pretrained(out)
    assert cfg2.model.qk_layernorm
    for k, v in src_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # a Show-o checkpoint whose vocabulary does not fit the layout is refused with the numbers
    r = subprocess.run([sys.executable, str(ROOT / "tools/import_showo.py"), "--src", str(d), "--out",
                        str(tmp_path / "bad"), "--config", "tiny", "--format", "phi"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a phi checkpoint" in r.stderr, r.stderr


def test_phi_import_upcycles_into_moe_and_keeps_the_function(tmp_path):
    """Split upcycling during import: with a uniform router choosing every expert, the MoE
    model reproduces the dense Phi's logits."""
    phi, d = _tiny_phi(tmp_path)
    base = load_config("tiny", ["model.moe.enabled=true", "model.moe.num_shared=1", "model.moe.num_routed=7",
                                "model.moe.top_k=7", "model.moe.expert_ffn=32", "model.moe.upcycle=split",
                                "model.moe.lambda_t2i=0", "model.moe.lambda_mmu=0"])
    model, cfg = import_checkpoint(d, base)
    with torch.no_grad():
        for layer in model.layers:
            layer.ffn.router.zero_()
    model.eval()
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        ref = phi(input_ids=ids).logits
        ours = model(ids, torch.full((2,), TASK_MMU)).logits
    text = model.layout.text_vocab_size
    assert torch.allclose(ours[..., :text], ref[..., :text], atol=1e-5), (ours[..., :text] - ref[..., :text]).abs().max()


# --------------------------------------------------------------------------- both directions, one dispatcher


def _dense(seed=3, *over):
    from unif2ace.model.unif2ace import UniF2ace

    cfg = load_config("tiny", list(over))
    torch.manual_seed(seed)
    model = UniF2ace(cfg.model).eval()
    with torch.no_grad():  # non-trivial norms and biases so a mapping mistake shows
        for n, p in model.named_parameters():
            if "layernorm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model, cfg


@pytest.mark.parametrize("fmt", ["phi", "showo"])
def test_key_mapping_round_trip_is_the_identity(fmt):
    from unif2ace.checkpoint.adapters import from_foreign, to_foreign

    model, _ = _dense()
    sd = model.state_dict()
    theirs = to_foreign(sd, fmt)
    assert "lm_head.weight" in {k.removeprefix("showo.") for k in theirs}
    assert any(".mlp.fc1." in k for k in theirs) and not any(".ffn." in k for k in theirs)
    back = from_foreign(theirs)
    assert list(back) == list(sd) and all(back[k] is sd[k] for k in sd)


def test_a_real_phi_directory_loads_through_the_dispatcher(tmp_path):
    from unif2ace.checkpoint.load import checkpoint_kind, load_model

    phi, d = _tiny_phi(tmp_path)
    assert checkpoint_kind(d) == "foreign"
    with pytest.raises(CheckpointError, match="needs the config to import into"):
        load_model(d)
    model, cfg = load_model(d, base=load_config("tiny"))
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        ref = phi(input_ids=ids).logits
        ours = model.eval()(ids, torch.full((2,), TASK_MMU)).logits
    text = model.layout.text_vocab_size
    assert torch.allclose(ours[..., :text], ref[..., :text], atol=1e-5, rtol=0)
    out = save_pretrained(model, cfg, tmp_path / "ours")
    assert checkpoint_kind(out) == "unif2ace"
    again, _ = load_model(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_export_to_phi_loads_in_transformers_with_equal_logits_and_imports_back(tmp_path):
    from unif2ace.checkpoint.adapters import export_phi
    from unif2ace.checkpoint.load import load_model

    model, cfg = _dense(5, "model.qk_layernorm=true")
    out = export_phi(model, cfg, tmp_path / "phi")
    phi = PhiForCausalLM.from_pretrained(out).eval()
    assert phi.config.vocab_size == model.layout.vocab_size
    ids = torch.randint(0, model.layout.vocab_size, (2, 16))
    with torch.no_grad():
        ref = phi(input_ids=ids).logits
        ours = model(ids, torch.full((2,), TASK_MMU)).logits
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours - ref).abs().max()
    back, cfg2 = load_model(out, base=load_config("tiny"))  # the whole layout's rows are kept, not re-drawn
    assert cfg2.model.qk_layernorm
    sd = model.state_dict()
    assert back.state_dict().keys() == sd.keys()
    assert all(torch.equal(v, sd[k]) for k, v in back.state_dict().items())


def test_export_to_phi_refuses_a_moe_model_naming_keys(tmp_path):
    from unif2ace.checkpoint.adapters import export_phi

    model, cfg = _dense(1, "model.moe.enabled=true", "model.moe.num_routed=4", "model.moe.top_k=2",
                        "model.moe.expert_ffn=64")
    with pytest.raises(CheckpointError, match=r"only a dense model exports to Phi.*layers\.0\.ffn\."):
        export_phi(model, cfg, tmp_path / "phi")
    assert not (tmp_path / "phi").exists()
