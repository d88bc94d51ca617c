"""unif2ace/runtime.py: scoped thread counts and scratch directories that do not outlive a run."""
import concurrent.futures as cf
import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import torch

from unif2ace.runtime import process_tempdir, torch_threads

ROOT = Path(__file__).resolve().parents[1]


def test_torch_threads_restores_the_callers_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_world_of_one_and_the_clip_registry_leave_no_scratch_directory(tmp_path):
    """A plain ``python launchers/train.py`` joins a FileStore process group and registers the tiny
    CLIP with open_clip: both need a file for the whole process, and used to leave it behind."""
    child = """
import json, os, sys
from unif2ace.features import clip
from unif2ace.train import engine
engine.init_distributed(timeout_s=30)
clip.register_model_config("ScratchTest-CLIP", clip.TINY_CLIP_CONFIG)
import open_clip
assert "ScratchTest-CLIP" in open_clip.list_models()
dirs = [d for d in os.listdir(os.environ["TMPDIR"])]
print(json.dumps(dirs))
"""
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "DS_ACCELERATOR": "cpu", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    during = json.loads(p.stdout.strip().splitlines()[-1])
    assert any(d.startswith("unif2ace-pg-") for d in during) and any(
        d.startswith("unif2ace-open_clip-") for d in during), during
    assert [d.name for d in tmp_path.iterdir() if d.name.startswith("unif2ace-")] == []


def _worker_tempdir(prefix):
    return str(process_tempdir(prefix))


def test_a_pool_workers_scratch_directory_goes_when_the_worker_ends(tmp_path):
    """Pool workers leave through os._exit (no atexit): precompute's CLIP-encoding workers each left
    open_clip's config directory behind. The parent's own directory outlives its children."""
    mine = process_tempdir("unif2ace-test-parent-")
    for method in ("fork", "forkserver"):
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as pool:
            theirs = Path(pool.submit(_worker_tempdir, "unif2ace-test-worker-").result())
            assert theirs.is_dir() and theirs != mine
        assert not theirs.exists(), method
        assert mine.is_dir(), method


def test_remove_process_tempdirs_before_os_exit(tmp_path):
    """``os._exit`` (the trainer's way out) runs no exit handler: the trainer removes its
    directories first, and only its own."""
    child = """
import os
from unif2ace.runtime import process_tempdir, remove_process_tempdirs
a = process_tempdir("unif2ace-a-")
pid = os.fork()
if pid == 0:  # a forked child removing "its" directories must not touch its parent's
    remove_process_tempdirs()
    os._exit(0)
os.waitpid(pid, 0)
assert a.is_dir()
remove_process_tempdirs()
assert not a.exists()
process_tempdir("unif2ace-b-")  # left to os._exit: stays
os._exit(0)
"""
    p = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [d.name[:11] for d in tmp_path.iterdir()] == ["unif2ace-b-"]
