"""Published model shapes (from each model card's config.json) to size hardware without downloads.

Only what sets bytes and FLOPs is reproduced: widths, depths, heads, KV heads, vocab, tying, sliding
windows. RoPE scaling and other numerics are left at their defaults (they change neither). Weights
are random and non-zero: built on the meta device (no memory), materialized on the target device,
then filled by transformers' own initializer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class PublishedShape:
    hub_id: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    published_params: float = 0.0  # total parameters as the model card states them (sanity check)
    extra: tuple[tuple[str, Any], ...] = ()

    def config_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        if self.head_dim is not None:
            kw["head_dim"] = self.head_dim
        kw.update(dict(self.extra))
        return kw


PUBLISHED: dict[str, PublishedShape] = {
    "llama-3.1-8b": PublishedShape("meta-llama/Llama-3.1-8B", "llama", 4096, 14336, 32, 32, 8, 128256, False, 128, 8.03e9),
    "llama-3.1-70b": PublishedShape("meta-llama/Llama-3.1-70B", "llama", 8192, 28672, 80, 64, 8, 128256, False, 128, 70.6e9),
    "llama-3.2-1b": PublishedShape("meta-llama/Llama-3.2-1B", "llama", 2048, 8192, 16, 32, 8, 128256, True, 64, 1.24e9),
    "llama-3.2-3b": PublishedShape("meta-llama/Llama-3.2-3B", "llama", 3072, 8192, 28, 24, 8, 128256, True, 128, 3.21e9),
    "smollm2-135m": PublishedShape("HuggingFaceTB/SmolLM2-135M", "llama", 576, 1536, 30, 9, 3, 49152, True, 64, 0.1345e9),
    "smollm2-360m": PublishedShape("HuggingFaceTB/SmolLM2-360M", "llama", 960, 2560, 32, 15, 5, 49152, True, 64, 0.362e9),
    "smollm2-1.7b": PublishedShape("HuggingFaceTB/SmolLM2-1.7B", "llama", 2048, 8192, 24, 32, 32, 49152, True, 64, 1.71e9),
    "gemma-3-270m": PublishedShape(
        "google/gemma-3-270m", "gemma3_text", 640, 2048, 18, 4, 1, 262144, True, 256, 0.268e9,
        extra=(("sliding_window", 512), ("max_position_embeddings", 32768)),
    ),
    "qwen2.5-0.5b": PublishedShape("Qwen/Qwen2.5-0.5B", "qwen2", 896, 4864, 24, 14, 2, 151936, True, 64, 0.494e9),
    "qwen2.5-1.5b": PublishedShape("Qwen/Qwen2.5-1.5B", "qwen2", 1536, 8960, 28, 12, 2, 151936, True, 128, 1.54e9),
    "qwen2.5-3b": PublishedShape("Qwen/Qwen2.5-3B", "qwen2", 2048, 11008, 36, 16, 2, 151936, True, 128, 3.09e9),
    "qwen2.5-7b": PublishedShape("Qwen/Qwen2.5-7B", "qwen2", 3584, 18944, 28, 28, 4, 152064, False, 128, 7.62e9),
    "mistral-7b-v0.3": PublishedShape("mistralai/Mistral-7B-v0.3", "mistral", 4096, 14336, 32, 32, 8, 32768, False, 128, 7.25e9),
}

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def add_shape(name: str, shape: PublishedShape) -> None:
    """Make another architecture known by name to `speed` and `predict` (a dry run's tiny stand-in)."""
    PUBLISHED[name.lower()] = shape


def shape(name: str) -> PublishedShape:
    try:
        return PUBLISHED[name.lower()]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; known: {', '.join(sorted(PUBLISHED))}") from None


def torch_dtype(name: str) -> torch.dtype:
    import torch

    try:
        return getattr(torch, DTYPES[name.lower()])
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of: fp32, bf16, fp16") from None


def published_config(name: str, dtype: str = "bf16") -> PretrainedConfig:
    from transformers import AutoConfig

    s = shape(name)
    cfg = AutoConfig.for_model(s.model_type, **s.config_kwargs())
    cfg.dtype = DTYPES[dtype.lower()]
    return cfg


def meta_model(name: str, dtype: str = "bf16") -> PreTrainedModel:
    """The architecture on the meta device: shapes only, no memory (for parameter counts)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = published_config(name, dtype)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype(dtype))


def param_count(name: str) -> int:
    """Unique parameters of the architecture (tied embeddings counted once)."""
    model = meta_model(name)
    return sum(p.numel() for p in model.parameters())


def random_model(name: str, dtype: str = "bf16", device: str = "cpu", seed: int = 0) -> PreTrainedModel:
    """Random, non-zero weights of a published architecture, materialized on `device`, in eval mode."""
    import torch

    torch.manual_seed(seed)
    model = meta_model(name, dtype)
    model = model.to_empty(device=device)
    # to_empty leaves garbage (and rotary buffers unset): transformers' initializer fills every
    # parameter (normal(0, initializer_range) for linears/embeddings, ones for norms) and the RoPE
    # inverse frequencies, then re-ties the embeddings.
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    for t in list(model.parameters()) + list(model.buffers()):
        t.__dict__.pop("_is_hf_initialized", None)
    model.init_weights()
    return model.requires_grad_(False).eval()
