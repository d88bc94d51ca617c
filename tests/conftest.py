import os
import sys
from pathlib import Path

# The package is installed editable (tools/setup.sh): nothing here edits sys.path.
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
# Console scripts (deepspeed, torchrun) live beside the interpreter: `.venv/bin/python -m pytest`
# runs without the venv activated, so put its bin directory on PATH for subprocesses.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """SynthFace (40 faces, 32 px) → random tiny MAGVIT + SentencePiece(512) → shards for the
    `tiny` recipe, through the real precompute tool. Shared by every test that needs data."""
    import torch

    from unif2ace import synthface
    from unif2ace.data.sources import SourceConfig, load_records, texts_for_tokenizer
    from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2
    from unif2ace.tokenizers.text import train_sentencepiece

    root = tmp_path_factory.mktemp("synthface")
    synthface.write_dataset(root / "data", num=40, size=32, progress=False)
    torch.manual_seed(0)
    MagvitV2(MagvitConfig.tiny()).save_pretrained(root / "magvit")  # 32 px → 16 codes of 6 bits, like `tiny`
    train_sentencepiece(texts_for_tokenizer(load_records(SourceConfig(root=str(root / "data")))),
                        root / "spm.model", vocab_size=512)
    assert precompute_tiny(root, root / "shards") == 0
    return root / "shards"


def precompute_tiny(root, out, *extra: str) -> int:
    """tools/precompute_tokens.py on ``tiny_shards``' faces and tokenizers (``root``), into ``out``."""
    from unif2ace.commands import precompute_tokens

    return precompute_tokens.main(["--data", str(root / "data"), "--out", str(out), "--image-tokenizer",
                                   str(root / "magvit"), "--text-tokenizer", str(root / "spm.model"), "--recipe", "tiny",
                                   "--workers", "1", "--no-progress", "--feature", "clip.model=UniF2ace-Tiny-CLIP",
                                   "--feature", "clip.fallback=random-init", "--feature", "face.mode=aligned",
                                   "--feature", "face.fallback=none", *extra])


@pytest.fixture(scope="session")
def tiny_precompute(tiny_shards):
    """Precompute ``tiny_shards``' faces again with extra flags: ``tiny_precompute(out, "--flag")``."""
    return lambda out, *extra: precompute_tiny(tiny_shards.parent, out, *extra)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # Test models are tiny: a second OpenMP thread buys nothing, and on a shared 2-core machine
    # each op can wait ~15 ms for a descheduled worker (one test module went from 133 s to 21 s).
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def restore_functional_linear():
    # A ZeRO-3 engine built in-process replaces torch.nn.functional.linear process-wide (DeepSpeed:
    # "This will persist unless manually reset"): matmul + add instead of addmm, last-bit
    # differences. Without the reset, test_precompute's serial-vs-parallel byte comparison failed
    # whenever a test_train_* module had run before it in the same session.
    import torch

    original = torch.nn.functional.linear
    yield
    torch.nn.functional.linear = original


def pytest_collection_modifyitems(config, items):
    # `gpu`-marked tests need CUDA; elsewhere they are reported as skipped with the reason (-ra),
    # never silently dropped. benchmarks/gpu_suite.sh runs them on a GPU machine.
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False); "
                                   "run on a GPU with: bash benchmarks/gpu_suite.sh")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
