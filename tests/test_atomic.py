"""unif2ace/atomic.py: files and directories appear whole or not at all.

    pytest -q tests/test_atomic.py
"""
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from unif2ace.atomic import atomic_directory, atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


def _only(d):
    return sorted(p.name for p in d.iterdir())


def test_text_and_bytes_replace_whole_with_normal_mode(tmp_path):
    p = tmp_path / "sub" / "a.json"
    assert atomic_write_text(p, "{}\n") == p and p.read_text() == "{}\n"
    atomic_write_text(p, "é" * 3)
    assert p.read_text(encoding="utf-8") == "ééé"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644  # not mkstemp's 0600
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _only(tmp_path) == ["b.bin", "sub"] and _only(tmp_path / "sub") == ["a.json"]  # no temp left


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(p, "w") as f:
            f.write("half of the new")
            assert p.read_text() == "old"  # not visible before the block ends
            raise RuntimeError("boom")
    assert p.read_text() == "old" and _only(tmp_path) == ["a.txt"]


def test_atomic_path_serves_writers_that_want_a_path(tmp_path):
    p = tmp_path / "w.safetensors"
    with atomic_path(p) as tmp:
        assert tmp.parent == tmp_path and tmp != p
        save_file({"w": torch.arange(3.0)}, str(tmp))
        assert not p.exists()
    assert torch.equal(load_file(str(p))["w"], torch.arange(3.0)) and _only(tmp_path) == ["w.safetensors"]


def test_directory_replaced_whole_or_kept(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as d:
        (d / "x").write_text("1")
    with pytest.raises(ValueError):
        with atomic_directory(out) as d:
            (d / "x").write_text("2")
            raise ValueError
    assert (out / "x").read_text() == "1" and _only(tmp_path) == ["model"]
    with atomic_directory(out) as d:
        (d / "y").write_text("3")
    assert _only(out) == ["y"]
