"""Which modules methods compress: the decoder's linear layers; embeddings and lm_head stay as published."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pipeline.methods.weights import is_library_linear

if TYPE_CHECKING:
    from torch import nn

SKIP_MODULES = ("lm_head",)


def is_linear(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, nn.Linear) or is_library_linear(type(module).__name__)


def is_target_linear(name: str, module: nn.Module) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return is_linear(module) and leaf not in SKIP_MODULES


def target_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if is_target_linear(name, module):
            yield name, module


def linear_shapes(config) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every compressed layer, from a transformers config alone: the model
    is built on the meta device, so no weights are read or allocated."""
    key = id(config)
    cached = _SHAPES_CACHE.get(key)
    if cached is not None and cached[0] is config:
        return cached[1]
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: (int(m.out_features), int(m.in_features)) for name, m in target_linears(model)}
    _SHAPES_CACHE.clear()
    _SHAPES_CACHE[key] = (config, shapes)
    return shapes


_SHAPES_CACHE: dict[int, tuple[object, dict[str, tuple[int, int]]]] = {}


def first_bad_width(config, multiple: int, *, what: str = "in") -> tuple[str, int] | None:
    """The first layer whose input (or output) width is not a multiple of `multiple`, or None."""
    for name, (out_f, in_f) in linear_shapes(config).items():
        width = in_f if what == "in" else out_f
        if width % multiple:
            return name, width
    return None
