"""Turn a DeepSpeed (ZeRO-1/2/3) training checkpoint into our model directory, and back.

    # training checkpoint -> model directory (config.json + model.safetensors, fp32)
    python tools/convert_checkpoint.py runs/synthface/train/checkpoints --out runs/synthface/model
    python tools/convert_checkpoint.py runs/x/checkpoints --tag step00000300 --out runs/x/model-300
    python tools/convert_checkpoint.py runs/x/checkpoints/step00000300 --out runs/x/model-300   # same
    python tools/convert_checkpoint.py runs/x/checkpoints/step00000300     # → runs/x/model-step00000300

    # and back: the model directory initialises a new training run (weights only; the optimiser
    # and schedule start fresh, any world size, any ZeRO stage)
    deepspeed launchers/train.py --config synthface train.init_from=runs/synthface/model \
        train.out_dir=runs/synthface/finetune

The directory loads without DeepSpeed (``unif2ace.checkpoint.hf_io.load_pretrained``), e.g.
for sampling. ZeRO partitions of every rank are merged with DeepSpeed's own ``zero_to_fp32``
utilities from the fp32 master weights, so no precision is lost; the config comes from the
checkpoint's ``run.json`` (written by unif2ace/train/checkpointing.py). Runs on CPU, needs no
process group. Exit status 0 on success, 2 with a message naming the file otherwise.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation is CPU work; never grab a GPU


def convert(ckpt_root: str | os.PathLike, out: str | os.PathLike | None = None, tag: str | None = None) -> Path:
    """Merge the ZeRO checkpoint ``ckpt_root/tag`` (default: ``latest``) into a model directory
    (default: ``model-<tag>`` beside ``ckpt_root``, i.e. in the run's ``train.out_dir``)."""
    from unif2ace.checkpoint.hf_io import save_pretrained
    from unif2ace.checkpoint.load import load_zero
    from unif2ace.checkpoint.run_config import LATEST, RUN_META, CheckpointMismatch

    root = Path(ckpt_root)
    if tag is None and not (root / LATEST).exists() and (root / RUN_META).is_file():
        root, tag = root.parent, root.name  # a step directory: that step is the tag
    if tag is None and not (root / LATEST).exists():
        raise CheckpointMismatch(f"{root}: no '{LATEST}' file (not a checkpoint directory? pass --tag)")
    tag = tag or (root / LATEST).read_text().strip()
    model, cfg = load_zero(root, tag)  # strict: names every missing / extra / mis-shaped key
    return save_pretrained(model, cfg, out if out is not None else root.parent / f"model-{tag}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", help="train.out_dir/checkpoints (holds 'latest' and stepNNNNNNNN/), "
                    "or one stepNNNNNNNN/ directory in it")
    ap.add_argument("--out", default=None, help="model directory to write (atomically; default: "
                    "model-<tag> beside the checkpoints directory)")
    ap.add_argument("--tag", default=None, help="checkpoint to convert, e.g. step00000300 (default: latest)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from unif2ace.checkpoint.hf_io import CheckpointError
    from unif2ace.checkpoint.run_config import CheckpointMismatch

    try:
        out = convert(args.checkpoints, args.out, args.tag)
    except (CheckpointError, CheckpointMismatch, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (load with unif2ace.checkpoint.hf_io.load_pretrained, or train.init_from={out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
