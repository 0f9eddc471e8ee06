"""bitsandbytes methods, applied at load time through transformers' `BitsAndBytesConfig`."""

from __future__ import annotations

from typing import Literal

from pipeline.methods.base import Method, MethodParams, register
from pipeline.methods.targets import SKIP_MODULES


class Bnb4bitParams(MethodParams):
    double_quant: bool = False
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class _Bnb4bit(Method):
    library = "bitsandbytes"
    Params = Bnb4bitParams
    quantizes_at_load = True
    quant_type: str

    def load_kwargs(self, params: Bnb4bitParams, device: str):
        import torch
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quant_type,
                bnb_4bit_use_double_quant=params.double_quant,
                bnb_4bit_compute_dtype=getattr(torch, params.compute_dtype),
                llm_int8_skip_modules=list(SKIP_MODULES),
            )
        }

    def kernel(self, params, device: str) -> str:
        return f"bnb Linear4bit ({self.quant_type}): dequantize + {params.compute_dtype} matmul ({device})"


@register
class BnbNF4(_Bnb4bit):
    name = "bnb-nf4"
    quant_type = "nf4"
    summary = "4-bit NormalFloat weights, blockwise absmax scales (QLoRA's format)"
