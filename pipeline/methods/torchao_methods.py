"""torchao methods: `quantize_(model, Config, filter_fn)` with lm_head and embeddings left dense.

int4 on CPU runs only through `torchao.prototype.quantization.int4` (Int4OpaqueTensor, the tinygemm CPU
kernel); on CUDA the standard `Int4WeightOnlyConfig` in tinygemm's tile-packed layout (needs bfloat16).
Both kernels need a layer's output width N divisible by 16 and the group size to divide its input width;
torchao silently skips a layer whose shape does not fit, so `check_model` refuses such a model up front instead.

Storage: torchao's weights are torch tensor subclasses, counted through `__tensor_flatten__` generically;
`TorchaoWeights` dequantizes the one form without a dequantize op (Int4OpaqueTensor).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from pipeline.methods.base import Method, MethodError, NotSerializable, register, save_unique_safetensors
from pipeline.methods.targets import is_target_linear, linear_shapes
from pipeline.methods.weights import WeightHandler, register_weight_handler


def _filter(module, fqn: str) -> bool:
    return is_target_linear(fqn, module)


def _torchao_version() -> str:
    import torchao

    return torchao.__version__


class _Torchao(Method):
    library = "torchao"

    def serialize(self, model, out_dir):
        """torchao's own safetensors flattening (what transformers' TorchAoHfQuantizer saves with)."""
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        sd = {k: v for k, v in model.state_dict().items()}
        # tied lm_head/embeddings: keep one name per tensor
        seen, unique = set(), {}
        for k, v in sd.items():
            key = (
                id(v)
                if type(v).__name__ not in ("Tensor", "Parameter")
                else (v.untyped_storage().data_ptr(), v.storage_offset())
            )
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

    def apply(self, model, ctx):
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(), filter_fn=_filter)
        return model

    def kernel(self, device: str, model=None) -> str:
        # what torchao dispatches to depends on device, dtype and compile: the build's observation says which ran
        return f"torchao Int8Tensor weight-only: int8 weights + per-channel scales ({device})"


@register
class TorchaoInt4WeightOnly(_Torchao):
    name = "int4-weight-only"
    summary = "int4 weights, asymmetric group-wise (tinygemm layout); CPU via torchao.prototype.quantization.int4"
    # on CPU; the CUDA form saves. `serialize` (torchao's flattening) still tries, so a build records the outcome.
    not_serializable = "CPU form (Int4OpaqueTensor) is not in torchao's safetensors allow-list; the CUDA form (Int4TilePackedTo4dTensor) saves"

    group_size: Literal[32, 64, 128, 256] = Field(
        128, description="weights per scale/zero-point group (CPU: 32, 64 or 128)"
    )

    def check_model(self, config) -> str | None:
        for layer, (out_f, in_f) in linear_shapes(config).items():
            if in_f % self.group_size:
                return f"int4-weight-only group_size {self.group_size} does not divide {layer}'s input width {in_f}; use a group_size that divides it"
            if out_f % 16:
                return f"int4-weight-only needs every layer's output width divisible by 16 (the int4 kernel's N); {layer} has {out_f}"
        return None

    def apply(self, model, ctx):
        import torch
        from torchao.quantization import quantize_

        if ctx.device.startswith("cuda"):
            from torchao.quantization import Int4WeightOnlyConfig

            if next(model.parameters()).dtype != torch.bfloat16:
                raise MethodError(
                    "int4-weight-only on CUDA needs the model in bfloat16 (torchao tinygemm int4); set the model's `dtype: bfloat16`"
                )
            # tinygemm (`aten._weight_int4pack_mm`, in torch itself): the default "plain" packing needs the
            # separate mslk kernel package, which a bare CUDA torch install lacks
            config = Int4WeightOnlyConfig(group_size=self.group_size, int4_packing_format="tile_packed_to_4d")
        else:
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

            if self.group_size == 256:
                raise MethodError(
                    "int4-weight-only on CPU supports group_size 32, 64 or 128 (torchao Int4OpaqueTensor)"
                )
            config = PrototypeInt4WeightOnlyConfig(group_size=self.group_size)
        quantize_(model, config, filter_fn=_filter)
        return model

    def kernel(self, device: str, model=None) -> str:
        if device.startswith("cuda"):
            return "torchao Int4TilePackedTo4dTensor: int4 weight-only tinygemm CUDA kernel (aten._weight_int4pack_mm)"
        import torch

        isa = torch.backends.cpu.get_cpu_capability()
        slow = "" if isa == "AVX512" else f" ({isa}: no AVX-512 vector path, far slower than dense here)"
        return f"torchao Int4OpaqueTensor: int4 CPU kernel _weight_int4pack_mm_for_cpu{slow}"


@register
class TorchaoW8A8Dynamic(_Torchao):
    name = "w8a8-dynamic"
    summary = "int8 weights (per-channel) x int8 activations quantized per token at run time"
    weights_and_activations = True

    def apply(self, model, ctx):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=_filter)
        return model

    def kernel(self, device: str, model=None) -> str:
        if device.startswith("cuda"):
            return "torchao Int8Tensor dynamic: int8 x int8 torch._int_mm (cuBLAS) + rescale"
        import torch

        isa = torch.backends.cpu.get_cpu_capability()
        return f"torchao Int8Tensor dynamic: per-token int8 activations x int8 weights, int8 GEMM on CPU ({isa})"


# -- storage ----------------------------------------------------------------------------------------
_INT4PACK_POSITIONS: dict[tuple[int, int], Any] = {}


def _int4pack_cpu_positions(n: int, k: int):
    """For each nibble of `_convert_weight_to_int4pack_for_cpu`'s output (low nibble first), the flat index
    n*K+k it came from. The packed layout depends on the CPU's ISA, so it is measured, not assumed: the
    op is run on the 4-bit digits of every position's index and the digits are read back."""
    import torch

    key = (n, k)
    if key in _INT4PACK_POSITIONS:
        return _INT4PACK_POSITIONS[key]
    idx = torch.arange(n * k, dtype=torch.int64).reshape(n, k)
    pos = None
    for j in range(max(1, math.ceil(math.log(n * k, 16)))):
        digit = ((idx >> (4 * j)) & 15).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digit, 1)
        nib = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.int64)
        pos = nib << (4 * j) if pos is None else pos | (nib << (4 * j))
    _INT4PACK_POSITIONS[key] = pos
    return pos


def _int4_opaque_dequantize(w):
    """Int4OpaqueTensor (CPU tinygemm layout; no dequantize op): unpack the nibbles, then tinygemm's affine
    form w = (q - 8) * scale + zero per group. The kernel itself is far too slow for an identity probe
    (one scalar pass per input row without AVX-512)."""
    import torch

    n, k = w.shape
    group = int(w.block_size[-1])
    packed = w.qdata
    nib = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.float32)
    q = torch.empty(n * k, dtype=torch.float32)
    q[_int4pack_cpu_positions(n, k)] = nib
    scale, zero = w.scale_and_zero.float().unbind(-1)  # each (K/group, N)
    q = q.reshape(n, k // group, group)
    return ((q - 8.0) * scale.t().unsqueeze(-1) + zero.t().unsqueeze(-1)).reshape(n, k)


@register_weight_handler
class TorchaoWeights(WeightHandler):
    library = "torchao"

    def dense_weight(self, module):
        w = getattr(module, "weight", None)
        if type(w).__name__ == "Int4OpaqueTensor" and getattr(w, "act_mapping_type", None) is None:
            return _int4_opaque_dequantize(w)
        return None
