"""The one decode-speed harness: every runtime's speed points are planned, fitted, timed and built here.

A runtime supplies a small adapter (`DecodeAdapter`, or `StepAdapter` for a runtime that decodes in this
process); `SpeedRun` does the rest, the same way for all of them: the (batch size, prompt length) points the spec
asks for; whether each is estimated to fit in free memory (with `MEMORY_HEADROOM`); the offline scenario's
step-down to the largest batch that fits; warmup and timed repeats marked token by token; a point that runs out
of memory skipped with its reason, never raised; busy-host, busy-probe and variance warnings; and the one
construction of `SpeedPoint`, with its roofline figures (bytes per step, memory-wall ceiling, MBU, MFU).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import psutil

from pipeline import metrics as M
from pipeline.host import bandwidth_probe, host_matmul_flops, load_average
from pipeline.predict import roofline
from pipeline.results import SpeedPoint, SpeedResult
from pipeline.runtime.speed.plan import planned_batches, prompt_lengths
from pipeline.runtime.speed.timing import ClockTimer, Timeline, Timer, TimingStats, decode_timeline, summarize

if TYPE_CHECKING:
    from pipeline.config.recipe import SpeedSpec

CV_WARN = 0.10  # decode tok/s varying more than this over a point's repeats is warned about
MEMORY_HEADROOM = 0.85  # share of free memory a point may be estimated to need


@dataclass(frozen=True)
class Reads:
    """What one decode step of a point reads and computes: per sequence, at `context` tokens of KV cache."""

    weight_bytes: float | None  # weights one step reads (None: not counted, e.g. a server on another host)
    kv_seq: float = 0.0  # one sequence's KV-cache bytes at `context`
    kv_tok: int = 0  # KV-cache bytes one token adds
    context: float = 0.0
    flops: float | None = None  # per token at `context` (None: the shape is not covered)
    # what this batch size's decode step was observed to run (None / "": not profiled)
    dense_fallback: bool | None = None
    kernel_observed: str = ""
    kernel_observed_ops: str = ""


@dataclass(frozen=True)
class Measured:
    """One point as an adapter measured it; `SpeedRun` turns it into the `SpeedPoint`."""

    stats: TimingStats
    reads: Reads
    peak_mem_mb: float | None  # None: not known (a server not launched here)
    runs: str  # what the statistics are over, as warnings name it: "3 repeats", "4 requests"
    samples: tuple[dict[str, Any], ...] = ()  # raw per-repeat timings and the point's inputs (artifact)


class DecodeAdapter(ABC):
    """One runtime's decode as `SpeedRun` drives it; a context manager that `close`s on exit.

    - `measure(spec, batch, prompt)`: time one point; its statistics and what one step reads (`Measured`);
    - `estimate_point_bytes(batch, prompt)`: memory the point needs beyond the loaded weights (0: none known),
      checked against `free_bytes()` with `MEMORY_HEADROOM` before the point runs;
    - `skip_reason(exc)`: when the point raised, why it did not fit (e.g. "out of memory"; the harness adds the
      error's first line), freeing what it can; None: a real error, re-raised;
    - `close()`: release what the adapter holds (a context, a server's connection).
    """

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def measure(self, spec: SpeedSpec, batch: int, prompt: int) -> Measured: ...

    def estimate_point_bytes(self, batch: int, prompt: int) -> float:  # noqa: ARG002 - nothing known by default
        return 0.0

    def free_bytes(self) -> float:
        return float(psutil.virtual_memory().available)

    def skip_reason(self, exc: BaseException) -> str | None:  # noqa: ARG002 - no error means "did not fit" by default
        return None

    def close(self) -> None:
        return None


class StepAdapter(DecodeAdapter):
    """A runtime that decodes in this process, timed token by token by the harness (`measure`).

    Per point: `start(batch, prompt)` loads the prompts (returning every row's prompt ids) and sizes the KV cache;
    for every warmup and timed repeat, `reset()` empties the KV cache, `prefill()` returns the first token of
    every row and each of `new_tokens - 1` calls `step(token)` runs one decode step (the next token of every row;
    tokens are the adapter's own type, `row0(token)` is row 0's id); then `reads(batch, prompt)` says what one
    step read (it may profile a step) and `finish()` frees the point, also when any of these raised. All but
    `start` run inside `point_context()`; `begin_timing()` runs after warmup, `synchronize()` before each timed
    repeat, and `device_peak_mb()` is the device's peak memory over the timed repeats (None: the host's peak RSS).
    """

    timer: Timer  # marks the timed repeats' tokens (warmup runs on the host clock)
    warmup: int
    kv_cache: str  # what holds the KV cache, recorded in each point's inputs: dynamic, static, llama.cpp f16

    @abstractmethod
    def start(self, batch: int, prompt: int) -> list[list[int]]: ...

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def prefill(self) -> Any: ...

    @abstractmethod
    def step(self, token: Any) -> Any: ...

    @abstractmethod
    def row0(self, token: Any) -> int: ...

    @abstractmethod
    def reads(self, batch: int, prompt: int) -> Reads: ...

    def finish(self) -> None:
        return None

    def point_context(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def begin_timing(self) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def device_peak_mb(self) -> float | None:
        return None

    def measure(self, spec: SpeedSpec, batch: int, prompt: int) -> Measured:
        new = spec.new_tokens
        timelines: list[Timeline] = []
        generated: list[int] = []
        try:
            rows = self.start(batch, prompt)
            with self.point_context():
                for _ in range(self.warmup):
                    self.reset()
                    decode_timeline(self.prefill, self.step, new, ClockTimer())
                self.begin_timing()
                peak_rss = _rss_mb()
                for r in range(spec.repeats):
                    self.reset()
                    self.synchronize()
                    tokens: list[Any] = []
                    prefill, step = self.prefill, self.step
                    if r == 0:  # row 0's tokens are recorded, from the first timed repeat
                        prefill, step = _recorded(prefill, tokens), _recorded(step, tokens)
                    marks, _ = decode_timeline(prefill, step, new, self.timer)
                    timelines.append(Timeline(tuple(marks)))
                    # RSS is sampled between runs, never inside the timed loop: the KV cache only grows during
                    # decode, so the end of a run is its peak after prefill.
                    peak_rss = max(peak_rss, _rss_mb())
                    if r == 0:
                        generated = [self.row0(t) for t in tokens]
                device_peak = self.device_peak_mb()
                reads = self.reads(batch, prompt)
        finally:
            self.finish()
        stats = summarize(timelines, batch, prompt)
        inputs = {
            "prompt_ids_row0_head": rows[0][:16],
            "distinct_prompt_ids": len({t for row in rows for t in row}),
            "generated_ids_row0": generated,
            "kv_cache": self.kv_cache,
        }
        samples = _samples(timelines, stats.per_repeat_decode_tok_s) + ({"inputs": inputs},)
        peak = device_peak if device_peak is not None else peak_rss
        return Measured(stats, reads, peak, f"{spec.repeats} repeats", samples)


def _recorded(produce: Callable[..., Any], sink: list[Any]) -> Callable[..., Any]:
    """`produce`, also appending every token it returns to `sink`."""

    def call(*args: Any) -> Any:
        token = produce(*args)
        sink.append(token)
        return token

    return call


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _samples(timelines: list[Timeline], rates: tuple[float, ...]) -> tuple[dict[str, Any], ...]:
    """Raw per-repeat timings for the speed artifact (every token's mark, in ms since prefill began)."""
    return tuple(
        {
            "repeat": i,
            "marks_ms": [m * 1e-6 for m in t.marks_ns],
            M.TTFT_MS: t.ttft_ns * 1e-6,
            M.TPOT_MS: t.tpot_ns * 1e-6,
            M.E2E_MS: t.e2e_ns * 1e-6,
            M.DECODE_TOK_S: rates[i],
        }
        for i, t in enumerate(timelines)
    )


def busy(load: float | None) -> bool:
    """More runnable processes than CPUs: timings (and probes) taken now are contended."""
    return load is not None and load > (os.cpu_count() or 1)


class SpeedRun:
    """One speed measurement of one runtime: the host's load when it began, its measured peaks, the points, the
    points skipped and why, and the warnings; `result(...)` is the `SpeedResult`."""

    def __init__(self, spec: SpeedSpec) -> None:
        self.spec = spec
        self.load_before = load_average()
        self.bandwidth = 0.0  # bytes/s the points' MBU and ceilings are against (0: not measured)
        self.peak_flops: float | None = None  # FLOP/s, the MFU denominator (None: not measured)
        self.points: list[SpeedPoint] = []
        self.skipped: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    def probe_bandwidth(self, device: str, threads: int, given_gb_s: float | None = None) -> float:
        """The peak bandwidth (bytes/s): `given_gb_s`, else the host's cached probe (warned if it ran busy)."""
        if given_gb_s is None:
            probe = bandwidth_probe(device, threads)
            given_gb_s = float(probe["bandwidth_gb_s"])
            if busy(probe.get("load_avg")):
                self.warnings.append(
                    f"the cached bandwidth probe ran at load avg {probe['load_avg']:.1f} on {os.cpu_count()} CPUs: the peak "
                    "may be underestimated (MBU overstated); re-probe on an idle host with host_bandwidth(..., refresh=True)"
                )
        self.bandwidth = given_gb_s * 1e9
        return self.bandwidth

    def probe_matmul(self, device: str, threads: int, dtype: Any, given_flops: float | None = None) -> float:
        """The matmul peak (FLOP/s): `given_flops`, else the host's cached probe in `dtype`."""
        self.peak_flops = given_flops if given_flops is not None else host_matmul_flops(device, threads, dtype)
        return self.peak_flops

    def run(
        self,
        adapter: DecodeAdapter,
        *,
        batches: list[int] | None = None,
        prompts: list[int] | None = None,
        scenario: str | None = None,
    ) -> None:
        """Measure every (prompt length, batch size) point: the spec's, or those given (a server's one level)."""
        spec = self.spec
        scenario = (spec.scenario or "") if scenario is None else scenario
        if busy(self.load_before):
            self.warnings.append(
                f"host load avg {self.load_before:.1f} on {os.cpu_count()} CPUs: other processes compete for cores and "
                "memory bandwidth, so these timings are contended"
            )
        offline = scenario == "offline"
        for prompt in prompts or prompt_lengths(spec):
            planned = batches or planned_batches(spec)
            for batch in _offline_batches(adapter, planned[0], prompt) if offline else planned:
                need, free = adapter.estimate_point_bytes(batch, prompt), adapter.free_bytes()
                if need > MEMORY_HEADROOM * free:
                    self._skip(batch, prompt, f"does not fit: needs ~{need / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
                    continue
                try:
                    measured = adapter.measure(spec, batch, prompt)
                except Exception as exc:  # noqa: BLE001 - one batch running out of memory must not lose the others
                    why = adapter.skip_reason(exc)
                    if why is None:
                        raise
                    self._skip(batch, prompt, f"{why}: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}")
                    continue  # offline: the next smaller batch is tried
                point = self._point(measured, batch, prompt, scenario)
                self.points.append(point)
                if point.cv > CV_WARN:
                    load = load_average()
                    self.warnings.append(
                        f"batch {batch}, prompt {prompt}: decode tok/s varies {point.cv:.0%} over {measured.runs} "
                        f"(> {CV_WARN:.0%}); host load avg {'?' if load is None else f'{load:.1f}'}"
                    )
                if offline:
                    break  # the largest batch that fits is the offline point
        self.warnings += [
            f"batch {s['batch_size']}, prompt {s['prompt_tokens']} skipped: {s['reason']}" for s in self.skipped
        ]

    def _skip(self, batch: int, prompt: int, reason: str) -> None:
        self.skipped.append({"batch_size": batch, "prompt_tokens": prompt, "reason": reason})

    def _point(self, m: Measured, batch: int, prompt: int, scenario: str) -> SpeedPoint:
        """The point, with every roofline figure from what its step reads (the only place they are computed)."""
        s, r, bw = m.stats, m.reads, self.bandwidth
        step_bytes = roofline.bytes_per_step(r.weight_bytes, r.kv_seq, batch) if r.weight_bytes is not None else None
        against_bw = step_bytes is not None and bw > 0
        return SpeedPoint(
            batch_size=batch,
            prompt_tokens=prompt,
            new_tokens=self.spec.new_tokens,
            ttft_ms=s.ttft_ms,
            ttft_p90_ms=s.ttft_p90_ms,
            tpot_ms=s.tpot_ms,
            tpot_p90_ms=s.tpot_p90_ms,
            itl_p99_ms=s.itl_p99_ms,
            e2e_ms=s.e2e_ms,
            decode_tok_s=s.decode_tok_s,
            prefill_tok_s=s.prefill_tok_s,
            peak_mem_mb=m.peak_mem_mb,
            bytes_per_token=float(r.weight_bytes + r.kv_seq) if r.weight_bytes is not None else 0.0,
            wall_tok_s=roofline.ceiling_tok_s(bw, step_bytes, batch) if against_bw else None,
            mbu=roofline.mbu(s.decode_tok_s, step_bytes, batch, bw) if against_bw else None,
            cv=s.cv,
            samples=m.samples,
            itl_p50_ms=s.itl_p50_ms,
            itl_p90_ms=s.itl_p90_ms,
            e2e_p90_ms=s.e2e_p90_ms,
            mfu=roofline.mfu(s.decode_tok_s, r.flops, self.peak_flops) if r.flops and self.peak_flops else None,
            bytes_per_step=step_bytes or 0.0,
            kv_bytes_per_token=r.kv_tok,
            context_tokens=r.context,
            flops_per_token=r.flops,
            scenario=scenario,
            weight_bytes_read=float(r.weight_bytes or 0.0),
            dense_fallback=r.dense_fallback,
            kernel_observed=r.kernel_observed,
            kernel_observed_ops=r.kernel_observed_ops,
        )

    def roofline_batches(
        self, kv_at: Callable[[float], float], dense_weight_bytes: float | None
    ) -> tuple[int | None, int | None]:
        """(compute-bound batch on this host, roofline crossover batch vs `dense_weight_bytes`), at the first point's
        context (`kv_at(context)`: one sequence's KV bytes there); None where the first point has no FLOPs."""
        first = self.points[0] if self.points else None
        if first is None or not first.flops_per_token or not self.peak_flops:
            return None, None
        kv_seq = kv_at(first.context_tokens)
        bound = roofline.compute_bound_batch(
            self.peak_flops, self.bandwidth, first.flops_per_token, first.weight_bytes_read, kv_seq
        )
        if dense_weight_bytes is None:
            return bound, None
        crossover = roofline.roofline_crossover_batch(
            self.peak_flops, self.bandwidth, first.flops_per_token, first.weight_bytes_read, dense_weight_bytes, kv_seq
        )
        return bound, crossover

    def result(self, *, device: str, threads: int, timer: str, **fields: Any) -> SpeedResult:
        """The `SpeedResult` of this run; `fields` are the runtime's own (kernel, kv_cache, model, ...)."""
        loads = [x for x in (self.load_before, load_average()) if x is not None]
        shared: dict[str, Any] = {
            "device": device,
            "threads": threads,
            "timer": timer,
            "points": tuple(self.points),
            "skipped": tuple(self.skipped),
            "warnings": tuple(self.warnings),
            "load_avg": max(loads) if loads else None,
            "bandwidth_gb_s": self.bandwidth / 1e9,
            "matmul_tflops": self.peak_flops / 1e12 if self.peak_flops is not None else None,
            "scenario": self.spec.scenario or "",
        }
        return SpeedResult(**{**shared, **fields})


def _offline_batches(adapter: DecodeAdapter, top: int, prompt: int) -> list[int]:
    """Offline scenario candidates, largest first: powers of two <= `top` that are estimated to fit."""
    free = adapter.free_bytes()
    cands = sorted({2**k for k in range(int(math.log2(top)) + 1)} | {top}, reverse=True)
    fitting = [b for b in cands if adapter.estimate_point_bytes(b, prompt) <= MEMORY_HEADROOM * free]
    return fitting or [1]
