"""The roofline: a decode step's time and its ceilings from the bytes it reads, the FLOPs it does, and a device's
bandwidth and matrix peak. Pure arithmetic on numbers (model shapes come from `pipeline.models.shapes`); no torch.

Decode at small batch is memory-bound: every step streams every weight once, plus each sequence's KV cache. So
`tokens/s <= bandwidth / bytes per step * batch`, where

    bytes per step = weight bytes read per token + batch * KV bytes at the current context.

MBU (model bandwidth utilisation) is the share of the measured peak bandwidth a decode step achieves; MFU is the
same for FLOPs against a measured matmul peak.

The prediction: one decode step reads the weights once plus every sequence's KV cache and does the batch's
FLOPs; its time is the slower of the two at the runtime's achieved fraction of peak, plus the part of the faster
one the runtime does not overlap with it (a GPU overlaps them: 1; an eager CPU step barely: near 0), plus a fixed
per-step overhead (sampling, Python) and one per layer (an eager runtime dispatches a dozen ops per layer, llama.cpp
walks a graph node by node: at small sizes that, not bytes, is what separates a 30-layer from a 16-layer model).
Prefill is the prompt's FLOPs at the runtime's prefill efficiency.

    step  = max(memory, compute) + (1 - overlap) * min(memory, compute) + overhead + layers * layer overhead
            memory = bytes / (eta_bw * bandwidth), compute = batch * flops / (eta_compute * peak)
            eta_bw: one sequence streams the weights through a matrix-vector kernel; from batch 2 a matrix-matrix
            kernel runs instead (a CPU BLAS packs weight panels first: more traffic), with its own eta_bw_batched
            each method's kernel scales both by its own rates, relative to the reference kernel: streaming (memory; a
            4-bit block is unpacked per weight, whatever the batch) and arithmetic (compute and prefill)
    TTFT  = max(batch * prefill flops / (eta_prefill * peak), weight bytes / (eta_bw * bandwidth)) + ttft overhead
            prefill flops = prompt x (flops - head) + head: the output head runs for the last position only

`fit` fits the etas and overheads to measured points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.models import shapes
from pipeline.models.shapes import ModelFacts
from pipeline.predict.formats import WeightFormat
from pipeline.predict.hardware import Hardware

# ---------------------------------------------------------------------------------------------
# Ceilings and utilisation
# ---------------------------------------------------------------------------------------------


class _Point(Protocol):
    batch_size: int
    prompt_tokens: int
    decode_tok_s: float


def bytes_per_step(weight_bytes_per_token: float, kv_bytes_per_seq: float, batch: int) -> float:
    """Bytes one decode step reads: the weights once (shared by the batch) + every sequence's KV."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    return float(weight_bytes_per_token) + batch * float(kv_bytes_per_seq)


def ceiling_tok_s(bandwidth_bytes_s: float, bytes_per_step: float, batch: int) -> float:
    """Memory-wall ceiling: steps/s at full bandwidth times tokens per step (one per sequence)."""
    if bytes_per_step <= 0:
        raise ValueError("bytes_per_step must be > 0")
    return bandwidth_bytes_s / bytes_per_step * batch


def mbu(tok_s: float, bytes_per_step: float, batch: int, bandwidth_bytes_s: float) -> float:
    """Achieved bytes/s (steps/s * bytes per step) over the measured peak bandwidth."""
    if bandwidth_bytes_s <= 0:
        raise ValueError("bandwidth must be > 0")
    return (tok_s / batch) * bytes_per_step / bandwidth_bytes_s


def mfu(tok_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Achieved FLOP/s over the measured matmul peak."""
    if peak_flops <= 0:
        raise ValueError("peak_flops must be > 0")
    return tok_s * flops_per_token / peak_flops


def compute_bound_batch(
    peak_flops: float,
    bandwidth_bytes_s: float,
    flops_per_token: float,
    weight_bytes_per_token: float,
    kv_bytes_per_seq: float = 0.0,
) -> int | None:
    """Smallest batch at which a decode step's compute time reaches its memory time.

    Step time is max(B*F/peak, (W + B*KV)/bw); compute wins once B*(F/peak - KV/bw) >= W/bw.
    With no KV this is the ridge point scaled by bytes per FLOP: an 8B bf16 model (F = 16 GFLOP,
    W = 16 GB) on 3.35 TB/s turns compute-bound at ~295 for 989 TFLOP/s dense bf16 and at ~567 for
    a 1.9 PFLOP/s peak (the memory-wall analysis' figure). None when KV traffic grows faster than
    compute (long contexts): decode then never leaves the memory wall.
    """
    if min(peak_flops, bandwidth_bytes_s, flops_per_token) <= 0 or weight_bytes_per_token < 0:
        raise ValueError("peak_flops, bandwidth and flops_per_token must be > 0")
    per_seq_gain = flops_per_token / peak_flops - kv_bytes_per_seq / bandwidth_bytes_s
    if per_seq_gain <= 0:
        return None
    return max(1, math.ceil(weight_bytes_per_token / bandwidth_bytes_s / per_seq_gain - 1e-9))


def roofline_crossover_batch(
    peak_flops: float,
    bandwidth_bytes_s: float,
    flops_per_token: float,
    variant_bytes_per_token: float,
    dense_bytes_per_token: float,
    kv_bytes_per_seq: float = 0.0,
) -> int | None:
    """Smallest batch from which, on the roofline, a variant no longer decodes faster than the unmodified model.

    Both do the same FLOPs per token; the variant reads fewer weight bytes. Its step is never slower, and
    strictly faster exactly while the unmodified model is memory-bound, so the crossover is where the
    unmodified model turns compute-bound. 1 when the variant reads no fewer bytes (it never wins); None
    when the unmodified model never leaves the memory wall (KV grows faster than compute).
    """
    if variant_bytes_per_token >= dense_bytes_per_token:
        return 1
    return compute_bound_batch(peak_flops, bandwidth_bytes_s, flops_per_token, dense_bytes_per_token, kv_bytes_per_seq)


def crossover_batch(
    base_points: Iterable[_Point], variant_points: Iterable[_Point], prompt_tokens: int | None = None
) -> int | None:
    """Smallest batch measured for both where the variant's decode tok/s no longer beats the base's.

    Compression buys bandwidth; once the batch is large enough to be compute-bound (or the variant's
    dequantize overhead dominates) the unmodified model catches up. None when the variant wins at
    every common batch (or there is none). `prompt_tokens` picks one prompt length when the points
    sweep several; by default the smallest length both share.
    """
    base, var = list(base_points), list(variant_points)
    shared = sorted({p.prompt_tokens for p in base} & {p.prompt_tokens for p in var})
    if not shared:
        return None
    length = prompt_tokens if prompt_tokens is not None else shared[0]
    base_by_b = {p.batch_size: p.decode_tok_s for p in base if p.prompt_tokens == length}
    var_by_b = {p.batch_size: p.decode_tok_s for p in var if p.prompt_tokens == length}
    for b in sorted(base_by_b.keys() & var_by_b.keys()):
        if var_by_b[b] <= base_by_b[b]:
            return b
    return None


def prefill_flops_per_seq(prompt_tokens: int, flops_per_token: float, head_params: int) -> float:
    """A prompt's FLOPs: every position through the decoder, the output head once (both runtimes keep only the
    last position's logits); at Gemma 3's 262k vocabulary the head is 60 % of a token's FLOPs."""
    return prompt_tokens * (flops_per_token - 2.0 * head_params) + 2.0 * head_params


# ---------------------------------------------------------------------------------------------
# The prediction: achieved fractions of peak and overheads per runtime
# ---------------------------------------------------------------------------------------------


DTYPE_BITS = {"fp32": 32, "bf16": 16, "fp16": 16}


@dataclass(frozen=True)
class RuntimeFactors:
    """Achieved fractions of peak and fixed overheads of one runtime on one kind of device, with where they came from."""

    runtime: str
    device_kind: str  # cpu | gpu
    bandwidth_eff: float = 1.0
    batched_bandwidth_eff: float | None = None  # from batch 2 (matrix-matrix kernels); None: bandwidth_eff
    compute_eff: float = 1.0
    prefill_eff: float = 1.0
    step_overhead_ms: float = 0.0
    ttft_overhead_ms: float = 0.0
    overlap: float = 1.0  # share of the faster of memory and compute hidden under the slower (1: the roofline's max)
    layer_overhead_ms: float = 0.0  # per decoder layer per step (op dispatch), on top of step_overhead_ms
    # each method's kernel relative to the reference one (1.0; methods not listed run at 1.0): its arithmetic speed, and
    # how fast it streams its weights (unpacking 4-bit blocks costs per weight, whatever the batch)
    kernel_speed: dict[str, float] = field(default_factory=dict)
    kernel_bandwidth: dict[str, float] = field(default_factory=dict)
    provenance: str = "ideal roofline: no measurements of this engine on this kind of device were fitted"
    points: int = 0  # measured points the factors were fitted on (0: ideal)

    @property
    def calibrated(self) -> bool:
        return self.points > 0

    def bandwidth_eff_at(self, batch: int) -> float:
        return self.bandwidth_eff if batch == 1 or self.batched_bandwidth_eff is None else self.batched_bandwidth_eff

    def speed_of(self, method: str) -> float:
        return self.kernel_speed.get(method, 1.0)

    def stream_of(self, method: str) -> float:
        return self.kernel_bandwidth.get(method, 1.0)


def step_seconds(
    bytes_per_step: float,
    batch: int,
    flops_per_token: float | None,
    bandwidth: float,
    peak: float | None,
    f: RuntimeFactors,
    layers: int = 0,
    method: str = "none",
) -> tuple[float, str]:
    """One decode step's time and what bounds it (memory, compute, overhead)."""
    memory = bytes_per_step / (f.bandwidth_eff_at(batch) * f.stream_of(method) * bandwidth)
    compute = (
        0.0
        if not flops_per_token or not peak
        else batch * flops_per_token / (f.compute_eff * f.speed_of(method) * peak)
    )
    overhead = (f.step_overhead_ms + layers * f.layer_overhead_ms) / 1e3
    bound = max((memory, "memory"), (compute, "compute"), (overhead, "overhead"))[1]
    return max(memory, compute) + (1 - f.overlap) * min(memory, compute) + overhead, bound


def ttft_seconds(
    weight_bytes: float,
    batch: int,
    prefill_flops: float | None,
    bandwidth: float,
    peak: float | None,
    f: RuntimeFactors,
    method: str = "none",
) -> float:
    """Prefill of `batch` prompts of `prefill_flops` each (`prefill_flops_per_seq`): compute-bound unless short."""
    memory = weight_bytes / (f.bandwidth_eff * bandwidth)
    compute = (
        0.0 if not prefill_flops or not peak else batch * prefill_flops / (f.prefill_eff * f.speed_of(method) * peak)
    )
    return max(memory, compute) + f.ttft_overhead_ms / 1e3


@dataclass(frozen=True)
class Prediction:
    model: str
    method: str
    hardware: str
    runtime: str
    dtype: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    bits_per_weight: float
    bits_source: str  # "format: ..." or "measured: ..." (a fidelity record)
    weight_bytes_per_token: float
    kv_bytes_per_seq: float  # at the mean decode context
    flops_per_token: float
    tpot_ms: float
    decode_tok_s: float
    ttft_ms: float
    weights_gb: float
    kv_gb: float
    activations_gb: float
    bottleneck: str
    compute_bound_batch: int | None
    compute_dtype: str
    factors: RuntimeFactors = field(default_factory=lambda: RuntimeFactors("", ""))
    needs_kernel: str = ""

    @property
    def memory_gb(self) -> float:
        return self.weights_gb + self.kv_gb + self.activations_gb


def predict(
    model: ModelFacts,
    fmt: WeightFormat,
    hw: Hardware,
    factors: RuntimeFactors,
    batch: int,
    prompt_tokens: int,
    new_tokens: int,
    *,
    bits_per_weight: float | None = None,
    bits_source: str | None = None,
    kv_dtype: str | None = None,
) -> Prediction:
    """Decode and prefill of `model` stored as `fmt` (or at a measured `bits_per_weight`) on `hw` at `batch`."""
    dense_bits = DTYPE_BITS[model.dtype]
    bits = bits_per_weight if bits_per_weight is not None else (fmt.bits_per_weight or dense_bits)
    source = bits_source or f"format: {fmt.definition}"
    head_bits = fmt.head_bits or dense_bits
    decoder = model.linear_params - model.head_params
    weight_bytes = decoder * bits / 8 + model.head_params * head_bits / 8
    stored_bytes = weight_bytes + model.embedding_params * dense_bits / 8
    kv_bytes = DTYPE_BITS[kv_dtype or model.dtype] / 8
    context = prompt_tokens + new_tokens / 2  # mean KV length over the decode
    kv_seq = shapes.kv_bytes_at_context(model.config, context, kv_bytes)
    flops = shapes.decode_flops_per_token(model.config, context) or 0.0
    compute_dtype = model.dtype if fmt.compute == "dense" else fmt.compute
    peak, used_dtype = hw.peak_flops(compute_dtype)
    bandwidth = hw.bandwidth_gb_s * 1e9
    step, bound = step_seconds(
        weight_bytes + batch * kv_seq, batch, flops, bandwidth, peak, factors, model.layers, fmt.method
    )
    if bound == "memory":
        bound = "memory (KV cache)" if batch * kv_seq > weight_bytes else "memory (weights)"
    prompt_flops = shapes.decode_flops_per_token(model.config, prompt_tokens / 2) or 0.0
    prefill_flops = prefill_flops_per_seq(prompt_tokens, prompt_flops, model.head_params) if prompt_flops else 0.0
    ttft = ttft_seconds(weight_bytes, batch, prefill_flops, bandwidth, peak, factors, fmt.method)
    full_kv = batch * shapes.kv_bytes_at_context(model.config, prompt_tokens + new_tokens, kv_bytes)
    inter = int(model.config.get("intermediate_size") or 4 * model.hidden)
    # prefill's largest live set: one layer's hidden states + MLP activations, and the last position's fp32 logits
    activations = batch * prompt_tokens * (4 * model.hidden + 2 * inter) * dense_bits / 8 + batch * model.vocab * 4
    return Prediction(
        model=model.name,
        method=fmt.method,
        hardware=hw.name,
        runtime=factors.runtime,
        dtype=model.dtype,
        batch=batch,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        bits_per_weight=bits,
        bits_source=source,
        weight_bytes_per_token=weight_bytes,
        kv_bytes_per_seq=kv_seq,
        flops_per_token=flops,
        tpot_ms=step * 1e3,
        decode_tok_s=batch / step,
        ttft_ms=ttft * 1e3,
        weights_gb=stored_bytes / 1e9,
        kv_gb=full_kv / 1e9,
        activations_gb=activations / 1e9,
        bottleneck=bound,
        compute_bound_batch=compute_bound_batch(
            factors.compute_eff * factors.speed_of(fmt.method) * peak,
            factors.bandwidth_eff_at(2) * factors.stream_of(fmt.method) * bandwidth,
            flops,
            weight_bytes,
            kv_seq,
        ),
        compute_dtype=used_dtype,
        factors=factors,
        needs_kernel=fmt.needs_kernel,
    )
