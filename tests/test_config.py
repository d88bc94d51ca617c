"""Recipes load; overrides apply; bad input is rejected with the key named."""
import dataclasses
import subprocess
import sys

import pytest

from unif2ace.config import ConfigError, field_docs, load_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tiny", "synthface", "unif2ace-1.8b"])
def test_recipes_load(name):
    cfg = load_config(name)
    assert cfg.name == name


def test_paper_recipe_has_phi_shapes():
    m = load_config("unif2ace-1.8b").model
    assert (m.num_layers, m.hidden_size, m.num_heads, m.head_dim) == (24, 2048, 32, 64)
    assert m.partial_rotary_factor == 0.5 and m.intermediate_size == 8192


def test_overrides_and_types():
    cfg = load_config("tiny", ["model.num_layers=3", "loss.alpha=0", "model.moe.enabled=true",
                               "train.betas=[0.8,0.9]", "model.seq_moe.und_experts=copy,copy"])
    assert cfg.model.num_layers == 3 and cfg.loss.alpha == 0.0 and cfg.model.moe.enabled
    assert cfg.train.betas == (0.8, 0.9) and cfg.model.seq_moe.und_experts == ["copy", "copy"]


@pytest.mark.parametrize("override, words", [
    (["model.num_layer=3"], ["unknown key model.num_layer", "did you mean model.num_layers"]),
    (["model.num_layers=abc"], ["model.num_layers", "expected an int"]),
    (["model.block_layout=diagonal"], ["model.block_layout", "parallel"]),
    (["model.num_heads=5"], ["hidden_size=64", "num_heads=5"]),
    (["model.moe.enabled=true", "model.moe.top_k=9"], ["model.moe.top_k=9"]),
    (["model.seq_moe.enabled=true", "model.seq_moe.gen_experts=[copy,magic]"], ["magic"]),
    (["data.t2i_fraction=1.5"], ["data.t2i_fraction"]),
    (["model.bos_id=100000"], ["model.bos_id"]),
    (["sample.repetition_penalty=0"], ["sample.repetition_penalty"]),
    (["sample.no_repeat_ngram=-2"], ["sample.no_repeat_ngram"]),
    (["train.lr"], ["key=value"]),
])
def test_bad_config_is_named(override, words):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", override)
    for w in words:
        assert w in str(e.value)


def test_unknown_recipe_lists_known():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("nope")


def test_every_field_has_a_docstring():
    from unif2ace import config as c
    for cls in (c.Config, c.ModelConfig, c.TokenMoEConfig, c.SeqMoEConfig, c.LossConfig, c.DataConfig,
                c.TrainConfig, c.SampleConfig):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"


def test_param_count_command():
    r = subprocess.run([sys.executable, "-m", "unif2ace.config", "unif2ace-1.8b"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "attention" in r.stdout and "total" in r.stdout
    total = [l for l in r.stdout.splitlines() if l.strip().startswith("total:")][0]
    n = int(total.split(":")[1].split("(")[0].replace(",", ""))
    assert 1.3e9 < n < 2.5e9


def test_train_list_keys_prints_every_key_with_its_doc():
    # the launcher's documented way to see every key (it crashed once on a missing argument)
    r = subprocess.run([sys.executable, "launchers/train.py", "--list-keys"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    from unif2ace import config as c
    n = sum(len(dataclasses.fields(cls)) for cls in (c.TrainConfig, c.LossConfig, c.SampleConfig))
    assert sum(l.split(".")[0] in ("train", "loss", "sample") for l in lines) == n
    assert any(l.startswith("train.seed = 0  # ") for l in lines)
    assert any(l.startswith("model.seq_moe.balance_weight = ") for l in lines)


@pytest.mark.parametrize("args, words", [
    (["synthface", "model.hiden_size=3"], "did you mean model.hidden_size?"),
    (["nosuch"], "recipe 'nosuch' not found"),
    (["tiny", "model.hidden_size=abc"], "model.hidden_size: expected an int"),
    (["tiny", "model.hidden_size"], "not of the form key=value"),
])
def test_config_command_bad_input_is_one_line(args, words, tmp_path):
    # The message a user sees is one line on stderr, exit 2, no traceback.
    r = subprocess.run([sys.executable, "-m", "unif2ace.config", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: ") and words in r.stderr


def test_config_command_bad_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [\n")
    r = subprocess.run([sys.executable, "-m", "unif2ace.config", str(bad)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"{bad}: not valid YAML" in r.stderr, r.stderr
