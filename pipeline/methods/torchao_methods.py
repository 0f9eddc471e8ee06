"""torchao methods: `quantize_(model, Config)` with lm_head left dense."""

from __future__ import annotations

from pipeline.methods.base import Method, register
from pipeline.methods.targets import is_target_linear


def _filter(module, fqn: str) -> bool:
    return is_target_linear(fqn, module)


@register
class TorchaoInt8WeightOnly(Method):
    name = "int8-weight-only"
    library = "torchao"
    serializable = False  # the tensor subclass saves only with torchao's own safetensors hooks
    summary = "int8 weights, per-channel scales, activations in the model dtype"

    def apply(self, model, params, ctx):
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(), filter_fn=_filter)
        return model

    def kernel(self, params, device: str) -> str:
        if device.startswith("cuda"):
            return "torchao int8 weight-only: fused int8-dequant matmul"
        return "torchao int8 weight-only: int8 weights dequantized per call, fp32 matmul (CPU)"
