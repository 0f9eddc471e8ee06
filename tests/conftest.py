from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("SHRINKGATE_MMLU_DIR", str(REPO.parent / "shared" / "data" / "mmlu"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mmlu_dir() -> Path:
    path = Path(os.environ["SHRINKGATE_MMLU_DIR"])
    missing = [f"{split}.jsonl" for split in ("test", "dev", "validation") if not (path / f"{split}.jsonl").is_file()]
    if missing:
        pytest.fail(f"MMLU data not found at {path} ({', '.join(missing)} missing); set SHRINKGATE_MMLU_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, mmlu_dir) -> Path:
    """A tiny random Llama with a locally trained tokenizer, built once per session."""
    from tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", mmlu_dir=mmlu_dir)
