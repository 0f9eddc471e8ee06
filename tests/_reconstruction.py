"""Layer-wise reconstruction error (what GPTQ / SparseGPT minimise): test-only, so it lives with the tests."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from pipeline.methods.targets import target_linears
from pipeline.variants.reference import BaseReference
from pipeline.variants.storage import dense_weight


def capture_layer_inputs(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], max_rows: int = 4096
) -> dict[str, torch.Tensor]:
    """Inputs X (rows = tokens) reaching every compressed linear layer of `model` on `batches`."""
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, module in target_linears(model):

        def hook(_m, args, _out, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()
            captured.setdefault(name, []).append(x)

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                model(**b)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v)[:max_rows] for k, v in captured.items()}


def reconstruction_error(
    inputs: dict[str, torch.Tensor], base: BaseReference | dict[str, torch.Tensor], model: torch.nn.Module
) -> float:
    """sqrt(Σ_l ‖X_l (W_l − Ŵ_l)ᵀ‖²) / sqrt(Σ_l ‖X_l W_lᵀ‖²): output error of every layer on the same inputs."""
    weights = dict(base.weights()) if isinstance(base, BaseReference) else base
    modules = dict(target_linears(model))
    num = den = 0.0
    for name, x in inputs.items():
        w0 = weights[name].float()
        w = dense_weight(modules[name]).cpu()
        num += float((x @ (w - w0).t()).double().pow(2).sum())
        den += float((x @ w0.t()).double().pow(2).sum())
    return math.sqrt(num / den) if den else 0.0
