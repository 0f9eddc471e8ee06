"""torchao methods: `quantize_(model, Config, filter_fn)` with lm_head and embeddings left dense.

int4 on CPU runs only through `torchao.prototype.quantization.int4` (Int4OpaqueTensor, the tinygemm CPU
kernel); on CUDA the standard `Int4WeightOnlyConfig` (Int4Tensor, needs bfloat16). Both kernels need a
layer's output width N divisible by 16 and the group size to divide its input width; torchao silently
skips a layer whose shape does not fit, so `check_model` refuses such a model up front instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.methods.base import (
    Method,
    MethodError,
    MethodParams,
    NotSerializable,
    register,
    save_unique_safetensors,
)
from pipeline.methods.targets import is_target_linear, linear_shapes


def _filter(module, fqn: str) -> bool:
    return is_target_linear(fqn, module)


def _torchao_version() -> str:
    import torchao

    return torchao.__version__


class _Torchao(Method):
    library = "torchao"

    def serialize(self, model, params, out_dir):
        """torchao's own safetensors flattening (what transformers' TorchAoHfQuantizer saves with)."""
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        sd = {k: v for k, v in model.state_dict().items()}
        # tied lm_head/embeddings: keep one name per tensor
        seen, unique = set(), {}
        for k, v in sd.items():
            key = id(v) if type(v).__name__ not in ("Tensor", "Parameter") else (v.untyped_storage().data_ptr(), v.storage_offset())
            if key in seen:
                continue
            seen.add(key)
            unique[k] = v.detach() if type(v).__name__ == "Parameter" else v
        try:
            data, metadata = flatten_tensor_state_dict(unique)
        except ValueError as exc:
            raise NotSerializable(f"torchao {_torchao_version()} safetensors support: {exc}") from None
        save_unique_safetensors(model, out_dir, state_dict=data, metadata=metadata)


@register
class TorchaoInt8WeightOnly(_Torchao):
    name = "int8-weight-only"
    summary = "int8 weights, per-channel scales, activations in the model dtype"

    def apply(self, model, params, ctx):
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(), filter_fn=_filter)
        return model

    def kernel(self, params, device: str) -> str:
        return f"torchao Int8Tensor weight-only: int8 weights cast to the activation dtype each call + dense matmul ({device}, eager)"

    def dense_fallback(self, params, device: str) -> bool:
        return True  # eager torchao casts the int8 weight to a dense copy before torch.mm


class Int4Params(MethodParams):
    group_size: Literal[32, 64, 128, 256] = Field(128, description="weights per scale/zero-point group (CPU: 32, 64 or 128)")


@register
class TorchaoInt4WeightOnly(_Torchao):
    name = "int4-weight-only"
    Params = Int4Params
    summary = "int4 weights, asymmetric group-wise (tinygemm layout); CPU via torchao.prototype.quantization.int4"
    serializable = False  # on CPU; the CUDA form saves (build tries either way and records the outcome)
    serializable_reason = "CPU form (Int4OpaqueTensor) is not in torchao's safetensors allow-list; the CUDA form (Int4Tensor) saves"

    def check_model(self, params: Int4Params, config) -> str | None:
        for layer, (out_f, in_f) in linear_shapes(config).items():
            if in_f % params.group_size:
                return f"int4-weight-only group_size {params.group_size} does not divide {layer}'s input width {in_f}; use a group_size that divides it"
            if out_f % 16:
                return f"int4-weight-only needs every layer's output width divisible by 16 (the int4 kernel's N); {layer} has {out_f}"
        return None

    def apply(self, model, params: Int4Params, ctx):
        import torch
        from torchao.quantization import quantize_

        if ctx.device.startswith("cuda"):
            from torchao.quantization import Int4WeightOnlyConfig

            if next(model.parameters()).dtype != torch.bfloat16:
                raise MethodError("int4-weight-only on CUDA needs the model in bfloat16 (torchao Int4Tensor); set the model's `dtype: bfloat16`")
            config = Int4WeightOnlyConfig(group_size=params.group_size)
        else:
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

            if params.group_size == 256:
                raise MethodError("int4-weight-only on CPU supports group_size 32, 64 or 128 (torchao Int4OpaqueTensor)")
            config = PrototypeInt4WeightOnlyConfig(group_size=params.group_size)
        quantize_(model, config, filter_fn=_filter)
        return model

    def kernel(self, params, device: str) -> str:
        if device.startswith("cuda"):
            return "torchao Int4Tensor: int4 weight-only CUDA kernel"
        import torch

        isa = torch.backends.cpu.get_cpu_capability()
        slow = "" if isa == "AVX512" else f" ({isa}: no AVX-512 vector path, far slower than dense here)"
        return f"torchao Int4OpaqueTensor: int4 CPU kernel _weight_int4pack_mm_for_cpu{slow}"

    def serialize(self, model, params, out_dir):
        # Int4OpaqueTensor (the CPU packing) is not in torchao's safetensors allow-list; flattening says why.
        super().serialize(model, params, out_dir)


@register
class TorchaoW8A8Dynamic(_Torchao):
    name = "w8a8-dynamic"
    summary = "int8 weights (per-channel) x int8 activations quantized per token at run time"
    weights_and_activations = True

    def apply(self, model, params, ctx):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=_filter)
        return model

    def kernel(self, params, device: str) -> str:
        if device.startswith("cuda"):
            return "torchao Int8Tensor dynamic: int8 x int8 torch._int_mm (cuBLAS) + rescale"
        import torch

        isa = torch.backends.cpu.get_cpu_capability()
        return f"torchao Int8Tensor dynamic: per-token int8 activations x int8 weights, int8 GEMM on CPU ({isa})"
