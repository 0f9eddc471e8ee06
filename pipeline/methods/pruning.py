"""Magnitude pruning with `torch.nn.utils.prune`, made permanent (masks folded into the weights)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.methods.base import Method, MethodParams, register
from pipeline.methods.targets import target_linears


class MagnitudeParams(MethodParams):
    amount: float = Field(0.5, gt=0.0, lt=1.0, description="share of weights set to zero")
    scope: Literal["per-layer", "global"] = "per-layer"


@register
class MagnitudePrune(Method):
    name = "magnitude-prune"
    library = "torch"
    Params = MagnitudeParams
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
