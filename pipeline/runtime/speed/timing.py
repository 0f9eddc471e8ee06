"""Per-token timestamps of a decode loop, and the statistics over repeats.

The loop is generic (a `prefill()` and a `step(token)` callable) so it can run on a fake clock in
tests. A timer marks once before prefill and once after every produced token; so for N new tokens
there are N + 1 marks: TTFT = m1 - m0, ITL_i = m_{i+1} - m_i, TPOT = (mN - m1) / (N - 1).

CPU: `time.perf_counter_ns` (ops are synchronous there, so the mark is taken after the token exists).
CUDA: `torch.cuda.Event(enable_timing=True)` recorded on the stream after each token, read after one
synchronize at the end (no per-token sync, which would add host round-trips to what is measured).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from pipeline.results import LoadLevel

Clock = Callable[[], int]  # monotonically increasing nanoseconds
T = TypeVar("T")


class Timer(Protocol):
    name: str

    def reset(self) -> None: ...

    def mark(self) -> None: ...

    def read_ns(self) -> list[int]:
        """Marks as nanoseconds since the first mark."""
        ...


class ClockTimer:
    """Marks from a host clock; `clock` is injectable (tests drive it by hand)."""

    def __init__(self, clock: Clock | None = None, name: str = "perf_counter_ns (host)") -> None:
        self._clock: Clock = clock or time.perf_counter_ns
        self.name = name
        self._marks: list[int] = []

    def reset(self) -> None:
        self._marks = []

    def mark(self) -> None:
        self._marks.append(self._clock())

    def read_ns(self) -> list[int]:
        if not self._marks:
            return []
        t0 = self._marks[0]
        return [m - t0 for m in self._marks]


class CudaEventTimer:
    """Marks as CUDA events on the current stream; elapsed times read after a single synchronize."""

    name = "cuda events"

    def __init__(self, device: Any = None) -> None:
        import torch

        self._torch = torch
        self._device = device
        self._events: list[Any] = []

    def reset(self) -> None:
        self._events = []

    def mark(self) -> None:
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record()
        self._events.append(ev)

    def read_ns(self) -> list[int]:
        if not self._events:
            return []
        self._events[-1].synchronize()
        first = self._events[0]
        # elapsed_time is in milliseconds (float, ~0.5 us resolution)
        return [0] + [int(round(first.elapsed_time(ev) * 1e6)) for ev in self._events[1:]]


def decode_timeline(
    prefill: Callable[[], T], step: Callable[[T], T], new_tokens: int, timer: Timer
) -> tuple[list[int], T]:
    """Run prefill (first token) then `new_tokens - 1` decode steps, marking after each token.

    Returns the marks (ns since the start, `new_tokens + 1` of them) and the last token.
    """
    if new_tokens < 1:
        raise ValueError("new_tokens must be >= 1")
    timer.reset()
    timer.mark()
    token = prefill()
    timer.mark()
    for _ in range(new_tokens - 1):
        token = step(token)
        timer.mark()
    return timer.read_ns(), token


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Population stdev / mean; 0 for a single value."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if mean else 0.0


@dataclass(frozen=True)
class Timeline:
    """One repeat's marks (ns since the start of prefill)."""

    marks_ns: tuple[int, ...]

    @property
    def new_tokens(self) -> int:
        return len(self.marks_ns) - 1

    @property
    def ttft_ns(self) -> int:
        return self.marks_ns[1] - self.marks_ns[0]

    @property
    def itls_ns(self) -> list[int]:
        m = self.marks_ns
        return [m[i + 1] - m[i] for i in range(1, len(m) - 1)]

    @property
    def tpot_ns(self) -> float:
        """Mean time per output token after the first (decode only)."""
        steps = self.new_tokens - 1
        return (self.marks_ns[-1] - self.marks_ns[1]) / steps if steps > 0 else float("nan")

    @property
    def e2e_ns(self) -> int:
        return self.marks_ns[-1] - self.marks_ns[0]


@dataclass(frozen=True)
class TimingStats:
    ttft_ms: float
    ttft_p90_ms: float
    tpot_ms: float
    tpot_p90_ms: float
    itl_p50_ms: float
    itl_p90_ms: float
    itl_p99_ms: float
    e2e_ms: float
    e2e_p90_ms: float
    decode_tok_s: float  # batch / median TPOT
    prefill_tok_s: float  # batch * prompt tokens / median TTFT
    cv: float  # coefficient of variation of per-repeat decode tok/s
    per_repeat_decode_tok_s: tuple[float, ...] = ()


def summarize(timelines: Sequence[Timeline], batch: int, prompt_tokens: int) -> TimingStats:
    """Medians and p90 over repeats for TTFT/TPOT/e2e; ITL percentiles pooled over every decode step."""
    if not timelines:
        raise ValueError("no timelines to summarize")
    if any(t.new_tokens < 2 for t in timelines):
        raise ValueError("each timeline needs >= 2 tokens (one decode step) for TPOT")
    ms = 1e-6
    ttfts = [t.ttft_ns * ms for t in timelines]
    tpots = [t.tpot_ns * ms for t in timelines]
    itls = [x * ms for t in timelines for x in t.itls_ns]
    e2es = [t.e2e_ns * ms for t in timelines]
    tpot = statistics.median(tpots)
    ttft = statistics.median(ttfts)
    per_repeat = tuple(batch * 1000.0 / x for x in tpots)
    return TimingStats(
        ttft_ms=ttft,
        ttft_p90_ms=percentile(ttfts, 90),
        tpot_ms=tpot,
        tpot_p90_ms=percentile(tpots, 90),
        itl_p50_ms=percentile(itls, 50),
        itl_p90_ms=percentile(itls, 90),
        itl_p99_ms=percentile(itls, 99),
        e2e_ms=statistics.median(e2es),
        e2e_p90_ms=percentile(e2es, 90),
        decode_tok_s=batch * 1000.0 / tpot,
        prefill_tok_s=batch * prompt_tokens * 1000.0 / ttft,
        cv=coefficient_of_variation(per_repeat),
        per_repeat_decode_tok_s=per_repeat,
    )


def level_stats(level: LoadLevel, prompt_tokens: int) -> TimingStats:
    """The statistics of a server's concurrency-1 load level, timed per request from the client (percentiles over
    its requests; 0 where a percentile is missing). Prefill tok/s includes the HTTP round trip."""
    ttft = level.ttft_ms.get(50, 0.0)
    return TimingStats(
        ttft_ms=ttft,
        ttft_p90_ms=level.ttft_ms.get(90, 0.0),
        tpot_ms=level.tpot_ms.get(50, 0.0),
        tpot_p90_ms=level.tpot_ms.get(90, 0.0),
        itl_p50_ms=level.itl_ms.get(50, 0.0),
        itl_p90_ms=level.itl_ms.get(90, 0.0),
        itl_p99_ms=level.itl_ms.get(99, 0.0),
        e2e_ms=level.e2e_ms.get(50, 0.0),
        e2e_p90_ms=level.e2e_ms.get(90, 0.0),
        decode_tok_s=level.decode_tok_s or 0.0,
        prefill_tok_s=prompt_tokens / (ttft / 1e3) if ttft else 0.0,
        cv=level.decode_cv or 0.0,
    )
