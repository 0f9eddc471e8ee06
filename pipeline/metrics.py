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
TTFT_P90_MS = "ttft_p90_ms"
TPOT_P90_MS = "tpot_p90_ms"
ITL_P50_MS = "itl_p50_ms"
ITL_P90_MS = "itl_p90_ms"
ITL_P99_MS = "itl_p99_ms"
E2E_MS = "e2e_ms"
MFU = "mfu"  # achieved FLOP/s / measured matmul peak
BYTES_PER_STEP = "bytes_per_step"  # weights + batch * KV read by one decode step
KV_BYTES_PER_TOKEN = "kv_bytes_per_token"
MODEL_LAYERS = "model_layers"  # decoder layers of the timed model (the prediction's per-layer overhead)
HEAD_PARAMS = "head_params"  # output-head weights of the timed model (the prediction's prefill FLOPs)
HOST_MATMUL_TFLOPS = "host_matmul_tflops"
HOST_LOAD_AVG = "host_load_avg"
SPEED_THREADS = "speed_threads"
COMPUTE_BOUND_BATCH = "compute_bound_batch"  # batch where decode turns compute-bound on this host
CROSSOVER_BATCH = (
    "crossover_batch"  # roofline, this host: smallest batch where the variant stops beating the unmodified model
)
WEIGHT_BYTES_READ_PER_STEP = (
    "weight_bytes_read_per_step"  # weights one decode step of this batch reads (as observed at it, if profiled)
)
# More per-batch speed metrics (same `_bs<N>` suffix rule); kept apart so PER_BATCH stays as the spine expects.
PER_BATCH_EXTRA = (
    TTFT_P90_MS,
    TPOT_P90_MS,
    ITL_P50_MS,
    ITL_P90_MS,
    ITL_P99_MS,
    E2E_MS,
    MFU,
    SPEED_CV,
    BYTES_PER_TOKEN,
    BYTES_PER_STEP,
    WEIGHT_BYTES_READ_PER_STEP,
)
# A server under load (runtime openai), per level: `_c<N>` (N streams in flight) or `_r<R>` (R requests/s).
TTFT_P99_MS = "ttft_p99_ms"
TPOT_P99_MS = "tpot_p99_ms"
E2E_P90_MS = "e2e_p90_ms"
E2E_P99_MS = "e2e_p99_ms"
REQUEST_THROUGHPUT = "request_throughput"  # completed requests / s
OUTPUT_TOK_S = "output_tok_s"  # output tokens / s over all streams
GOODPUT = "goodput_req_s"  # requests / s that met the SLO
SLO_ATTAINMENT = "slo_attainment"  # share of requests that met the SLO
REQUESTS_FAILED = "requests_failed"
MEAN_OUTPUT_TOKENS = "mean_output_tokens"  # per completed request (under max_tokens: the server stopped early)
TAG_SERVE_MODEL = "serve.model"
TAG_SERVE_BASE_URL = "serve.base_url"
TAG_SERVE_LAUNCHED = "serve.launched"
TAG_SERVE_MODELS = "serve.served_models"  # what GET /v1/models lists
TAG_SERVE_VERSION = "serve.version"  # what the server's version endpoint says, when it has one
ART_SERVER_LOG = "logs/server.log"


def level_suffix(concurrency: int | None, rate: float | None) -> str:
    """`_c4` for 4 streams in flight, `_r2.5` for 2.5 requests/s."""
    return f"_c{concurrency}" if concurrency is not None else f"_r{rate:g}"


# Speed tags: how the numbers were taken.
TAG_SPEED_TIMER = "speed.timer"
TAG_SPEED_COMPILED = "speed.compiled"
TAG_SPEED_COMPILE_MODE = "speed.compile_mode"
TAG_SPEED_KV_CACHE = "speed.kv_cache"
TAG_SPEED_SCENARIO = "speed.scenario"
TAG_SPEED_DEVICE = "speed.device"
TAG_SPEED_SKIPPED = "speed.skipped"  # batches that did not fit, e.g. "64:oom"
TAG_SPEED_WARNINGS = "speed.warnings"  # high variation, a loaded host, ... joined by " | "

WEIGHT_BYTES = "weight_bytes"
BITS_PER_WEIGHT = "bits_per_weight"
SPARSITY = "sparsity"
WEIGHT_REL_ERROR = "weight_rel_error"
KL_VS_BASE = "kl_vs_base"
TOP1_AGREE_VS_BASE = "top1_agree_vs_base"
SERIALIZED_BYTES = "serialized_bytes"
BUILD_SECONDS = "build_seconds"
BUILD_PEAK_MEM_MB = "build_peak_mem_mb"
RUNTIME_WEIGHT_BYTES = "runtime_weight_bytes"  # bytes the running model holds (unpacked copies included)
ZERO_FRACTION = "zero_fraction"  # every exact zero of the linear layers' dense view (grid zeros included); `sparsity` is the pruners' mask
WEIGHT_BYTES_READ = (
    "weight_bytes_read_per_token"  # weights one decode step reads as observed (dense where the kernel dequantizes)
)
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


# A run's figures predicted for `speed.target_hardware` (`pipeline.predict`): never measured, shown apart, and a
# gate may use them only when its policy says `use_predicted_axes: true`.
PREDICTED = "predicted_"
TAG_PREDICTED_HARDWARE = "predicted.hardware"
TAG_PREDICTED_BASIS = "predicted.basis"  # runtime factors and where the bits per weight came from
TAG_PREDICTED_ERROR = "predicted.error"  # why no prediction was logged (the run itself is unaffected)


def predicted_axis_batch(name: str) -> int | None:
    """Batch size of a predicted decode-speed axis (`predicted_decode_tok_s_bs8` -> 8), else None."""
    return speed_axis_batch(name.removeprefix(PREDICTED)) if name.startswith(PREDICTED) else None


def speed_axis_batch(name: str) -> int | None:
    """Batch size of a decode-speed axis name (`decode_tok_s` -> 1, `decode_tok_s_bs4` -> 4), else None."""
    if name == DECODE_TOK_S:
        return 1
    prefix = f"{DECODE_TOK_S}_bs"
    tail = name.removeprefix(prefix)
    return int(tail) if name.startswith(prefix) and tail.isdigit() and int(tail) >= 1 else None


# Tags
TAG_ROLE = "role"
TAG_MODEL = "model"
TAG_VARIANT = "variant"
TAG_RUNTIME = "runtime"  # the runtime a child was measured on (transformers | llama.cpp); verdicts compare within one
DEFAULT_RUNTIME = "transformers"  # what a run without the tag (older sweeps) was measured on
TAG_RUNTIME_CPU_FEATURES = "engine.cpu_features"  # ISA extensions the runtime's kernels use (stored name kept)
TAG_KERNEL = "kernel"
TAG_STATUS_ERROR = "error"
TAG_KIND = "shrinkgate.kind"  # "sweep" (parent) | "variant" (child)
TAG_CONTENT_KEY = "shrinkgate.content_key"
TAG_PLANNED_CHILDREN = "shrinkgate.planned_children"  # on the parent: how many children the sweep planned
TAG_VERSION = "shrinkgate.version"  # shrinkgate's own version, on every run
TAG_GIT_DIRTY = "shrinkgate.git_dirty"  # sha256 of `git diff HEAD` over the package, or "false"
TAG_FRONTIER_POLICY = "frontier.policy"  # on the parent: the dominance rule the frontier.* tags used
TAG_VERDICT = (
    "verdict"  # each child of a sweep: pass | fail | undecided (gated), base, reference - under the sweep's policy
)
TAG_VERDICT_REASONS = "verdict.reasons"  # each gated child: the rules that decided, one line
TAG_VERDICT_POLICY = "verdict.policy"  # on the parent: the policy the sweep's verdict used (file and key)
TAG_DESCRIPTION = "mlflow.note.content"  # a run's description, rendered as Markdown by the MLflow UI
TAG_SERIALIZABLE = "serializable"
TAG_DENSE_FALLBACK = "kernel_dense_fallback"
TAG_DENSE_FALLBACK_BATCHES = (
    "kernel_dense_fallback.batches"  # the timed points observed falling back, e.g. "8@128,16@128"
)
TAG_KERNEL_OBSERVED = "kernel.observed"  # what the profiler saw the compressed layers' matmuls run as
TAG_KERNEL_OBSERVED_OPS = "kernel.observed_ops"  # top matmul/dequantize ops under those layers, with input dtypes
TAG_KERNEL_CENSUS = "kernel.census"  # the compressed layers' module and weight tensor types
TAG_NM_PATTERN_OK = "nm_pattern_ok"
TAG_MMLU_ORDER_SEED = "mmlu.order_seed"  # eval.sample auto: the seed of the order the questions were scored in
TAG_MMLU_POPULATION = "mmlu.population"  # eval.sample auto: the questions the order was drawn from (the test's N)
TAG_MMLU_STOPPED = "mmlu.stopped"  # eval.sample auto: why scoring stopped (decided, or every question of max)
TAG_DETERMINISTIC = "deterministic"  # "true" | "false" | "unknown": the methods' claim and a measured scoring path (the gate's noise floor)
TAG_DETERMINISTIC_BASIS = "deterministic.basis"  # why: which method, runtime and device decided it
TAG_MMLU_DESIGN = "mmlu.design"  # how the questions were chosen: all | first-n | stratified | sequential
TAG_MMLU_STRATA = "mmlu.strata"  # stratified: JSON {subject: test rows}, the population of each stratum
TAG_MMLU_LOOKS = "mmlu.looks"  # sequential: questions scored by the end of each finished look, e.g. "100,200"
TAG_MMLU_RESUMED_FROM = "mmlu.resumed_from"  # sequential: the unfinished run whose finished looks this run took over
TAG_COPIED_FROM = (
    "shrinkgate.copied_from"  # a resumed sweep's child copied from this earlier FINISHED run (nothing re-run)
)
TAG_SERIALIZABLE_REASON = "serializable_reason"
# FidelityRecord.extra keys written by the build (log them as tags of the same name)
TAG_CALIBRATION_SOURCE = "calibration.source"
TAG_CALIBRATION_SHA256 = "calibration.sha256"
TAG_CALIBRATION_FILE_SHA256 = "calibration.file_sha256"
TAG_HELDOUT_SHA256 = "heldout.sha256"
TAG_STORED_SHA256 = "stored.sha256"  # sha256 over the stored tensors (GGUF: the file's tensor data); `export` checks it
TAG_DEVICE = "device"  # where a sweep built and measured its variants (`export` rebuilds there)
TAG_METHOD = "method"  # the variant's method steps joined by "+", e.g. "none" or "wanda+int8-weight-only"
TAG_REPORT_ERROR = "report_error"  # on the parent: why the sweep's own verdict could not be written
TAG_GATE_PREFIX = "gate."  # `shrinkgate gate` writes gate.<policy key>.* (gate_tag)
GATE_VERDICT, GATE_REASONS, GATE_SUMMARY, GATE_POLICY, GATE_POLICY_KEY, GATE_TIME, GATE_REGISTERED = (
    "verdict",
    "reasons",
    "summary",
    "policy",
    "policy_key",
    "time",
    "registered",
)
TAG_FRONTIER_PREFIX = "frontier."  # frontier.<axis metric>: each record's dominance verdict on that axis
TAG_PROVENANCE_PREFIX = "provenance."  # provenance.<field>: where the model came from (results.Provenance)
TAG_VERSION_PREFIX = "version."  # version.<package>: the library versions a run used
TAG_MMLU_DELTA_VS_BASE = "mmlu_delta_vs_base"
TAG_SERVE_LAUNCH = "serve.launch"  # the launch command, secrets redacted
TAG_SERVE_STARTED_S = "serve.started_s"  # seconds the launched server took to answer
TAG_RAY_ADDRESS, TAG_RAY_VERSION = "ray.address", "ray.version"
TAG_RAY_NODE_ID, TAG_RAY_NODE_IP, TAG_RAY_TASK_ID = "ray.node_id", "ray.node_ip", "ray.task_id"
# MLflow's own tags
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TAG_MLFLOW_PREFIX = "mlflow."
# Build notes (FidelityRecord.extra / a method's notes, logged as tags of the same name)
NOTE_CALIBRATION_TOKENS = "calibration.tokens"
NOTE_CALIBRATION_KIND = "calibration.kind"
NOTE_CALIBRATION_SAMPLES = "calibration.samples"
NOTE_CALIBRATION_EXCLUDED = "calibration.excluded_test_duplicates"
NOTE_CALIBRATION_SOURCES = "calibration.sources"
NOTE_WANDA_MODE = "wanda.mode"
NOTE_AWQ_WEIGHT_REL_ERROR = "awq.weight_rel_error"
NOTE_REFILLED_ZEROS = ".refilled_zeros"  # after the method name, e.g. gptq.refilled_zeros
NOTE_GGUF_FTYPE = "gguf.ftype"  # the llama.cpp quant type a GGUF method asked for
NOTE_GGUF_FILE_TYPE = "gguf.file_type"  # the file type the built GGUF's header says
NOTE_GGUF_TENSOR_TYPES = "gguf.tensor_types"
NOTE_GGUF_FALLBACK_TENSORS = "gguf.fallback_tensors"
NOTE_GGUF_PUBLISHED_FILE = "gguf.published_file"
NOTE_RUNTIME_SYSTEM_INFO = "engine.system_info"  # llama.cpp's system info (stored name kept for old runs)
NOTE_HELDOUT_TOKENS = "heldout.tokens"
# Params the verdict side reads (written from the recipe by tracking)
PARAM_EVAL_LIMIT_PER_SUBJECT = "eval.limit_per_subject"
PARAM_EVAL_SAMPLE = "eval.sample"
PARAM_EVAL_SAMPLE_QUESTIONS = "eval.sample.questions"
PARAM_SPEED_PROMPT_TOKENS = "speed.prompt_tokens"


def gate_tag(policy_key: str, field: str) -> str:
    """`shrinkgate gate`'s tag for one policy: gate.<policy key>.<field>."""
    return f"{TAG_GATE_PREFIX}{policy_key}.{field}"


# Artifacts
ART_LM_EVAL = "lm_eval_results.json"
ART_QUESTIONS = "mmlu_questions.csv"
ART_SPEED = "speed_samples.json"
ART_RECIPE = "recipe.yaml"
ART_FIDELITY = "fidelity.json"
ART_TRACEBACK = "error_traceback.txt"
ART_CHILD_LOG = "logs/child.log"  # library chatter of one child (warnings, logging, progress bars)
ART_MMLU_LOOKS = (
    "mmlu_looks.csv"  # sequential: the outcomes of every finished look, in the seeded order (resume reads it)
)
ART_MEMBERS = "sweep_members.json"  # on the parent: planned labels and label -> run id (reused runs included)
