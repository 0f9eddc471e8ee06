"""The transformers (torch) adapter of the speed harness: greedy decode of the very model object given.

A manual loop (prefill with the KV cache, then one forward per token) lets the harness timestamp every token
rather than divide a `generate()` wall time by the token count, so TTFT, TPOT and ITL percentiles are real.
The loop does only what generation needs (forward, argmax of the last logits), so it adds no overhead over
`generate()`; `benchmarks/decode_wall.py` checks that ratio.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil
import torch

from pipeline.models import shapes
from pipeline.runtime.speed.harness import Reads, StepAdapter
from pipeline.runtime.speed.plan import prompt_ids
from pipeline.runtime.speed.timing import ClockTimer, CudaEventTimer, Timeline, Timer, decode_timeline
from pipeline.variants.observe import ObservedReads, observe_compiled, observe_kernel, reads_of

if TYPE_CHECKING:
    from pipeline.config.recipe import SpeedSpec

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


def kv_dtype(model: Any) -> torch.dtype:
    """Activations (and so the KV cache) run in the embedding's dtype; quantized linears keep it."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    w = getattr(emb, "weight", None)
    if isinstance(w, torch.Tensor) and w.is_floating_point():
        return w.dtype
    return getattr(model, "dtype", torch.float32)


def estimate_point_bytes(config: Any, batch: int, prompt: int, new_tokens: int, dtype_bytes: int) -> float:
    """Memory a point needs beyond the weights: KV cache + prefill activations (coarse, for fit checks)."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    kv = batch * (prompt + new_tokens) * shapes.kv_bytes_per_token(cfg, dtype_bytes)
    _, heads, _, head_dim = shapes.attention_shape(cfg)
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
    return isinstance(exc, RuntimeError) and any(
        k in text for k in ("out of memory", "can't allocate memory", "not enough memory")
    )


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


def _keeps_logits(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def decode_once(
    model: Any, input_ids: torch.Tensor, new_tokens: int, *, timer: Timer | None = None, static: bool = False
) -> tuple[Timeline, torch.Tensor]:
    """One timed greedy decode exactly as the harness runs it; returns the timeline and the generated ids
    [batch, new_tokens] (to compare with `generate()` token for token)."""
    runner = _Runner(model, input_ids, input_ids.shape[1] + new_tokens, static, model, _keeps_logits(model))
    tokens: list[torch.Tensor] = []

    def keep(token: torch.Tensor) -> torch.Tensor:
        tokens.append(token)
        return token

    with torch.no_grad():  # not inference_mode: optimum-quanto qint4 weights fail under it
        marks, _ = decode_timeline(
            lambda: keep(runner.prefill()), lambda t: keep(runner.step(t)), new_tokens, timer or ClockTimer()
        )
    return Timeline(tuple(marks)), torch.cat(tokens, dim=1)


class TorchAdapter(StepAdapter):
    """An in-memory transformers model on `device`, decoded greedily over a dynamic or static KV cache.

    `observe`: the model holds compressed layers, so one more decode step is profiled at every batch size (once,
    not per repeat): what it ran decides that batch's bytes read (a library may pick its kernel by the number of
    rows; a compiled graph may have folded a dequantize into dense constants).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: SpeedSpec,
        device: str,
        weight_bytes: int,
        *,
        observe: bool,
        clock: Any = None,
        seed: int = 0,
    ) -> None:
        self.model, self.tokenizer, self.spec, self.device, self.seed = model, tokenizer, spec, device, seed
        self.is_cuda = device.startswith("cuda")
        self.timer = CudaEventTimer(device) if self.is_cuda else ClockTimer(clock)
        self.decode_call = _decode_call(model, spec.compile, device)
        self.keep_arg = _keeps_logits(model)
        self.static = spec.static_cache if spec.static_cache is not None else spec.compile
        self.kv_cache = "static" if self.static else "dynamic"
        self.warmup = max(spec.warmup, 2) if spec.compile else spec.warmup  # compile + graph capture happen in warmup
        cfg = model.config
        text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
        self.vocab = int(text.vocab_size)
        self.dtype_bytes = torch.empty((), dtype=kv_dtype(model)).element_size()
        self.weight_bytes = int(weight_bytes)
        self.kv_tok = shapes.kv_bytes_per_token(cfg, self.dtype_bytes)
        self.observe = observe
        self.observed: dict[int, ObservedReads] = {}  # batch size -> what its decode step ran, the bytes that reads
        self._runner: _Runner | None = None

    def estimate_point_bytes(self, batch: int, prompt: int) -> float:
        return estimate_point_bytes(self.model.config, batch, prompt, self.spec.new_tokens, self.dtype_bytes)

    def free_bytes(self) -> float:
        return free_bytes(self.device)

    def skip_reason(self, exc: BaseException) -> str | None:
        if not _is_oom(exc):
            return None
        if self.is_cuda:
            torch.cuda.empty_cache()
        return "out of memory"

    def start(self, batch: int, prompt: int) -> list[list[int]]:
        ids = prompt_ids(self.tokenizer, self.vocab, batch, prompt, self.seed)
        max_len = prompt + self.spec.new_tokens
        self._runner = _Runner(self.model, ids.to(self.device), max_len, self.static, self.decode_call, self.keep_arg)
        return ids.tolist()

    @property
    def runner(self) -> _Runner:
        assert self._runner is not None, "start() a point first"
        return self._runner

    def reset(self) -> None:
        self.runner.reset()

    def prefill(self) -> torch.Tensor:
        return self.runner.prefill()

    def step(self, token: torch.Tensor) -> torch.Tensor:
        return self.runner.step(token)

    def row0(self, token: torch.Tensor) -> int:
        return int(token[0, 0])

    def point_context(self) -> ExitStack:
        stack = ExitStack()
        stack.enter_context(torch.no_grad())  # not inference_mode: quanto qint4 fails under it
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        return stack

    def begin_timing(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def device_peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.is_cuda else None

    def reads(self, batch: int, prompt: int) -> Reads:
        if self.observe and batch not in self.observed:
            self.observed[batch] = self._observe_step()
        seen = self.observed.get(batch)
        new, cfg = self.spec.new_tokens, self.model.config
        # Decode step i (1..N-1) attends over prompt + i tokens: mean prompt + N/2. A static cache's
        # attention reads the whole preallocated buffer every step, so it is charged the full length.
        context = float(prompt + new) if self.static else prompt + new / 2.0
        obs = seen.observation if seen is not None else None
        return Reads(
            weight_bytes=seen.bytes_per_token if seen is not None else self.weight_bytes,
            kv_seq=shapes.kv_bytes_at_context(cfg, context, self.dtype_bytes),
            kv_tok=self.kv_tok,
            context=context,
            flops=shapes.decode_flops_per_token(cfg, context),
            dense_fallback=obs.dense_fallback if obs is not None else None,
            kernel_observed=obs.summary() if obs is not None else "",
            kernel_observed_ops=obs.ops_tag() if obs is not None else "",
        )

    def _observe_step(self) -> ObservedReads:
        """One more decode step at the point's batch size, profiled: what ran in the compressed layers and the
        weight bytes that reads."""
        self.reset()
        token = self.prefill()
        step = lambda: self.step(token)  # noqa: E731
        if self.spec.compile:
            obs = observe_compiled(step, self.model, compressed=True, dense_width=self.dtype_bytes)
        else:
            obs = observe_kernel(self.model, compressed=True, step=step)
        return reads_of(self.model, obs)

    def finish(self) -> None:
        self._runner = None  # the point's KV cache and prompt go before the next point allocates its own
