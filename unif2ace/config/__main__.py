"""``python -m unif2ace.config RECIPE [key=value ...]``: the resolved config, then parameter
counts per component (computed on the meta device, so any size prints in a second).

    python -m unif2ace.config unif2ace-1.8b
    python -m unif2ace.config tiny model.num_layers=4
    python -m unif2ace.config --help          # every key with its docstring

A bad recipe, key or value is one line on stderr (exit 2), with no traceback.
"""
from __future__ import annotations

import sys

import yaml

from unif2ace.config import ConfigError, load_config, print_help


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print_help()
        return 0
    try:
        cfg = load_config(argv[0], argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # The counts need the model, which imports unif2ace.config: importing it here (the
    # program, not the package) keeps the package free of an import cycle.
    from unif2ace.model.params import print_param_counts

    print_param_counts(cfg.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
