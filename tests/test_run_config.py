"""unif2ace.checkpoint.run_config.config_diff: the one nested comparison behind "this checkpoint
was written by another config" (resume: train/checkpointing.py; train.init_from: train/engine.py).

    pytest -q tests/test_run_config.py
"""
from unif2ace.checkpoint.run_config import config_diff


def test_config_diff_names_every_differing_leaf_by_its_dotted_path():
    ckpt = {"world_size": 2, "model": {"hidden_size": 64, "moe": {"top_k": 2, "experts": ["clip", "face"]}},
            "train": {"seed": 0}, "expert_parallel_size": 2}
    run = {"world_size": 2, "model": {"hidden_size": 128, "moe": {"top_k": 2, "experts": ("clip", "face")}},
           "train": {"seed": 0, "micro_batch": 4}}
    assert config_diff(ckpt, run) == ["expert_parallel_size: checkpoint 2 vs run None",
                                      "model.hidden_size: checkpoint 64 vs run 128",
                                      "train.micro_batch: checkpoint None vs run 4"]
    assert config_diff(ckpt["model"], run["model"], "model.") == ["model.hidden_size: checkpoint 64 vs run 128"]
    assert config_diff({"moe": {"top_k": 2}}, {"moe": None}) == ["moe: checkpoint {'top_k': 2} vs run None"]
    assert config_diff({"a": []}, {"a": None}) == ["a: checkpoint [] vs run None"]  # empty is not missing
    assert config_diff(ckpt, ckpt) == []
