"""What a GGUF file is, read from its header with gguf-py (no llama.cpp needed): the bytes and types of its
tensors (`tensor_census`), the attention shape llama.cpp builds from it (`gguf_shape`), and its quant type
named one way (`file_type_name`). Cached per file version.
"""

from __future__ import annotations

import collections
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.gguf_header import GGUFHeader, read_gguf_header

# 2-D (or expert-stacked 3-D) weights inside the decoder blocks: what compression methods change.
_BLOCK_WEIGHT = re.compile(r"^blk\.\d+\..+\.weight$")
# llama.cpp's per-architecture sliding-window layer pattern when the GGUF carries no
# `<arch>.attention.sliding_window_pattern` (src/models/<arch>.cpp `load_swa_pattern(ml, N)`).
_SWA_PATTERN_DEFAULT = {
    "gemma2": 2,
    "gemma3": 6,
    "gemma-embedding": 6,
    "gemma3n": 5,
    "cohere2": 4,
    "olmo2": 4,
    "exaone4": 4,
}


@functools.lru_cache(maxsize=8)
def _header(path: str, size: int, mtime_ns: int) -> tuple[TensorCensus, GGUFShape]:
    # One read serves census and shape, cached per file version (size, mtime) for the process.
    header = read_gguf_header(path)
    return _census(header, path), _shape(header)


def _read_header(path: str | Path) -> tuple[TensorCensus, GGUFShape]:
    p = Path(path).resolve()
    st = p.stat()
    return _header(str(p), st.st_size, st.st_mtime_ns)


def file_type_name(value: int | None) -> str:
    """general.file_type as llama.cpp names the quant ("Q4_K_M", "Q4_1", "F32"), without MOSTLY_/ALL_: the one
    spelling of a GGUF's quant type (census, provenance)."""
    from gguf.constants import LlamaFileType  # gguf-py imports numpy: only when a GGUF is read

    if value is None:
        return "unknown"
    try:
        return re.sub(r"^(MOSTLY|ALL)_", "", LlamaFileType(int(value)).name)
    except ValueError:
        return f"file_type={int(value)}"


@dataclass(frozen=True)
class TensorCensus:
    """What a GGUF file stores, by tensor: the bytes a method shrank and the bytes decode reads."""

    file_bytes: int
    weight_bytes: int  # every tensor's stored bytes
    linear_weight_bytes: int  # block weights `blk.N.*.weight` of 2+ dims (what methods compress)
    linear_weight_count: int  # their logical number of weights
    bits_per_weight: float  # 8 * linear_weight_bytes / linear_weight_count
    linear_types: dict[str, int]  # ggml type name -> number of block weights stored in it
    token_embd_bytes: int
    output_bytes: int  # output.weight (0 when tied)
    tied: bool  # no output.weight: token_embd is also the output matrix
    bytes_read_per_token: int  # one decode step: every tensor except the token_embd gather (in full when tied)
    file_type: str  # general.file_type ("Q4_K_M")
    tensor_count: int = 0

    def summary(self) -> str:
        """Block weight types, most first: "Q4_K×84, Q6_K×14"."""
        ranked = sorted(self.linear_types.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{name}×{n}" for name, n in ranked)


def tensor_census(path: str | Path) -> TensorCensus:
    """Bytes and types of every tensor of the GGUF at `path` (header only; cached per file version)."""
    return _read_header(path)[0]


def _census(header: GGUFHeader, path: str) -> TensorCensus:
    types: collections.Counter[str] = collections.Counter()
    total = linear_bytes = linear_count = embd = output = 0
    for t in header.tensors:
        nbytes = t.n_bytes
        total += nbytes
        if t.name == "token_embd.weight":
            embd = nbytes
        elif t.name == "output.weight":
            output = nbytes
        elif _BLOCK_WEIGHT.match(t.name) and len(t.shape) >= 2:
            linear_bytes += nbytes
            linear_count += t.n_elements
            types[t.type_name] += 1
    tied = not any(t.name == "output.weight" for t in header.tensors)
    # Decode gathers one row of token_embd; tied, the same matrix is the output projection, read in full.
    read = total if tied else total - embd
    return TensorCensus(
        file_bytes=Path(path).stat().st_size,
        weight_bytes=total,
        linear_weight_bytes=linear_bytes,
        linear_weight_count=linear_count,
        bits_per_weight=8.0 * linear_bytes / linear_count if linear_count else 0.0,
        linear_types=dict(types),
        token_embd_bytes=embd,
        output_bytes=output,
        tied=tied,
        bytes_read_per_token=read,
        file_type=file_type_name(header.get("general.file_type")),
        tensor_count=len(header.tensors),
    )


@dataclass(frozen=True)
class GGUFShape:
    """The attention shape llama.cpp builds from a GGUF header (what the KV cache holds per token)."""

    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int  # key length per head
    n_embd: int
    n_ff: int  # feed-forward width (largest layer's)
    n_vocab: int
    context_length: int
    sliding_window: int | None = None
    value_dim: int = 0  # value length per head (0: = head_dim)
    swa_layers: tuple[bool, ...] = field(default_factory=tuple)  # per layer: attends over the sliding window only

    def kv_bytes_per_token(self, cache_type_bytes: float = 2) -> int:
        """KV-cache bytes one token adds (llama.cpp's default cache type is f16: 2 bytes)."""
        per_layer = self.n_head_kv * (self.head_dim + (self.value_dim or self.head_dim))
        return int(self.n_layer * per_layer * cache_type_bytes)

    def kv_bytes_at_context(self, context: float, cache_type_bytes: float = 2) -> float:
        """KV bytes one sequence's decode step reads at `context` tokens (sliding layers capped at the window)."""
        per_layer_token = self.n_head_kv * (self.head_dim + (self.value_dim or self.head_dim)) * cache_type_bytes
        swa = self.swa_layers or (False,) * self.n_layer
        window = self.sliding_window or 0
        return float(sum(per_layer_token * (min(context, window) if s and window else context) for s in swa))


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):  # per-layer arrays (some archs): the largest layer decides
        return max(int(v) for v in value) if value else None
    return int(value)


def gguf_shape(path: str | Path) -> GGUFShape:
    """The attention/KV shape llama.cpp builds from the GGUF at `path` (header only; cached per file version)."""
    return _read_header(path)[1]


def _shape(header: GGUFHeader) -> GGUFShape:
    arch = str(header.get("general.architecture") or "unknown")

    def key(name: str) -> Any:
        return header.get(f"{arch}.{name}")

    n_layer = _as_int(key("block_count")) or 0
    n_embd = _as_int(key("embedding_length")) or 0
    n_head = _as_int(key("attention.head_count")) or 1
    n_head_kv = _as_int(key("attention.head_count_kv")) or n_head
    head_dim = _as_int(key("attention.key_length")) or (n_embd // n_head if n_head else 0)
    value_dim = _as_int(key("attention.value_length")) or head_dim
    n_vocab = _as_int(key("vocab_size"))
    if n_vocab is None:
        tokens = header.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if tokens is not None else 0
    window = _as_int(key("attention.sliding_window"))
    swa: tuple[bool, ...] = ()
    if window:
        pattern = key("attention.sliding_window_pattern")
        if isinstance(pattern, (list, tuple)):
            swa = tuple(bool(p) for p in pattern[:n_layer])
        else:
            n = int(pattern) if pattern is not None else _SWA_PATTERN_DEFAULT.get(arch)
            # llama_hparams::set_swa_pattern: within every n layers the last one attends fully
            swa = tuple(n == 0 or il % n < n - 1 for il in range(n_layer)) if n is not None else ()
    return GGUFShape(
        architecture=arch,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_embd=n_embd,
        n_ff=_as_int(key("feed_forward_length")) or 0,
        n_vocab=int(n_vocab),
        context_length=_as_int(key("context_length")) or 0,
        sliding_window=window or None,
        value_dim=value_dim,
        swa_layers=swa,
    )
