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


def test_a_new_file_is_absent_when_the_writer_fails(tmp_path):
    p = tmp_path / "new.bin"
    with pytest.raises(OSError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError("disk full")
    assert not p.exists() and _only(tmp_path) == []


def test_a_killed_writer_leaves_the_old_file_whole(tmp_path):
    """A real crash (the process dies mid-write, no cleanup runs): the target keeps its old bytes."""
    import subprocess
    import sys

    p = tmp_path / "state.json"
    p.write_text("old")
    code = ("import os, sys\nfrom unif2ace.atomic import atomic_open\n"
            f"with atomic_open({str(p)!r}) as f:\n    f.write('half'); f.flush(); os._exit(9)\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 9
    assert p.read_text() == "old"
    leftovers = [n for n in _only(tmp_path) if n != "state.json"]
    assert leftovers and all(n.startswith(".state.json.") for n in leftovers)  # hidden, beside it


def test_content_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """The order that makes a rename durable: file data, then rename, then the parent entry."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    p = tmp_path / "a.txt"
    atomic_write_text(p, "x")
    kinds = [k for k, _ in events]
    i = kinds.index("replace")
    assert events[i] == ("replace", str(p))
    assert any(k == "fsync" and ".a.txt." in path for k, path in events[:i])  # the temp file's data
    assert ("fsync", str(tmp_path)) in events[i + 1:]                      # the directory entry


def test_publish_directory_replaces_whole_and_keeps_no_old_copy(tmp_path):
    from unif2ace.atomic import publish_directory

    out = tmp_path / "step1"
    for content in ("a", "b"):
        tmp = tmp_path / ".tmp-step1"
        tmp.mkdir()
        (tmp / "f").write_text(content)
        assert publish_directory(tmp, out) == out
    assert (out / "f").read_text() == "b" and _only(tmp_path) == ["step1"]


def test_safetensors_dir_round_trip_whole_and_beside_other_files(tmp_path):
    from unif2ace.checkpoint.safetensors_dir import CheckpointError, read_safetensors_dir, save_safetensors_dir

    sd = {"w": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2)}  # a non-contiguous tensor too
    out = save_safetensors_dir(tmp_path / "m", {"format": "x", "n": 1}, sd)
    cfg, got = read_safetensors_dir(out)
    assert cfg == {"format": "x", "n": 1} and all(torch.equal(got[k], v) for k, v in sd.items())
    keep = tmp_path / "tok"
    keep.mkdir()
    (keep / "state.pt").write_text("resume state")
    save_safetensors_dir(keep, {"n": 2}, sd, whole=False)  # a training dir: other files stay
    assert _only(keep) == ["config.json", "model.safetensors", "state.pt"]
    (out / "model.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable"):
        read_safetensors_dir(out)
