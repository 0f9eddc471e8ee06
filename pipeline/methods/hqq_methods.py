"""HQQ (half-quadratic quantization, calibration-free) through hqq's own model patching.

transformers' `HqqConfig` is not implemented in transformers 5.x, so the model is patched with
`AutoHQQHFModel.quantize_model` (every nn.Linear but lm_head becomes an `HQQLinear`). The PYTORCH backend
(the only one on CPU) unpacks and dequantizes the weight on every call and matmuls densely.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.methods.base import Method, MethodParams, register, save_unique_safetensors
from pipeline.methods.targets import linear_shapes


class HQQParams(MethodParams):
    nbits: Literal[8, 4, 3, 2] = Field(4, description="bits per weight (8, 4, 3 or 2)")
    group_size: int = Field(64, description="weights per scale/zero group along the input dim (multiple of 8)")

    @field_validator("group_size")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v < 8 or v % 8:
            raise ValueError(f"must be a positive multiple of 8 (got {v})")
        return v


@register
class HQQ(Method):
    name = "hqq"
    library = "hqq"
    Params = HQQParams
    summary = "half-quadratic optimised zero/scale, group-wise, 8/4/3/2 bits, no calibration"

    def check_model(self, params: HQQParams, config) -> str | None:
        for layer, (_, in_f) in linear_shapes(config).items():
            if in_f % params.group_size:
                return f"hqq group_size {params.group_size} does not divide {layer}'s input width {in_f}; use a group_size that divides it"
        return None

    def apply(self, model, params: HQQParams, ctx):
        from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear
        from hqq.models.hf.base import AutoHQQHFModel

        HQQLinear.set_backend(HQQBackend.PYTORCH)
        dtype = next(model.parameters()).dtype
        device = "cuda" if ctx.device.startswith("cuda") else ctx.device
        AutoHQQHFModel.quantize_model(
            model,
            quant_config=BaseQuantizeConfig(nbits=params.nbits, group_size=params.group_size),
            compute_dtype=dtype,
            device=device,
        )
        return model

    def kernel(self, params: HQQParams, device: str) -> str:
        return f"hqq HQQLinear {params.nbits}-bit (PYTORCH backend): unpack + dequantize per call, dense matmul ({device})"

    def dense_fallback(self, params, device: str) -> bool:
        return True

    def serialize(self, model, params, out_dir):
        # HQQLinear.state_dict() encodes W_q + meta as plain tensors (hqq's safetensors-compatible form).
        save_unique_safetensors(model, out_dir)
