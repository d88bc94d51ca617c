"""Import a local ``microsoft/phi-1_5``-format or Show-o checkpoint directory into ours.

    python tools/import_showo.py --src /models/show-o-512x512 --out runs/init/showo
    python tools/import_showo.py --src /models/phi-1_5 --out runs/init/phi --config unif2ace-1.8b \
        model.moe.enabled=true

The format is detected from the keys (``--format phi|showo`` to force it). Shapes come from the
weights; everything else (MoE, block layout, training) from ``--config`` and overrides. The
result is a unif2ace checkpoint directory (config.json + model.safetensors).
"""
from __future__ import annotations

import argparse
import sys


from unif2ace.checkpoint.adapters import import_checkpoint
from unif2ace.checkpoint.hf_io import CheckpointError, save_pretrained
from unif2ace.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="local Phi / Show-o directory (config.json + weights)")
    ap.add_argument("--out", required=True, help="output directory (written atomically)")
    ap.add_argument("--format", choices=["phi", "showo"], default=None, help="skip format detection")
    ap.add_argument("--config", default="unif2ace-1.8b", help="recipe for the settings the weights do not fix")
    ap.add_argument("--allow-partial", action="store_true", help="accept missing/mis-shaped keys (listed)")
    ap.add_argument("--seed", type=int, default=0, help="seed for new vocabulary rows")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    try:
        base = load_config(args.config, args.overrides)
        model, cfg = import_checkpoint(args.src, base, args.format, args.seed, args.allow_partial)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = save_pretrained(model, cfg, args.out)
    print(f"imported {args.src} → {out} ({model.num_parameters():,} parameters, vocab {model.layout.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
