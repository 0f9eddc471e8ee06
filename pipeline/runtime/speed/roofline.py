"""Memory-wall arithmetic: pure functions of numbers and model configs (no torch, no timing).

Decode at small batch is memory-bound: every step streams every weight once, plus each sequence's
KV cache. So `tokens/s <= bandwidth / bytes per step * batch`, where

    bytes per step = weight bytes read per token + batch * KV bytes at the current context.

MBU (model bandwidth utilisation) is the share of the measured peak bandwidth a decode step achieves;
MFU is the same for FLOPs against a measured matmul peak.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Protocol, Sequence


class _Point(Protocol):
    batch_size: int
    prompt_tokens: int
    decode_tok_s: float


# ---------------------------------------------------------------------------------------------
# Ceilings and utilisation
# ---------------------------------------------------------------------------------------------


def bytes_per_step(weight_bytes_per_token: float, kv_bytes_per_seq: float, batch: int) -> float:
    """Bytes one decode step reads: the weights once (shared by the batch) + every sequence's KV."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    return float(weight_bytes_per_token) + batch * float(kv_bytes_per_seq)


def ceiling_tok_s(bandwidth_bytes_s: float, bytes_per_step: float, batch: int) -> float:
    """Memory-wall ceiling: steps/s at full bandwidth times tokens per step (one per sequence)."""
    if bytes_per_step <= 0:
        raise ValueError("bytes_per_step must be > 0")
    return bandwidth_bytes_s / bytes_per_step * batch


def mbu(tok_s: float, bytes_per_step: float, batch: int, bandwidth_bytes_s: float) -> float:
    """Achieved bytes/s (steps/s * bytes per step) over the measured peak bandwidth."""
    if bandwidth_bytes_s <= 0:
        raise ValueError("bandwidth must be > 0")
    return (tok_s / batch) * bytes_per_step / bandwidth_bytes_s


def mfu(tok_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Achieved FLOP/s over the measured matmul peak."""
    if peak_flops <= 0:
        raise ValueError("peak_flops must be > 0")
    return tok_s * flops_per_token / peak_flops


def compute_bound_batch(
    peak_flops: float,
    bandwidth_bytes_s: float,
    flops_per_token: float,
    weight_bytes_per_token: float,
    kv_bytes_per_seq: float = 0.0,
) -> int | None:
    """Smallest batch at which a decode step's compute time reaches its memory time.

    Step time is max(B*F/peak, (W + B*KV)/bw); compute wins once B*(F/peak - KV/bw) >= W/bw.
    With no KV this is the ridge point scaled by bytes per FLOP: an 8B bf16 model (F = 16 GFLOP,
    W = 16 GB) on 3.35 TB/s turns compute-bound at ~295 for 989 TFLOP/s dense bf16 and at ~567 for
    a 1.9 PFLOP/s peak (the memory-wall analysis' figure). None when KV traffic grows faster than
    compute (long contexts): decode then never leaves the memory wall.
    """
    if min(peak_flops, bandwidth_bytes_s, flops_per_token) <= 0 or weight_bytes_per_token < 0:
        raise ValueError("peak_flops, bandwidth and flops_per_token must be > 0")
    per_seq_gain = flops_per_token / peak_flops - kv_bytes_per_seq / bandwidth_bytes_s
    if per_seq_gain <= 0:
        return None
    return max(1, math.ceil(weight_bytes_per_token / bandwidth_bytes_s / per_seq_gain - 1e-9))


def roofline_crossover_batch(
    peak_flops: float,
    bandwidth_bytes_s: float,
    flops_per_token: float,
    variant_bytes_per_token: float,
    dense_bytes_per_token: float,
    kv_bytes_per_seq: float = 0.0,
) -> int | None:
    """Smallest batch from which, on the roofline, a variant no longer decodes faster than the unmodified model.

    Both do the same FLOPs per token; the variant reads fewer weight bytes. Its step is never slower, and
    strictly faster exactly while the unmodified model is memory-bound, so the crossover is where the
    unmodified model turns compute-bound. 1 when the variant reads no fewer bytes (it never wins); None
    when the unmodified model never leaves the memory wall (KV grows faster than compute).
    """
    if variant_bytes_per_token >= dense_bytes_per_token:
        return 1
    return compute_bound_batch(peak_flops, bandwidth_bytes_s, flops_per_token, dense_bytes_per_token, kv_bytes_per_seq)


def crossover_batch(
    base_points: Iterable[_Point], variant_points: Iterable[_Point], prompt_tokens: int | None = None
) -> int | None:
    """Smallest batch measured for both where the variant's decode tok/s no longer beats the base's.

    Compression buys bandwidth; once the batch is large enough to be compute-bound (or the variant's
    dequantize overhead dominates) the unmodified model catches up. None when the variant wins at
    every common batch (or there is none). `prompt_tokens` picks one prompt length when the points
    sweep several; by default the smallest length both share.
    """
    base, var = list(base_points), list(variant_points)
    shared = sorted({p.prompt_tokens for p in base} & {p.prompt_tokens for p in var})
    if not shared:
        return None
    length = prompt_tokens if prompt_tokens is not None else shared[0]
    base_by_b = {p.batch_size: p.decode_tok_s for p in base if p.prompt_tokens == length}
    var_by_b = {p.batch_size: p.decode_tok_s for p in var if p.prompt_tokens == length}
    for b in sorted(base_by_b.keys() & var_by_b.keys()):
        if var_by_b[b] <= base_by_b[b]:
            return b
    return None


# ---------------------------------------------------------------------------------------------
# Model-shape arithmetic from a (transformers-style) config
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


def prefill_flops_per_seq(prompt_tokens: int, flops_per_token: float, head_params: int) -> float:
    """A prompt's FLOPs: every position through the decoder, the output head once (both engines keep only the
    last position's logits); at Gemma 3's 262k vocabulary the head is 60 % of a token's FLOPs."""
    return prompt_tokens * (flops_per_token - 2.0 * head_params) + 2.0 * head_params


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
