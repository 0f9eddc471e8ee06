"""A tiny Llama built locally (random init + a BPE tokenizer trained here on MMLU text) for tests and
demos without any hub access. Shapes keep every method's constraints (widths multiples of 32 and 4)."""

from __future__ import annotations

import json
from pathlib import Path

TINY_VOCAB = 512


def _training_text(mmlu_dir: Path | None) -> list[str]:
    texts: list[str] = []
    if mmlu_dir is not None:
        from pipeline.data.mmlu import read_split, split_path

        for split in ("dev", "validation"):
            p = split_path(mmlu_dir, split)  # .jsonl or .jsonl.gz (the shipped copy)
            if p is not None:
                for line in read_split(p).decode("utf-8").splitlines():
                    row = json.loads(line)
                    texts.append(row["question"] + " " + " ".join(row["choices"]))
    texts += ["Answer: A B C D", "The following are multiple choice questions (with answers) about"] * 20
    return texts


def build_tiny_llama(out_dir: str | Path, *, seed: int = 0, mmlu_dir: str | Path | None = None) -> Path:
    """Write a tiny LlamaForCausalLM + fast tokenizer as safetensors to `out_dir` (idempotent)."""
    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from pipeline.data.mmlu import locate_data_dir

    data_dir = Path(mmlu_dir) if mmlu_dir else locate_data_dir()[0]  # $SHRINKGATE_MMLU_DIR, else the shipped copy
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(data_dir), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out
