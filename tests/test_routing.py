"""MoE routing statistics, their table and heat maps, and the training run that writes them.

    pytest -q tests/test_routing.py
"""
import json

import numpy as np
import pytest
import torch

from unif2ace.eval.routing import expert_labels, routing_from_log, routing_table, save_routing_heatmaps
from unif2ace.model.moe.stats import routing_matrices


def _flat(stats):
    """The training log's form of model stats (one float per expert; a single value unsuffixed),
    written out by hand."""
    out = {}
    for k, v in stats.items():
        xs = v.reshape(-1).tolist()
        out.update({k: xs[0]} if len(xs) == 1 else {f"{k}/{j}": x for j, x in enumerate(xs)})
    return out


def test_model_stats_and_log_rows_give_the_same_matrices():
    stats = {"L1/route_frac_gen": torch.tensor([0.5, 0.5, 0.0]), "L0/route_frac_gen": torch.tensor([0.25, 0.75, 0.0]),
             "L0/seq_route_und": torch.tensor([1.0, 0.0]), "L1/seq_route_und": torch.tensor([0.0, 1.0]),
             "L0/balance_gen": torch.tensor(1.0)}  # not a routing share: ignored
    mats = routing_matrices(stats)
    assert set(mats) == {"route_frac_gen", "seq_route_und"}
    np.testing.assert_array_equal(mats["route_frac_gen"], [[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]])  # layer order
    flat = routing_matrices({**_flat(stats), "step": 3, "loss": 1.5, "rank0/tokens_per_s": 9.0})
    assert set(flat) == set(mats)
    for k in mats:
        np.testing.assert_array_equal(flat[k], mats[k])
    one = routing_matrices(_flat({"L0/seq_route_gen": torch.tensor([1.0]), "L1/seq_route_gen": torch.tensor([1.0])}))
    np.testing.assert_array_equal(one["seq_route_gen"], [[1.0], [1.0]])  # a one-expert group stays 2-D
    with pytest.raises(ValueError, match=r"L0/route_frac_gen: experts \[0, 2\]"):
        routing_matrices({"L0/route_frac_gen/0": 0.5, "L0/route_frac_gen/2": 0.5})


def _write_run(run, rows, gen=("copy", "zero"), und=("clip", "face")):
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"event": "start", "step": 0})] + [json.dumps(r) for r in rows]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text(json.dumps(
        {"model": {"seq_moe": {"enabled": True, "gen_experts": list(gen), "und_experts": list(und)}}}))


def test_table_is_the_mean_over_layers_and_the_last_steps(tmp_path):
    def row(step, gen0, gen1, und0):
        return {"step": step, "L0/seq_route_gen/0": gen0, "L0/seq_route_gen/1": 1 - gen0,
                "L1/seq_route_gen/0": gen1, "L1/seq_route_gen/1": 1 - gen1,
                "L0/seq_route_und/0": und0, "L0/seq_route_und/1": 1 - und0,
                "L1/seq_route_und/0": und0, "L1/seq_route_und/1": 1 - und0}

    # step 1 falls outside last=2; steps 2-3: gen expert 0 = mean(0.2, 0.4, 0.6, 0.8) = 0.5
    _write_run(tmp_path, [row(1, 1.0, 1.0, 1.0), row(2, 0.2, 0.4, 0.25), row(3, 0.6, 0.8, 0.75)])
    mats, labels = routing_from_log(tmp_path, last=2)
    np.testing.assert_allclose(mats["seq_route_gen"], [[0.4, 0.6], [0.6, 0.4]])
    assert labels == expert_labels(["copy", "zero"], ["clip", "face"])
    assert routing_table(mats, labels).splitlines() == [
        "| group | expert 0 | expert 1 |", "|---|---|---|",
        "| generation (T2I) | copy 0.50 | zero 0.50 |", "| understanding (MMU) | clip 0.50 | face 0.50 |"]
    assert routing_table({"route_frac_gen": mats["seq_route_gen"]}, labels) == ""  # no sequence-level MoE
    assert routing_from_log(tmp_path / "nothing") == ({}, {})


def test_heatmaps_png_one_panel_per_statistic(tmp_path):
    import matplotlib.image

    mats = {"route_frac_gen": np.full((3, 4), 0.25), "route_frac_und": np.eye(3, 4),
            "seq_route_gen": np.full((3, 2), 0.5)}
    one = matplotlib.image.imread(save_routing_heatmaps({"route_frac_gen": mats["route_frac_gen"]}, tmp_path / "a.png"))
    three = matplotlib.image.imread(save_routing_heatmaps(mats, tmp_path / "b.png", {"seq_route_gen": ["clip", "face"]}))
    assert three.shape[0] > one.shape[0] and three.shape[1] > one.shape[1]  # a 2×2 grid vs one panel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp files left
    with pytest.raises(ValueError, match=r"c\.png.*no routing statistics"):
        save_routing_heatmaps({"balance_gen": np.ones((2, 2))}, tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"d\.png.*route_frac_gen must be a 2-D"):
        save_routing_heatmaps({"route_frac_gen": np.ones(4)}, tmp_path / "d.png")
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "d.png").exists()


def test_training_run_writes_routing_heat_maps_with_the_samples(tmp_path):
    from test_train_engine import ZERO3, _cfg, _mem, _rows

    from unif2ace.train.trainer import EXIT_OK, run

    cfg = _cfg(tmp_path, "train.steps=3", "train.save_every=0", "train.sample_every=2", "train.micro_batch=2",
               "model.moe.enabled=true", "model.moe.num_routed=4", "model.moe.top_k=2", "model.moe.expert_ffn=32",
               "model.seq_moe.enabled=true", "model.seq_moe.gen_experts=copy,zero",
               "model.seq_moe.und_experts=zero,copy,copy", "model.seq_moe.top_k=1", "model.seq_moe.resampler_dim=16")
    assert run(cfg, ZERO3, loader_factory=_mem) == EXIT_OK
    samples = tmp_path / "samples"
    # every sample_every steps, and at the last step (over the steps since the previous map)
    assert sorted(p.name for p in samples.iterdir()) == ["routing_step00000002.png", "routing_step00000003.png"]
    events = [r for r in _rows(tmp_path / "metrics.jsonl") if r.get("event") == "routing"]
    assert [(e["step"], e["path"]) for e in events] == [(s, str(samples / f"routing_step0000000{s}.png")) for s in (2, 3)]
    mats, _ = routing_from_log(tmp_path)  # the log the maps were drawn from holds all four statistics
    assert {k: m.shape for k, m in mats.items()} == {"route_frac_gen": (2, 4), "route_frac_und": (2, 4),
                                                     "seq_route_gen": (2, 2), "seq_route_und": (2, 3)}
    for m in mats.values():
        np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-5)
