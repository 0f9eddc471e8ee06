from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.env import MMLU_DIR_ENV, absolute_env_paths

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# MMLU comes from the copy shipped in the package unless $SHRINKGATE_MMLU_DIR overrides it; like the CLI,
# make such a path absolute now so subprocesses the tests start in another cwd read the same files.
absolute_env_paths()


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
def mmlu_dir(tmp_path_factory) -> Path:
    """The MMLU data the pipeline reads with nothing configured, as plain `<split>.jsonl` files: the shipped
    copy (sums verified) decompressed to a session temp dir, or `$SHRINKGATE_MMLU_DIR` when that is set."""
    from pipeline.data.mmlu import SHIPPED_DIR, SPLITS, read_split, verify_shipped

    override = os.environ.get(MMLU_DIR_ENV)
    if override:
        path = Path(override)
        missing = [f"{split}.jsonl" for split in SPLITS if not (path / f"{split}.jsonl").is_file()]
        if missing:
            pytest.fail(f"MMLU data not found at {path} ({', '.join(missing)} missing); fix or unset {MMLU_DIR_ENV}")
        return path
    verify_shipped()
    path = tmp_path_factory.mktemp("mmlu")
    for split in SPLITS:
        gz = SHIPPED_DIR / f"{split}.jsonl.gz"
        if not gz.is_file():
            pytest.fail(f"shipped MMLU data missing: {gz}; reinstall the package (bash scripts/install.sh)")
        (path / f"{split}.jsonl").write_bytes(read_split(gz))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, mmlu_dir) -> Path:
    """A tiny random Llama with a locally trained tokenizer, built once per session."""
    from tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", mmlu_dir=mmlu_dir)
