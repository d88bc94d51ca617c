"""Training engine in one process (DeepSpeed ZeRO-3 on CPU, world of one): optimiser groups,
DeepSpeed config resolution, LR schedule, zero.Init init, non-finite steps, atomic checkpoints.

The multi-process behaviour (two ranks, resume after kill -9, SIGTERM, timeouts, conversion)
is in tests/test_train_distributed.py; only the finite-weights check's ZeRO-3 padding needs two
ranks here (``mp.spawn``, gloo). Here batches come from an in-memory source built with
unif2ace.tokens (the shard loader is not what these tests are about).
"""
import json
import math
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from unif2ace.config import load_config
from unif2ace.tokens import TASK_MMU, TASK_T2I, TokenLayout, build_mmu, build_t2i, collate, mask_image_codes
from unif2ace.train import engine as E
from unif2ace.train.checkpointing import CheckpointMismatch
from unif2ace.train.faults import InjectedFault
from unif2ace.train.trainer import EXIT_DIVERGED, EXIT_OK, run

ROOT = Path(__file__).resolve().parents[1]
ZERO3 = ROOT / "ds_configs" / "zero3.json"


class MemLoader:
    """Deterministic rows from unif2ace.tokens builders; T2I and MMU alternate; resumable."""

    def __init__(self, cfg, rank, world):
        self.m, self.b, self.rank, self.world = cfg.model, cfg.train.micro_batch, rank, world
        self.layout = TokenLayout.from_model_config(cfg.model)
        self.pos = 0

    def _row(self, i):
        g = torch.Generator().manual_seed(i)
        codes = torch.randint(0, self.m.codebook_size, (self.m.num_image_tokens,), generator=g)
        if i % 2 == 0:
            masked, ratio = mask_image_codes(codes[None], torch.rand(1, generator=g), g)
            ids, lab = build_t2i(self.layout, [5, 6, 7 + i % 9], codes, masked[0], self.m.text_len)
            return ids, lab, TASK_T2I, float(ratio[0])
        ids, lab = build_mmu(self.layout, codes, [([8, 9], [10 + i % 5, 11])], self.m.text_len)
        return ids, lab, TASK_MMU, 0.0

    def __next__(self):
        rows = [self._row(self.pos * self.b * self.world + j * self.world + self.rank) for j in range(self.b)]
        self.pos += 1
        batch = collate([(r[0], r[1]) for r in rows], [r[2] for r in rows])
        batch.mask_ratio = torch.tensor([r[3] for r in rows])
        return batch

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, s):
        self.pos = s["pos"]


def _mem(cfg, rank, world):
    return MemLoader(cfg, rank, world)


def _cfg(tmp_path, *over):
    return load_config("tiny", [f"train.out_dir={tmp_path}", "train.progress_bar=false", "train.export_final=false",
                                *over])


def _rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _steps(path):
    return {r["step"]: r for r in _rows(path) if "event" not in r}


# --------------------------------------------------------------------------- no process group


def test_param_groups_exclude_norms_embeddings_biases_by_module_type():
    cfg = load_config("tiny", ["model.moe.enabled=true", "model.moe.expert_ffn=32", "model.seq_moe.enabled=true"])
    from unif2ace.model.unif2ace import UniF2ace

    model = UniF2ace(cfg.model)
    decay_grp, no_decay_grp = E.param_groups(model, 0.1)
    assert decay_grp["weight_decay"] == 0.1 and no_decay_grp["weight_decay"] == 0.0
    decay, no_decay = set(decay_grp["names"]), set(no_decay_grp["names"])
    assert not decay & no_decay
    assert decay | no_decay == {n for n, _ in model.named_parameters()}
    mods = dict(model.named_modules())
    for name, _ in model.named_parameters():
        owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
        mod = mods[owner]
        if isinstance(mod, (nn.LayerNorm, nn.Embedding)) or attr in ("bias", "b1", "b2"):
            assert name in no_decay, name
        elif isinstance(mod, nn.Linear) and attr == "weight" or attr in ("w1", "w2"):
            assert name in decay, name
    # the names Show-o's hand-written list missed in Phi: final_layernorm, embed_tokens, experts
    assert {"final_layernorm.weight", "embed_tokens.weight", "layers.0.ffn.experts.b1"} <= no_decay
    assert {"lm_head.weight", "layers.1.ffn.experts.w2", "layers.0.self_attn.q_proj.weight"} <= decay


def test_ds_config_auto_values_come_from_train_and_contradictions_fail(tmp_path):
    train = load_config("tiny", ["train.micro_batch=3", "train.grad_accum=2", "train.grad_clip=0.5"]).train
    ds = E.load_ds_config(ZERO3, train, world_size=4, gpu=False)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 24 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["zero_optimization"]["stage"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3}}))
    with pytest.raises(E.EngineError, match=r"bad\.json.*train_micro_batch_size_per_gpu=8.*train\.micro_batch=3"):
        E.load_ds_config(bad, train, 4, gpu=False)
    bad.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(E.EngineError, match="remove 'optimizer'"):
        E.load_ds_config(bad, train, 4, gpu=False)
    with pytest.raises(E.EngineError, match="nope.json: file not found"):
        E.load_ds_config(tmp_path / "nope.json", train, 4, gpu=False)
    for name in ("zero2", "zero3", "zero3_offload", "zero2_ep", "zero3_ep"):  # every shipped config resolves
        assert E.load_ds_config(ROOT / "ds_configs" / f"{name}.json", train, 2, gpu=True)["bf16"]["enabled"] in (
            True, False)


def test_ds_config_expert_parallel_size_is_checked(tmp_path):
    train = load_config("tiny").train
    ep = E.load_ds_config(ROOT / "ds_configs" / "zero2_ep.json", train, 4, gpu=False)
    assert E.expert_parallel_size(ep) == 2 and ep["zero_optimization"]["stage"] == 2
    assert E.expert_parallel_size(E.load_ds_config(ZERO3, train, 4, gpu=False)) == 1
    ep3 = E.load_ds_config(ROOT / "ds_configs" / "zero3_ep.json", train, 4, gpu=False)
    assert E.expert_parallel_size(ep3) == 2 and ep3["zero_optimization"]["stage"] == 3
    bad = tmp_path / "ep.json"
    z3 = {"stage": 3}
    for spec, msg in [({"expert_parallel_size": 2, "zero_optimization": {"stage": 0}}, "needs ZeRO stage 1, 2 or 3"),
                      ({"expert_parallel_size": 2, "zero_optimization": {**z3, "zero_hpz_partition_size": 2}},
                       "zero_hpz_partition_size=2 is not supported"),
                      ({"expert_parallel_size": 2, "zero_optimization": {**z3, "zero_quantized_gradients": True}},
                       "zero_quantized_gradients=True is not supported"),
                      ({"expert_parallel_size": 2, "zero_optimization": z3, "sequence_parallel_size": 2},
                       "sequence_parallel_size=2 is not supported"),
                      ({"expert_parallel_size": 2,
                        "zero_optimization": {**z3, "stage3_gather_16bit_weights_on_model_save": True}},
                       "would save rank 0's experts only"),
                      ({"expert_parallel_size": 3, "zero_optimization": {"stage": 2}}, "does not divide the 4 ranks"),
                      ({"expert_parallel_size": 0, "zero_optimization": {"stage": 2}}, "positive integer"),
                      ({"expert_parallel_size": 2, "zero_optimization": {"stage": 2},
                        "expert_parallel": {"enabled": True}}, "AutoEP")]:
        bad.write_text(json.dumps(spec))
        with pytest.raises(E.EngineError, match=msg):
            E.load_ds_config(bad, train, 4, gpu=False)


def test_lr_schedule_warms_up_linearly_then_cosine_to_min_ratio():
    train = load_config("tiny", ["train.lr=0.01", "train.warmup_steps=4", "train.steps=20",
                                 "train.min_lr_ratio=0.1"]).train
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=train.lr)
    sched = E.lr_schedule(train)(opt)
    lrs = []
    for _ in range(21):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for s in range(4):
        assert lrs[s] == pytest.approx(0.01 * s / 4)
    for s in range(4, 21):
        progress = (s - 4) / 16
        want = 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lrs[s] == pytest.approx(want, rel=1e-6), s
    assert lrs[20] == pytest.approx(0.001)


# --------------------------------------------------------------------------- DeepSpeed, one process


@pytest.mark.parametrize("extra", [[], ["model.seq_moe.enabled=true", "model.seq_moe.feature_gate_init=2",
                                        "model.mmu_image_features=true", "model.image_positions=true"]])
def test_zero_init_builds_partitioned_model_with_the_explicit_init(tmp_path, extra):
    # with the sequence MoE: a feature expert's gate bias, set on an already partitioned child
    E.init_distributed(60)
    import deepspeed

    cfg = _cfg(tmp_path, "train.zero_init=true", "model.moe.enabled=true", "model.moe.expert_ffn=32", *extra)
    ds = E.load_ds_config(ZERO3, cfg.train, 1, gpu=False)
    model = E.build_model(cfg, ds)
    assert all(hasattr(p, "ds_id") for p in model.parameters())  # built partitioned
    from unif2ace.model.unif2ace import UniF2ace

    plain = UniF2ace(cfg.model)
    torch.manual_seed(cfg.train.seed)
    plain.init_weights()  # the documented init: init_weights() right after seeding train.seed
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        for name, ref in plain.named_parameters():
            got = params[name].detach()
            assert torch.isfinite(got).all(), name
            assert torch.equal(got, ref.detach()), name  # the same explicit init as a plain build
    lm = plain.lm_head.weight
    assert abs(lm.std().item() - cfg.model.init_std) < 0.2 * cfg.model.init_std


def _check_finite_worker(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed("gloo", auto_mpi_discovery=False, verbose=False, timeout=timedelta(seconds=90))
    with deepspeed.zero.Init(config_dict_or_path={"train_batch_size": 2, "zero_optimization": {"stage": 3}}):
        lin = nn.Linear(4, 3)  # bias: 3 values over 2 ranks, so rank 1 holds 1 value and 1 padding
    bias = lin.bias
    assert bias.ds_tensor.numel() == 2 and E.owned_values(bias).numel() == (2 if rank == 0 else 1)
    with torch.no_grad():
        bias.ds_tensor.fill_(0.5)
        if rank == 1:
            bias.ds_tensor[1] = float("nan")  # the padding: no parameter value, whatever it holds
    E.check_finite(lin)
    with deepspeed.zero.GatheredParameters([bias]):
        assert torch.equal(bias.detach(), torch.full((3,), 0.5))
    with torch.no_grad():
        if rank == 1:
            bias.ds_tensor[0] = float("nan")  # the parameter's third value
    if rank == 1:
        with pytest.raises(E.EngineError, match="1 tensors: bias"):
            E.check_finite(lin)
    else:
        E.check_finite(lin)
    dist.barrier()
    os._exit(0)  # as in tests/test_expert_parallel.py: gloo teardown aborts now and then


def test_check_finite_reads_zero3_shards_without_their_padding():
    # ZeRO-3 pads a parameter to a multiple of the ranks and never writes the padding
    # (torch.empty): a NaN there is no weight of the model and must not stop a run.
    mp.spawn(_check_finite_worker, args=(E._free_port(),), nprocs=2, join=True)


def test_nonfinite_steps_are_skipped_counted_then_stop_after_k(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("UNIF2ACE_FAULT", "nan:2,nan:4,nan:5,nan:6")
    cfg = _cfg(tmp_path, "train.steps=10", "train.save_every=1", "train.keep_last=10", "train.max_bad_steps=3")
    assert run(cfg, ZERO3, loader_factory=_mem) == EXIT_DIVERGED
    steps = _steps(tmp_path / "metrics.jsonl")
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # stopped at the third bad step in a row
    assert [steps[s]["skipped"] for s in range(1, 7)] == [0, 1, 0, 1, 1, 1]
    assert math.isnan(steps[2]["loss"]) and steps[6]["bad_steps"] == 4
    assert steps[3]["lr"] == steps[2]["lr"]  # the schedule did not advance on the skipped step
    assert "non-finite in 3 consecutive steps (4–6)" in capfd.readouterr().err
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = tmp_path / "checkpoints"
    w1, w2, w3 = (get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=f"step0000000{s}") for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # step 2 left the weights alone
    assert not all(torch.equal(w2[k], w3[k]) for k in w2)  # step 3 trained
    assert all(torch.isfinite(v).all() for v in w3.values())


def test_crash_mid_save_keeps_previous_checkpoint_then_resume_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIF2ACE_FAULT", "crash_in_save:4")
    cfg = _cfg(tmp_path, "train.steps=6", "train.save_every=2", "train.keep_last=2")
    with pytest.raises(InjectedFault):
        run(cfg, ZERO3, loader_factory=_mem)
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "latest").read_text() == "step00000002"
    assert (ckpt / ".tmp-step00000004").is_dir()  # DeepSpeed had written its files
    assert not (ckpt / "step00000004").exists()
    monkeypatch.delenv("UNIF2ACE_FAULT")
    assert run(cfg, ZERO3, loader_factory=_mem) == EXIT_OK
    start = [r for r in _rows(tmp_path / "metrics.jsonl") if r.get("event") == "start"]
    assert start[-1]["step"] == 2 and start[-1]["resumed"] is True
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step00000004", "step00000006"]  # keep 2
    assert (ckpt / "latest").read_text() == "step00000006"


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    assert run(_cfg(tmp_path, "train.steps=2"), ZERO3, loader_factory=_mem) == EXIT_OK
    other = _cfg(tmp_path, "train.steps=4", "model.intermediate_size=128")
    with pytest.raises(CheckpointMismatch, match=r"model\.intermediate_size: checkpoint 256 vs run 128"):
        run(other, ZERO3, loader_factory=_mem)
    world = _cfg(tmp_path, "train.steps=4", "train.micro_batch=2")
    with pytest.raises(CheckpointMismatch, match=r"train\.micro_batch: checkpoint 4 vs run 2"):
        run(world, ZERO3, loader_factory=_mem)
    assert run(_cfg(tmp_path, "train.steps=4", "model.intermediate_size=128", "train.resume=false"), ZERO3,
               loader_factory=_mem) == EXIT_OK  # explicitly starting over is allowed


def test_init_from_imports_phi_with_moe_upcycling_and_refuses_other_shapes(tmp_path):
    from transformers import PhiConfig, PhiForCausalLM

    from unif2ace.checkpoint.adapters import import_checkpoint

    torch.manual_seed(0)
    PhiForCausalLM(PhiConfig(vocab_size=600, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, partial_rotary_factor=0.5, bos_token_id=1,
                             eos_token_id=2)).save_pretrained(tmp_path / "phi")
    over = ["model.moe.enabled=true", "model.moe.num_routed=4", "model.moe.top_k=2", "model.moe.expert_ffn=64",
            f"train.init_from={tmp_path / 'phi'}"]
    cfg = _cfg(tmp_path, *over)
    model = E.build_model(cfg, {"zero_optimization": {"stage": 3}})
    torch.manual_seed(cfg.train.seed)  # new rows / routers are drawn after seeding, identically on every rank
    want, _ = import_checkpoint(tmp_path / "phi", cfg, seed=cfg.train.seed)
    got = model.state_dict()
    assert got.keys() == want.state_dict().keys() and "layers.0.ffn.experts.w1" in got
    assert all(torch.equal(got[k], v) for k, v in want.state_dict().items())
    with pytest.raises(E.EngineError, match=r"model\.hidden_size: checkpoint 64 vs run 128"):
        E.build_model(_cfg(tmp_path, *over, "model.hidden_size=128"), {})
