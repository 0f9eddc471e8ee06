"""What a build records: where the model came from and how faithful the variant is to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline import metrics as M


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights came from; logged as MLflow tags (`provenance.*`)."""

    source: str
    kind: str  # hub | local | gguf | bundled
    revision: str | None = None
    package: str | None = None
    package_version: str | None = None
    file: str | None = None
    file_sha256: str | None = None
    gguf_quant_type: str | None = None
    license: str | None = None

    def tags(self) -> dict[str, str]:
        return {M.TAG_PROVENANCE_PREFIX + k: str(v) for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class FidelityRecord:
    """What a variant really stores and how far it moved from the base model."""

    weight_bytes: int  # every unique parameter/buffer as stored (packed values + scales + zeros + masks)
    linear_weight_bytes: int  # the decoder's linear layers only (what methods compress)
    linear_weight_count: int  # logical number of weights in those layers
    bits_per_weight: float  # 8 * linear_weight_bytes / linear_weight_count
    # weights a decode step reads (input-embedding gather excluded unless tied): stored bytes, except layers
    # observed to run a dense matmul on dequantized weights, which read their dense bytes
    bytes_read_per_token: int
    sparsity: float  # share of the linear layers' logical weights the pruning steps set to zero (0: nothing pruned)
    kernel: str  # what the method runs the matmul with, and what the profiler observed it run as
    build_seconds: float = 0.0
    build_peak_mem_mb: float = 0.0
    per_layer_sparsity: dict[str, float] = field(default_factory=dict)
    weight_rel_error: float | None = None
    kl_vs_base: float | None = None
    top1_agree_vs_base: float | None = None
    serialized_bytes: int | None = None
    serializable: bool | None = None
    serializable_reason: str | None = None
    nm_pattern_ok: bool | None = None  # N:M sparsity verified group by group (None: not an N:M variant)
    dense_fallback: bool = False  # the compressed form runs as a dense matmul here (no speed gain to expect)
    extra: dict[str, Any] = field(default_factory=dict)  # provenance notes logged as tags (calibration.*, heldout.*)
    # Bytes the in-memory model holds while it runs; differs from weight_bytes where the library runs from
    # an unpacked copy (compressed-tensors on CPU). bytes_read_per_token is computed from this form.
    runtime_weight_bytes: int | None = None
    zero_fraction: float | None = None  # every exact zero of the linear layers' dense view (quantizer grid zeros too)
    stored_bytes_per_token: int | None = None  # bytes_read_per_token were every layer read as it is held
    kernel_observed: str = ""  # the profiler's summary over one decode step (`pipeline.variants.observe`)
    kernel_observed_ops: str = ""  # top ops under the compressed layers, with input dtypes
    kernel_census: str = ""  # the compressed layers' module / weight tensor types
    stored_sha256: str | None = None  # sha256 over the stored tensors (`export` rebuilds and compares)

    def metrics(self) -> dict[str, float]:
        values = {
            M.WEIGHT_BYTES: self.weight_bytes,
            M.BITS_PER_WEIGHT: self.bits_per_weight,
            M.SPARSITY: self.sparsity,
            M.ZERO_FRACTION: self.zero_fraction,
            M.WEIGHT_BYTES_READ: self.bytes_read_per_token,
            M.WEIGHT_REL_ERROR: self.weight_rel_error,
            M.KL_VS_BASE: self.kl_vs_base,
            M.TOP1_AGREE_VS_BASE: self.top1_agree_vs_base,
            M.SERIALIZED_BYTES: self.serialized_bytes,
            M.RUNTIME_WEIGHT_BYTES: self.runtime_weight_bytes,
            M.BUILD_SECONDS: self.build_seconds,
            M.BUILD_PEAK_MEM_MB: self.build_peak_mem_mb,
        }
        return {k: float(v) for k, v in values.items() if v is not None}

    def tags(self) -> dict[str, str]:
        # extra holds provenance notes (calibration.source/sha256/samples, heldout.sha256, nm_pattern).
        tags = {k: str(v) for k, v in self.extra.items()}
        tags.update({M.TAG_KERNEL: self.kernel, M.TAG_DENSE_FALLBACK: str(self.dense_fallback).lower()})
        observed = {
            M.TAG_KERNEL_OBSERVED: self.kernel_observed,
            M.TAG_KERNEL_OBSERVED_OPS: self.kernel_observed_ops,
            M.TAG_KERNEL_CENSUS: self.kernel_census,
        }
        tags.update({k: v for k, v in observed.items() if v})
        if self.serializable is not None:
            tags[M.TAG_SERIALIZABLE] = str(self.serializable).lower()
            if self.serializable_reason:
                tags[M.TAG_SERIALIZABLE_REASON] = self.serializable_reason
        if self.nm_pattern_ok is not None:
            tags[M.TAG_NM_PATTERN_OK] = str(self.nm_pattern_ok).lower()
        if self.stored_sha256:
            tags[M.TAG_STORED_SHA256] = self.stored_sha256
        return tags
