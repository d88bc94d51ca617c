"""Precompute training shards: MAGVIT image codes, text ids, CLIP / face / noise features.

    # SynthFace on a laptop (no CLIP / face weights: the fallbacks are named explicitly)
    python tools/precompute_tokens.py --data data/synthface --out runs/synthface/shards \
        --image-tokenizer runs/synthface/magvit --text-tokenizer runs/synthface/spm.model \
        --recipe synthface --workers 2 \
        --feature clip.model=UniF2ace-Tiny-CLIP --feature clip.fallback=random-init \
        --feature face.mode=aligned --feature face.fallback=none

    # A data set described by a source spec (check it first: python tools/inspect_source.py SPEC)
    python tools/precompute_tokens.py --spec data/specs/my_faces.yaml --features features.yaml \
        --image-tokenizer weights/magvitv2 --text-tokenizer weights/phi-1_5 --recipe unif2ace-1.8b \
        --out runs/faces/shards --workers 8

    # A single flat metadata table: column mapping and encoders from YAML files
    python tools/precompute_tokens.py --source ffhq_source.yaml --features features.yaml \
        --image-tokenizer weights/magvitv2 --text-tokenizer weights/phi-1_5 --recipe unif2ace-1.8b \
        --out runs/ffhq/shards --workers 8

Re-running the same command resumes: finished shards are skipped, a half-written one is
discarded and redone, and a damaged one (size or sha256 no longer what was written, e.g.
truncated by a full disk) is rewritten; nothing else is touched. Inputs that cannot be used are listed in OUT/bad_inputs.jsonl and
the summary; the run never stops on one bad file. Exit status 0 when every shard is
written, 1 when some shard failed (re-run to retry it). Features, tokenization and the
shard format: ``unif2ace/data/precompute.py`` and ``unif2ace/data/shards.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from pathlib import Path

import yaml

from unif2ace.cli import parse_with_extras
from unif2ace.config import load_config, merge, parse_overrides
from unif2ace.data.precompute import PrecomputeConfig, overwrite, run
from unif2ace.data.shards import ShardError
from unif2ace.data.sources import SourceConfig
from unif2ace.data.spec import SpecError, load_spec


def _yaml(path: str | None, what: str) -> dict:
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of {what} fields")
    return data


def _rebuild_command(argv: list[str]) -> str:
    """This command as it should be re-run to repair the shards (without --overwrite, which
    would redo every shard)."""
    return shlex.join(["python", "tools/precompute_tokens.py", *(a for a in argv if a != "--overwrite")])


def _input_flags(ap: argparse.ArgumentParser) -> None:
    """Flags that are not PrecomputeConfig fields: where records come from, features, the run."""
    ap.add_argument("--data", default="", help="data set root (sets source root)")
    ap.add_argument("--source", default=None, help="YAML of SourceConfig fields (column mapping)")
    ap.add_argument("--spec", default=None, help="source spec YAML (unif2ace/data/spec.py; joins, splits, archives)")
    ap.add_argument("--recipe", default=None, help="check sizes against this recipe's model and derive --image-size")
    ap.add_argument("--features", default=None, help="YAML of FeatureConfig (clip / face / noise)")
    ap.add_argument("--feature", action="append", default=[], metavar="KEY=VALUE",
                    help="FeatureConfig override, e.g. clip.fallback=random-init (repeatable)")
    ap.add_argument("--overwrite", action="store_true", help="replace shards of a different earlier run in --out")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, args = parse_with_extras(PrecomputeConfig, argv, __doc__, extras=_input_flags, exclude=("command",),
                                  required=("out", "image_tokenizer", "text_tokenizer"))
    cfg.command = _rebuild_command(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from unif2ace.features import FeatureConfig

    if args.spec:
        if args.source or args.data:
            raise SystemExit("give either --spec or --data / --source, not both")
        try:
            source = load_spec(args.spec)
        except SpecError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        src = _yaml(args.source, "SourceConfig")
        if args.data:
            src["root"] = args.data
        if not src.get("root"):
            raise SystemExit("give --data DIR, root: in --source YAML, or --spec")
        source = SourceConfig.from_dict(src)
    feature_cfg = FeatureConfig.from_dict(merge(_yaml(args.features, "FeatureConfig"), parse_overrides(args.feature)))

    model_cfg = load_config(args.recipe).model if args.recipe else None
    if not cfg.image_size:
        if model_cfg is None:
            raise SystemExit("give --image-size or --recipe")
        from unif2ace.tokenizers.magvit import MagvitV2

        side = math.isqrt(model_cfg.num_image_tokens)
        cfg.image_size = side * MagvitV2.from_pretrained(cfg.image_tokenizer).config.downsample
    if args.overwrite:
        overwrite(Path(cfg.out))
    try:
        s = run(cfg, source, feature_cfg, progress=args.progress, model_cfg=model_cfg)
    except (ShardError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(f"{s['out']}: {s['num_samples']} samples in {s['num_shards']} shards "
          f"({s['skipped_shards']} already done, {s['written_shards']} written) from {s['num_records']} records; "
          f"{s['images_per_s']:.1f} images/s")
    print(f"bad inputs: {len(s['skipped'])} skipped, {len(s['converted'])} converted "
          f"(details: {Path(s['out']) / 'bad_inputs.jsonl'})")
    for b in s["skipped"][:20]:
        print(f"  skipped {b['path']}: {b['reason']}")
    if len(s["skipped"]) > 20:
        print(f"  … {len(s['skipped']) - 20} more")
    if s["reasons"]:
        print("  by reason: " + json.dumps(s["reasons"]))
    for i, err in s["failed_shards"].items():
        print(f"shard {i} FAILED: {err} (re-run the same command to retry)")
    return 0 if s["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
