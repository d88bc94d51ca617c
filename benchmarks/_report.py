"""Shared output of the benchmarks: an aligned key/value table on stdout, optionally JSON."""
from __future__ import annotations

import json
from pathlib import Path


def report(res: dict, json_path: str | None = None, digits: int = 1) -> dict:
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:,.{digits}f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(res, indent=1))
    return res
