"""Which modules methods compress: the decoder's linear layers; embeddings and lm_head stay as published."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from torch import nn

SKIP_MODULES = ("lm_head",)

# Linear replacements that do not subclass nn.Linear.
_LINEAR_CLASS_NAMES = {"HQQLinear", "HQQLinearTorchWeightOnlynt4", "QLinear", "CompressedLinear"}


def is_linear(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, nn.Linear) or type(module).__name__ in _LINEAR_CLASS_NAMES


def is_target_linear(name: str, module: nn.Module) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return is_linear(module) and leaf not in SKIP_MODULES


def target_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if is_target_linear(name, module):
            yield name, module
