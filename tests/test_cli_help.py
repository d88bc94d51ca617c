"""Every user-facing command answers ``--help``: exit status 0 and a usage text.

    pytest -q tests/test_cli_help.py

The commands are every script in tools/, launchers/ and benchmarks/ plus every
``python X.py`` / ``python -m X`` / ``deepspeed ... X.py`` the README and docs show, so a
command renamed or broken by an import error fails here, and a README line naming a script
that no longer exists fails too.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(ROOT.glob("*/README.md")),
        *sorted(ROOT.glob("*/*/README.md"))]
NOT_COMMANDS = {"pytest"}  # `python -m pytest` is the test runner, not ours


def documented() -> set[tuple[str, ...]]:
    found = set()
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"(?:python|deepspeed)\b[^\n`|]*?\s((?:tools|launchers|benchmarks)/[\w/]+\.(?:py|sh))", text):
            found.add((m.group(1),))
        for m in re.finditer(r"python -m ([\w.]+)", text):
            if m.group(1) not in NOT_COMMANDS:
                found.add(("-m", m.group(1)))
    return found


def commands() -> list[tuple[str, ...]]:
    scripts = {(str(p.relative_to(ROOT)),) for d in ("tools", "launchers") for p in (ROOT / d).glob("*.py")}
    scripts |= {(str(p.relative_to(ROOT)),) for p in (ROOT / "benchmarks").glob("bench_*.py")}
    scripts |= {(str(p.relative_to(ROOT)),) for p in (ROOT / "benchmarks").glob("*.sh")}
    return sorted(scripts | documented())


def test_the_readme_commands_are_found():
    doc = documented()
    # the reader must see the README's commands, or the parametrised test below checks too little
    assert {("tools/convert_checkpoint.py",), ("launchers/train.py",), ("-m", "unif2ace.config")} <= doc
    missing = [c for c in doc if c[0] != "-m" and not (ROOT / c[0]).is_file()]
    assert not missing, f"the docs name scripts that do not exist: {missing}"


@pytest.mark.parametrize("cmd", commands(), ids=lambda c: " ".join(c))
def test_help(cmd):
    prog = ["bash"] if cmd[0].endswith(".sh") else [sys.executable]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)}
    p = subprocess.run([*prog, *cmd, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    name = cmd[-1].rsplit("/", 1)[-1]
    # argparse's "usage:" line, or a module docstring showing how the command is run
    assert "usage:" in p.stdout.lower() or name in p.stdout, p.stdout[:500]
