"""Periodic samples while training (``train.sample_every``): a T2I grid and VQA answers.

    sampler = PeriodicSampler(cfg, rank)     # fixed faces from the shards' val split
    sampler(engine.module, step, engine.empty_partition_cache)   # collective: same forwards on every rank

Writes, on rank 0, under ``train.out_dir/samples/``:

    step00000100.png    the T2I samples for the captions of the first faces (decoded with the
                        image tokenizer named in the shard manifest; codes only if it is gone)
    vqa.jsonl           {"step", "id", "question", "answer", "reference"} per face and step
    routing_step00000100.png   MoE routing heat maps (``RoutingMaps``): per layer, the share of
                        each expert in the choices of each task's tokens / rows, mean over the
                        steps since the previous map (also written at the last step)

Under ZeRO-3 parameters are gathered inside each forward, so every rank must run exactly the
same forwards: the inputs are identical on every rank and answers are decoded for a fixed
``sample.max_new_tokens`` (no early stop at end-of-text that could differ between ranks).
The sampler uses ``sample.*`` settings and its own seeded generator, so training RNG streams
(and therefore resume) are untouched.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from unif2ace.config import Config
from unif2ace.data import shards as S
from unif2ace.model.moe.stats import RoutingStats

log = logging.getLogger(__name__)


class PeriodicSampler:
    def __init__(self, cfg: Config, rank: int, num: int = 4):
        self.cfg, self.rank = cfg, rank
        shard_dir = Path(cfg.data.shards)
        manifest = S.read_manifest(shard_dir)
        view = S.ShardView(shard_dir / manifest["shards"][0]["name"], manifest["feature_shapes"])
        val = [i for i, s in enumerate(view.split) if s == "val"] or list(range(view.n))
        rows = [i for i in val if len(view.caption_ids[i])][:num]
        ids = view.ids()
        self.ids = [ids[i] for i in rows]
        self.prompts = [view.caption_ids[i].tolist() for i in rows]
        self.codes, self.features = S.codes_and_features([(view, i) for i in rows])
        qa = [(view.questions[i], view.answers[i]) for i in rows]
        self.questions = [q[0].tolist() if len(q) else [] for q, _ in qa]
        self.references = [a[0].tolist() if len(a) else [] for _, a in qa]
        self.out = Path(cfg.train.out_dir) / "samples"
        self.text = self.image_tokenizer = None
        if rank == 0:
            self._load_decoders(manifest)

    def _load_decoders(self, manifest: dict) -> None:
        try:
            from unif2ace.tokenizers.text import TextTokenizer

            self.text = TextTokenizer.load(manifest["text_tokenizer"]["source"])
        except (OSError, ValueError, KeyError) as e:
            log.warning("samples: no text tokenizer (%s); answers are logged as ids", e)
        try:
            from unif2ace.tokenizers.magvit import MagvitV2

            self.image_tokenizer = MagvitV2.from_pretrained(manifest["image_tokenizer"]["path"]).eval()
        except Exception as e:  # a missing or moved tokenizer must not stop training
            log.warning("samples: no image tokenizer (%s); T2I samples are saved as codes", e)

    def __call__(self, model, step: int, release=None) -> None:
        """``release``: called after sampling, e.g. ``engine.empty_partition_cache``."""
        from unif2ace.inference.mmu import generate_answers, mmu_prompts
        from unif2ace.inference.t2i import codes_to_pil, generate_codes, save_png

        device = next(model.parameters()).device
        feats = {k: v.to(device) for k, v in self.features.items()}
        gen = torch.Generator().manual_seed(self.cfg.sample.seed)
        codes = generate_codes(model, self.prompts, self.cfg.sample, features=feats, generator=gen)
        prompts = mmu_prompts(model.layout, self.codes, self.questions)
        answers = generate_answers(model, prompts, self.cfg.sample, features=feats, generator=gen, stop_at_eos=False)
        if release is not None:
            # The samplers run under torch.inference_mode: ZeRO-3 may still hold (prefetched)
            # weights gathered there, as inference tensors the next training step cannot
            # back-propagate through. Re-partition everything; training gathers afresh.
            release()
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.image_tokenizer is not None:
            images = codes_to_pil(self.image_tokenizer, codes)
            w, h = images[0].size
            from PIL import Image

            grid = Image.new("RGB", (w * len(images), h))
            for i, im in enumerate(images):
                grid.paste(im, (i * w, 0))
            save_png(grid, self.out / f"step{step:08d}.png")
        else:
            torch.save(codes, self.out / f"step{step:08d}.codes.pt")
        eos = self.cfg.model.eos_id
        with open(self.out / "vqa.jsonl", "a") as f:
            for i, ans in enumerate(answers):
                ans = ans[: ans.index(eos)] if eos in ans else ans
                dec = self.text.decode if self.text is not None else (lambda x: x)
                f.write(json.dumps({"step": step, "id": self.ids[i], "question": dec(self.questions[i]),
                                    "answer": dec(ans), "reference": dec(self.references[i])}) + "\n")



class RoutingMaps:
    """Rank 0: routing heat maps beside the sample grids (unif2ace/eval/routing.py draws them).

        maps = RoutingMaps(cfg)
        maps.add(step, row)      # every step: the step's metrics row, already averaged over ranks
        maps.write(step)         # samples/routing_step{step}.png of the steps since the last write
    """

    def __init__(self, cfg: Config):
        from unif2ace.eval.routing import expert_labels

        self.name = cfg.name
        self.out = Path(cfg.train.out_dir) / "samples"
        self.labels = expert_labels(cfg.model.seq_moe.gen_experts, cfg.model.seq_moe.und_experts)
        self.acc, self.first = RoutingStats(), None

    def add(self, step: int, row: dict) -> None:
        self.first = step if self.first is None else self.first
        self.acc.add(row)

    def write(self, step: int) -> Path | None:
        """The PNG's path; None when nothing was routed since the last write (a dense model)."""
        from unif2ace.eval.routing import save_routing_heatmaps

        mats, first = self.acc.matrices(), self.first
        self.acc, self.first = RoutingStats(), None
        if not mats:
            return None
        return save_routing_heatmaps(mats, self.out / f"routing_step{step:08d}.png", self.labels,
                                     title=f"{self.name}: routing, mean over steps {first}-{step}")
