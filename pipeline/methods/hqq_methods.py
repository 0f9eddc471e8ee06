"""HQQ (half-quadratic quantization, calibration-free) through hqq's own model patching.

transformers' `HqqConfig` is not implemented in transformers 5.x, so the model is patched with
`AutoHQQHFModel.quantize_model` (every nn.Linear but lm_head becomes an `HQQLinear`). The PYTORCH backend
(the only one on CPU) unpacks and dequantizes the weight on every call and matmuls densely.

Storage (`HQQWeights`): packed `W_q` + the scale/zero tensors of the layer's `meta` dict (a plain dict,
which `get_memory_footprint()` misses).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from pipeline.methods.base import Method, register, save_unique_safetensors
from pipeline.methods.targets import linear_shapes
from pipeline.methods.weights import WeightHandler, register_weight_handler


@register
class HQQ(Method):
    name = "hqq"
    library = "hqq"
    summary = "half-quadratic optimised zero/scale, group-wise, 8/4/3/2 bits, no calibration"

    nbits: Literal[8, 4, 3, 2] = Field(4, description="bits per weight (8, 4, 3 or 2)")
    group_size: int = Field(64, description="weights per scale/zero group along the input dim (multiple of 8)")

    @field_validator("group_size")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v < 8 or v % 8:
            raise ValueError(f"must be a positive multiple of 8 (got {v})")
        return v

    def check_model(self, config) -> str | None:
        for layer, (_, in_f) in linear_shapes(config).items():
            if in_f % self.group_size:
                return f"hqq group_size {self.group_size} does not divide {layer}'s input width {in_f}; use a group_size that divides it"
        return None

    def apply(self, model, ctx):
        from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear
        from hqq.models.hf.base import AutoHQQHFModel

        HQQLinear.set_backend(HQQBackend.PYTORCH)
        dtype = next(model.parameters()).dtype
        device = "cuda" if ctx.device.startswith("cuda") else ctx.device
        AutoHQQHFModel.quantize_model(
            model,
            quant_config=BaseQuantizeConfig(nbits=self.nbits, group_size=self.group_size),
            compute_dtype=dtype,
            device=device,
        )
        return model

    def kernel(self, device: str, model=None) -> str:
        return (
            f"hqq HQQLinear {self.nbits}-bit (PYTORCH backend): unpack + dequantize per call, dense matmul ({device})"
        )

    def serialize(self, model, out_dir):
        # HQQLinear.state_dict() encodes W_q + meta as plain tensors (hqq's safetensors-compatible form).
        save_unique_safetensors(model, out_dir)


def _is_hqq(module) -> bool:
    return type(module).__name__.startswith("HQQLinear")


def _dict_tensors(d: dict):
    import torch

    for v in d.values():
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, dict):
            yield from _dict_tensors(v)


@register_weight_handler
class HQQWeights(WeightHandler):
    library = "hqq"
    linear_classes = ("HQQLinear", "HQQLinearTorchWeightOnlynt4")

    def module_tensors(self, module):
        meta = getattr(module, "meta", None)  # HQQLinear keeps scale/zero in a plain dict
        return _dict_tensors(meta) if isinstance(meta, dict) else ()

    def logical_numel(self, module):
        meta = getattr(module, "meta", None)
        if isinstance(meta, dict) and "shape" in meta:
            return int(math.prod(meta["shape"]))
        return None

    def dense_weight(self, module):
        if not _is_hqq(module):
            return None
        return module.dequantize().float().reshape(module.meta["shape"])
