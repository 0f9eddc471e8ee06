"""Decode-speed results: one timed point, one server load level, and a runtime's whole speed record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline import metrics as M


@dataclass(frozen=True)
class SpeedPoint:
    """Decode figures at one batch size and prompt length."""

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    ttft_ms: float  # median over repeats
    ttft_p90_ms: float
    tpot_ms: float  # median inter-token time during decode
    tpot_p90_ms: float
    itl_p99_ms: float
    e2e_ms: float
    decode_tok_s: float  # batch * tokens per second during decode
    prefill_tok_s: float
    peak_mem_mb: float | None  # None: not known (a server not launched here)
    bytes_per_token: float  # weights + one sequence's KV at the measured context (what a batch-1 step reads)
    wall_tok_s: (
        float | None
    )  # memory-wall ceiling for this batch: bandwidth / bytes per step * batch (None: bytes unknown)
    mbu: float | None  # achieved bytes/s / measured bandwidth (None: a server whose weights shrinkgate did not count)
    cv: float  # coefficient of variation of decode tok/s over repeats
    samples: tuple[dict[str, Any], ...] = ()  # raw per-repeat timings (artifact)
    itl_p50_ms: float = 0.0  # inter-token latency percentiles, pooled over every decode step of every repeat
    itl_p90_ms: float = 0.0
    e2e_p90_ms: float = 0.0
    mfu: float | None = None  # achieved FLOP/s / measured matmul peak (None: shape not covered)
    bytes_per_step: float = 0.0  # what one decode step of the whole batch reads: weights + batch * KV
    kv_bytes_per_token: int = 0  # KV-cache bytes one token adds (GQA-aware)
    context_tokens: float = (
        0.0  # KV length the byte count assumes (mean decode context; full length for a static cache)
    )
    flops_per_token: float | None = None
    scenario: str = ""  # single-stream | server | offline | "" (batch sizes as listed)
    weight_bytes_read: float = (
        0.0  # weights one step of this batch reads (bytes_per_step less the batch's KV); 0: not known
    )
    # The kernel observed at this batch size (a library may pick its kernel by the number of rows); None / "": not observed
    dense_fallback: bool | None = None  # a compressed layer's matmul ran dense in this batch's decode step
    kernel_observed: str = ""  # the profiler's summary of this batch's decode step
    kernel_observed_ops: str = ""

    def metric_values(self) -> dict[str, float | None]:
        """Unsuffixed metric name -> value (None: not measured); `SpeedResult.metrics` adds the suffixes."""
        return {
            M.TTFT_MS: self.ttft_ms,
            M.TPOT_MS: self.tpot_ms,
            M.DECODE_TOK_S: self.decode_tok_s,
            M.PREFILL_TOK_S: self.prefill_tok_s,
            M.PEAK_MEM_MB: self.peak_mem_mb,
            M.WALL_TOK_S: self.wall_tok_s,
            M.MBU: self.mbu,
            M.TTFT_P90_MS: self.ttft_p90_ms,
            M.TPOT_P90_MS: self.tpot_p90_ms,
            M.ITL_P50_MS: self.itl_p50_ms,
            M.ITL_P90_MS: self.itl_p90_ms,
            M.ITL_P99_MS: self.itl_p99_ms,
            M.E2E_MS: self.e2e_ms,
            M.MFU: self.mfu,
            M.SPEED_CV: self.cv,
            M.BYTES_PER_TOKEN: self.bytes_per_token,
            M.BYTES_PER_STEP: self.bytes_per_step,
            M.WEIGHT_BYTES_READ_PER_STEP: self.weight_bytes_read or None,
        }


@dataclass(frozen=True)
class LoadLevel:
    """A server at one level of load, measured from the client (runtime openai); percentiles in ms keyed 50/90/99."""

    concurrency: int | None  # streams kept in flight, or
    request_rate: float | None  # requests started per second (Poisson)
    requests: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_tok_s: float
    decode_tok_s: float | None  # median per-stream (output tokens - 1) / (e2e - TTFT)
    decode_cv: float | None  # their coefficient of variation over the level's requests
    ttft_ms: dict[int, float]
    tpot_ms: dict[int, float]
    itl_ms: dict[int, float]
    e2e_ms: dict[int, float]
    goodput_req_s: float | None = None  # None: the recipe set no SLO
    slo_attainment: float | None = None
    tokens_from_usage: bool = False
    errors: tuple[str, ...] = ()
    mean_output_tokens: float = 0.0  # per completed request; under max_tokens: the server stopped early

    @property
    def suffix(self) -> str:
        return M.level_suffix(self.concurrency, self.request_rate)

    def metrics(self) -> dict[str, float]:
        values: dict[str, float | None] = {
            M.DECODE_TOK_S: self.decode_tok_s,
            M.OUTPUT_TOK_S: self.output_tok_s,
            M.REQUEST_THROUGHPUT: self.request_throughput,
            M.REQUESTS_FAILED: self.failed,
            M.MEAN_OUTPUT_TOKENS: self.mean_output_tokens,
            M.GOODPUT: self.goodput_req_s,
            M.SLO_ATTAINMENT: self.slo_attainment,
            M.TTFT_MS: self.ttft_ms.get(50),
            M.TTFT_P90_MS: self.ttft_ms.get(90),
            M.TTFT_P99_MS: self.ttft_ms.get(99),
            M.TPOT_MS: self.tpot_ms.get(50),
            M.TPOT_P90_MS: self.tpot_ms.get(90),
            M.TPOT_P99_MS: self.tpot_ms.get(99),
            M.ITL_P50_MS: self.itl_ms.get(50),
            M.ITL_P90_MS: self.itl_ms.get(90),
            M.ITL_P99_MS: self.itl_ms.get(99),
            M.E2E_MS: self.e2e_ms.get(50),
            M.E2E_P90_MS: self.e2e_ms.get(90),
            M.E2E_P99_MS: self.e2e_ms.get(99),
        }
        return {name + self.suffix: float(v) for name, v in values.items() if v is not None}


@dataclass(frozen=True)
class SpeedResult:
    points: tuple[SpeedPoint, ...]
    bandwidth_gb_s: float
    device: str
    threads: int
    timer: str  # what timed the tokens, e.g. "perf_counter (CPU)" or "cuda events"
    load_avg: float | None = None
    warnings: tuple[str, ...] = ()
    kernel: str = ""  # what ran the matmuls (from the method)
    # True: the compressed form ran as a dense matmul (at some timed batch, where observed per batch); never report
    # as compressed speed
    dense_fallback: bool = False
    compiled: bool = False  # decode step under torch.compile
    compile_mode: str = ""  # what compile meant on this device (CPU: inductor freezing + max-autotune)
    kv_cache: str = "dynamic"  # dynamic | static
    scenario: str = ""
    matmul_tflops: float | None = None  # measured matmul peak (MFU denominator)
    compute_bound_batch: int | None = None  # batch where decode would turn compute-bound on this host
    crossover_batch: int | None = None  # roofline: batch from which the variant no longer beats the unmodified model
    weight_bytes_per_token: int = 0
    dtype: str = ""
    model: str = ""
    method: str = ""
    skipped: tuple[dict[str, Any], ...] = ()  # {batch_size, prompt_tokens, reason}: did not fit (OOM) or failed
    kernel_observed: str = ""  # set when the timed steps were profiled themselves (per batch): overrides the build's
    kernel_observed_ops: str = ""
    load: tuple[LoadLevel, ...] = ()  # a server under load (runtime openai): one entry per concurrency / rate
    layers: int = (
        0  # decoder layers of what was timed (0: not known, e.g. a server); `predict` charges overhead per layer
    )
    head_params: int = 0  # output-head weights (hidden x vocab): prefill runs the head once per sequence, not per token

    def at_batch(self, batch_size: int, prompt_tokens: int | None = None) -> SpeedPoint | None:
        for p in self.points:
            if p.batch_size == batch_size and (prompt_tokens is None or p.prompt_tokens == prompt_tokens):
                return p
        return None

    @property
    def speed_kind(self) -> str:
        """How a report must name these numbers: dense-fallback speed is not compressed-kernel speed, and where
        only some batch sizes were observed falling back, which ones."""
        if not self.dense_fallback:
            return "kernel speed"
        fell = sorted({p.batch_size for p in self.points if p.dense_fallback})
        kept = sorted({p.batch_size for p in self.points if p.dense_fallback is False} - set(fell))
        if fell and kept:
            return f"dense-fallback speed at batch {', '.join(map(str, fell))}; kernel speed at batch {', '.join(map(str, kept))}"
        return "dense-fallback speed"

    def metrics(self) -> dict[str, float]:
        """Per-point metrics: `name` at batch 1, `name_bs<N>` otherwise (`metrics.batch_metric`); points at
        other prompt lengths than the first measured one get a `_p<len>` suffix. Plus host-level figures."""
        out: dict[str, float] = {}
        primary = self.points[0].prompt_tokens if self.points else None
        for p in self.points:
            suffix = "" if p.prompt_tokens == primary else f"_p{p.prompt_tokens}"
            for name, value in p.metric_values().items():
                if value is not None:
                    out[M.batch_metric(name, p.batch_size) + suffix] = float(value)
        if self.bandwidth_gb_s:  # 0: not measured (a server on another host)
            out[M.BANDWIDTH_GB_S] = self.bandwidth_gb_s
        out[M.SPEED_THREADS] = float(self.threads)
        if self.matmul_tflops is not None:
            out[M.HOST_MATMUL_TFLOPS] = self.matmul_tflops
        if self.load_avg is not None:
            out[M.HOST_LOAD_AVG] = self.load_avg
        if self.compute_bound_batch is not None:
            out[M.COMPUTE_BOUND_BATCH] = float(self.compute_bound_batch)
        if self.crossover_batch is not None:
            out[M.CROSSOVER_BATCH] = float(self.crossover_batch)
        if self.points:
            out[M.KV_BYTES_PER_TOKEN] = float(self.points[0].kv_bytes_per_token)
        if self.layers:
            out[M.MODEL_LAYERS] = float(self.layers)
        if self.head_params:
            out[M.HEAD_PARAMS] = float(self.head_params)
        for level in self.load:
            out.update(level.metrics())
        return out

    def tags(self) -> dict[str, str]:
        """How the numbers were taken: timer, compile, KV cache, device, kernel, skipped batches, warnings."""
        tags = {
            M.TAG_SPEED_TIMER: self.timer,
            M.TAG_SPEED_COMPILED: str(self.compiled).lower(),
            M.TAG_SPEED_KV_CACHE: self.kv_cache,
            M.TAG_SPEED_DEVICE: self.device,
            M.TAG_DENSE_FALLBACK: str(self.dense_fallback).lower(),
        }
        if self.kernel:
            tags[M.TAG_KERNEL] = self.kernel
        fell = [p for p in self.points if p.dense_fallback]
        if fell:
            tags[M.TAG_DENSE_FALLBACK_BATCHES] = ",".join(f"{p.batch_size}@{p.prompt_tokens}" for p in fell)
        if self.kernel_observed:
            tags[M.TAG_KERNEL_OBSERVED] = self.kernel_observed
        if self.kernel_observed_ops:
            tags[M.TAG_KERNEL_OBSERVED_OPS] = self.kernel_observed_ops
        if self.compile_mode:
            tags[M.TAG_SPEED_COMPILE_MODE] = self.compile_mode
        if self.scenario:
            tags[M.TAG_SPEED_SCENARIO] = self.scenario
        if self.skipped:
            tags[M.TAG_SPEED_SKIPPED] = ",".join(f"{s['batch_size']}@{s['prompt_tokens']}" for s in self.skipped)
        if self.warnings:
            tags[M.TAG_SPEED_WARNINGS] = " | ".join(self.warnings)
        return tags
