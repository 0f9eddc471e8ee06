"""Magnitude pruning: unstructured (torch.nn.utils.prune, masks folded into the weights) and 2:4.

Embeddings and lm_head are kept. On CPU nothing runs a sparse kernel: the matmul is dense on weights
that happen to hold zeros, so these variants save no bytes and no time there (`dense_fallback`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.methods.base import Method, MethodParams, register
from pipeline.methods.targets import first_bad_width, target_linears


class MagnitudeParams(MethodParams):
    amount: float = Field(0.5, gt=0.0, lt=1.0, description="share of weights set to zero")
    scope: Literal["per-layer", "global"] = Field("per-layer", description="rank |w| within each layer, or across all layers")


@register
class MagnitudePrune(Method):
    name = "magnitude-prune"
    library = "torch"
    Params = MagnitudeParams
    kind = "prune"
    summary = "unstructured: zero the smallest |w| of each linear layer (or globally); embeddings/lm_head kept"

    def apply(self, model, params: MagnitudeParams, ctx):
        import torch
        from torch.nn.utils import prune

        layers = [(m, "weight") for _, m in target_linears(model)]
        with torch.no_grad():
            if params.scope == "global":
                prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=params.amount)
            else:
                for module, attr in layers:
                    prune.l1_unstructured(module, attr, amount=params.amount)
            for module, attr in layers:
                prune.remove(module, attr)
        return model

    def kernel(self, params, device: str) -> str:
        return "dense matmul on masked weights: no unstructured-sparse kernel"

    def dense_fallback(self, params, device: str) -> bool:
        return True


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


class NMParams(MethodParams):
    n: int = Field(2, ge=1, description="non-zeros kept per group")
    m: int = Field(4, ge=2, description="group size (consecutive input weights)")


@register
class Magnitude2of4(Method):
    name = "magnitude-2of4"
    library = "torch"
    Params = NMParams
    kind = "prune"
    summary = "semi-structured N:M (default 2:4): keep the n largest |w| of every m consecutive inputs"

    def check(self, params: NMParams) -> str | None:
        if params.n >= params.m:
            return f"method {self.name!r}: n ({params.n}) must be smaller than m ({params.m})"
        return None

    def check_model(self, params: NMParams, config) -> str | None:
        return check_nm_widths(self.name, config, params.n, params.m)

    def nm_pattern(self, params: NMParams):
        return (params.n, params.m)

    def apply(self, model, params: NMParams, ctx):
        import torch

        with torch.no_grad():
            for _, module in target_linears(model):
                w = module.weight
                w.mul_(nm_mask(w.detach().abs().float(), params.n, params.m).to(w.dtype))
        return model

    def kernel(self, params: NMParams, device: str) -> str:
        return f"dense matmul on masked weights: no {params.n}:{params.m} sparse kernel on {'CPU' if device == 'cpu' else device} (not converted to to_sparse_semi_structured)"

    def dense_fallback(self, params, device: str) -> bool:
        return True
