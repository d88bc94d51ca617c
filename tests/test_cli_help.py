"""Every user-facing command answers ``--help``: exit status 0 and a usage text.

    pytest -q tests/test_cli_help.py

The commands are every console entry point in pyproject.toml ([project.scripts]), every script
in tools/, launchers/ and benchmarks/, plus every ``python X.py`` / ``python -m X`` /
``deepspeed ... X.py`` the README and docs show, so a command renamed or broken by an import
error fails here, and a README line naming a script that no longer exists fails too. Scripts
are thin shims over ``unif2ace.commands``; nothing in the repository edits ``sys.path``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

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


def entry_points() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def shim_targets() -> dict[str, str]:
    """tools/ and launchers/ script → the ``module:function`` it runs (None: not a thin shim)."""
    out = {}
    for script in [*(ROOT / "tools").glob("*.py"), *(ROOT / "launchers").glob("*.py")]:
        m = re.search(r"^from ([\w.]+) import (main|cli)$", script.read_text(), re.M)
        out[str(script.relative_to(ROOT))] = f"{m.group(1)}:{m.group(2)}" if m else None
    return out


def test_entry_points_cover_every_tool_and_launcher():
    targets = set(entry_points().values())
    assert len(targets) >= 17  # the reader must see the table, or the checks below check too little
    for script, target in shim_targets().items():
        # a shim imports exactly one command's main; that main must be installed as a console script
        assert target, f"{script}: not a thin shim over a unif2ace command"
        assert target in targets, f"{script}: no console entry point"


# Entry points that a script shim runs are covered by test_help on that script.
@pytest.mark.parametrize("name", sorted(n for n, t in entry_points().items() if t not in shim_targets().values()))
def test_entry_point_help(name):
    module, func = entry_points()[name].split(":")
    # what the installed console script runs: import the module, call the function with sys.argv
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}())"
    p = subprocess.run([sys.executable, "-c", code, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage:" in p.stdout.lower(), p.stdout[:500]


def test_no_file_edits_sys_path():
    pattern = re.compile(r"sys\.path\.(insert|append)\(")
    files = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".sh", ".sbatch", ".md")
             and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    assert len(files) > 50
    bad = [str(p.relative_to(ROOT)) for p in files if pattern.search(p.read_text(errors="replace"))
           and p != Path(__file__)]
    assert not bad, f"these edit sys.path (the package is installed editable; import it): {bad}"


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
