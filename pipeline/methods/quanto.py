"""optimum-quanto methods: `quantize(model, weights=qtype, include=targets)` then `freeze(model)`.

optimum-quanto is no longer maintained (archived by Hugging Face in 2025): kept as a comparison point,
its `maintenance` note says so in `shrinkgate methods`.

Storage: quanto's weights are torch tensor subclasses (`__tensor_flatten__`, `dequantize()`), counted and
dequantized generically; its handler only names `QLinear` as a linear layer.
"""

from __future__ import annotations

from typing import ClassVar

from pipeline.methods.base import Method, register
from pipeline.methods.targets import target_linears
from pipeline.methods.weights import WeightHandler, register_weight_handler

MAINTENANCE = (
    "optimum-quanto is unmaintained since 2025 (archived upstream); kept for comparison, prefer torchao or hqq"
)


class _Quanto(Method):
    library = "optimum-quanto"
    maintenance = MAINTENANCE
    qtype: ClassVar[str]  # optimum.quanto attribute: qint8, qint4, qfloat8

    def apply(self, model, ctx):
        import optimum.quanto as oq

        include = [name for name, _ in target_linears(model)]
        oq.quantize(model, weights=getattr(oq, self.qtype), include=include)
        oq.freeze(model)
        return model

    def kernel(self, device: str, model=None) -> str:
        if model is not None and self.qtype == "qint8" and device == "cpu":
            import torch

            if next(model.parameters()).dtype == torch.bfloat16:
                return "quanto QLinear qint8: torch._weight_int8pack_mm (CPU, bf16 activations)"
        if device.startswith("cuda") and self.qtype == "qint4":
            return "quanto QLinear qint4: AWQ/Marlin int4 CUDA GEMM where shapes allow, else dequantize + matmul"
        return f"quanto QLinear {self.qtype}: scale x weights into a dense copy + matmul ({device})"


@register
class QuantoInt8(_Quanto):
    name = "quanto-int8"
    qtype = "qint8"
    summary = "int8 weights, per-channel scales (optimum-quanto)"


@register
class QuantoInt4(_Quanto):
    name = "quanto-int4"
    qtype = "qint4"
    summary = "int4 weights, group-wise scales + shifts (optimum-quanto)"


@register
class QuantoFloat8(_Quanto):
    name = "quanto-float8"
    qtype = "qfloat8"
    summary = "float8 (e4m3) weights, per-channel scales (optimum-quanto)"


@register_weight_handler
class QuantoWeights(WeightHandler):
    library = "optimum-quanto"
    linear_classes = ("QLinear",)
