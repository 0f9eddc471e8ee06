"""Typed results that cross module boundaries. Frozen dataclasses; no torch, no MLflow.

Each result knows its own encoding as MLflow metrics and tags (names from `pipeline.metrics`), so the
tracking side logs what it is handed without knowing how any result was measured.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

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
        return {f"provenance.{k}": str(v) for k, v in self.__dict__.items() if v is not None}


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
    kernel_observed: str = ""  # the profiler's summary over one decode step (`pipeline.build.observe`)
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
        observed = {M.TAG_KERNEL_OBSERVED: self.kernel_observed, M.TAG_KERNEL_OBSERVED_OPS: self.kernel_observed_ops, M.TAG_KERNEL_CENSUS: self.kernel_census}
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


@dataclass(frozen=True)
class QuestionOutcome:
    subject: str
    index: int  # row index within the subject's test split
    answer: int  # 0..3
    predicted: int  # argmax of the 4 choice log-likelihoods
    correct: bool


_QUESTION_COLUMNS = ("subject", "index", "answer", "predicted", "correct")


def questions_csv(questions: Iterable[QuestionOutcome]) -> str:
    """Per-question outcomes as the `mmlu_questions.csv` artifact (read back by `parse_questions_csv`)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_QUESTION_COLUMNS)
    for q in questions:
        w.writerow([q.subject, q.index, q.answer, q.predicted, int(q.correct)])
    return buf.getvalue()


def parse_questions_csv(text: str) -> tuple[QuestionOutcome, ...]:
    rows = csv.DictReader(io.StringIO(text))
    return tuple(
        QuestionOutcome(r["subject"], int(r["index"]), int(r["answer"]), int(r["predicted"]), r["correct"] == "1")
        for r in rows
    )


def question_rank(seed: int, subject: str, index: int) -> str:
    """A question's place in the seeded random order: a hash, so the order is the same on every host and
    library version (a PRNG stream is not promised to be)."""
    return hashlib.sha256(f"{seed}:{subject}:{index}".encode()).hexdigest()


# How a run's MMLU questions were chosen (the `mmlu.design` tag); the verdict's bounds depend on it:
#   all         every test question of the selected subjects
#   first-n     the first N test rows of each subject (lm-eval's --limit): not a random sample of anything
#   stratified  a seeded random sample stratified by subject (weights: each subject's share of the test rows)
#   sequential  one seeded random order across subjects, scored in looks; each prefix is a simple random sample
DESIGNS = ("all", "first-n", "stratified", "sequential")


@dataclass(frozen=True)
class AccuracyResult:
    acc: float  # question-weighted mean over every scored question (lm-eval's group); with eval.sample the stratified estimate
    acc_stderr: float
    per_subject: dict[str, float]
    questions: tuple[QuestionOutcome, ...]
    num_fewshot: int
    limit_per_subject: int | None
    lm_eval_results: dict[str, Any]  # lm-eval's own results dict (JSON-serialisable), logged as an artifact
    seconds: float = 0.0
    order_seed: int | None = None  # eval.sample auto: the questions were scored in `question_rank(seed, ...)` order
    population: int | None = None  # eval.sample auto: the questions that order was drawn from
    stopped: str | None = None  # eval.sample auto: why scoring stopped where it did
    design: str = "all"  # one of DESIGNS: how the questions were chosen
    strata: dict[str, int] | None = None  # stratified: test rows per subject (each stratum's population)
    looks: tuple[int, ...] = ()  # sequential: questions scored by the end of each finished look

    @property
    def n_questions(self) -> int:
        return len(self.questions)

    def metrics(self) -> dict[str, float]:
        out = {M.MMLU_ACC: self.acc, M.MMLU_ACC_STDERR: self.acc_stderr, M.MMLU_N_QUESTIONS: float(self.n_questions)}
        out.update({M.subject_metric(s): v for s, v in self.per_subject.items()})
        return out

    def tags(self) -> dict[str, str]:
        tags = {M.TAG_MMLU_DESIGN: self.design}
        if self.strata is not None:
            tags[M.TAG_MMLU_STRATA] = json.dumps(self.strata, separators=(",", ":"))
        if self.order_seed is not None:
            tags.update(
                {
                    M.TAG_MMLU_ORDER_SEED: str(self.order_seed),
                    M.TAG_MMLU_POPULATION: str(self.population),
                    M.TAG_MMLU_STOPPED: (self.stopped or "")[:5000],
                    M.TAG_MMLU_LOOKS: ",".join(map(str, self.looks)),
                }
            )
        return tags


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
    peak_mem_mb: float
    bytes_per_token: float  # weights + one sequence's KV at the measured context (what a batch-1 step reads)
    wall_tok_s: float | None  # memory-wall ceiling for this batch: bandwidth / bytes per step * batch (None: bytes unknown)
    mbu: float | None  # achieved bytes/s / measured bandwidth (None: a server whose weights shrinkgate did not count)
    cv: float  # coefficient of variation of decode tok/s over repeats
    samples: tuple[dict[str, Any], ...] = ()  # raw per-repeat timings (artifact)
    itl_p50_ms: float = 0.0  # inter-token latency percentiles, pooled over every decode step of every repeat
    itl_p90_ms: float = 0.0
    e2e_p90_ms: float = 0.0
    mfu: float | None = None  # achieved FLOP/s / measured matmul peak (None: shape not covered)
    bytes_per_step: float = 0.0  # what one decode step of the whole batch reads: weights + batch * KV
    kv_bytes_per_token: int = 0  # KV-cache bytes one token adds (GQA-aware)
    context_tokens: float = 0.0  # KV length the byte count assumes (mean decode context; full length for a static cache)
    flops_per_token: float | None = None
    scenario: str = ""  # single-stream | server | offline | "" (batch sizes as listed)
    weight_bytes_read: float = 0.0  # weights one step of this batch reads (bytes_per_step less the batch's KV); 0: not known
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
    layers: int = 0  # decoder layers of what was timed (0: not known, e.g. a server); `predict` charges overhead per layer
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
