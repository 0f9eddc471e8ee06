"""bitsandbytes methods, applied at load time through transformers' `BitsAndBytesConfig`.

bitsandbytes 0.50 runs on CPU too: 4-bit layers dequantize to the compute dtype and matmul densely (a
fused CPU kernel exists only for bfloat16 on AVX512-BF16 machines); LLM.int8 quantizes activations per row
and multiplies int8 x int8 with `torch._int_mm` on AVX-512 CPUs, else in fp32 on the int8 values.

Storage (`BnbWeights`): `Params4bit` packed bytes + its `quant_state` (absmax, code, nested double-quant
state); `Int8Params` + its row scales `SCB` (moved to the layer's `state` on first call).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.methods.base import Method, register
from pipeline.methods.targets import SKIP_MODULES
from pipeline.methods.weights import WeightHandler, register_weight_handler


def _cpu_isa() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


class _Bnb4bit(Method):
    library = "bitsandbytes"
    quantizes_at_load = True
    # On AVX512-BF16 CPUs bitsandbytes repacks the weights at the first eval forward and runs its own bf16
    # kernel (A and absmax cast to bf16); two quickstart runs there scored NF4 0.211 and 0.228. Bit-identical
    # across processes and 1 vs 2 threads on a CPU without AVX512-BF16 (fp32 dequantize + matmul; tests/test_determinism.py).
    deterministic = False
    quant_type: ClassVar[str]

    double_quant: bool = Field(False, description="also quantize the absmax scales (8-bit, saves ~0.4 bits/weight)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the dequantized matmul"
    )

    def load_kwargs(self, device: str):
        import torch
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quant_type,
                bnb_4bit_use_double_quant=self.double_quant,
                bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
                llm_int8_skip_modules=list(SKIP_MODULES),
            )
        }

    def quantize_loaded(self, model, device: str):
        """Swap each target linear for bitsandbytes' `Linear4bit` with the loaded weight, quantized by
        `Params4bit.to(device)`: the layers `from_pretrained(quantization_config=...)` builds, for a model that
        has no checkpoint (a random-weight shape in `shrinkgate speed`)."""
        import bitsandbytes as bnb
        import torch

        from pipeline.methods.targets import target_linears

        compute = getattr(torch, self.compute_dtype)
        for name, linear in list(target_linears(model)):
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = bnb.nn.Linear4bit(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                compute_dtype=compute,
                compress_statistics=self.double_quant,
                quant_type=self.quant_type,
                device="meta",
            )
            layer.weight = bnb.nn.Params4bit(
                linear.weight.data,
                requires_grad=False,
                compress_statistics=self.double_quant,
                quant_type=self.quant_type,
                module=layer,
            ).to(device)
            if linear.bias is not None:
                layer.bias = torch.nn.Parameter(linear.bias.data.to(device), requires_grad=False)
            setattr(parent, leaf, layer)
        return model

    def _fused_cpu(self) -> bool:
        if self.compute_dtype != "bfloat16":
            return False
        from bitsandbytes.functional import has_avx512bf16

        return bool(has_avx512bf16())

    def kernel(self, device: str, model=None) -> str:
        if device.startswith("cuda"):
            return f"bnb Linear4bit ({self.quant_type}): fused 4-bit gemv for decode, dequantize + {self.compute_dtype} matmul for prefill (CUDA)"
        if self._fused_cpu():
            return f"bnb Linear4bit ({self.quant_type}): fused 4-bit CPU gemm (AVX512-BF16)"
        # measured: AVX-512 CPUs run bitsandbytes' packed gemv_4bit for one token, AVX2-only ones dequantize first
        return f"bnb Linear4bit ({self.quant_type}): 4-bit gemv for one token where the CPU has AVX-512, else dequantize + {self.compute_dtype} matmul (CPU)"


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


@register
class BnbInt8(Method):
    name = "bnb-int8"
    library = "bitsandbytes"
    quantizes_at_load = True
    summary = "LLM.int8: int8 row-wise weights, per-row int8 activations, fp16 outlier columns"

    threshold: float = Field(
        6.0, ge=0.0, description="LLM.int8 outlier threshold: activation columns above it run in fp16 (0 = none)"
    )

    def load_kwargs(self, device: str):
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=self.threshold, llm_int8_skip_modules=list(SKIP_MODULES)
            )
        }

    def kernel(self, device: str, model=None) -> str:
        if device.startswith("cuda"):
            return "bnb Linear8bitLt (LLM.int8): int8 x int8 cuBLASLt matmul + fp16 outliers (CUDA)"
        if _cpu_isa() == "AVX512":
            return "bnb Linear8bitLt (LLM.int8): int8 x int8 torch._int_mm (CPU, AVX-512) + fp16 outliers"
        return f"bnb Linear8bitLt (LLM.int8): int8 values multiplied in fp32 (bnb default CPU path; {_cpu_isa()}, no AVX-512 int8 GEMM)"


# -- storage ----------------------------------------------------------------------------------------
def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def _quant_state_bytes(state) -> int:
    import torch

    total = 0
    for attr in ("absmax", "code", "offset"):
        v = getattr(state, attr, None)
        if isinstance(v, torch.Tensor):
            total += _nbytes(v)
    nested = getattr(state, "state2", None)
    if nested is not None:
        total += _quant_state_bytes(nested)
    return total


def _int8_row_scales(module):
    """LLM.int8's row scales: on the weight (`SCB`) until the first call moves them to the layer's `state`."""
    import torch

    w = getattr(module, "weight", None)
    scb = getattr(w, "SCB", None)
    if not isinstance(scb, torch.Tensor):
        scb = getattr(getattr(module, "state", None), "SCB", None)
    return scb if isinstance(scb, torch.Tensor) else None


@register_weight_handler
class BnbWeights(WeightHandler):
    library = "bitsandbytes"

    def tensor_bytes(self, t):
        import torch

        state = getattr(t, "quant_state", None)  # Params4bit
        scb = getattr(t, "SCB", None)  # Int8Params
        if state is None and not isinstance(scb, torch.Tensor):
            return None
        total = _nbytes(t)
        if state is not None:
            total += _quant_state_bytes(state)
        if isinstance(scb, torch.Tensor):
            total += _nbytes(scb)
        return total

    def module_tensors(self, module):
        scb = _int8_row_scales(module)
        if scb is not None and getattr(getattr(module, "weight", None), "SCB", None) is None:
            return (scb,)  # moved off the weight, so parameters() no longer reaches it
        return ()

    def dense_weight(self, module):
        w = getattr(module, "weight", None)
        if w is None:
            return None
        quant_state = getattr(w, "quant_state", None)
        if quant_state is not None:
            import bitsandbytes.functional as bnbf

            return bnbf.dequantize_4bit(w.data, quant_state).float()
        import torch

        scb = _int8_row_scales(module)
        if scb is not None and w.dtype == torch.int8:
            return w.data.float() * scb.float().unsqueeze(1) / 127.0
        return None
