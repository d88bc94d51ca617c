"""Streaming loader over precomputed shards: fixed-length mixed T2I / MMU batches.

    from unif2ace.config import load_config
    from unif2ace.data.loader import ShardLoader
    cfg = load_config("synthface")
    loader = ShardLoader(cfg.data, cfg.model, rank, world, cfg.train.micro_batch, loss_cfg=cfg.loss)
    for batch in loader:                      # infinite; epochs advance by themselves
        out = model(batch.input_ids, batch.task, features=batch.features)
        loss, metrics = total_loss(out, batch, model.layout, cfg.loss)
        ...
        ckpt["data"] = loader.state_dict()    # on resume: loader.load_state_dict(ckpt["data"])

A batch (``unif2ace.tokens.Batch``): ``input_ids`` / ``labels`` (B, L) long, ``task`` (B,) (TASK_T2I / TASK_MMU),
``mask_ratio`` (B,) float (the applied ratio; 0 on MMU rows), ``features`` {'clip' (B, D),
'face' (B, 512), 'face_found' (B,) bool, 'noise' (B, Dn), …} float32, plus ``sample_index``
(B,) long (the sample's global row, ``loader.sample_id(i)`` gives its id; features come from
``shards.codes_and_features``) and
``cond_dropped`` (B,) bool. Rows come from ``unif2ace.tokens`` (build_t2i / build_mmu).

Order: the samples of the split form one stream, epoch after epoch, each epoch a permutation
drawn from (seed, epoch). Stream position g belongs to rank g mod world; a step takes
``micro_batch`` positions per rank. The state is the number of stream positions consumed, so
a restart (even with another world size or micro batch) continues exactly: no sample lost or
repeated. The task of position g is a low-discrepancy (golden-ratio) sequence, so every
batch holds t2i_fraction of T2I rows to within one; all other randomness of a row (condition
dropout, mask ratio and positions, caption prompt, QA turns) comes from a generator seeded by
(seed, epoch, sample). Nothing is decoded or tokenized here: the shards hold ids.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unif2ace.config import DataConfig, LossConfig, ModelConfig
from unif2ace.data import shards as S
from unif2ace.tokens import TASK_MMU, TASK_T2I, Batch, TokenLayout, build_mmu, build_t2i, collate, mask_image_codes, mask_ratio

STATE_VERSION = 1
_GOLDEN = 2654435769  # round(2**32 · (√5 − 1) / 2): Weyl step of the task sequence
_CAPTION = 2  # internal row kind next to TASK_T2I (0) and TASK_MMU (1, VQA)


def _seed64(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") & ((1 << 63) - 1)


class _Source:
    """The memory-mapped shards of one split and everything derived from the manifest."""

    def __init__(self, shard_dir: Path, manifest: dict, split: str):
        self.dir = shard_dir
        self.shapes = {k: list(v) for k, v in manifest["feature_shapes"].items()}
        self.views: list[S.ShardView] = []
        starts = [0]
        for s in manifest["shards"]:
            view = S.ShardView(shard_dir / s["name"], self.shapes)
            if view.n != s["count"]:
                raise S.ShardError(f"{shard_dir / s['name']}: {view.n} rows but the manifest says {s['count']}")
            self.views.append(view)
            starts.append(starts[-1] + view.n)
        self.starts = starts  # a list: bisect on Python ints beats np.searchsorted per row
        keep = [np.arange(v.n, dtype=np.int64)[np.asarray(v.split) == split] + self.starts[i] if split
                else np.arange(v.n, dtype=np.int64) + starts[i] for i, v in enumerate(self.views)]
        self.index = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
        self.prompts = [np.asarray(p, dtype=np.int64) for p in manifest["caption_prompt_ids"]]
        h = hashlib.sha256(split.encode())
        for s in manifest["shards"]:
            h.update(json.dumps([s["name"], s["count"], s["files"]], sort_keys=True).encode())
        self.fingerprint = h.hexdigest()

    def locate(self, k: int) -> tuple[S.ShardView, int]:
        s = bisect.bisect_right(self.starts, k) - 1
        return self.views[s], k - self.starts[s]


@dataclass
class _Row:
    """One training row before collation."""

    ids: torch.Tensor
    labels: torch.Tensor
    task: int
    mask_ratio: float
    features: dict[str, torch.Tensor]
    """Each (1, *shape); zeros (but 'noise') when the condition was dropped."""
    sample: int
    """Global sample row in the shards."""
    dropped: bool


class _Builder:
    """Builds batch ``b`` after ``start`` consumed positions; a pure function of its arguments."""

    def __init__(self, data: DataConfig, model: ModelConfig, loss: LossConfig, rank: int, world: int,
                 micro_batch: int, shard_dir: Path, manifest: dict):
        self.data, self.model, self.loss = data, model, loss
        self.rank, self.world, self.micro_batch = rank, world, micro_batch
        self.src = _Source(shard_dir, manifest, data.split)
        self.n = len(self.src.index)
        self.layout = TokenLayout.from_model_config(model)
        self._perms: dict[int, np.ndarray] = {}
        self._offset = _seed64("task", data.seed) & 0xFFFFFFFF
        t = data.t2i_fraction
        self._cuts = (t * 2**32, (t + (1 - t) * data.caption_fraction) * 2**32)

    # ----------------------------------------------------------------- order

    def perm(self, epoch: int) -> np.ndarray:
        p = self._perms.get(epoch)
        if p is None:
            p = np.random.default_rng([self.data.seed, epoch]).permutation(self.n)
            self._perms = {e: v for e, v in self._perms.items() if e >= epoch - 1}  # keep the last two
            self._perms[epoch] = p
        return p

    def kind(self, g: int) -> int:
        u = (g * _GOLDEN + self._offset) & 0xFFFFFFFF
        return TASK_T2I if u < self._cuts[0] else _CAPTION if u < self._cuts[1] else TASK_MMU

    def positions(self, start: int, b: int) -> list[int]:
        base = start + b * self.micro_batch * self.world
        return [base + j * self.world + self.rank for j in range(self.micro_batch)]

    # ----------------------------------------------------------------- rows

    def row(self, g: int) -> _Row:
        epoch, pos = divmod(g, self.n)
        k = int(self.src.index[self.perm(epoch)[pos]])
        view, r = self.src.locate(k)
        gen = torch.Generator().manual_seed(_seed64(self.data.seed, epoch, k))
        codes, feats = S.codes_and_features([(view, r)])
        codes = codes[0]
        caption = view.caption_ids[r]
        questions, answers = view.questions[r], view.answers[r]
        kind = self.kind(g)
        if kind == TASK_MMU and not questions:
            kind = _CAPTION  # no QA pairs: caption instead
        if kind in (TASK_T2I, _CAPTION) and len(caption) == 0:
            kind = TASK_MMU  # caption-less sample (kept for VQA only)
        m = self.model
        dropped = False
        ratio = 0.0
        if kind == TASK_T2I:
            dropped = bool(torch.rand((), generator=gen) < self.data.cond_drop)
            t = torch.rand(1, generator=gen)
            want = mask_ratio(t, self.loss.schedule).clamp_min(self.loss.min_mask_ratio)
            masked, applied = mask_image_codes(codes[None], want, generator=gen)
            ids, labels = build_t2i(self.layout, [] if dropped else caption.tolist(), codes, masked[0], m.text_len)
            ratio = float(applied[0])
            task = TASK_T2I
        elif kind == _CAPTION:
            p = self.src.prompts[int(torch.randint(len(self.src.prompts), (), generator=gen))]
            ids, labels = build_mmu(self.layout, codes, [(p.tolist(), caption.tolist())], m.text_len)
            task = TASK_MMU
        else:
            order = torch.randperm(len(questions), generator=gen)[: self.data.max_qa_turns].tolist()
            turns = [(questions[i].tolist(), answers[i].tolist()) for i in order]
            ids, labels = build_mmu(self.layout, codes, turns, m.text_len)
            task = TASK_MMU
        if dropped:  # an unconditional row must not see the image through its features either
            feats = {name: (v if name == "noise" else torch.zeros_like(v)) for name, v in feats.items()}
        return _Row(ids, labels, task, ratio, feats, k, dropped)

    def batch(self, start: int, b: int) -> Batch:
        rows = [self.row(g) for g in self.positions(start, b)]
        out = collate([(r.ids, r.labels) for r in rows], [r.task for r in rows],
                      trim_pad_id=self.layout.pad_id if self.data.trim_padding else None)
        out.mask_ratio = torch.tensor([r.mask_ratio for r in rows], dtype=torch.float32)
        out.features = {name: torch.cat([r.features[name] for r in rows]) for name in rows[0].features}
        out.sample_index = torch.tensor([r.sample for r in rows], dtype=torch.long)
        out.cond_dropped = torch.tensor([r.dropped for r in rows], dtype=torch.bool)
        return out


class _BatchSet(torch.utils.data.Dataset):
    """Batch ``b`` for DataLoader workers; each worker opens its own memory maps."""

    def __init__(self, args: tuple, start: int):
        self.args, self.start = args, start
        self.builder: _Builder | None = None

    def __getitem__(self, b: int) -> Batch:
        if self.builder is None:
            self.builder = _Builder(*self.args)
        return self.builder.batch(self.start, b)

    def __getstate__(self):
        return {"args": self.args, "start": self.start, "builder": None}


class ShardLoader:
    """Infinite, resumable, rank-aware iterator of training batches (see the module docstring)."""

    def __init__(self, data_cfg: DataConfig, model_cfg: ModelConfig, rank: int = 0, world: int = 1,
                 micro_batch: int = 4, *, loss_cfg: LossConfig | None = None,
                 expect_hashes: dict[str, str] | None = None, shard_dir: str | None = None):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        if micro_batch <= 0 or data_cfg.max_qa_turns <= 0:
            raise ValueError("micro_batch and data.max_qa_turns must be positive")
        self.dir = Path(shard_dir or data_cfg.shards)
        manifest = S.read_manifest(self.dir)
        S.check_compatible(manifest, model_cfg, self.dir, expect_hashes)
        S.check_files(self.dir, manifest, checksum=data_cfg.verify)  # sizes always (a stat each)
        self.manifest = manifest
        self.data_cfg, self.rank, self.world, self.micro_batch = data_cfg, rank, world, micro_batch
        self._args = (data_cfg, model_cfg, loss_cfg or LossConfig(), rank, world, micro_batch, self.dir, manifest)
        self.builder = _Builder(*self._args)
        if self.builder.n == 0:
            raise S.ShardError(f"{self.dir}: no samples in split {data_cfg.split!r} "
                               f"(splits present: {self.splits()})")
        self.consumed = 0
        self._ids: list[str] | None = None

    # ----------------------------------------------------------------- info

    @property
    def num_samples(self) -> int:
        """Samples per epoch (all ranks together)."""
        return self.builder.n

    @property
    def epoch(self) -> int:
        return self.consumed // self.builder.n

    @property
    def steps_per_epoch(self) -> float:
        return self.builder.n / (self.micro_batch * self.world)

    def splits(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.builder.src.views:
            for s in v.split:
                out[s] = out.get(s, 0) + 1
        return out

    def sample_id(self, index: int) -> str:
        """The id of global sample row ``index`` (``batch['sample_index']``)."""
        if self._ids is None:
            self._ids = [i for v in self.builder.src.views for i in v.ids()]
        return self._ids[index]

    # ----------------------------------------------------------------- iteration

    def __iter__(self):
        step = self.micro_batch * self.world
        if self.data_cfg.num_workers <= 0:
            while True:
                batch = self.builder.batch(self.consumed, 0)
                self.consumed += step  # counted before yielding: state_dict() after a batch includes it
                yield batch
        start = self.consumed
        dl = torch.utils.data.DataLoader(_BatchSet(self._args, start), batch_size=None, sampler=itertools.count(),
                                         num_workers=self.data_cfg.num_workers, persistent_workers=False)
        for b, batch in enumerate(dl):
            self.consumed = start + (b + 1) * step
            yield batch

    def __next__(self):  # convenience: next(loader) without holding an iterator
        if not hasattr(self, "_it"):
            self._it = iter(self)
        return next(self._it)

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "consumed": self.consumed, "seed": self.data_cfg.seed,
                "num_samples": self.builder.n, "fingerprint": self.builder.src.fingerprint,
                "world": self.world, "micro_batch": self.micro_batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue after ``state``'s position. Refuses a state of other shards, split or seed
        (the order would differ); world size and micro batch may change."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        mism = [f"{k}: saved {state.get(k)} vs now {v}" for k, v in
                (("seed", self.data_cfg.seed), ("num_samples", self.builder.n),
                 ("fingerprint", self.builder.src.fingerprint)) if state.get(k) != v]
        if mism:
            raise S.ShardError(f"{self.dir}: loader state is from other shards / split / seed; " + "; ".join(mism))
        self.consumed = int(state["consumed"])
        if hasattr(self, "_it"):
            del self._it
