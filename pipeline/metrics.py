"""Every MLflow metric, param-prefix and tag name, in one place (writers and readers share them)."""

from __future__ import annotations

MMLU_ACC = "mmlu_acc"
MMLU_ACC_STDERR = "mmlu_acc_stderr"
MMLU_N_QUESTIONS = "mmlu_n_questions"
MMLU_SUBJECT_PREFIX = "mmlu_acc_"  # + subject

TTFT_MS = "ttft_ms"
TPOT_MS = "tpot_ms"
DECODE_TOK_S = "decode_tok_s"
PREFILL_TOK_S = "prefill_tok_s"
PEAK_MEM_MB = "peak_mem_mb"
WALL_TOK_S = "wall_tok_s"  # memory-wall ceiling
MBU = "mbu"
SPEED_CV = "decode_cv"
BYTES_PER_TOKEN = "bytes_per_token"

WEIGHT_BYTES = "weight_bytes"
BITS_PER_WEIGHT = "bits_per_weight"
SPARSITY = "sparsity"
WEIGHT_REL_ERROR = "weight_rel_error"
KL_VS_BASE = "kl_vs_base"
TOP1_AGREE_VS_BASE = "top1_agree_vs_base"
SERIALIZED_BYTES = "serialized_bytes"
BUILD_SECONDS = "build_seconds"
BUILD_PEAK_MEM_MB = "build_peak_mem_mb"
BANDWIDTH_GB_S = "host_bandwidth_gb_s"

# Speed metrics logged per batch size: batch 1 unsuffixed, others suffixed `_bs<N>`.
PER_BATCH = (TTFT_MS, TPOT_MS, DECODE_TOK_S, PREFILL_TOK_S, PEAK_MEM_MB, WALL_TOK_S, MBU)

# The spine's required metric set for a successful child run (tests assert exactly these exist).
REQUIRED = (
    MMLU_ACC,
    MMLU_ACC_STDERR,
    TTFT_MS,
    TPOT_MS,
    DECODE_TOK_S,
    PREFILL_TOK_S,
    PEAK_MEM_MB,
    WEIGHT_BYTES,
    BITS_PER_WEIGHT,
    SPARSITY,
    WALL_TOK_S,
    MBU,
)


def subject_metric(subject: str) -> str:
    return f"{MMLU_SUBJECT_PREFIX}{subject}"


def batch_metric(name: str, batch_size: int) -> str:
    return name if batch_size == 1 else f"{name}_bs{batch_size}"


# Tags
TAG_ROLE = "role"
TAG_MODEL = "model"
TAG_VARIANT = "variant"
TAG_KERNEL = "kernel"
TAG_STATUS_ERROR = "error"
TAG_KIND = "shrinkgate.kind"  # "sweep" (parent) | "variant" (child)
TAG_CONTENT_KEY = "shrinkgate.content_key"
TAG_SERIALIZABLE = "serializable"
TAG_DENSE_FALLBACK = "kernel_dense_fallback"

# Artifacts
ART_LM_EVAL = "lm_eval_results.json"
ART_QUESTIONS = "mmlu_questions.csv"
ART_SPEED = "speed_samples.json"
ART_RECIPE = "recipe.yaml"
ART_FIDELITY = "fidelity.json"
ART_TRACEBACK = "error_traceback.txt"
