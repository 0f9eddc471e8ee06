"""How each library stores a compressed layer: one `WeightHandler` per library, registered in that library's
methods file, so the generic byte counting and dequantizing (`pipeline.variants.storage`) holds no library
knowledge and a new library is edited in one place.

Torch's own tensor-subclass protocol (`__tensor_flatten__`, `dequantize()`) already covers torchao's and
optimum-quanto's tensors generically; a handler is for what that protocol misses (state hung on a tensor,
scales kept in a plain dict, a layout without a dequantize op, a module that fake-quantizes on every call).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from pipeline.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn


class WeightHandler:
    """One library's storage knowledge. Every hook answers None (or nothing) for a tensor or module that is
    not its library's, so handlers never compete and their order does not matter. Hooks check a type name
    or attribute first and import the library only after it matched.
    """

    library: ClassVar[str]
    # class names of the library's Linear replacements that do not subclass nn.Linear (`targets.is_linear`)
    linear_classes: ClassVar[tuple[str, ...]] = ()

    def tensor_bytes(self, t: torch.Tensor) -> int | None:
        """Bytes `t` really occupies including state the library hangs on it (e.g. a quant state); None: not ours."""
        return None

    def module_tensors(self, module: nn.Module) -> Iterable[torch.Tensor]:
        """Tensors `module` itself stores outside its parameters and buffers (e.g. scales in a plain dict)."""
        return ()

    def logical_numel(self, module: nn.Module) -> int | None:
        """Weights the layer represents when it has no in/out_features; None: not ours."""
        return None

    def dense_weight(self, module: nn.Module) -> torch.Tensor | None:
        """The weight the layer computes with, dequantized to a dense float tensor; None: not ours."""
        return None


# one instance per library, asked in registration order
WEIGHT_HANDLERS: Registry[WeightHandler] = Registry("weight handler")


def register_weight_handler(cls: type[WeightHandler]) -> type[WeightHandler]:
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key not in WEIGHT_HANDLERS:
        WEIGHT_HANDLERS.register(cls(), key=key)
    return cls


def weight_handlers() -> tuple[WeightHandler, ...]:
    return tuple(h for _, h in WEIGHT_HANDLERS.items())


def is_library_linear(class_name: str) -> bool:
    """Whether a registered library declares `class_name` a Linear replacement (not an nn.Linear subclass)."""
    return any(class_name in h.linear_classes for h in weight_handlers())
