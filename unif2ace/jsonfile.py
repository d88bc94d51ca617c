"""Reading the project's JSON files (configs, manifests) with errors that name the file.

    from unif2ace.jsonfile import read_json
    meta = read_json(path, ShardError)      # invalid JSON → ShardError("<path>: not valid JSON: ...")
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
