"""llm-compressor methods (`oneshot` with a modifier recipe) and the compressed-tensors storage they produce.

llm-compressor 0.14 / compressed-tensors 0.19 are installed `--no-deps` (they pin transformers<=5.17) and
run on transformers 5.23 for everything used here. Three workarounds, each checked by tests:

- `ignore=["lm_head"]` does not protect lm_head from SparseGPT/Wanda: with `targets=["Linear"]` lm_head is
  itself a target layer, its prunable submodule is then named "lm_head." (trailing dot), which neither the
  exact name nor their own `endswith("lm_head")` guard match, so it was sparsified. We pass
  `re:(.*\\.)?lm_head\\.?$` as well, and after every oneshot verify that every tensor outside the target
  linears is bit-identical to before (else `MethodError`).
- AWQ pins its activation cache with `Tensor.pin_memory()`, which raises without an accelerator: on a
  CPU-only torch the pinning is made a no-op for the duration of the call.
- GPTQ 0.14 does not keep earlier zeros (its error feedback refills pruned weights), so after a pruning step
  the zero mask is re-applied to the quantized weights (0 is on every symmetric/integer-zero-point grid) and
  the count of refilled weights is recorded (`extra["gptq.refilled_zeros"]`).

Storage: after oneshot the model runs from dequantized weights (fake-quant; no int4/int8 kernel on CPU).
`stored_form` packs it with compressed-tensors' own `ModelCompressor.compress_model` (int4 -> int32-packed
`weight_packed`, scales, zero-points) for byte counting and saving, then unpacks it again.
`CompressedTensorsWeights` gives the weight a fake-quantizing layer really computes with.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Literal

from pydantic import Field, model_validator

from pipeline import metrics as M
from pipeline.methods.base import CalibratedMethod, Method, MethodError, register, save_unique_safetensors
from pipeline.methods.pruning import check_nm_widths
from pipeline.methods.targets import SKIP_MODULES, linear_shapes, target_linears
from pipeline.methods.weights import WeightHandler, register_weight_handler

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")

IGNORE = [*SKIP_MODULES, *(rf"re:(.*\.)?{m}\.?$" for m in SKIP_MODULES)]


# -- helpers ----------------------------------------------------------------------------------------
def _fingerprint(model) -> dict[str, str]:
    """sha1 of lm_head's and the embeddings' tensors, bit-exact (methods must leave them as published).

    Norm weights are not included: AWQ legitimately folds its smoothing scales into the preceding norm.
    """
    import hashlib

    import torch

    modules = {f"{n}": m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in SKIP_MODULES}
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        modules["input_embeddings"] = emb
    out = {}
    for mname, module in modules.items():
        for pname, p in module.named_parameters():
            raw = p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            out[f"{mname}.{pname}"] = f"{tuple(p.shape)}:{hashlib.sha1(raw.tobytes()).hexdigest()}"
    return out


@contextmanager
def _cpu_safe():
    """No-op `pin_memory` in llm-compressor's activation cache when there is no accelerator (AWQ)."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *a, **k: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def _weight_scheme(bits: int, group_size: int | None, symmetric: bool, actorder: str | None = None):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = dict(num_bits=bits, type="int", symmetric=symmetric)
    if group_size:
        args.update(strategy="group", group_size=group_size)
    else:
        args.update(strategy="channel")
    if actorder is not None:
        args["actorder"] = actorder
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))}


def _check_group(method: str, group_size: int | None, config) -> str | None:
    if not group_size:
        return None
    for layer, (_, in_f) in linear_shapes(config).items():
        if in_f % group_size:
            return f"method {method!r} group_size {group_size} does not divide {layer}'s input width {in_f}; use a group_size that divides it"
    return None


class _LLMCompressor(Method):
    library = "llm-compressor"
    _compressor = None  # the ModelCompressor while inside `stored_form` (serialize writes its config)

    def recipe(self) -> list:
        """llm-compressor modifiers for `oneshot`."""
        raise NotImplementedError

    def apply(self, model, ctx):
        import torch
        from llmcompressor import oneshot

        from pipeline.methods.batches import hf_dataset

        kwargs: dict = {}
        if isinstance(self, CalibratedMethod):
            data = ctx.calibration_data(self)
            kwargs.update(
                dataset=hf_dataset(ctx.tokenizer, data.texts, self.calibration_seq_len),
                num_calibration_samples=len(data.texts),
                max_seq_length=self.calibration_seq_len,
                shuffle_calibration_samples=False,
            )
        masks = None
        if ctx.pruned and self.kind == "quantize":
            masks = {name: (m.weight.detach() != 0) for name, m in target_linears(model)}
        before = _fingerprint(model)
        with _cpu_safe():
            oneshot(model=model, recipe=self.recipe(), processor=ctx.tokenizer, **kwargs)
        after = _fingerprint(model)
        changed = [k for k in before if before[k] != after.get(k)]
        if changed:
            raise MethodError(
                f"llm-compressor {self.name} changed {changed[0]} despite ignore={IGNORE[0]!r}; refusing the artifact"
            )
        if masks is not None:
            refilled = 0
            with torch.no_grad():
                for name, m in target_linears(model):
                    keep = masks[name]
                    refilled += int(((m.weight != 0) & ~keep).sum())
                    m.weight.mul_(keep.to(m.weight.dtype))
            ctx.notes[self.name + M.NOTE_REFILLED_ZEROS] = refilled
        return model

    @contextmanager
    def _packed(self, model):
        from compressed_tensors.compressors import ModelCompressor

        mc = ModelCompressor.from_pretrained_model(model)
        if mc.quantization_config is None:
            self._compressor = None
            yield
            return
        mc.compress_model(model)
        self._compressor = mc
        try:
            yield
        finally:
            mc.decompress_model(model)
            self._compressor = None

    def stored_form(self, model):
        return self._packed(model) if self.kind == "quantize" else super().stored_form(model)

    def serialize(self, model, out_dir):
        """Called inside `stored_form`: the packed compressed-tensors checkpoint vLLM loads."""
        save_unique_safetensors(model, out_dir)
        if self._compressor is not None:
            self._compressor.update_config(str(out_dir))


# -- weight-only quantizers -------------------------------------------------------------------------
def _w16_kernel(bits: int) -> str:
    return (
        f"compressed-tensors W{bits}A16 (pack-quantized) unpacked to dense weights: dense matmul "
        "(no int4/int8 kernel outside vLLM)"
    )


@register
class GPTQ(CalibratedMethod, _LLMCompressor):
    name = "gptq"
    summary = "GPTQ W4A16/W8A16: Hessian-aware rounding with error feedback (llm-compressor GPTQModifier)"

    bits: Literal[4, 8] = Field(4, description="weight bits (W4A16 or W8A16)")
    group_size: int | None = Field(
        128, ge=1, description="weights per scale group along the input dim; null = per channel"
    )
    symmetric: bool = Field(True, description="symmetric int grid (zero-point 0)")
    actorder: Literal["static", "weight", "none"] = Field("static", description="column order of the GPTQ sweep")
    dampening_frac: float = Field(0.01, gt=0.0, lt=1.0, description="Hessian diagonal dampening")
    block_size: int = Field(128, ge=1, description="columns updated per GPTQ block")

    def check_model(self, config) -> str | None:
        return _check_group(self.name, self.group_size, config)

    def recipe(self):
        from llmcompressor.modifiers.quantization import GPTQModifier

        actorder = None if self.actorder == "none" else self.actorder
        return [
            GPTQModifier(
                config_groups=_weight_scheme(self.bits, self.group_size, self.symmetric),
                ignore=IGNORE,
                actorder=actorder,
                dampening_frac=self.dampening_frac,
                block_size=self.block_size,
            )
        ]

    def kernel(self, device: str, model=None) -> str:
        return _w16_kernel(self.bits)


@register
class AWQ(CalibratedMethod, _LLMCompressor):
    name = "awq"
    summary = "AWQ W4A16: activation-aware per-channel smoothing, then asymmetric group-wise RTN (llm-compressor)"

    bits: Literal[4] = Field(4, description="weight bits (AWQ here is W4A16, asymmetric)")
    group_size: int | None = Field(128, ge=1, description="weights per scale group; null = per channel")
    n_grid: int = Field(20, ge=2, le=100, description="grid points searched for each smoothing scale")
    duo_scaling: bool = Field(True, description="use weight as well as activation magnitudes for the scales")

    def check_model(self, config) -> str | None:
        return _check_group(self.name, self.group_size, config)

    def apply(self, model, ctx):
        model = super().apply(model, ctx)
        ctx.notes[M.NOTE_AWQ_WEIGHT_REL_ERROR] = (
            "includes AWQ's per-channel rescaling (folded into the preceding norms/layers), not only rounding"
        )
        return model

    def recipe(self):
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform import AWQModifier

        return [
            AWQModifier(n_grid=self.n_grid, duo_scaling=self.duo_scaling),
            QuantizationModifier(
                config_groups=_weight_scheme(self.bits, self.group_size, symmetric=False), ignore=IGNORE
            ),
        ]

    def kernel(self, device: str, model=None) -> str:
        return _w16_kernel(self.bits)


@register
class RTN(_LLMCompressor):
    name = "rtn"
    summary = "round-to-nearest W4A16/W8A16, min-max group scales: the baseline GPTQ/AWQ must beat (same format)"

    bits: Literal[4, 8] = Field(4, description="weight bits (W4A16 or W8A16)")
    group_size: int | None = Field(
        128, ge=1, description="weights per scale group along the input dim; null = per channel"
    )
    symmetric: bool = Field(True, description="symmetric int grid (zero-point 0)")

    def check_model(self, config) -> str | None:
        return _check_group(self.name, self.group_size, config)

    def recipe(self):
        from llmcompressor.modifiers.quantization import QuantizationModifier

        # Same scheme, observer (memoryless min-max) and storage format as `gptq`: only the rounding differs.
        return [
            QuantizationModifier(
                config_groups=_weight_scheme(self.bits, self.group_size, self.symmetric), ignore=IGNORE
            )
        ]

    def kernel(self, device: str, model=None) -> str:
        return _w16_kernel(self.bits)


# -- weights + activations --------------------------------------------------------------------------
@register
class W8A8(_LLMCompressor):
    name = "w8a8"
    weights_and_activations = True
    summary = "int8 per-channel weights + int8 per-token dynamic activations (llm-compressor W8A8 scheme)"

    def recipe(self):
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(targets="Linear", scheme="W8A8", ignore=IGNORE)]

    def kernel(self, device: str, model=None) -> str:
        return (
            "compressed-tensors W8A8 fake-quant: activations quantized/dequantized per token, dequantized int8 "
            "weights, dense matmul (int8 GEMM only in vLLM)"
        )


# -- sparsity ---------------------------------------------------------------------------------------
@register
class SparseGPT(CalibratedMethod, _LLMCompressor):
    name = "sparsegpt"
    kind = "prune"
    summary = "SparseGPT: Hessian-aware pruning with weight reconstruction, unstructured or 2:4 (llm-compressor)"

    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="share of weights set to zero (2:4 implies 0.5)")
    pattern: Literal["unstructured", "2:4"] = Field("unstructured", description="unstructured or 2:4 semi-structured")
    block_size: int = Field(128, ge=1, description="columns pruned per block")
    dampening_frac: float = Field(0.01, gt=0.0, lt=1.0, description="Hessian diagonal dampening")

    @model_validator(mode="after")
    def _half_for_2of4(self):
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError(
                f"method 'sparsegpt' pattern 2:4 prunes exactly half; drop `sparsity` or set it to 0.5 (got {self.sparsity})"
            )
        return self

    def check_model(self, config) -> str | None:
        return check_nm_widths(self.name, config, 2, 4) if self.pattern == "2:4" else None

    def nm_pattern(self):
        return (2, 4) if self.pattern == "2:4" else None

    def recipe(self):
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        return [
            SparseGPTModifier(
                sparsity=self.sparsity,
                mask_structure="2:4" if self.pattern == "2:4" else "0:0",
                targets=["Linear"],
                ignore=IGNORE,
                block_size=self.block_size,
                dampening_frac=self.dampening_frac,
            )
        ]

    def serialize(self, model, out_dir):
        model.save_pretrained(out_dir, safe_serialization=True, save_compressed=False)

    def kernel(self, device: str, model=None) -> str:
        what = "2:4 sparse kernel" if self.pattern == "2:4" else "unstructured-sparse kernel"
        return f"dense matmul on masked weights: no {what} on {'CPU' if device == 'cpu' else device}"


# -- storage ----------------------------------------------------------------------------------------
@register_weight_handler
class CompressedTensorsWeights(WeightHandler):
    library = "compressed-tensors"
    linear_classes = ("CompressedLinear",)

    def dense_weight(self, module):
        """A layer that fake-quantizes its float weight on every call: the weight it really uses."""
        scheme = getattr(module, "quantization_scheme", None)
        status = getattr(module, "quantization_status", None)
        if scheme is None or status is None or getattr(scheme, "weights", None) is None:
            return None
        if type(getattr(module, "weight", None)).__name__ not in ("Tensor", "Parameter"):
            return None  # a tensor subclass: the generic dequantize path
        import torch
        from compressed_tensors.quantization import QuantizationStatus
        from compressed_tensors.quantization.lifecycle.forward import forward_quantize

        if status >= QuantizationStatus.COMPRESSED or not hasattr(module, "weight_scale"):
            return None
        with torch.no_grad():
            return forward_quantize(module, module.weight.data, "weight", scheme.weights).float()
