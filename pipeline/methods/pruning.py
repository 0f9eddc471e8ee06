"""Magnitude pruning: unstructured (torch.nn.utils.prune, masks folded into the weights) and 2:4.

Embeddings and lm_head are kept. On CPU nothing runs a sparse kernel: the matmul is dense on weights
that happen to hold zeros, so these variants save no bytes and no time there (`dense_fallback`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.methods.base import Method, register
from pipeline.methods.targets import first_bad_width, target_linears


@register
class MagnitudePrune(Method):
    name = "magnitude-prune"
    library = "torch"
    kind = "prune"
    summary = "unstructured: zero the smallest |w| of each linear layer (or globally); embeddings/lm_head kept"

    amount: float = Field(0.5, gt=0.0, lt=1.0, description="share of weights set to zero")
    scope: Literal["per-layer", "global"] = Field(
        "per-layer", description="rank |w| within each layer, or across all layers"
    )

    def apply(self, model, ctx):
        import torch
        from torch.nn.utils import prune

        layers = [(m, "weight") for _, m in target_linears(model)]
        with torch.no_grad():
            if self.scope == "global":
                prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=self.amount)
            else:
                for module, attr in layers:
                    prune.l1_unstructured(module, attr, amount=self.amount)
            for module, attr in layers:
                prune.remove(module, attr)
        return model

    def kernel(self, device: str, model=None) -> str:
        return "dense matmul on masked weights: no unstructured-sparse kernel"


def nm_mask(scores, n: int, m: int):
    """Boolean keep-mask: the `n` highest scores of every group of `m` consecutive inputs of each row."""
    import torch

    out_f, in_f = scores.shape
    groups = scores.reshape(out_f, in_f // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(out_f, in_f)


def check_nm_widths(method: str, config, n: int, m: int) -> str | None:
    bad = first_bad_width(config, m)
    if bad:
        return f"method {method!r} {n}:{m} needs every linear layer's input width to be a multiple of {m}; {bad[0]} has {bad[1]}"
    return None


@register
class Magnitude2of4(Method):
    name = "magnitude-2of4"
    library = "torch"
    kind = "prune"
    summary = "semi-structured N:M (default 2:4): keep the n largest |w| of every m consecutive inputs"

    n: int = Field(2, ge=1, description="non-zeros kept per group")
    m: int = Field(4, ge=2, description="group size (consecutive input weights)")

    @model_validator(mode="after")
    def _n_below_m(self):
        if self.n >= self.m:
            raise ValueError(f"method {self.name!r}: n ({self.n}) must be smaller than m ({self.m})")
        return self

    def check_model(self, config) -> str | None:
        return check_nm_widths(self.name, config, self.n, self.m)

    def nm_pattern(self):
        return (self.n, self.m)

    def apply(self, model, ctx):
        import torch

        with torch.no_grad():
            for _, module in target_linears(model):
                w = module.weight
                w.mul_(nm_mask(w.detach().abs().float(), self.n, self.m).to(w.dtype))
        return model

    def kernel(self, device: str, model=None) -> str:
        return f"dense matmul on masked weights: no {self.n}:{self.m} sparse kernel on {'CPU' if device == 'cpu' else device} (not converted to to_sparse_semi_structured)"
