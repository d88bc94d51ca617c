"""Reading the project's JSON files (configs, manifests) with errors that name the file.

    from unif2ace.jsonfile import read_json, read_jsonl
    meta = read_json(path, ShardError)      # invalid JSON → ShardError("<path>: not valid JSON: ...")
    rows = read_jsonl("runs/x/train/metrics.jsonl")   # one object per non-blank line
"""
from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError, name: str | None = None) -> Any:
    """The parsed content of ``path``. Invalid JSON raises ``error`` naming ``name`` (default: the
    path) and the parser's reason; a missing file raises FileNotFoundError as ``open`` does."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{name or path}: not valid JSON: {e}") from None


def read_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError) -> list[Any]:
    """One parsed value per non-blank line of ``path`` (JSON Lines, e.g. a run's ``metrics.jsonl``).
    An invalid line raises ``error`` naming the path and the line number."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise error(f"{path}:{i}: not valid JSON: {e}") from None
    return rows
