"""bitsandbytes methods, applied at load time through transformers' `BitsAndBytesConfig`.

bitsandbytes 0.50 runs on CPU too: 4-bit layers dequantize to the compute dtype and matmul densely (a
fused CPU kernel exists only for bfloat16 on AVX512-BF16 machines); LLM.int8 quantizes activations per row
and multiplies int8 x int8 with `torch._int_mm` on AVX-512 CPUs, else in fp32 on the int8 values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.methods.base import Method, MethodParams, register
from pipeline.methods.targets import SKIP_MODULES


def _cpu_isa() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


class Bnb4bitParams(MethodParams):
    double_quant: bool = Field(False, description="also quantize the absmax scales (8-bit, saves ~0.4 bits/weight)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the dequantized matmul")


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

    def _fused_cpu(self, params: Bnb4bitParams) -> bool:
        if params.compute_dtype != "bfloat16":
            return False
        from bitsandbytes.functional import has_avx512bf16

        return bool(has_avx512bf16())

    def kernel(self, params: Bnb4bitParams, device: str) -> str:
        if device.startswith("cuda"):
            return f"bnb Linear4bit ({self.quant_type}): fused 4-bit gemv for decode, dequantize + {params.compute_dtype} matmul for prefill (CUDA)"
        if self._fused_cpu(params):
            return f"bnb Linear4bit ({self.quant_type}): fused 4-bit CPU gemm (AVX512-BF16)"
        return f"bnb Linear4bit ({self.quant_type}): dequantize + {params.compute_dtype} matmul (CPU)"

    def dense_fallback(self, params: Bnb4bitParams, device: str) -> bool:
        return not device.startswith("cuda") and not self._fused_cpu(params)


@register
class BnbNF4(_Bnb4bit):
    name = "bnb-nf4"
    quant_type = "nf4"
    summary = "4-bit NormalFloat weights, blockwise absmax scales (QLoRA's format)"


@register
class BnbFP4(_Bnb4bit):
    name = "bnb-fp4"
    quant_type = "fp4"
    summary = "4-bit float (e2m1) weights, blockwise absmax scales"


class BnbInt8Params(MethodParams):
    threshold: float = Field(6.0, ge=0.0, description="LLM.int8 outlier threshold: activation columns above it run in fp16 (0 = none)")


@register
class BnbInt8(Method):
    name = "bnb-int8"
    library = "bitsandbytes"
    Params = BnbInt8Params
    quantizes_at_load = True
    summary = "LLM.int8: int8 row-wise weights, per-row int8 activations, fp16 outlier columns"

    def load_kwargs(self, params: BnbInt8Params, device: str):
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=params.threshold, llm_int8_skip_modules=list(SKIP_MODULES)
            )
        }

    def kernel(self, params, device: str) -> str:
        if device.startswith("cuda"):
            return "bnb Linear8bitLt (LLM.int8): int8 x int8 cuBLASLt matmul + fp16 outliers (CUDA)"
        if _cpu_isa() == "AVX512":
            return "bnb Linear8bitLt (LLM.int8): int8 x int8 torch._int_mm (CPU, AVX-512) + fp16 outliers"
        return f"bnb Linear8bitLt (LLM.int8): int8 values multiplied in fp32 (bnb default CPU path; {_cpu_isa()}, no AVX-512 int8 GEMM)"

    def dense_fallback(self, params, device: str) -> bool:
        return not device.startswith("cuda") and _cpu_isa() != "AVX512"
