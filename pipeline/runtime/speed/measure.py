"""`measure_decode`: time greedy decode of the very model object given, token by token, per batch size.

A manual loop (prefill with the KV cache, then one forward per token) timestamps every token rather
than dividing a `generate()` wall time by the token count, so TTFT, TPOT and ITL percentiles are real.
The loop does only what generation needs (forward, argmax of the last logits), so it adds no
overhead over `generate()`; `benchmarks/decode_wall.py` checks that ratio.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings as _warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import psutil
import torch

from pipeline.build.observe import ObservedReads, holds_compressed_layers, observe_compiled, observe_kernel, reads_of
from pipeline.config.recipe import SpeedSpec
from pipeline.results import SpeedPoint, SpeedResult
from pipeline.runtime.speed import roofline
from pipeline.runtime.speed.host import bandwidth_probe, default_threads, host_matmul_flops, load_average
from pipeline.runtime.speed.timing import (
    Clock,
    ClockTimer,
    CudaEventTimer,
    Timeline,
    Timer,
    decode_timeline,
    percentile,
    summarize,
)

CV_WARN = 0.10
SERVER_BATCHES = (1, 4, 16, 64)
_MEMORY_HEADROOM = 0.85  # share of free memory a point may be estimated to need

# English text tokenized into real, varied prompt ids (content does not change decode speed, but
# all-zero or constant prompts can hit degenerate kernels and caching paths).
_PROMPT_TEXT = (
    "The committee reviewed the annual budget and found that spending on public libraries had grown "
    "faster than population. Several members argued that digital lending reduced the need for new "
    "buildings, while others pointed to reading rooms crowded every afternoon with students. In the end "
    "they agreed to fund two small branches near the river, to extend opening hours on weekends, and to "
    "publish a report comparing costs per visitor across the region. Meanwhile, engineers measured the "
    "bridge for fatigue cracks; chemists titrated samples of groundwater; a historian traced letters "
    "written in 1848 between merchants in Lisbon, Hamburg and Boston about cotton, sugar and credit. "
    "Question: which of the following best explains why prices rose? A. demand B. supply C. taxes D. war"
)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _vocab_size(model: Any) -> int:
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.vocab_size)


def prompt_ids(tokenizer: Any, vocab_size: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """[batch, length] real token ids: the tokenizer's encoding of English text, each row a different
    rotation; random non-special ids from the vocab when there is no tokenizer (random-weight shapes)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if tokenizer is not None else set()
    pool: list[int] = []
    if tokenizer is not None:
        ids = tokenizer(_PROMPT_TEXT, add_special_tokens=False)["input_ids"]
        pool = [int(i) for i in ids if 0 <= int(i) < vocab_size and int(i) not in special]
    gen = torch.Generator().manual_seed(seed)
    if len(set(pool)) < 8:
        low = min(max(max(special, default=2) + 1, 3), vocab_size - 1)  # above pad/bos/eos-style ids
        pool = torch.randint(low, vocab_size, (max(512, length),), generator=gen).tolist()
    rows = []
    for r in range(batch):
        start = (r * 7919) % len(pool)  # rows differ: batched sequences are not copies of one another
        idx = [(start + i) % len(pool) for i in range(length)]
        rows.append([pool[i] for i in idx])
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Plan: which (batch, prompt length) points a spec asks for
# ---------------------------------------------------------------------------------------------


def planned_batches(spec: SpeedSpec) -> list[int]:
    """Batch sizes the scenario asks for (offline's largest-that-fits search happens at run time)."""
    if spec.scenario == "single-stream":
        return [1]
    if spec.scenario == "server":
        return list(spec.batch_sizes) if "batch_sizes" in spec.model_fields_set else list(SERVER_BATCHES)
    if spec.scenario == "offline":
        top = max(spec.max_batch, max(spec.batch_sizes))
        return [top]
    return list(spec.batch_sizes)


def prompt_lengths(spec: SpeedSpec) -> list[int]:
    return list(spec.prompt_lengths) if spec.prompt_lengths else [spec.prompt_tokens]


def _kv_dtype(model: Any) -> torch.dtype:
    """Activations (and so the KV cache) run in the embedding's dtype; quantized linears keep it."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    w = getattr(emb, "weight", None)
    if isinstance(w, torch.Tensor) and w.is_floating_point():
        return w.dtype
    return getattr(model, "dtype", torch.float32)


def estimate_point_bytes(config: Any, batch: int, prompt: int, new_tokens: int, dtype_bytes: int) -> float:
    """Memory a point needs beyond the weights: KV cache + prefill activations (coarse, for fit checks)."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    kv = batch * (prompt + new_tokens) * roofline.kv_bytes_per_token(cfg, dtype_bytes)
    _, heads, _, head_dim = roofline.attention_shape(cfg)
    hidden = int(getattr(cfg, "hidden_size", heads * head_dim))
    inter = int(getattr(cfg, "intermediate_size", 4 * hidden) or 4 * hidden)
    acts = batch * prompt * (4 * hidden + 3 * inter) * dtype_bytes
    scores = batch * heads * prompt * prompt * dtype_bytes  # eager attention materializes these; sdpa may not
    logits = batch * int(cfg.vocab_size) * 4 * 2
    return float(kv + acts + scores + logits)


def free_bytes(device: str) -> float:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return float(free)
    return float(psutil.virtual_memory().available)


def _is_oom(exc: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator's refusal (when the kernel lets the process live to see it)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(k in text for k in ("out of memory", "can't allocate memory", "not enough memory"))


# ---------------------------------------------------------------------------------------------
# One point
# ---------------------------------------------------------------------------------------------


@dataclass
class _Runner:
    """Prefill/step callables over one KV cache, re-used across repeats."""

    model: Any
    input_ids: torch.Tensor
    max_len: int
    static: bool
    decode_call: Callable[..., Any]
    keep_arg: bool

    def __post_init__(self) -> None:
        self.cache = self._new_cache()

    def _new_cache(self) -> Any:
        from transformers import DynamicCache, StaticCache

        if self.static:
            return StaticCache(config=self.model.config, max_cache_len=self.max_len)
        return DynamicCache(config=self.model.config)

    def reset(self) -> None:
        # A static cache keeps its buffers (CUDA graphs captured against their addresses stay valid).
        if self.static:
            self.cache.reset()
        else:
            self.cache = self._new_cache()

    def prefill(self) -> torch.Tensor:
        kw = {"logits_to_keep": 1} if self.keep_arg else {}  # only the last position's logits, like generate()
        out = self.model(input_ids=self.input_ids, past_key_values=self.cache, use_cache=True, **kw)
        return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        out = self.decode_call(input_ids=token, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _time_point(
    runner: _Runner, new_tokens: int, warmup: int, repeats: int, timer: Timer, device: str
) -> tuple[list[Timeline], float, list[int]]:
    """Warm up, then `repeats` timed runs; returns timelines, peak memory (MB), row-0 generated ids."""
    is_cuda = device.startswith("cuda")
    for _ in range(warmup):
        runner.reset()
        decode_timeline(runner.prefill, runner.step, new_tokens, ClockTimer())
    if is_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    peak_rss = _rss_mb()
    timelines: list[Timeline] = []
    generated: list[int] = []
    for r in range(repeats):
        runner.reset()
        if is_cuda:
            torch.cuda.synchronize(device)
        if r == 0:
            tokens: list[torch.Tensor] = []
            prefill = lambda: _keep(runner.prefill(), tokens)  # noqa: E731
            step = lambda t: _keep(runner.step(t), tokens)  # noqa: E731
        else:
            prefill, step = runner.prefill, runner.step
        marks, _ = decode_timeline(prefill, step, new_tokens, timer)
        timelines.append(Timeline(tuple(marks)))
        # RSS is sampled between tokens' worth of work, never inside the timed loop: the KV cache
        # only grows during decode, so the end of a run is its peak after prefill.
        peak_rss = max(peak_rss, _rss_mb())
        if r == 0:
            generated = [int(t[0, 0]) for t in tokens]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if is_cuda else peak_rss
    return timelines, peak, generated


def _keep(token: torch.Tensor, sink: list[torch.Tensor]) -> torch.Tensor:
    sink.append(token)
    return token


def decode_once(
    model: Any, input_ids: torch.Tensor, new_tokens: int, *, timer: Timer | None = None, static: bool = False
) -> tuple[Timeline, torch.Tensor]:
    """One timed greedy decode exactly as `measure_decode` runs it; returns the timeline and the
    generated ids [batch, new_tokens] (to compare with `generate()` token for token)."""
    keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
    runner = _Runner(model, input_ids, input_ids.shape[1] + new_tokens, static, model, keep_arg)
    tokens: list[torch.Tensor] = []
    with torch.no_grad():  # not inference_mode: optimum-quanto qint4 weights fail under it
        marks, _ = decode_timeline(
            lambda: _keep(runner.prefill(), tokens), lambda t: _keep(runner.step(t), tokens), new_tokens, timer or ClockTimer()
        )
    return Timeline(tuple(marks)), torch.cat(tokens, dim=1)


# ---------------------------------------------------------------------------------------------
# measure_decode
# ---------------------------------------------------------------------------------------------


# On CPU, MKL's fp32 GEMV at batch 1 read DRAM at ~11 GB/s on the 2-core dev host whatever the thread count
# (a read-only sum: 30 GB/s). Inductor with frozen weights and max-autotune picks, per shape, its own
# vectorised C++ micro-GEMM or MKL: SmolLM2-135M fp32 decode went from 57.6 to 23.7 ms per token (decode_wall).
# Frozen weights are constants, so inductor may fold a quantized layer's dequantize into fp32 constants:
# torchao int8 weight-only compiled ran at the fp32 model's speed (41.3 vs 42.1 tok/s), i.e. dense.
CPU_COMPILE_OPTIONS = {
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    # autotuning would otherwise print every candidate of every GEMM shape to stderr
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}


def compile_mode(compile_: bool, device: str) -> str:
    """What `compile` means on this device (logged beside the speed figures)."""
    if not compile_:
        return ""
    if device.startswith("cuda"):
        return "transformers CompileConfig: static cache + torch.compile (CUDA graphs where possible)"
    return (
        "torch.compile inductor, frozen weights, max-autotune GEMM (CPP micro-GEMM or MKL per shape); "
        "a quantized layer's dequantize may be folded into fp32 constants"
    )


def _decode_call(model: Any, compile_: bool, device: str) -> Callable[..., Any]:
    """The decode-step callable: the model itself, or its compiled call (prefill always runs eager)."""
    if not compile_:
        return model
    # Every (batch, cache length) is its own static graph; past the default limit of 8 dynamo would
    # silently fall back to eager and a sweep's later points would be timed uncompiled.
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    if device.startswith("cuda") and hasattr(model, "get_compiled_call"):
        from transformers import CompileConfig

        # transformers' own decode compile: mode="reduce-overhead" (CUDA graphs) over a static cache
        return model.get_compiled_call(CompileConfig(fullgraph=False, dynamic=False))
    if device == "cpu":
        import torch._inductor.config as inductor_config

        compiled = torch.compile(model, dynamic=False)

        def call(*args: Any, **kwargs: Any) -> Any:
            # torch.compile(options=...) did not reach the freezing pass (measured: no autotuning, 52 ms/token
            # vs 26 ms); patching the config around every call does, and also covers recompiles for new shapes.
            with inductor_config.patch(CPU_COMPILE_OPTIONS):
                return compiled(*args, **kwargs)

        return call
    return torch.compile(model, dynamic=False)


@dataclass(frozen=True)
class _Setup:
    """Everything a point's measurement shares within one `measure_decode` call."""

    model: Any
    tokenizer: Any
    spec: SpeedSpec
    device: str
    timer: Timer
    decode_call: Callable[..., Any]
    keep_arg: bool  # forward takes `logits_to_keep`
    static: bool
    warmup: int
    vocab: int
    dtype_bytes: int
    weight_bytes: int
    kv_tok: int
    bw: float  # bytes/s
    peak_flops: float
    seed: int
    observe: bool = False  # the variant is compressed: profile one timed step per batch size
    # batch size -> what its decode step ran and the weight bytes that reads (a library may pick its kernel by
    # the number of rows; compiled: a frozen graph may have folded a dequantize into dense constants)
    observed: dict[int, ObservedReads] = field(default_factory=dict)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def measure_decode(
    model: Any,
    tokenizer: Any,
    spec: SpeedSpec,
    *,
    weight_bytes_per_token: int,
    device: str,
    kernel: str = "",
    dense_fallback: bool = False,
    model_name: str = "",
    method: str = "",
    clock: Clock | None = None,
    bandwidth_gb_s: float | None = None,
    matmul_flops: float | None = None,
    seed: int = 0,
) -> SpeedResult:
    """Decode figures for `model` at every (prompt length, batch size) the spec asks for.

    `weight_bytes_per_token` is what a decode step reads of the weights as observed: stored bytes (packed
    values + scales), dense bytes for layers that run a dense matmul on dequantized weights
    (`pipeline.build.observe.observe_reads`). `kernel`/`dense_fallback` come from that observation so a dense
    fallback is never reported as compressed-kernel speed. A compressed variant's (`dense_fallback` or
    compressed layers) timed step is profiled once more at every batch size, eager or compiled: that batch's
    observation replaces both for its points (a kernel may be picked by the number of rows; freezing may fold
    a dequantize into dense constants), and the result falls back if any batch did. `clock`,
    `bandwidth_gb_s` and `matmul_flops` are injectable (tests); by default the host's measured,
    cached peaks are used. A point that does not fit in memory is reported in `skipped`, not raised.
    """
    threads = spec.threads or default_threads()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # fixed for the whole measurement and reported
    try:
        model.eval()
        load_before = load_average()
        warns: list[str] = []
        observe = dense_fallback or holds_compressed_layers(model)
        setup = _setup(model, tokenizer, spec, device, threads, weight_bytes_per_token, observe, clock, bandwidth_gb_s, matmul_flops, seed, warns)
        _warn_if_busy(load_before, warns)
        points, skipped = _run_points(setup, warns)
        observed = [p for p in points if p.dense_fallback is not None]
        if observed:  # the timed steps themselves were profiled: they decide fallback and bytes read
            dense_fallback = any(p.dense_fallback for p in observed)
            weight_bytes_per_token = int(points[0].weight_bytes_read)
        for s in skipped:
            warns.append(f"batch {s['batch_size']}, prompt {s['prompt_tokens']} skipped: {s['reason']}")
        fell = sorted({p.batch_size for p in observed if p.dense_fallback})
        if fell and len(fell) < len({p.batch_size for p in observed}):
            warns.append(
                f"kernel falls back to dense at batch {', '.join(map(str, fell))} ({kernel or 'dense matmul'}): those points are "
                "dense speeds, not compressed-kernel speeds"
            )
        elif dense_fallback:
            warns.append(f"kernel falls back to dense ({kernel or 'dense matmul'}): these are dense speeds, not compressed-kernel speeds")
        loads = [x for x in (load_before, load_average()) if x is not None]
        return SpeedResult(
            points=tuple(points),
            bandwidth_gb_s=setup.bw / 1e9,
            device=device,
            threads=threads,
            timer=setup.timer.name,
            load_avg=max(loads) if loads else None,
            warnings=tuple(warns),
            kernel=kernel,
            dense_fallback=dense_fallback,
            compiled=spec.compile,
            compile_mode=compile_mode(spec.compile, device),
            kv_cache="static" if setup.static else "dynamic",
            scenario=spec.scenario or "",
            matmul_tflops=setup.peak_flops / 1e12,
            compute_bound_batch=_compute_bound_batch(setup, points),
            crossover_batch=_crossover_batch(setup, points),
            weight_bytes_per_token=int(weight_bytes_per_token),
            dtype=str(_kv_dtype(model)).removeprefix("torch."),
            model=model_name,
            method=method,
            skipped=tuple(skipped),
            kernel_observed=_by_batch(observed, "kernel_observed"),
            kernel_observed_ops=_by_batch(observed, "kernel_observed_ops"),
            layers=roofline.layer_count(model.config),
            head_params=roofline.head_params(model.config),
        )
    finally:
        torch.set_num_threads(prev_threads)


def _by_batch(points: list[SpeedPoint], attr: str) -> str:
    """One text when every observed batch size saw the same, else each text after the batch sizes that saw it."""
    groups: dict[str, list[int]] = {}
    for p in points:
        sizes = groups.setdefault(getattr(p, attr), [])
        if p.batch_size not in sizes:
            sizes.append(p.batch_size)
    if len(groups) <= 1:
        return next(iter(groups), "")
    return " | ".join(f"batch {', '.join(map(str, sizes))}: {text}" for text, sizes in groups.items())


def _setup(
    model: Any, tokenizer: Any, spec: SpeedSpec, device: str, threads: int, weight_bytes: int, observe: bool, clock: Clock | None,
    bandwidth_gb_s: float | None, matmul_flops: float | None, seed: int, warns: list[str],
) -> _Setup:
    kv_dtype = _kv_dtype(model)
    dtype_bytes = torch.empty((), dtype=kv_dtype).element_size()
    if bandwidth_gb_s is None:
        probe = bandwidth_probe(device, threads)
        bandwidth_gb_s = float(probe["bandwidth_gb_s"])
        if _busy(probe.get("load_avg")):
            warns.append(
                f"the cached bandwidth probe ran at load avg {probe['load_avg']:.1f} on {os.cpu_count()} CPUs: the peak may be "
                "underestimated (MBU overstated); re-probe on an idle host with host_bandwidth(..., refresh=True)"
            )
    peak_flops = matmul_flops if matmul_flops is not None else host_matmul_flops(device, threads, kv_dtype)
    is_cuda = device.startswith("cuda")
    return _Setup(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        device=device,
        timer=CudaEventTimer(device) if is_cuda else ClockTimer(clock),
        decode_call=_decode_call(model, spec.compile, device),
        keep_arg="logits_to_keep" in inspect.signature(model.forward).parameters,
        static=spec.static_cache if spec.static_cache is not None else spec.compile,
        warmup=max(spec.warmup, 2) if spec.compile else spec.warmup,  # compile + graph capture happen in warmup
        vocab=_vocab_size(model),
        dtype_bytes=dtype_bytes,
        weight_bytes=int(weight_bytes),
        kv_tok=roofline.kv_bytes_per_token(model.config, dtype_bytes),
        bw=bandwidth_gb_s * 1e9,
        peak_flops=peak_flops,
        seed=seed,
        observe=observe,
    )


def _busy(load: float | None) -> bool:
    """More runnable processes than CPUs: timings (and probes) taken now are contended."""
    return load is not None and load > (os.cpu_count() or 1)


def _warn_if_busy(load: float | None, warns: list[str]) -> None:
    if _busy(load):
        warns.append(
            f"host load avg {load:.1f} on {os.cpu_count()} CPUs: other processes compete for cores and memory bandwidth, "
            "so these timings are contended"
        )


def _run_points(setup: _Setup, warns: list[str]) -> tuple[list[SpeedPoint], list[dict[str, Any]]]:
    spec = setup.spec
    points: list[SpeedPoint] = []
    skipped: list[dict[str, Any]] = []
    for prompt in prompt_lengths(spec):
        batches = planned_batches(spec)
        if spec.scenario == "offline":
            batches = _offline_batches(setup, batches[0], prompt)
        for batch in batches:
            need = estimate_point_bytes(setup.model.config, batch, prompt, spec.new_tokens, setup.dtype_bytes)
            free = free_bytes(setup.device)
            if need > _MEMORY_HEADROOM * free:
                reason = f"does not fit: needs ~{need / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
                skipped.append({"batch_size": batch, "prompt_tokens": prompt, "reason": reason})
                continue
            try:
                point = _measure_point(setup, batch, prompt)
            except Exception as exc:  # noqa: BLE001 - one batch running out of memory must not lose the others
                if not _is_oom(exc):
                    raise
                first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
                skipped.append({"batch_size": batch, "prompt_tokens": prompt, "reason": f"out of memory: {first_line}"})
                if setup.is_cuda:
                    torch.cuda.empty_cache()
                continue  # offline: the next smaller batch is tried
            points.append(point)
            if point.cv > CV_WARN:
                load = load_average()
                warns.append(
                    f"batch {batch}, prompt {prompt}: decode tok/s varies {point.cv:.0%} over {spec.repeats} repeats "
                    f"(> {CV_WARN:.0%}); host load avg {'?' if load is None else f'{load:.1f}'}"
                )
            if spec.scenario == "offline":
                break  # the largest batch that fits is the offline point
    return points, skipped


def _compute_bound_batch(setup: _Setup, points: list[SpeedPoint]) -> int | None:
    """Where decode would turn compute-bound on this host, at the first point's context."""
    first = points[0] if points else None
    if first is None or not first.flops_per_token:
        return None
    kv_seq = roofline.kv_bytes_at_context(setup.model.config, first.context_tokens, setup.dtype_bytes)
    return roofline.compute_bound_batch(setup.peak_flops, setup.bw, first.flops_per_token, first.weight_bytes_read, kv_seq)


def _crossover_batch(setup: _Setup, points: list[SpeedPoint]) -> int | None:
    """Roofline crossover vs the unmodified model (dense weights in this dtype), at the first point's context."""
    first = points[0] if points else None
    dense_params = roofline.linear_params_per_token(setup.model.config)
    if first is None or not first.flops_per_token or dense_params is None:
        return None
    kv_seq = roofline.kv_bytes_at_context(setup.model.config, first.context_tokens, setup.dtype_bytes)
    return roofline.roofline_crossover_batch(
        setup.peak_flops, setup.bw, first.flops_per_token, first.weight_bytes_read, dense_params * setup.dtype_bytes, kv_seq
    )


def _offline_batches(setup: _Setup, top: int, prompt: int) -> list[int]:
    """Offline scenario candidates, largest first: powers of two <= `top` that are estimated to fit."""
    free = free_bytes(setup.device)
    cands = sorted({2**k for k in range(int(math.log2(top)) + 1)} | {top}, reverse=True)
    cfg, new, nbytes = setup.model.config, setup.spec.new_tokens, setup.dtype_bytes
    fitting = [b for b in cands if estimate_point_bytes(cfg, b, prompt, new, nbytes) <= _MEMORY_HEADROOM * free]
    return fitting or [1]


def _measure_point(setup: _Setup, batch: int, prompt: int) -> SpeedPoint:
    spec = setup.spec
    ids = prompt_ids(setup.tokenizer, setup.vocab, batch, prompt, setup.seed).to(setup.device)
    runner = _Runner(setup.model, ids, prompt + spec.new_tokens, setup.static, setup.decode_call, setup.keep_arg)
    with torch.no_grad(), _warnings.catch_warnings():  # not inference_mode: quanto qint4 fails under it
        _warnings.simplefilter("ignore")
        timelines, peak_mb, generated = _time_point(runner, spec.new_tokens, setup.warmup, spec.repeats, setup.timer, setup.device)
        if setup.observe and batch not in setup.observed:
            setup.observed[batch] = _observe_step(setup, runner)
    del runner
    seen = setup.observed.get(batch)
    # Decode step i (1..N-1) attends over prompt + i tokens: mean prompt + N/2. A static cache's
    # attention reads the whole preallocated buffer every step, so it is charged the full length.
    context = float(prompt + spec.new_tokens) if setup.static else prompt + spec.new_tokens / 2.0
    inputs = {
        "prompt_ids_row0_head": ids[0, :16].tolist(),
        "distinct_prompt_ids": int(ids.unique().numel()),
        "generated_ids_row0": generated,
        "kv_cache": "static" if setup.static else "dynamic",
    }
    point = timed_point(
        timelines,
        spec,
        batch=batch,
        prompt=prompt,
        peak_mem_mb=peak_mb,
        weight_bytes=seen.bytes_per_token if seen is not None else setup.weight_bytes,
        kv_seq=roofline.kv_bytes_at_context(setup.model.config, context, setup.dtype_bytes),
        kv_tok=setup.kv_tok,
        context=context,
        flops=roofline.decode_flops_per_token(setup.model.config, context),
        bandwidth=setup.bw,
        peak_flops=setup.peak_flops,
        inputs=inputs,
    )
    if seen is None:
        return point
    obs = seen.observation
    return replace(point, dense_fallback=obs.dense_fallback, kernel_observed=obs.summary(), kernel_observed_ops=obs.ops_tag())


def _observe_step(setup: _Setup, runner: _Runner) -> ObservedReads:
    """One more decode step at the runner's batch size, profiled (once per batch size, not per repeat): what ran
    in the compressed layers and the weight bytes that reads."""
    runner.reset()
    token = runner.prefill()
    step = lambda: runner.step(token)  # noqa: E731
    if setup.spec.compile:
        obs = observe_compiled(step, setup.model, compressed=True, dense_width=setup.dtype_bytes)
    else:
        obs = observe_kernel(setup.model, compressed=True, step=step)
    return reads_of(setup.model, obs)


def timed_point(
    timelines: list[Timeline],
    spec: SpeedSpec,
    *,
    batch: int,
    prompt: int,
    peak_mem_mb: float,
    weight_bytes: float,
    kv_seq: float,
    kv_tok: int,
    context: float,
    flops: float | None,
    bandwidth: float,
    peak_flops: float,
    inputs: dict[str, Any],
) -> SpeedPoint:
    """A point from its timed repeats and what one step reads (`weight_bytes` + `kv_seq` per sequence at
    `context`), with the roofline figures against `bandwidth` (bytes/s) and `peak_flops`; every engine's timer
    ends here, so the statistics and the arithmetic are one."""
    stats = summarize(timelines, batch, prompt)
    step_bytes = roofline.bytes_per_step(weight_bytes, kv_seq, batch)
    return SpeedPoint(
        batch_size=batch,
        prompt_tokens=prompt,
        new_tokens=spec.new_tokens,
        ttft_ms=stats.ttft_ms,
        ttft_p90_ms=stats.ttft_p90_ms,
        tpot_ms=stats.tpot_ms,
        tpot_p90_ms=stats.tpot_p90_ms,
        itl_p99_ms=stats.itl_p99_ms,
        e2e_ms=stats.e2e_ms,
        decode_tok_s=stats.decode_tok_s,
        prefill_tok_s=stats.prefill_tok_s,
        peak_mem_mb=peak_mem_mb,
        bytes_per_token=float(weight_bytes + kv_seq),
        wall_tok_s=roofline.ceiling_tok_s(bandwidth, step_bytes, batch),
        mbu=roofline.mbu(stats.decode_tok_s, step_bytes, batch, bandwidth),
        cv=stats.cv,
        samples=_samples(timelines, stats.per_repeat_decode_tok_s) + ({"inputs": inputs},),
        itl_p50_ms=stats.itl_p50_ms,
        itl_p90_ms=stats.itl_p90_ms,
        e2e_p90_ms=percentile([t.e2e_ns * 1e-6 for t in timelines], 90),
        mfu=roofline.mfu(stats.decode_tok_s, flops, peak_flops) if flops else None,
        bytes_per_step=step_bytes,
        kv_bytes_per_token=kv_tok,
        context_tokens=context,
        flops_per_token=flops,
        scenario=spec.scenario or "",
        weight_bytes_read=float(weight_bytes),
    )


def _samples(timelines: list[Timeline], rates: tuple[float, ...]) -> tuple[dict[str, Any], ...]:
    """Raw per-repeat timings for the speed artifact (every token's mark, in ms since prefill began)."""
    return tuple(
        {
            "repeat": i,
            "marks_ms": [m * 1e-6 for m in t.marks_ns],
            "ttft_ms": t.ttft_ns * 1e-6,
            "tpot_ms": t.tpot_ns * 1e-6,
            "e2e_ms": t.e2e_ns * 1e-6,
            "decode_tok_s": rates[i],
        }
        for i, t in enumerate(timelines)
    )
