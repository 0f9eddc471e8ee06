"""Calibration and held-out text in the tensor forms models and llm-compressor take (torch lives here, not
in `pipeline.data`, which stays torch-free)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def tokenized_batches(
    tokenizer: Any, texts: list[str] | tuple[str, ...], seq_len: int, device: str = "cpu"
) -> list[dict[str, torch.Tensor]]:
    """One batch per text (batch size 1: no padding, so every token is real), truncated to `seq_len`."""
    out = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=seq_len)
        out.append({k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")})
    return out


def hf_dataset(tokenizer: Any, texts: list[str] | tuple[str, ...], seq_len: int):
    """Pre-tokenized `datasets.Dataset` (input_ids, attention_mask) for llm-compressor's `oneshot`."""
    from datasets import Dataset

    enc = tokenizer(list(texts), truncation=True, max_length=seq_len)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
