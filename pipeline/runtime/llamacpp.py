"""llama.cpp in-process: MMLU through lm-eval and timed greedy decode on the very GGUF file that was built.

Scoring is `pipeline.runtime.mmlu.score_mmlu` on `LlamaCppLM` (lm-eval's tokenization split, one context
evaluation shared by MMLU's four one-token choices). Decode runs B sequences (seq ids 0..B-1) through one
`llama_batch` per step: prefill all B prompts in one batch, then `new_tokens - 1` steps of B tokens, greedy,
timed token by token with the same timeline, statistics and roofline arithmetic as the transformers loop
(`pipeline.runtime.speed`). Bytes a step reads come from the GGUF's tensor census (every tensor but the
token_embd gather) plus each sequence's f16 KV at the mean decode context, so MBU is right per quant type.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from pipeline.runtime.base import Runtime

if TYPE_CHECKING:
    from pipeline.build.artifact import GGUFArtifact
    from pipeline.config.recipe import EvalSpec, SpeedSpec
    from pipeline.models.gguf_engine import GGUFShape, LlamaCppModel, TensorCensus
    from pipeline.results import AccuracyResult, SpeedPoint, SpeedResult

LLAMA_MAX_SEQ = 256  # vendor/llama.cpp/src/llama-cparams.h; the library's own answer wins when it loads
KV_CACHE_BYTES = 2  # llama.cpp's default KV cache type is f16
_MEMORY_HEADROOM = 0.85  # share of available memory a point may be estimated to need


def max_sequences() -> int:
    """Parallel sequences one llama.cpp context can hold (`llama_max_parallel_sequences`)."""
    from pipeline.models.gguf_engine import LlamaCppUnavailable, require_llama_cpp

    try:
        return int(require_llama_cpp().llama_max_parallel_sequences())
    except (LlamaCppUnavailable, AttributeError):
        return LLAMA_MAX_SEQ


def check_speed(spec: SpeedSpec) -> str | None:
    """One line naming what of `spec` llama.cpp cannot run (None: all of it)."""
    from pipeline.runtime.speed.measure import planned_batches

    if spec.compile:
        return "speed.compile: true is a torch.compile option; runtime llama.cpp runs its own kernels, so set compile: false"
    if spec.static_cache:
        return "speed.static_cache: true is a transformers option; runtime llama.cpp manages its own KV cache, so leave it null"
    top = max(planned_batches(spec))
    limit = max_sequences()
    if top > limit:
        field = "speed.max_batch" if spec.scenario == "offline" else "speed.batch_sizes"
        return f"{field}: batch {top} exceeds llama.cpp's {limit} parallel sequences (LLAMA_MAX_SEQ); use at most {limit}"
    return None


def kernel_label(census: TensorCensus) -> str:
    from pipeline.models.gguf_engine import cpu_features

    return f"llama.cpp {census.summary()}, {' '.join(cpu_features())}"


def roofline_config(shape: GGUFShape) -> dict[str, Any]:
    """The GGUF's shape in the transformers config names `pipeline.runtime.speed.roofline` reads."""
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
    """The engine's tokenizer in the shape `pipeline.runtime.speed.measure.prompt_ids` reads, so both
    runtimes time the same English prompt text rotated per row."""

    def __init__(self, engine: LlamaCppModel) -> None:
        self._engine = engine
        self.all_special_ids = [t for t in (engine.bos_id, engine.eos_id) if t >= 0]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._engine.tokenize(text, add_special_tokens)}


def _busy(load: float | None) -> bool:
    return load is not None and load > (os.cpu_count() or 1)


class LlamaCppRuntime(Runtime):
    name = "llama.cpp"
    artifact_format = "gguf"

    @classmethod
    def check(cls, speed: SpeedSpec) -> str | None:
        """llama-cpp-python missing (the install hint), or what of `speed` llama.cpp cannot run."""
        from pipeline.models.gguf_engine import LlamaCppUnavailable, require_llama_cpp

        try:
            require_llama_cpp()
        except LlamaCppUnavailable as exc:
            return str(exc)
        return check_speed(speed) if speed.enabled else None

    def unmeasured_reproducibility(self, device: str) -> str | None:  # noqa: ARG002 - llama.cpp runs on the CPU here
        return None  # whatever eval.device says: this build offloads nothing (tests/test_determinism.py measures it)

    def score_mmlu(self, artifact: GGUFArtifact, spec: EvalSpec, stop=None) -> AccuracyResult:  # type: ignore[override]
        from pipeline.runtime.llamacpp_lm import LlamaCppLM
        from pipeline.runtime.mmlu import score_mmlu

        lm = LlamaCppLM(_gguf_path(artifact))
        try:
            return score_mmlu(lm, spec, stop)
        finally:
            lm.close()

    def decode(self, artifact: GGUFArtifact, spec: SpeedSpec) -> SpeedResult:  # type: ignore[override]
        _gguf_path(artifact)
        return measure_gguf_decode(artifact, spec)


def _gguf_path(artifact: Any) -> Any:
    path = getattr(artifact, "gguf_path", None)
    if path is None:
        raise TypeError(f"runtime llama.cpp runs a GGUF file (GGUFArtifact); got {type(artifact).__name__}, built for another engine")
    return path


# ---------------------------------------------------------------------------------------------
# Decode timing
# ---------------------------------------------------------------------------------------------


def measure_gguf_decode(
    artifact: GGUFArtifact, spec: SpeedSpec, *, bandwidth_gb_s: float | None = None, matmul_flops: float | None = None, seed: int = 0
) -> SpeedResult:
    """Decode figures of the GGUF at every (prompt length, batch size) the spec asks for (see the module doc).

    `bandwidth_gb_s` / `matmul_flops` are injectable (tests); by default the host's measured, cached peaks.
    A point that does not fit (estimated, or llama.cpp refuses the context) is reported in `skipped`.
    """
    import psutil

    from pipeline.models.gguf_engine import LlamaCppError, LlamaCppModel, gguf_shape, tensor_census
    from pipeline.results import SpeedResult
    from pipeline.runtime.speed import roofline
    from pipeline.runtime.speed.host import bandwidth_probe, default_threads, host_matmul_flops, load_average
    from pipeline.runtime.speed.measure import CV_WARN, planned_batches, prompt_lengths

    problem = check_speed(spec)
    if problem:
        raise ValueError(problem)
    threads = spec.threads or default_threads()
    load_before = load_average()
    warns: list[str] = []
    if bandwidth_gb_s is None:
        probe = bandwidth_probe("cpu", threads)
        bandwidth_gb_s = float(probe["bandwidth_gb_s"])
        if _busy(probe.get("load_avg")):
            warns.append(
                f"the cached bandwidth probe ran at load avg {probe['load_avg']:.1f} on {os.cpu_count()} CPUs: the peak may be "
                "underestimated (MBU overstated); re-probe on an idle host with host_bandwidth(..., refresh=True)"
            )
    if matmul_flops is None:
        matmul_flops = host_matmul_flops("cpu", threads, "float32")
    if _busy(load_before):
        warns.append(
            f"host load avg {load_before:.1f} on {os.cpu_count()} CPUs: other processes compete for cores and memory bandwidth, "
            "so these timings are contended"
        )
    census = tensor_census(artifact.gguf_path)
    shape = gguf_shape(artifact.gguf_path)
    config = roofline_config(shape)
    setup = _Setup(census, shape, config, spec, threads, bandwidth_gb_s * 1e9, matmul_flops, seed)

    points: list[SpeedPoint] = []
    skipped: list[dict[str, Any]] = []
    # the context is sized per point (`_measure_point`); swa_full=False: sliding-window layers keep a
    # window-sized cache, as llama.cpp's own tools run them
    with LlamaCppModel.open(artifact.gguf_path, n_ctx=256, n_threads=threads, swa_full=False) as engine:
        for prompt in prompt_lengths(spec):
            batches = planned_batches(spec)
            if spec.scenario == "offline":
                batches = _offline_batches(setup, batches[0], prompt)
            for batch in batches:
                need = _estimate_point_bytes(setup, batch, prompt)
                free = float(psutil.virtual_memory().available)
                if need > _MEMORY_HEADROOM * free:
                    skipped.append({"batch_size": batch, "prompt_tokens": prompt, "reason": f"does not fit: needs ~{need / 1e9:.2f} GB, {free / 1e9:.2f} GB free"})
                    continue
                try:
                    point = _measure_point(setup, engine, batch, prompt)
                except (LlamaCppError, MemoryError) as exc:
                    first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
                    skipped.append({"batch_size": batch, "prompt_tokens": prompt, "reason": f"llama.cpp: {first_line}"})
                    continue  # offline: the next smaller batch is tried
                points.append(point)
                if point.cv > CV_WARN:
                    load = load_average()
                    warns.append(
                        f"batch {batch}, prompt {prompt}: decode tok/s varies {point.cv:.0%} over {spec.repeats} repeats "
                        f"(> {CV_WARN:.0%}); host load avg {'?' if load is None else f'{load:.1f}'}"
                    )
                if spec.scenario == "offline":
                    break
    for s in skipped:
        warns.append(f"batch {s['batch_size']}, prompt {s['prompt_tokens']} skipped: {s['reason']}")
    loads = [x for x in (load_before, load_average()) if x is not None]
    first = points[0] if points else None
    compute_bound = crossover = None
    if first is not None and first.flops_per_token:
        kv_seq = shape.kv_bytes_at_context(first.context_tokens, KV_CACHE_BYTES)
        compute_bound = roofline.compute_bound_batch(setup.peak_flops, setup.bw, first.flops_per_token, census.bytes_read_per_token, kv_seq)
        dense = roofline.linear_params_per_token(config)
        if dense is not None:
            # vs the unmodified model as the sweep's base runs it: dense float32 weights
            crossover = roofline.roofline_crossover_batch(setup.peak_flops, setup.bw, first.flops_per_token, census.bytes_read_per_token, dense * 4, kv_seq)
    return SpeedResult(
        points=tuple(points),
        bandwidth_gb_s=setup.bw / 1e9,
        device="cpu",
        threads=threads,
        timer="perf_counter_ns (host)",
        load_avg=max(loads) if loads else None,
        warnings=tuple(warns),
        kernel=kernel_label(census),
        dense_fallback=False,
        compiled=False,
        compile_mode="",
        kv_cache="llama.cpp f16",
        scenario=spec.scenario or "",
        matmul_tflops=setup.peak_flops / 1e12,
        compute_bound_batch=compute_bound,
        crossover_batch=crossover,
        weight_bytes_per_token=int(census.bytes_read_per_token),
        dtype=census.file_type,
        model=artifact.model_name,
        method=artifact.method_label,
        skipped=tuple(skipped),
        layers=shape.n_layer,
        head_params=roofline.head_params(config),
    )


class _Setup:
    def __init__(self, census: TensorCensus, shape: GGUFShape, config: dict[str, Any], spec: SpeedSpec, threads: int, bw: float, peak_flops: float, seed: int) -> None:
        self.census, self.shape, self.config, self.spec = census, shape, config, spec
        self.threads, self.bw, self.peak_flops, self.seed = threads, bw, peak_flops, seed
        self.kv_tok = shape.kv_bytes_per_token(KV_CACHE_BYTES)


def _estimate_point_bytes(setup: _Setup, batch: int, prompt: int) -> float:
    """KV cache + prefill logits/activations beyond the mapped weights (coarse, for fit checks)."""
    kv = batch * (prompt + setup.spec.new_tokens) * setup.kv_tok
    acts = min(batch * prompt, 512) * (4 * setup.shape.n_embd + 3 * setup.shape.n_ff) * 4
    logits = batch * setup.shape.n_vocab * 4
    return float(kv + acts + logits)


def _offline_batches(setup: _Setup, top: int, prompt: int) -> list[int]:
    import psutil

    free = float(psutil.virtual_memory().available)
    cands = sorted({2**k for k in range(int(math.log2(top)) + 1)} | {top}, reverse=True)
    fitting = [b for b in cands if _estimate_point_bytes(setup, b, prompt) <= _MEMORY_HEADROOM * free]
    return fitting or [1]


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _measure_point(setup: _Setup, engine: LlamaCppModel, batch: int, prompt: int) -> SpeedPoint:
    from pipeline.runtime.speed import roofline
    from pipeline.runtime.speed.measure import prompt_ids, timed_point
    from pipeline.runtime.speed.timing import ClockTimer, Timeline, decode_timeline

    spec = setup.spec
    new = spec.new_tokens
    rows = prompt_ids(_PromptTokenizer(engine), engine.n_vocab, batch, prompt, setup.seed).tolist()
    # one context per point: B sequences of prompt + new tokens, the whole prefill in one llama_batch
    engine.resize(batch * (prompt + new), n_batch=max(batch * prompt, batch, 512), n_seq_max=batch)
    seqs = list(range(batch))
    prefill_tokens = [t for row in rows for t in row]
    prefill_pos = [p for _ in seqs for p in range(prompt)]
    prefill_seq = [s for s in seqs for _ in range(prompt)]
    prefill_out = [p == prompt - 1 for _ in seqs for p in range(prompt)]
    step_no = [0]

    def prefill() -> list[int]:
        engine.decode(prefill_tokens, prefill_pos, prefill_seq, prefill_out)
        step_no[0] = 0
        return engine.greedy().tolist()

    def step(tokens: list[int]) -> list[int]:
        pos = prompt + step_no[0]
        step_no[0] += 1
        engine.decode(tokens, [pos] * batch, seqs, [True] * batch)
        return engine.greedy().tolist()

    for _ in range(spec.warmup):
        engine.clear()
        decode_timeline(prefill, step, new, ClockTimer())
    peak_rss = _rss_mb()
    timer = ClockTimer()
    timelines: list[Timeline] = []
    generated: list[int] = []
    for r in range(spec.repeats):
        engine.clear()
        if r == 0:
            seen: list[list[int]] = []

            def first_prefill() -> list[int]:
                seen.append(prefill())
                return seen[-1]

            def first_step(tokens: list[int]) -> list[int]:
                seen.append(step(tokens))
                return seen[-1]

            marks, _ = decode_timeline(first_prefill, first_step, new, timer)
            generated = [t[0] for t in seen]
        else:
            marks, _ = decode_timeline(prefill, step, new, timer)
        timelines.append(Timeline(tuple(marks)))
        peak_rss = max(peak_rss, _rss_mb())  # sampled outside the timed loop, at the run's end (its peak)
    engine.clear()
    context = prompt + new / 2.0  # decode step i attends over prompt + i tokens
    inputs = {
        "prompt_ids_row0_head": rows[0][:16],
        "distinct_prompt_ids": len({t for row in rows for t in row}),
        "generated_ids_row0": generated,
        "kv_cache": "llama.cpp f16",
    }
    return timed_point(
        timelines,
        spec,
        batch=batch,
        prompt=prompt,
        peak_mem_mb=peak_rss,
        weight_bytes=setup.census.bytes_read_per_token,
        kv_seq=setup.shape.kv_bytes_at_context(context, KV_CACHE_BYTES),
        kv_tok=setup.kv_tok,
        context=context,
        flops=roofline.decode_flops_per_token(setup.config, context),
        bandwidth=setup.bw,
        peak_flops=setup.peak_flops,
        inputs=inputs,
    )
