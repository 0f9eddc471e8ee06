"""llama.cpp in-process: MMLU through lm-eval and timed greedy decode on the very GGUF file that was built.

Scoring is `pipeline.runtime.mmlu.score_mmlu` on `LlamaCppLM` (lm-eval's tokenization split, one context
evaluation shared by MMLU's four one-token choices). Decode runs B sequences (seq ids 0..B-1) through one
`llama_batch` per step: prefill all B prompts in one batch, then `new_tokens - 1` steps of B tokens, greedy,
timed token by token by the speed harness every runtime shares (`pipeline.runtime.speed.harness`, driving
`LlamaCppAdapter`). Bytes a step reads come from the GGUF's tensor census (every tensor but the
token_embd gather) plus each sequence's f16 KV at the mean decode context, so MBU is right per quant type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.runtime.base import RUNTIMES, InProcessRuntime
from pipeline.runtime.speed.harness import Reads, SpeedRun, StepAdapter
from pipeline.runtime.speed.plan import planned_batches, prompt_ids
from pipeline.runtime.speed.timing import ClockTimer

if TYPE_CHECKING:
    from pipeline.bindings.llamacpp import LlamaCppModel
    from pipeline.config.recipe import EvalSpec, SpeedSpec
    from pipeline.models.gguf_facts import GGUFShape, TensorCensus
    from pipeline.results import AccuracyResult, SpeedResult
    from pipeline.runtime.mmlu import StopRule
    from pipeline.variants.artifact import GGUFArtifact

LLAMA_MAX_SEQ = 256  # vendor/llama.cpp/src/llama-cparams.h; the library's own answer wins when it loads
KV_CACHE_BYTES = 2  # llama.cpp's default KV cache type is f16


def max_sequences() -> int:
    """Parallel sequences one llama.cpp context can hold (`llama_max_parallel_sequences`)."""
    from pipeline.bindings.llamacpp import LlamaCppUnavailable, require_llama_cpp

    try:
        return int(require_llama_cpp().llama_max_parallel_sequences())
    except (LlamaCppUnavailable, AttributeError):
        return LLAMA_MAX_SEQ


def check_speed(spec: SpeedSpec) -> str | None:
    """One line naming what of `spec` llama.cpp cannot run (None: all of it)."""
    if spec.compile:
        return "speed.compile: true is a torch.compile option; runtime llama.cpp runs its own kernels, so set compile: false"
    if spec.static_cache:
        return "speed.static_cache: true is a transformers option; runtime llama.cpp manages its own KV cache, so leave it null"
    top = max(planned_batches(spec))
    limit = max_sequences()
    if top > limit:
        field = "speed.max_batch" if spec.scenario == "offline" else "speed.batch_sizes"
        return (
            f"{field}: batch {top} exceeds llama.cpp's {limit} parallel sequences (LLAMA_MAX_SEQ); use at most {limit}"
        )
    return None


def kernel_label(census: TensorCensus) -> str:
    from pipeline.bindings.llamacpp import cpu_features

    return f"llama.cpp {census.summary()}, {' '.join(cpu_features())}"


def roofline_config(shape: GGUFShape) -> dict[str, Any]:
    """The GGUF's shape in the transformers config names `pipeline.models.shapes` reads."""
    cfg: dict[str, Any] = {
        "num_hidden_layers": shape.n_layer,
        "num_attention_heads": shape.n_head,
        "num_key_value_heads": shape.n_head_kv,
        "head_dim": shape.head_dim,
        "hidden_size": shape.n_embd,
        "intermediate_size": shape.n_ff,
        "vocab_size": shape.n_vocab,
    }
    if shape.sliding_window and shape.swa_layers:
        cfg["sliding_window"] = shape.sliding_window
        cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in shape.swa_layers]
    return cfg


class _PromptTokenizer:
    """The model's tokenizer in the shape `pipeline.runtime.speed.plan.prompt_ids` reads, so both
    runtimes time the same English prompt text rotated per row."""

    def __init__(self, llama: LlamaCppModel) -> None:
        self._llama = llama
        self.all_special_ids = [t for t in (llama.bos_id, llama.eos_id) if t >= 0]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._llama.tokenize(text, add_special_tokens)}


@RUNTIMES.register
class LlamaCppRuntime(InProcessRuntime["GGUFArtifact"]):
    name = "llama.cpp"
    artifact_format = "gguf"

    @classmethod
    def check(cls, speed: SpeedSpec) -> str | None:
        """llama-cpp-python missing (the install hint), or what of `speed` llama.cpp cannot run."""
        from pipeline.bindings.llamacpp import LlamaCppUnavailable, require_llama_cpp

        try:
            require_llama_cpp()
        except LlamaCppUnavailable as exc:
            return str(exc)
        return check_speed(speed) if speed.enabled else None

    def unmeasured_reproducibility(self, device: str) -> str | None:  # noqa: ARG002 - llama.cpp runs on the CPU here
        return None  # whatever eval.device says: this build offloads nothing (tests/test_determinism.py measures it)

    def score_mmlu(self, artifact: GGUFArtifact, spec: EvalSpec, stop: StopRule | None = None) -> AccuracyResult:
        from pipeline.runtime.llamacpp_lm import LlamaCppLM
        from pipeline.runtime.mmlu import score_mmlu

        lm = LlamaCppLM(_gguf_path(artifact))
        try:
            return score_mmlu(lm, spec, stop)
        finally:
            lm.close()

    def decode(self, artifact: GGUFArtifact, spec: SpeedSpec) -> SpeedResult:
        _gguf_path(artifact)
        return measure_gguf_decode(artifact, spec)


def _gguf_path(artifact: Any) -> Any:
    path = getattr(artifact, "gguf_path", None)
    if path is None:
        raise TypeError(
            f"runtime llama.cpp runs a GGUF file (GGUFArtifact); got {type(artifact).__name__}, built for another runtime"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Decode timing: the speed harness driving `LlamaCppAdapter`
# ---------------------------------------------------------------------------------------------


def measure_gguf_decode(
    artifact: GGUFArtifact,
    spec: SpeedSpec,
    *,
    bandwidth_gb_s: float | None = None,
    matmul_flops: float | None = None,
    seed: int = 0,
) -> SpeedResult:
    """Decode figures of the GGUF at every (prompt length, batch size) the spec asks for (see the module doc).

    `bandwidth_gb_s` / `matmul_flops` are injectable (tests); by default the host's measured, cached peaks.
    A point that does not fit (estimated, or llama.cpp refuses the context) is reported in `skipped`.
    """
    from pipeline.host import default_threads
    from pipeline.models import shapes
    from pipeline.models.gguf_facts import gguf_shape, tensor_census

    problem = check_speed(spec)
    if problem:
        raise ValueError(problem)
    threads = spec.threads or default_threads()
    speed_run = SpeedRun(spec)
    speed_run.probe_bandwidth("cpu", threads, bandwidth_gb_s)
    speed_run.probe_matmul("cpu", threads, "float32", matmul_flops)
    census = tensor_census(artifact.gguf_path)
    shape = gguf_shape(artifact.gguf_path)
    config = roofline_config(shape)
    with LlamaCppAdapter(artifact.gguf_path, census, shape, spec, threads, seed) as adapter:
        speed_run.run(adapter)
    dense = shapes.linear_params_per_token(config)
    compute_bound, crossover = speed_run.roofline_batches(
        lambda context: shape.kv_bytes_at_context(context, KV_CACHE_BYTES),
        dense * 4 if dense is not None else None,  # vs the unmodified model as the sweep's base runs it: dense float32
    )
    return speed_run.result(
        device="cpu",
        threads=threads,
        timer=adapter.timer.name,
        kernel=kernel_label(census),
        dense_fallback=False,
        compiled=False,
        compile_mode="",
        kv_cache=adapter.kv_cache,
        compute_bound_batch=compute_bound,
        crossover_batch=crossover,
        weight_bytes_per_token=int(census.bytes_read_per_token),
        dtype=census.file_type,
        model=artifact.model_name,
        method=artifact.method_label,
        layers=shape.n_layer,
        head_params=shapes.head_params(config),
    )


def step_reads(census: TensorCensus, shape: GGUFShape, context: float) -> Reads:
    """What one decode step of a GGUF reads per sequence at `context`: every tensor but the token_embd gather
    (the census) plus the sequence's f16 KV (the in-process adapter, and a server launched here on the GGUF)."""
    from pipeline.models import shapes

    return Reads(
        weight_bytes=census.bytes_read_per_token,
        kv_seq=shape.kv_bytes_at_context(context, KV_CACHE_BYTES),
        kv_tok=shape.kv_bytes_per_token(KV_CACHE_BYTES),
        context=context,
        flops=shapes.decode_flops_per_token(roofline_config(shape), context),
    )


class LlamaCppAdapter(StepAdapter):
    """B sequences (seq ids 0..B-1) in one llama.cpp context, sized per point: the B prompts prefilled in one
    `llama_batch`, then one batch of B tokens per decode step, greedy. Bytes a step reads: the tensor census
    plus each sequence's f16 KV at the mean decode context."""

    kv_cache = "llama.cpp f16"

    def __init__(
        self, path: Any, census: TensorCensus, shape: GGUFShape, spec: SpeedSpec, threads: int, seed: int = 0
    ) -> None:
        from pipeline.bindings.llamacpp import LlamaCppModel

        self.census, self.shape, self.spec, self.seed = census, shape, spec, seed
        self.timer = ClockTimer()
        self.warmup = spec.warmup
        # the context is sized per point (`start`); swa_full=False: sliding-window layers keep a
        # window-sized cache, as llama.cpp's own tools run them
        self.llama = LlamaCppModel.open(path, n_ctx=256, n_threads=threads, swa_full=False)
        self._prefill_rows: tuple[list[int], list[int], list[int], list[bool]] | None = None
        self._seqs: list[int] = []
        self._prompt = self._step_no = 0

    def close(self) -> None:
        self.llama.close()

    def estimate_point_bytes(self, batch: int, prompt: int) -> float:
        """KV cache + prefill logits/activations beyond the mapped weights (coarse, for fit checks)."""
        kv = batch * (prompt + self.spec.new_tokens) * self.shape.kv_bytes_per_token(KV_CACHE_BYTES)
        acts = min(batch * prompt, 512) * (4 * self.shape.n_embd + 3 * self.shape.n_ff) * 4
        logits = batch * self.shape.n_vocab * 4
        return float(kv + acts + logits)

    def skip_reason(self, exc: BaseException) -> str | None:
        from pipeline.bindings.llamacpp import LlamaCppError

        return "llama.cpp" if isinstance(exc, (LlamaCppError, MemoryError)) else None

    def start(self, batch: int, prompt: int) -> list[list[int]]:
        rows = prompt_ids(_PromptTokenizer(self.llama), self.llama.n_vocab, batch, prompt, self.seed).tolist()
        # one context per point: B sequences of prompt + new tokens, the whole prefill in one llama_batch
        self.llama.resize(
            batch * (prompt + self.spec.new_tokens), n_batch=max(batch * prompt, batch, 512), n_seq_max=batch
        )
        seqs = list(range(batch))
        self._prefill_rows = (
            [t for row in rows for t in row],
            [p for _ in seqs for p in range(prompt)],
            [s for s in seqs for _ in range(prompt)],
            [p == prompt - 1 for _ in seqs for p in range(prompt)],
        )
        self._seqs, self._prompt = seqs, prompt
        return rows

    def reset(self) -> None:
        self.llama.clear()

    def prefill(self) -> list[int]:
        assert self._prefill_rows is not None, "start() a point first"
        self.llama.decode(*self._prefill_rows)
        self._step_no = 0
        return self.llama.greedy().tolist()

    def step(self, token: list[int]) -> list[int]:
        pos = self._prompt + self._step_no
        self._step_no += 1
        n = len(self._seqs)
        self.llama.decode(token, [pos] * n, self._seqs, [True] * n)
        return self.llama.greedy().tolist()

    def row0(self, token: list[int]) -> int:
        return token[0]

    def reads(self, batch: int, prompt: int) -> Reads:  # noqa: ARG002 - every sequence reads the same
        return step_reads(self.census, self.shape, prompt + self.spec.new_tokens / 2.0)  # step i: prompt + i tokens

    def finish(self) -> None:
        if self._prefill_rows is not None:  # the context was made: leave its KV cache empty
            self.llama.clear()
            self._prefill_rows = None
