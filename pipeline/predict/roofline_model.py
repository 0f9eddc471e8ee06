"""The prediction: one decode step reads the weights once plus every sequence's KV cache and does the batch's
FLOPs; its time is the slower of the two at the engine's achieved fraction of peak, plus the part of the faster
one the engine does not overlap with it (a GPU overlaps them: 1; an eager CPU step barely: near 0), plus a fixed
per-step overhead (sampling, Python) and one per layer (an eager engine dispatches a dozen ops per layer, llama.cpp
walks a graph node by node: at small sizes that, not bytes, is what separates a 30-layer from a 16-layer model).
Prefill is the prompt's FLOPs at the engine's prefill efficiency.

    step  = max(memory, compute) + (1 - overlap) * min(memory, compute) + overhead + layers * layer overhead
            memory = bytes / (eta_bw * bandwidth), compute = batch * flops / (eta_compute * peak)
            eta_bw: one sequence streams the weights through a matrix-vector kernel; from batch 2 a matrix-matrix
            kernel runs instead (a CPU BLAS packs weight panels first: more traffic), with its own eta_bw_batched
            each method's kernel scales both by its own rates, relative to the reference kernel: streaming (memory; a
            4-bit block is unpacked per weight, whatever the batch) and arithmetic (compute and prefill)
    TTFT  = max(batch * prefill flops / (eta_prefill * peak), weight bytes / (eta_bw * bandwidth)) + ttft overhead
            prefill flops = prompt x (flops - head) + head: the output head runs for the last position only

Pure arithmetic on numbers and transformers-style configs (dicts); `calibration` fits the etas and overheads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.predict.formats import WeightFormat
from pipeline.predict.hardware import Hardware
from pipeline.runtime.speed import roofline

DTYPE_BITS = {"fp32": 32, "bf16": 16, "fp16": 16}


@dataclass(frozen=True)
class EngineFactors:
    """Achieved fractions of peak and fixed overheads of one engine on one kind of device, with where they came from."""

    engine: str
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
    bytes_per_step: float, batch: int, flops_per_token: float | None, bandwidth: float, peak: float | None, f: EngineFactors,
    layers: int = 0, method: str = "none",
) -> tuple[float, str]:
    """One decode step's time and what bounds it (memory, compute, overhead)."""
    memory = bytes_per_step / (f.bandwidth_eff_at(batch) * f.stream_of(method) * bandwidth)
    compute = 0.0 if not flops_per_token or not peak else batch * flops_per_token / (f.compute_eff * f.speed_of(method) * peak)
    overhead = (f.step_overhead_ms + layers * f.layer_overhead_ms) / 1e3
    bound = max((memory, "memory"), (compute, "compute"), (overhead, "overhead"))[1]
    return max(memory, compute) + (1 - f.overlap) * min(memory, compute) + overhead, bound


def ttft_seconds(
    weight_bytes: float, batch: int, prefill_flops: float | None, bandwidth: float, peak: float | None, f: EngineFactors, method: str = "none"
) -> float:
    """Prefill of `batch` prompts of `prefill_flops` each (`roofline.prefill_flops_per_seq`): compute-bound unless short."""
    memory = weight_bytes / (f.bandwidth_eff * bandwidth)
    compute = 0.0 if not prefill_flops or not peak else batch * prefill_flops / (f.prefill_eff * f.speed_of(method) * peak)
    return max(memory, compute) + f.ttft_overhead_ms / 1e3


@dataclass(frozen=True)
class ModelFacts:
    """What the prediction needs of a model: its config (transformers-style dict) and the dtype it runs in."""

    name: str
    config: dict[str, Any]
    dtype: str = "bf16"

    @property
    def hidden(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def vocab(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def linear_params(self) -> int:
        params = roofline.linear_params_per_token(self.config)
        if params is None:
            raise ValueError(f"{self.name}: this config's shape (mixture-of-experts or no gated MLP) is not covered")
        return params

    @property
    def head_params(self) -> int:
        return roofline.head_params(self.config)

    @property
    def layers(self) -> int:
        return roofline.layer_count(self.config)

    @property
    def embedding_params(self) -> int:
        """Input embedding stored apart from the head (untied); a decode step gathers one row, so it is not read."""
        return 0 if self.config.get("tie_word_embeddings", True) else self.hidden * self.vocab


@dataclass(frozen=True)
class Prediction:
    model: str
    method: str
    hardware: str
    engine: str
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
    factors: EngineFactors = field(default_factory=lambda: EngineFactors("", ""))
    needs_kernel: str = ""

    @property
    def memory_gb(self) -> float:
        return self.weights_gb + self.kv_gb + self.activations_gb


def predict(
    model: ModelFacts,
    fmt: WeightFormat,
    hw: Hardware,
    factors: EngineFactors,
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
    kv_seq = roofline.kv_bytes_at_context(model.config, context, kv_bytes)
    flops = roofline.decode_flops_per_token(model.config, context) or 0.0
    compute_dtype = model.dtype if fmt.compute == "dense" else fmt.compute
    peak, used_dtype = hw.peak_flops(compute_dtype)
    bandwidth = hw.bandwidth_gb_s * 1e9
    step, bound = step_seconds(weight_bytes + batch * kv_seq, batch, flops, bandwidth, peak, factors, model.layers, fmt.method)
    if bound == "memory":
        bound = "memory (KV cache)" if batch * kv_seq > weight_bytes else "memory (weights)"
    prompt_flops = roofline.decode_flops_per_token(model.config, prompt_tokens / 2) or 0.0
    prefill_flops = roofline.prefill_flops_per_seq(prompt_tokens, prompt_flops, model.head_params) if prompt_flops else 0.0
    ttft = ttft_seconds(weight_bytes, batch, prefill_flops, bandwidth, peak, factors, fmt.method)
    full_kv = batch * roofline.kv_bytes_at_context(model.config, prompt_tokens + new_tokens, kv_bytes)
    inter = int(model.config.get("intermediate_size") or 4 * model.hidden)
    # prefill's largest live set: one layer's hidden states + MLP activations, and the last position's fp32 logits
    activations = batch * prompt_tokens * (4 * model.hidden + 2 * inter) * dense_bits / 8 + batch * model.vocab * 4
    return Prediction(
        model=model.name,
        method=fmt.method,
        hardware=hw.name,
        engine=factors.engine,
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
        compute_bound_batch=roofline.compute_bound_batch(
            factors.compute_eff * factors.speed_of(fmt.method) * peak,
            factors.bandwidth_eff_at(2) * factors.stream_of(fmt.method) * bandwidth,
            flops, weight_bytes, kv_seq,
        ),
        compute_dtype=used_dtype,
        factors=factors,
        needs_kernel=fmt.needs_kernel,
    )
