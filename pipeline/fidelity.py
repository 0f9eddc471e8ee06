"""What a built variant really stores and how far it moved from the base model. No MLflow here.

Bytes are counted from the tensors themselves (packed values + scales + zero-points + masks):
`get_memory_footprint()` counts a torchao tensor subclass at its logical dtype, which is wrong.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import torch

from pipeline.methods.targets import target_linears

if TYPE_CHECKING:
    from torch import nn


def tensor_storage_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really occupies, looking inside quantized tensor subclasses and bnb quant states."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        inner_names, _ = t.__tensor_flatten__()
        return sum(tensor_storage_bytes(getattr(t, n)) for n in inner_names)
    total = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit
    if state is not None:
        total += _quant_state_bytes(state)
    scb = getattr(t, "SCB", None)  # bitsandbytes Int8Params row scales
    if isinstance(scb, torch.Tensor):
        total += scb.numel() * scb.element_size()
    return total


def _quant_state_bytes(state) -> int:
    total = 0
    for attr in ("absmax", "code", "offset"):
        v = getattr(state, attr, None)
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
    nested = getattr(state, "state2", None)
    if nested is not None:
        total += _quant_state_bytes(nested)
    return total


def _logical_numel(module: nn.Module, weight: torch.Tensor) -> int:
    """Number of weights the layer represents (bnb packs two 4-bit values per byte)."""
    in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if in_f and out_f:
        return int(in_f) * int(out_f)
    shape = getattr(weight, "shape", None)
    return int(math.prod(shape)) if shape is not None else weight.numel()


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a dense float tensor (dequantized where needed), for sparsity and error."""
    w = module.weight
    if hasattr(module, "dequantize") and not isinstance(w, torch.nn.Parameter | torch.Tensor):
        return module.dequantize().float()
    quant_state = getattr(w, "quant_state", None)
    if quant_state is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(w.data, quant_state).float()
    scb = getattr(w, "SCB", None)
    if isinstance(scb, torch.Tensor) and w.dtype == torch.int8:
        return (w.data.float() * scb.float().unsqueeze(1) / 127.0)
    if hasattr(w, "dequantize") and type(w) not in (torch.Tensor, torch.nn.Parameter):
        return w.dequantize().float()
    return w.detach().float()


def _unique_tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        key = id(t)
        try:
            key = t.untyped_storage().data_ptr() if type(t) in (torch.Tensor, torch.nn.Parameter) else id(t)
        except (RuntimeError, NotImplementedError):
            pass
        if key in seen:
            continue
        seen.add(key)
        yield name, t


def _input_embedding_bytes(model: nn.Module) -> int:
    """Bytes of the input-embedding table when it is not tied to lm_head (a decode step gathers one row)."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if get_in is None:
        return 0
    emb = get_in()
    out = get_out() if get_out is not None else None
    if emb is None:
        return 0
    if out is not None and getattr(out, "weight", None) is not None and out.weight.data_ptr() == emb.weight.data_ptr():
        return 0
    return tensor_storage_bytes(emb.weight)


class StorageSummary:
    def __init__(self, model: nn.Module) -> None:
        self.weight_bytes = sum(tensor_storage_bytes(t) for _, t in _unique_tensors(model))
        self.linear_bytes = 0
        self.linear_count = 0
        zeros = 0
        self.per_layer_sparsity: dict[str, float] = {}
        for name, module in target_linears(model):
            w = module.weight if hasattr(module, "weight") else None
            layer_bytes = sum(tensor_storage_bytes(t) for t in module.parameters(recurse=False))
            layer_bytes += sum(tensor_storage_bytes(t) for t in module.buffers(recurse=False))
            if w is None or layer_bytes == 0:  # e.g. HQQLinear keeps its packed tensors as plain attributes
                layer_bytes = _attribute_tensor_bytes(module)
            n = _logical_numel(module, w if w is not None else torch.empty(0))
            dense = dense_weight(module)
            layer_zeros = int((dense == 0).sum())
            zeros += layer_zeros
            self.per_layer_sparsity[name] = layer_zeros / max(n, 1)
            self.linear_bytes += layer_bytes
            self.linear_count += n
        self.sparsity = zeros / max(self.linear_count, 1)
        self.bits_per_weight = 8.0 * self.linear_bytes / max(self.linear_count, 1)
        self.bytes_read_per_token = self.weight_bytes - _input_embedding_bytes(model)


def _attribute_tensor_bytes(module: nn.Module) -> int:
    total = 0
    for v in vars(module).values():
        if isinstance(v, torch.Tensor):
            total += tensor_storage_bytes(v)
        elif isinstance(v, dict):
            total += sum(tensor_storage_bytes(x) for x in v.values() if isinstance(x, torch.Tensor))
    return total


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
