"""Streaming shard loader: order, distribution, exact resume, task mix, rows, manifest checks."""
import math
import numpy as np
import pytest
import torch

from unif2ace.config import DataConfig, load_config
from unif2ace.data import shards as S
from unif2ace.data.loader import ShardLoader
from unif2ace.tokens import IGNORE, TASK_MMU, TASK_T2I, TokenLayout, build_mmu, build_t2i

SHAPES = {"clip": [8], "face": [512], "noise": [4]}
PROMPTS = [[7, 8, 9], [10, 11]]


def _model(**kw):
    over = [f"model.{k}={v}" for k, v in kw.items()]
    return load_config("tiny", over).model  # text 512, codebook 64, 16 image tokens, text_len 32


def _samples(n: int, rng: np.random.Generator):
    """Per-sample content with recognisable values: codes, caption, QA, features."""
    out = []
    for i in range(n):
        nq = int(rng.integers(0, 4)) if i % 7 else 0  # every 7th sample has no QA pairs
        out.append({
            "id": f"s{i:03d}", "split": "val" if i % 10 == 9 else "train", "identity": str(i // 3),
            "codes": rng.integers(0, 64, 16).astype(np.uint16),
            "caption_ids": rng.integers(3, 500, int(rng.integers(3, 12))).tolist(),
            "qa_question_ids": [rng.integers(3, 500, 3).tolist() for _ in range(nq)],
            "qa_answer_ids": [rng.integers(3, 500, 2).tolist() for _ in range(nq)],
            "clip": rng.standard_normal(8).astype(np.float16), "face": rng.standard_normal(512).astype(np.float16),
            "noise": rng.standard_normal(4).astype(np.float16), "face_found": bool(i % 3),
        })
    return out


def _write(tmp_path, samples, shard_size=13, **header):
    out = tmp_path / "shards"
    out.mkdir(exist_ok=True)
    feats = S.shard_features(16, 64, SHAPES)
    metas = {}
    for k, start in enumerate(range(0, len(samples), shard_size)):
        part = samples[start:start + shard_size]
        cols = {c: [s[c] for s in part] for c in ("id", "split", "identity", "caption_ids", "qa_question_ids",
                                                   "qa_answer_ids")}
        cols.update(caption=["c"] * len(part), attributes=["{}"] * len(part),
                    qa_category=[["x"] * len(s["qa_question_ids"]) for s in part],
                    codes=np.stack([s["codes"] for s in part]), face_found=np.array([s["face_found"] for s in part]))
        for name in SHAPES:
            cols[name] = np.stack([s[name] for s in part])
        metas[k] = S.write_shard(out, k, cols, feats, {"bad": []})
    h = dict(codebook_size=64, num_image_tokens=16, text_vocab_size=512, bos_id=1, eos_id=2,
             feature_shapes=SHAPES, caption_prompt_ids=PROMPTS, hashes={"image_tokenizer": "abc"},
             num_shards=len(metas))
    h.update(header)
    S.write_manifest(out, S.with_shards(S.new_manifest(**h), metas, complete=True))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    samples = _samples(60, np.random.default_rng(0))
    return _write(tmp_path_factory.mktemp("ld"), samples), samples


def _loader(shards, rank=0, world=1, mb=4, **kw):
    cfg = DataConfig(shards=str(shards), **kw)
    return ShardLoader(cfg, _model(), rank, world, mb)


def _take(loader, k):
    it = iter(loader)
    return [next(it) for _ in range(k)]


def _indices(batches):
    return [int(i) for b in batches for i in b.sample_index]


def test_one_epoch_is_a_permutation_of_the_split(data):
    shards, samples = data
    train = {i for i, s in enumerate(samples) if s["split"] == "train"}  # 54 samples
    ld = _loader(shards, mb=6)
    assert ld.num_samples == len(train) == 54
    idx = _indices(_take(ld, 9))
    assert sorted(idx) == sorted(train)
    assert idx != sorted(idx)  # shuffled
    nxt = _indices(_take(ld, 9))  # epoch 1: the same set, another order
    assert sorted(nxt) == sorted(train) and nxt != idx and ld.epoch == 2
    assert {ld.sample_id(i) for i in idx} == {samples[i]["id"] for i in train}
    assert _loader(shards, split="").num_samples == 60


def test_same_seed_same_batches_other_seed_other_order(data):
    shards, _ = data
    a, b = _take(_loader(shards), 3), _take(_loader(shards), 3)
    for x, y in zip(a, b):
        for k in ("input_ids", "labels", "task", "mask_ratio", "sample_index"):
            assert torch.equal(getattr(x, k), getattr(y, k))
    c = _take(_loader(shards, seed=1), 3)
    assert _indices(c) != _indices(a)


def test_resume_continues_exactly(data):
    shards, _ = data
    whole = _take(_loader(shards, mb=3), 18)  # 54 samples: one full epoch
    first = _loader(shards, mb=3)
    head = _take(first, 7)
    state = first.state_dict()
    resumed = _loader(shards, mb=3)
    resumed.load_state_dict(state)
    tail = _take(resumed, 11)
    union = _indices(head) + _indices(tail)
    assert sorted(union) == sorted(_indices(whole)) and len(set(union)) == 54  # nothing lost or repeated
    for x, y in zip(whole, head + tail):  # and the very same rows, masking included
        for k in ("input_ids", "labels", "task", "mask_ratio", "sample_index", "cond_dropped"):
            assert torch.equal(getattr(x, k), getattr(y, k))
        for k in x.features:
            assert torch.equal(x.features[k], y.features[k])


def test_ranks_are_disjoint_and_cover_an_epoch(data):
    shards, _ = data
    per_rank = [_indices(_take(_loader(shards, rank=r, world=3, mb=2), 9)) for r in range(3)]
    flat = [i for r in per_rank for i in r]
    assert len(flat) == 54 and len(set(flat)) == 54
    assert all(not set(a) & set(b) for a in per_rank for b in per_rank if a is not b)


def test_resume_with_another_world_size(data):
    shards, _ = data
    ranks = [_loader(shards, rank=r, world=2, mb=3) for r in range(2)]
    seen = [i for ld in ranks for i in _indices(_take(ld, 4))]  # 24 samples
    state = ranks[0].state_dict()
    assert state == {**ranks[1].state_dict(), "world": 2}
    single = _loader(shards, mb=5)
    single.load_state_dict(state)
    seen += _indices(_take(single, 6))  # 30 more
    assert len(seen) == 54 and len(set(seen)) == 54


def test_rows_are_the_builders_output(data):
    shards, samples = data
    layout = TokenLayout.from_model_config(_model())
    n_t2i = n_cap = n_vqa = 0
    for b in _take(_loader(shards, mb=6, cond_drop=0.0), 9):
        for r in range(6):
            s = samples[int(b.sample_index[r])]
            codes = torch.from_numpy(s["codes"].astype(np.int64))
            ids = b.input_ids[r]
            if b.task[r] == TASK_T2I:
                n_t2i += 1
                img = ids[-17:-1]
                masked = img == layout.mask_id
                want = build_t2i(layout, s["caption_ids"], codes, masked, 32)
                assert torch.equal(ids, want[0]) and torch.equal(b.labels[r], want[1])
                assert masked.any() and b.mask_ratio[r] == pytest.approx(masked.float().mean().item())
            else:
                assert b.task[r] == TASK_MMU and b.mask_ratio[r] == 0
                answer = b.labels[r][b.labels[r] != IGNORE].tolist()[:-1]  # minus the final <eot>
                if answer == s["caption_ids"][: len(answer)] and len(answer) >= 3:
                    n_cap += 1
                    prompt = next(p for p in PROMPTS if torch.equal(ids[20:20 + len(p)], torch.tensor(p)))
                    want = build_mmu(layout, codes, [(prompt, s["caption_ids"])], 32)
                else:
                    n_vqa += 1
                    assert s["qa_question_ids"]  # samples without QA never become VQA rows
                    turns = list(zip(s["qa_question_ids"], s["qa_answer_ids"]))
                    ans = [a for q, a in turns]
                    sup = b.labels[r][b.labels[r] != IGNORE].tolist()  # a1 <eot> a2 <eot> …
                    assert sup[2::3] == [layout.eos_id] * (len(sup) // 3) and len(sup) % 3 == 0
                    got = [sup[i:i + 2] for i in range(0, len(sup), 3)]
                    assert sorted(got) == sorted(ans)  # every turn, in a sample-seeded order
                    want = build_mmu(layout, codes, [turns[ans.index(g)] for g in got], 32)
                assert torch.equal(ids, want[0]) and torch.equal(b.labels[r], want[1])
            f = b.features
            assert torch.equal(f["clip"][r], torch.from_numpy(s["clip"].astype(np.float32)))
            assert torch.equal(f["face"][r], torch.from_numpy(s["face"].astype(np.float32)))
            assert f["face_found"][r].item() == s["face_found"]
    assert n_t2i and n_cap and n_vqa


def test_task_mix_per_batch(data):
    shards, _ = data
    for frac in (0.0, 0.25, 0.5, 1.0):
        batches = _take(_loader(shards, mb=8, t2i_fraction=frac), 25)
        counts = [int((b.task == TASK_T2I).sum()) for b in batches]
        assert all(abs(c - 8 * frac) <= 1 for c in counts), (frac, counts)
        assert sum(counts) == pytest.approx(200 * frac, abs=2)
    only_cap = _take(_loader(shards, mb=8, t2i_fraction=0.0, caption_fraction=1.0), 3)
    for b in only_cap:  # every row is a caption: prompt ids right after <|eoi|> <sot>
        assert all(any(row[20:20 + len(p)].tolist() == p for p in PROMPTS) for row in b.input_ids)


def test_condition_dropout(data):
    shards, _ = data
    layout = TokenLayout.from_model_config(_model())
    dropped = [b for b in _take(_loader(shards, mb=8, t2i_fraction=1.0, cond_drop=1.0), 3)]
    for b in dropped:
        assert b.cond_dropped.all()
        text = b.input_ids[:, :-17]
        assert ((text == layout.pad_id).sum(1) == 32 - 2).all()  # only <sot><eot> left of the prompt
        assert not b.features["clip"].any() and not b.features["face"].any()
        assert not b.features["face_found"].any() and b.features["noise"].abs().sum() > 0
    kept = _take(_loader(shards, mb=8, t2i_fraction=1.0, cond_drop=0.0), 3)
    assert not any(b.cond_dropped.any() for b in kept)
    some = torch.cat([b.cond_dropped for b in _take(_loader(shards, mb=8, t2i_fraction=1.0, cond_drop=0.3), 10)])
    assert 0.1 < some.float().mean() < 0.5


def test_masking_depends_on_sample_not_on_batching(data):
    shards, _ = data
    a = _take(_loader(shards, mb=6), 9)
    b = [x for r in range(2) for x in _take(_loader(shards, rank=r, world=2, mb=3), 9)]
    rows_a = {int(i): (t.tolist(), int(k)) for x in a for i, t, k in zip(x.sample_index, x.input_ids, x.task)}
    rows_b = {int(i): (t.tolist(), int(k)) for x in b for i, t, k in zip(x.sample_index, x.input_ids, x.task)}
    assert rows_a == rows_b


def test_mask_ratio_schedule(data):
    shards, _ = data
    ratios = torch.cat([b.mask_ratio for b in _take(_loader(shards, mb=8, t2i_fraction=1.0), 25)])
    assert ratios.min() >= 1 / 16 and ratios.max() <= 1
    # cos(π/2·t), t ~ U(0,1): mean 2/π ≈ 0.64 (rounded to sixteenths)
    assert ratios.mean().item() == pytest.approx(2 / math.pi, abs=0.08)


def test_dataloader_workers_give_the_same_batches(data):
    shards, _ = data
    plain = _take(_loader(shards, mb=4), 4)
    ld = _loader(shards, mb=4, num_workers=1)
    worked = _take(ld, 4)
    for x, y in zip(plain, worked):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
    assert ld.state_dict()["consumed"] == 16


def test_manifest_mismatch_errors(data, tmp_path):
    shards, samples = data
    cfg = DataConfig(shards=str(shards))
    with pytest.raises(S.ShardError, match=r"shards.*codebook_size: shards 64 vs model.codebook_size 128"):
        ShardLoader(cfg, _model(codebook_size=128), 0, 1, 4)
    with pytest.raises(S.ShardError, match=r"text_vocab_size: shards 512 vs model.text_vocab_size 1024"):
        ShardLoader(cfg, _model(text_vocab_size=1024), 0, 1, 4)
    with pytest.raises(S.ShardError, match="num_image_tokens"):
        ShardLoader(cfg, _model(num_image_tokens=64), 0, 1, 4)
    with pytest.raises(S.ShardError, match="image_tokenizer hash"):
        ShardLoader(cfg, _model(), 0, 1, 4, expect_hashes={"image_tokenizer": "fff"})
    moe = load_config("tiny", ["model.seq_moe.enabled=true"]).model  # clip_dim 512, shards have 8
    with pytest.raises(S.ShardError, match="feature clip: shards width 8 vs model.seq_moe.clip_dim 512"):
        ShardLoader(cfg, moe, 0, 1, 4)
    with pytest.raises(S.ShardError, match="no manifest.json"):
        ShardLoader(DataConfig(shards=str(tmp_path)), _model(), 0, 1, 4)
    partial = _write(tmp_path, samples[:20])
    m = S.read_manifest(partial)
    S.write_manifest(partial, {**m, "complete": False})
    with pytest.raises(S.ShardError, match="has not finished"):
        ShardLoader(DataConfig(shards=str(partial)), _model(), 0, 1, 4)
    S.write_manifest(partial, m)
    other = ShardLoader(DataConfig(shards=str(partial)), _model(), 0, 1, 4)
    with pytest.raises(S.ShardError, match="loader state is from other shards"):
        other.load_state_dict(_loader(shards).state_dict())


def test_corrupted_shard_detected(tmp_path):
    out = _write(tmp_path, _samples(20, np.random.default_rng(1)))
    data_file = out / "shard-00000" / S.DATA_FILE
    raw = bytearray(data_file.read_bytes())
    raw[-100] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    with pytest.raises(S.ShardError, match="shard-00000/data.arrow: sha256 differs"):
        ShardLoader(DataConfig(shards=str(out), verify=True), _model(), 0, 1, 4)


def test_truncated_shard_is_one_line_naming_the_file(tmp_path):
    """A shard cut to half its size (full disk, interrupted copy) is caught at loader start
    without data.verify, by the size in the manifest, and the message says how to rebuild."""
    out = _write(tmp_path, _samples(40, np.random.default_rng(1)), shard_size=13)
    m = S.read_manifest(out)
    S.write_manifest(out, {**m, "command": "python tools/precompute_tokens.py --out X"})
    data_file = out / "shard-00001" / S.DATA_FILE
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(S.ShardError) as e:
        ShardLoader(DataConfig(shards=str(out)), _model(), 0, 1, 4)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"shard-00001/data.arrow: {len(raw) // 2} bytes, the manifest says {len(raw)} (truncated)" in msg
    assert "rebuild: python tools/precompute_tokens.py --out X" in msg
    # a damaged file the manifest sizes cannot see (its meta rewritten to match) still fails
    # with the file's name, not pyarrow's bare message
    shard = next(s for s in m["shards"] if s["name"] == "shard-00001")
    shard["files"][S.DATA_FILE]["bytes"] = len(raw) // 2
    S.write_manifest(out, m)
    with pytest.raises(S.ShardError, match=r"shard-00001/data.arrow: unreadable \(.*rebuild: re-run"):
        ShardLoader(DataConfig(shards=str(out)), _model(), 0, 1, 4)


def test_batch_feeds_model_and_loss(data):
    from unif2ace.losses import total_loss
    from unif2ace.model.unif2ace import UniF2ace

    shards, _ = data
    cfg = load_config("tiny")
    batch = _take(_loader(shards, mb=6), 1)[0]
    assert set(batch.task.tolist()) == {TASK_T2I, TASK_MMU}
    model = UniF2ace(cfg.model)
    out = model(batch.input_ids, batch.task, features=batch.features)
    loss, metrics = total_loss(out, batch, model.layout, cfg.loss)
    loss.backward()
    assert torch.isfinite(loss) and "l_mmu" in metrics and "l_d3diff" in metrics
    assert batch.features["face_found"].dtype == torch.bool and batch.features["clip"].dtype == torch.float32
