"""Model shapes: what a model's config says about its size, and the published architectures known by name.

- config facts: weights a token multiplies through, output-head and layer counts, attention shape, KV bytes,
  FLOPs per token, read from a transformers-style config (a dict or a `PretrainedConfig`); pure arithmetic;
- `ModelFacts`: a config and the dtype it runs in, as `predict` needs it;
- `PUBLISHED`: published shapes (from each model card's config.json) to size hardware without downloads. Only
  what sets bytes and FLOPs is reproduced: widths, depths, heads, KV heads, vocab, tying, sliding windows. RoPE
  scaling and other numerics are left at their defaults (they change neither). `config_dict` is such a config as
  a plain dict (no transformers); `random_model` builds one with random, non-zero weights: on the meta device (no
  memory), materialized on the target device, then filled by transformers' own initializer. torch and
  transformers are imported only by the functions that build models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


# ---------------------------------------------------------------------------------------------
# Config facts (a transformers-style config: a dict or a PretrainedConfig)
# ---------------------------------------------------------------------------------------------


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if callable(get) else config


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def head_params(config: Any) -> int:
    """Output-head weights (hidden x vocab; 0 when the config does not say)."""
    cfg = _text_config(config)
    return int(_get(cfg, "hidden_size", 0) or 0) * int(_get(cfg, "vocab_size", 0) or 0)


def layer_count(config: Any) -> int:
    """Decoder layers (0 when the config does not say)."""
    return int(_get(_text_config(config), "num_hidden_layers", 0) or 0)


def attention_shape(config: Any) -> tuple[int, int, int, int]:
    """(layers, attention heads, KV heads, head_dim); KV heads default to heads (MHA), GQA otherwise."""
    cfg = _text_config(config)
    layers = int(_get(cfg, "num_hidden_layers"))
    heads = int(_get(cfg, "num_attention_heads"))
    kv_heads = int(_get(cfg, "num_key_value_heads") or heads)
    head_dim = _get(cfg, "head_dim") or int(_get(cfg, "hidden_size")) // heads
    return layers, heads, kv_heads, int(head_dim)


def kv_bytes_per_token(config: Any, dtype_bytes: float) -> int:
    """KV-cache bytes one token adds: layers x 2 (K and V) x KV heads x head_dim x dtype bytes.

    Llama-3.1-8B in bf16: 32 x 2 x 8 x 128 x 2 = 131072 B (GQA: 8 KV heads, not 32).
    """
    layers, _, kv_heads, head_dim = attention_shape(config)
    return int(layers * 2 * kv_heads * head_dim * dtype_bytes)


def _layer_windows(config: Any) -> list[int | None]:
    """Per layer: the sliding window (tokens it keeps) or None for full attention."""
    cfg = _text_config(config)
    layers = int(_get(cfg, "num_hidden_layers"))
    window = _get(cfg, "sliding_window")
    types: Sequence[str] | None = _get(cfg, "layer_types")
    if not window or not types:
        return [None] * layers
    return [int(window) if t == "sliding_attention" else None for t in types[:layers]]


def kv_bytes_at_context(config: Any, context: float, dtype_bytes: float) -> float:
    """KV bytes one sequence's decode step reads at `context` tokens (sliding layers capped at their window)."""
    _, _, kv_heads, head_dim = attention_shape(config)
    per_layer_token = 2 * kv_heads * head_dim * dtype_bytes
    return sum(per_layer_token * (context if w is None else min(context, w)) for w in _layer_windows(config))


def linear_params_per_token(config: Any) -> int | None:
    """Weights a decode token multiplies through (attention + gated MLP + lm_head), from the config.

    None for shapes this formula does not cover (mixture-of-experts, no gated-MLP fields).
    """
    cfg = _text_config(config)
    if _get(cfg, "num_local_experts") or _get(cfg, "num_experts"):
        return None
    hidden = _get(cfg, "hidden_size")
    inter = _get(cfg, "intermediate_size")
    vocab = _get(cfg, "vocab_size")
    if not (hidden and inter and vocab):
        return None
    layers, heads, kv_heads, head_dim = attention_shape(cfg)
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * hidden * inter  # gate, up, down
    return int(layers * (attn + mlp) + hidden * vocab)


def decode_flops_per_token(config: Any, context: float) -> float | None:
    """FLOPs of one decode token: 2 per weight + attention scores/values (4 x heads x head_dim x context per layer)."""
    params = linear_params_per_token(config)
    if params is None:
        return None
    _, heads, _, head_dim = attention_shape(config)
    attn = sum(4 * heads * head_dim * (context if w is None else min(context, w)) for w in _layer_windows(config))
    return 2.0 * params + attn


@dataclass(frozen=True)
class ModelFacts:
    """What the prediction needs of a model: its config (transformers-style dict) and the dtype it runs in."""

    name: str
    config: dict[str, Any]
    dtype: str = "bf16"

    @property
    def hidden(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def vocab(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def linear_params(self) -> int:
        params = linear_params_per_token(self.config)
        if params is None:
            raise ValueError(f"{self.name}: this config's shape (mixture-of-experts or no gated MLP) is not covered")
        return params

    @property
    def head_params(self) -> int:
        return head_params(self.config)

    @property
    def layers(self) -> int:
        return layer_count(self.config)

    @property
    def embedding_params(self) -> int:
        """Input embedding stored apart from the head (untied); a decode step gathers one row, so it is not read."""
        return 0 if self.config.get("tie_word_embeddings", True) else self.hidden * self.vocab


# ---------------------------------------------------------------------------------------------
# Published architectures
# ---------------------------------------------------------------------------------------------


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
        kw.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.extra})
        return kw


def _every_nth_full(layers: int, n: int) -> tuple[str, ...]:
    return tuple("full_attention" if (i + 1) % n == 0 else "sliding_attention" for i in range(layers))


PUBLISHED: dict[str, PublishedShape] = {
    "llama-3.1-8b": PublishedShape(
        "meta-llama/Llama-3.1-8B", "llama", 4096, 14336, 32, 32, 8, 128256, False, 128, 8.03e9
    ),
    "llama-3.1-70b": PublishedShape(
        "meta-llama/Llama-3.1-70B", "llama", 8192, 28672, 80, 64, 8, 128256, False, 128, 70.6e9
    ),
    "llama-3.2-1b": PublishedShape("meta-llama/Llama-3.2-1B", "llama", 2048, 8192, 16, 32, 8, 128256, True, 64, 1.24e9),
    "llama-3.2-3b": PublishedShape(
        "meta-llama/Llama-3.2-3B", "llama", 3072, 8192, 28, 24, 8, 128256, True, 128, 3.21e9
    ),
    "smollm2-135m": PublishedShape(
        "HuggingFaceTB/SmolLM2-135M", "llama", 576, 1536, 30, 9, 3, 49152, True, 64, 0.1345e9
    ),
    "smollm2-360m": PublishedShape(
        "HuggingFaceTB/SmolLM2-360M", "llama", 960, 2560, 32, 15, 5, 49152, True, 64, 0.362e9
    ),
    "smollm2-1.7b": PublishedShape(
        "HuggingFaceTB/SmolLM2-1.7B", "llama", 2048, 8192, 24, 32, 32, 49152, True, 64, 1.71e9
    ),
    "gemma-3-270m": PublishedShape(
        "google/gemma-3-270m",
        "gemma3_text",
        640,
        2048,
        18,
        4,
        1,
        262144,
        True,
        256,
        0.268e9,
        # every 6th layer attends globally, the rest within the window (the card's layer_types)
        extra=(("sliding_window", 512), ("max_position_embeddings", 32768), ("layer_types", _every_nth_full(18, 6))),
    ),
    "qwen2.5-0.5b": PublishedShape("Qwen/Qwen2.5-0.5B", "qwen2", 896, 4864, 24, 14, 2, 151936, True, 64, 0.494e9),
    "qwen2.5-1.5b": PublishedShape("Qwen/Qwen2.5-1.5B", "qwen2", 1536, 8960, 28, 12, 2, 151936, True, 128, 1.54e9),
    "qwen2.5-3b": PublishedShape("Qwen/Qwen2.5-3B", "qwen2", 2048, 11008, 36, 16, 2, 151936, True, 128, 3.09e9),
    "qwen2.5-7b": PublishedShape("Qwen/Qwen2.5-7B", "qwen2", 3584, 18944, 28, 28, 4, 152064, False, 128, 7.62e9),
    "mistral-7b-v0.3": PublishedShape(
        "mistralai/Mistral-7B-v0.3", "mistral", 4096, 14336, 32, 32, 8, 32768, False, 128, 7.25e9
    ),
}

DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}


def add_shape(name: str, shape: PublishedShape) -> None:
    """Make another architecture known by name to `speed` and `predict` (a dry run's tiny stand-in)."""
    PUBLISHED[name.lower()] = shape


def shape(name: str) -> PublishedShape:
    try:
        return PUBLISHED[name.lower()]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; known: {', '.join(sorted(PUBLISHED))}") from None


def config_dict(name: str, dtype: str = "bf16") -> dict[str, Any]:
    """A published shape's config as a plain dict, the keys the config facts above read (no transformers)."""
    s = shape(name)
    return {"model_type": s.model_type, **s.config_kwargs(), "dtype": DTYPES[dtype.lower()]}


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
