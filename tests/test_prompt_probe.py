"""unif2ace/eval/prompt_probe.py and tools/probe_prompt.py: masked-code loss with own / another
face's / no caption, on a tiny random model (the wiring and the controls, not a trained model's
numbers)."""
import json

import pytest
import torch

from unif2ace.checkpoint.hf_io import save_pretrained
from unif2ace.commands import probe_prompt
from unif2ace.config import load_config
from unif2ace.eval.prompt_probe import prompt_losses, unconditional
from unif2ace.model.unif2ace import UniF2ace


def _faces(cfg, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    codes = torch.randint(0, m.codebook_size, (n, m.num_image_tokens), generator=g)
    captions = [torch.randint(10, m.text_vocab_size, (5 + i,), generator=g).tolist() for i in range(n)]
    return codes, captions, {"noise": torch.randn(n, 4, generator=g), "clip": torch.randn(n, 8, generator=g)}


def test_the_conditions_share_their_masks_and_differ_only_by_the_caption():
    cfg = load_config("tiny", ["model.init_std=0.1"])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).train()
    codes, captions, feats = _faces(cfg)
    same = prompt_losses(model, cfg, codes, [captions[0]] * 4, feats, ratios=(0.5, 1.0))
    for d in same.values():  # one caption for every face: "other" is "own", to the bit
        assert d["own"] == d["other"]
        assert d["none"] != d["own"]
    got = prompt_losses(model, cfg, codes, captions, feats, ratios=(0.5, 1.0))
    assert all(d["other"] != d["own"] for d in got.values())  # a random model's attention reads the text too
    assert got[0.5]["own"] == prompt_losses(model, cfg, codes, captions, feats, ratios=(0.5,))[0.5]["own"]  # seeded
    assert model.training  # restored
    none = unconditional(feats)
    assert torch.equal(none["noise"], feats["noise"]) and not none["clip"].any()
    with pytest.raises(ValueError, match="at least two faces"):
        prompt_losses(model, cfg, codes[:1], captions[:1], {k: v[:1] for k, v in feats.items()})


def test_cli_prints_and_writes_the_losses(tiny_shards, tmp_path, capsys):
    cfg = load_config("tiny", [f"data.shards={tiny_shards}", "model.init_std=0.1"])
    torch.manual_seed(0)
    save_pretrained(UniF2ace(cfg.model), cfg, tmp_path / "model")
    out = tmp_path / "probe.json"
    rc = probe_prompt.main(["--checkpoint", str(tmp_path / "model"), "--split", "train", "--num", "6",
                            "--ratios", "0.4,0.9", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "other−own" in text and "6 faces of split 'train'" in text
    result = json.loads(out.read_text())
    assert result["faces"] == 6 and set(result["losses"]) == {"0.4", "0.9"}
    for d in result["losses"].values():
        assert set(d) == {"own", "other", "none"} and all(0 < v < 20 for v in d.values())
    with pytest.raises(SystemExit):
        probe_prompt.main(["--checkpoint", str(tmp_path / "model"), "--ratios", "0.5,x"])
    with pytest.raises(SystemExit, match="needs at least two"):
        probe_prompt.main(["--checkpoint", str(tmp_path / "model"), "--split", "nosuchsplit"])
