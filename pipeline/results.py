"""Typed results that cross module boundaries. Frozen dataclasses; no torch, no MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    bytes_read_per_token: int  # weights a decode step reads (input-embedding gather excluded unless tied)
    sparsity: float  # share of exact zeros over the linear layers' logical weights
    kernel: str  # what really runs the matmul
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


@dataclass(frozen=True)
class QuestionOutcome:
    subject: str
    index: int  # row index within the subject's test split
    answer: int  # 0..3
    predicted: int  # argmax of the 4 choice log-likelihoods
    correct: bool


@dataclass(frozen=True)
class AccuracyResult:
    acc: float  # question-weighted mean over every scored question (lm-eval's group aggregation)
    acc_stderr: float
    per_subject: dict[str, float]
    questions: tuple[QuestionOutcome, ...]
    num_fewshot: int
    limit_per_subject: int | None
    lm_eval_results: dict[str, Any]  # lm-eval's own results dict (JSON-serialisable), logged as an artifact
    seconds: float = 0.0

    @property
    def n_questions(self) -> int:
        return len(self.questions)


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
    wall_tok_s: float  # memory-wall ceiling for this batch: bandwidth / bytes per step * batch
    mbu: float  # achieved bytes/s / measured bandwidth
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
    dense_fallback: bool = False  # True: the compressed form ran as a dense matmul; never report as compressed speed
    compiled: bool = False  # decode step under torch.compile
    compile_mode: str = ""  # what compile meant on this device (CPU: inductor freezing + max-autotune)
    kv_cache: str = "dynamic"  # dynamic | static
    scenario: str = ""
    matmul_tflops: float | None = None  # measured matmul peak (MFU denominator)
    compute_bound_batch: int | None = None  # batch where decode would turn compute-bound on this host
    weight_bytes_per_token: int = 0
    dtype: str = ""
    model: str = ""
    method: str = ""
    skipped: tuple[dict[str, Any], ...] = ()  # {batch_size, prompt_tokens, reason}: did not fit (OOM) or failed

    def at_batch(self, batch_size: int, prompt_tokens: int | None = None) -> SpeedPoint | None:
        for p in self.points:
            if p.batch_size == batch_size and (prompt_tokens is None or p.prompt_tokens == prompt_tokens):
                return p
        return None

    @property
    def speed_kind(self) -> str:
        """How a report must name these numbers: dense-fallback speed is not compressed-kernel speed."""
        return "dense-fallback speed" if self.dense_fallback else "kernel speed"


@dataclass(frozen=True)
class Measurements:
    fidelity: FidelityRecord
    accuracy: AccuracyResult | None
    speed: SpeedResult | None
