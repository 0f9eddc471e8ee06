"""What a built variant really stores: bytes counted from the tensors, a sha256 over them, zeros from the dense view.

`get_memory_footprint()` counts a torchao or quanto tensor subclass at its logical dtype and misses state a
library keeps beside its parameters (bnb quant states, hqq's scale dict), so it is wrong for most methods.
Here every tensor is counted as stored: tensor subclasses through torch's `__tensor_flatten__` (their
inner tensors, recursively), everything else a library adds through its `WeightHandler` (registered in
that library's methods file). Dense views go the same way: a handler's `dense_weight`, else the
subclass's `dequantize()`, else an identity probe through the layer itself.

Library-free by design: a new library changes only its own methods file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.methods import weight_handlers
from pipeline.methods.targets import target_linears

if TYPE_CHECKING:
    from torch import nn


# -- bytes ------------------------------------------------------------------------------------------
def _is_plain(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def tensor_storage_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really occupies, looking inside tensor subclasses and library state hung on it."""
    if not _is_plain(t) and hasattr(t, "__tensor_flatten__"):
        inner_names, _ = t.__tensor_flatten__()
        total = 0
        for n in inner_names:
            inner = getattr(t, n, None)
            if isinstance(inner, torch.Tensor):
                total += tensor_storage_bytes(inner)
        return total
    for handler in weight_handlers():
        n = handler.tensor_bytes(t)
        if n is not None:
            return n
    return t.numel() * t.element_size()


def _tensor_key(t: torch.Tensor) -> Any:
    if _is_plain(t):
        try:
            return ("p", t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        except (RuntimeError, NotImplementedError):
            return ("i", id(t))
    return ("i", id(t))


def module_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """Every tensor a module itself stores (not its children's): parameters, buffers and library extras."""
    yield from module.parameters(recurse=False)
    yield from module.buffers(recurse=False)
    for handler in weight_handlers():
        yield from handler.module_tensors(module)


def _module_bytes(module: nn.Module, seen: set) -> int:
    total = 0
    for t in module_tensors(module):
        key = _tensor_key(t)
        if key in seen:
            continue
        seen.add(key)
        total += tensor_storage_bytes(t)
    return total


def logical_numel(module: nn.Module) -> int:
    """Number of weights the layer represents (packed formats store fewer elements)."""
    in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if in_f and out_f:
        return int(in_f) * int(out_f)
    for handler in weight_handlers():
        n = handler.logical_numel(module)
        if n is not None:
            return n
    w = getattr(module, "weight", None)
    return int(math.prod(w.shape)) if w is not None else 0


def _input_embedding_bytes(model: nn.Module) -> int:
    """Bytes of the input-embedding table when it is not tied to lm_head (a decode step gathers one row)."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if get_in is None:
        return 0
    emb = get_in()
    out = get_out() if get_out is not None else None
    if emb is None or getattr(emb, "weight", None) is None:
        return 0
    if (
        out is not None
        and getattr(out, "weight", None) is not None
        and _tensor_key(out.weight) == _tensor_key(emb.weight)
    ):
        return 0
    return tensor_storage_bytes(emb.weight)


@dataclass
class StorageBytes:
    weight_bytes: int  # every unique tensor of the model (packed + scales + zeros + masks)
    linear_bytes: int  # the compressed (target) linear layers only
    linear_count: int  # logical weights in those layers
    bytes_read_per_token: int  # weight_bytes minus an untied input-embedding table (one row is gathered)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.linear_bytes / max(self.linear_count, 1)


_PACKED_WEIGHT_NAMES = ("weight", "W_q", "qweight", "weight_packed")  # where libraries keep the (packed) weight


def _dense_module_bytes(module: nn.Module, seen: set, element_bytes: int) -> int:
    """Bytes this layer reads when its matmul runs on dequantized weights: its weight as a dense tensor of
    `element_bytes` per value, plus everything else it holds (bias, scales the dequantize reads)."""
    held = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    weight = next((held[n] for n in _PACKED_WEIGHT_NAMES if n in held), None)
    total = _module_bytes(module, seen)
    if weight is not None:
        total -= tensor_storage_bytes(weight)
    return total + logical_numel(module) * element_bytes


def storage_bytes(model: nn.Module, dense: Mapping[str, int] | None = None) -> StorageBytes:
    """Bytes of the model as it is now (call inside `Method.stored_form` for the stored form).

    `dense`: target layers observed to run a dense matmul on dequantized weights, with the element size of
    that matmul; they count as the dense weights the kernel reads per call, not as stored.
    """
    seen: set = set()
    linear_bytes = linear_count = 0
    for name, module in target_linears(model):
        if dense and name in dense:
            linear_bytes += _dense_module_bytes(module, seen, dense[name])
        else:
            linear_bytes += _module_bytes(module, seen)
        linear_count += logical_numel(module)
    rest = sum(_module_bytes(m, seen) for m in model.modules())
    weight_bytes = linear_bytes + rest
    return StorageBytes(weight_bytes, linear_bytes, linear_count, weight_bytes - _input_embedding_bytes(model))


def _hash_tensor(h: Any, name: str, t: torch.Tensor) -> None:
    """Name, dtype, shape and bytes of `t` into `h`; a tensor subclass as its inner tensors (recursively)."""
    if not _is_plain(t) and hasattr(t, "__tensor_flatten__"):
        inner_names, meta = t.__tensor_flatten__()
        h.update(f"{name}\0{type(t).__name__}\0{meta!r}\0".encode())
        for n in inner_names:
            inner = getattr(t, n, None)
            if isinstance(inner, torch.Tensor):
                _hash_tensor(h, f"{name}.{n}", inner)
        return
    t = t.data if isinstance(t, torch.nn.Parameter) else t  # bnb's Params4bit / Int8Params hold plain data
    plain = t.detach().contiguous().reshape(-1)
    if plain.is_quantized:
        plain = plain.int_repr()
    raw = plain.view(torch.uint8).cpu().numpy()
    h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{raw.size}\0".encode())
    h.update(raw)


def stored_sha256(model: nn.Module) -> str:
    """sha256 over what the model stores (call inside `Method.stored_form`, like `storage_bytes`): every entry
    of its state dict - what `save_pretrained` writes, library state such as bnb quant states included - by
    name, dtype, shape and bytes, in name order. Two builds with the same hash store the same weights."""
    import hashlib

    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if isinstance(value, torch.Tensor):
            _hash_tensor(h, name, value)
        else:  # hqq keeps its packing metadata (shape, nbits, ...) as plain values
            h.update(f"{name}\0{value!r}\0".encode())
    return h.hexdigest()


def dir_bytes(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# -- dense views of compressed layers -----------------------------------------------------------------
def _identity_probe(module: nn.Module) -> torch.Tensor:
    """W recovered by running the layer on the identity (for kernels that expose no dequantize)."""
    in_f = int(module.in_features)
    w = getattr(module, "weight", None)
    dtype = getattr(module, "compute_dtype", None) or (
        w.dtype if w is not None and w.is_floating_point() else torch.float32
    )
    device = w.device if w is not None else torch.device("cpu")
    with torch.no_grad():
        eye = torch.eye(in_f, dtype=dtype, device=device)
        y = module(eye)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            y = y - bias
    return y.t().float()


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a dense float tensor (dequantized where needed), for sparsity and error."""
    for handler in weight_handlers():
        w = handler.dense_weight(module)
        if w is not None:
            return w
    w = module.weight
    if not _is_plain(w):
        try:
            return w.dequantize().float()
        except (NotImplementedError, AttributeError, RuntimeError):
            return _identity_probe(module)
    return w.detach().float()


@dataclass
class SparsitySummary:
    sparsity: float
    per_layer: dict[str, float]


def sparsity_summary(model: nn.Module) -> SparsitySummary:
    """Share of exact zeros in the target layers' dense view, overall and per layer (`zero_fraction`): zeros
    a pruner set, zeros a quantizer's grid produces (NF4 has a 0) and zeros the published weights held."""
    zeros = total = 0
    per_layer: dict[str, float] = {}
    for name, module in target_linears(model):
        n = logical_numel(module)
        z = int((dense_weight(module) == 0).sum())
        per_layer[name] = z / max(n, 1)
        zeros += z
        total += n
    return SparsitySummary(zeros / max(total, 1), per_layer)


def zero_positions(model: nn.Module) -> dict[str, torch.Tensor]:
    """Flat indices of each target layer's exact zeros (taken before pruning, for `pruned_summary`)."""
    return {name: (dense_weight(m).flatten() == 0).nonzero().squeeze(1) for name, m in target_linears(model)}


def pruned_summary(model: nn.Module, before: dict[str, torch.Tensor]) -> SparsitySummary:
    """Share of the target layers' weights that are zero now and were not at `before` (`zero_positions`):
    what the pruning steps set to zero. Zeros the published weights already held are not counted."""
    pruned = total = 0
    per_layer: dict[str, float] = {}
    for name, module in target_linears(model):
        n = logical_numel(module)
        zero = dense_weight(module).flatten() == 0
        was = before.get(name)
        z = int(zero.sum()) - (int(zero[was].sum()) if was is not None and was.numel() else 0)
        per_layer[name] = z / max(n, 1)
        pruned += z
        total += n
    return SparsitySummary(pruned / max(total, 1), per_layer)


def check_nm_pattern(model: nn.Module, n: int, m: int) -> bool:
    """True when every group of `m` consecutive input weights of every target layer has <= n non-zeros."""
    for _, module in target_linears(model):
        w = dense_weight(module)
        if w.shape[-1] % m:
            return False
        groups = (w.reshape(-1, m) != 0).sum(dim=1)
        if bool((groups > n).any()):
            return False
    return True
