"""The one speed harness (`pipeline.runtime.speed.harness`) driven by toy adapters: no model, a fake clock."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pipeline
from pipeline.config.recipe import SpeedSpec
from pipeline.runtime.speed import harness
from pipeline.runtime.speed.harness import DecodeAdapter, Measured, Reads, SpeedRun, StepAdapter
from pipeline.runtime.speed.timing import ClockTimer, TimingStats

MS = 1_000_000  # ns
BUSY = 1e6  # a load average above any host's CPU count


class ToyAdapter(StepAdapter):
    """Prefill takes 10 ms and each decode step `step_ms[r]` ms of a fake clock (r: the timed repeat); a point needs
    1 MB per token of prompt beyond the weights; `oom_at` batch sizes run out of memory when they start."""

    kv_cache = "toy cache"

    def __init__(
        self,
        *,
        free: float = 1e15,
        oom_at: tuple[int, ...] = (),
        fail_at: tuple[int, ...] = (),
        step_ms: tuple[float, ...] = (2.0,),
    ) -> None:
        self.now = 0
        self.timer = ClockTimer(lambda: self.now)
        self.warmup = 1
        self.free, self.oom_at, self.fail_at, self.step_ms = free, oom_at, fail_at, step_ms
        self.repeat = -1
        self.started: list[tuple[int, int]] = []
        self.finished = 0

    def estimate_point_bytes(self, batch: int, prompt: int) -> float:
        return batch * prompt * 1e6

    def free_bytes(self) -> float:
        return self.free

    def skip_reason(self, exc: BaseException) -> str | None:
        return "out of memory" if isinstance(exc, MemoryError) else None

    def start(self, batch: int, prompt: int) -> list[list[int]]:
        if batch in self.oom_at:
            raise MemoryError(f"toy allocator: no room for batch {batch}\nsecond line")
        if batch in self.fail_at:
            raise ValueError("a real bug")
        self.started.append((batch, prompt))
        self.batch, self.repeat = batch, -1
        return [[100 * r + i for i in range(prompt)] for r in range(batch)]

    def reset(self) -> None:
        return None

    def synchronize(self) -> None:
        self.repeat += 1  # called once before each timed repeat

    def prefill(self) -> list[int]:
        self.now += 10 * MS
        return [7] * self.batch

    def step(self, token: list[int]) -> list[int]:
        self.now += int(self.step_ms[max(self.repeat, 0) % len(self.step_ms)] * MS)
        return [t + 1 for t in token]

    def row0(self, token: list[int]) -> int:
        return token[0]

    def reads(self, batch: int, prompt: int) -> Reads:
        return Reads(weight_bytes=1e6, kv_seq=1000.0 * prompt, kv_tok=1000, context=prompt + 2.0, flops=2e6)

    def finish(self) -> None:
        self.finished += 1


def _speed_run(monkeypatch, spec: SpeedSpec, load: float = 0.0, probe_load: float = 0.0) -> SpeedRun:
    monkeypatch.setattr(harness, "load_average", lambda: load)
    monkeypatch.setattr(
        harness, "bandwidth_probe", lambda device, threads: {"bandwidth_gb_s": 10.0, "load_avg": probe_load}
    )
    speed_run = SpeedRun(spec)
    speed_run.probe_bandwidth("cpu", 1)
    speed_run.probe_matmul("cpu", 1, "float32", 1e12)
    return speed_run


def test_every_batch_and_prompt_length_is_a_point_with_its_roofline_figures(monkeypatch):
    spec = SpeedSpec(batch_sizes=[1, 2], prompt_lengths=[8, 16], new_tokens=5, warmup=1, repeats=2, threads=1)
    speed_run, toy = _speed_run(monkeypatch, spec), ToyAdapter()
    with toy:
        speed_run.run(toy)
    assert [(p.prompt_tokens, p.batch_size) for p in speed_run.points] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    assert toy.started == [(1, 8), (2, 8), (1, 16), (2, 16)] and toy.finished == 4
    assert speed_run.skipped == [] and speed_run.warnings == []
    for p in speed_run.points:
        step_bytes = 1e6 + p.batch_size * 1000.0 * p.prompt_tokens
        assert (p.ttft_ms, p.tpot_ms, p.decode_tok_s) == (10.0, 2.0, p.batch_size * 500.0)
        assert p.prefill_tok_s == pytest.approx(p.batch_size * p.prompt_tokens * 100.0)
        assert p.bytes_per_step == step_bytes and p.bytes_per_token == 1e6 + 1000.0 * p.prompt_tokens
        assert p.weight_bytes_read == 1e6 and p.kv_bytes_per_token == 1000 and p.context_tokens == p.prompt_tokens + 2.0
        assert p.mbu == pytest.approx(500.0 * step_bytes / 10e9)
        assert p.wall_tok_s == pytest.approx(10e9 / step_bytes * p.batch_size)
        assert p.mfu == pytest.approx(p.decode_tok_s * 2e6 / 1e12) and p.cv == 0.0 and p.peak_mem_mb > 0
        timed, inputs = p.samples[:-1], p.samples[-1]["inputs"]
        assert len(timed) == 2 and all(len(s["marks_ms"]) == 6 for s in timed)
        assert inputs == {
            "prompt_ids_row0_head": list(range(min(16, p.prompt_tokens))),
            "distinct_prompt_ids": len({100 * r + i for r in range(p.batch_size) for i in range(p.prompt_tokens)}),
            "generated_ids_row0": [7, 8, 9, 10, 11],
            "kv_cache": "toy cache",
        }
    result = speed_run.result(device="toy", threads=1, timer=toy.timer.name)
    assert result.points == tuple(speed_run.points) and result.bandwidth_gb_s == 10.0 and result.matmul_tflops == 1.0
    assert result.metrics()["mbu_bs2"] == speed_run.points[1].mbu


def test_a_point_that_does_not_fit_is_skipped_with_its_reason(monkeypatch):
    spec = SpeedSpec(batch_sizes=[1, 4], prompt_tokens=8, new_tokens=3, warmup=0, repeats=1, threads=1)
    speed_run, toy = (
        _speed_run(monkeypatch, spec),
        ToyAdapter(free=20e6),
    )  # batch 1 needs 8 MB, batch 4 32 MB: over 85% of 20
    speed_run.run(toy)
    assert [p.batch_size for p in speed_run.points] == [1] and toy.started == [(1, 8)]
    assert speed_run.skipped == [
        {"batch_size": 4, "prompt_tokens": 8, "reason": "does not fit: needs ~0.03 GB, 0.02 GB free"}
    ]
    assert speed_run.warnings == ["batch 4, prompt 8 skipped: does not fit: needs ~0.03 GB, 0.02 GB free"]


def test_offline_steps_down_past_what_does_not_fit_and_what_runs_out_of_memory(monkeypatch):
    spec = SpeedSpec(scenario="offline", max_batch=16, prompt_tokens=8, new_tokens=3, warmup=0, repeats=1, threads=1)
    speed_run = _speed_run(monkeypatch, spec)
    toy = ToyAdapter(free=40e6, oom_at=(4,))  # 16 and 8 are estimated not to fit; 4 runs out of memory when it starts
    speed_run.run(toy)
    assert [(p.batch_size, p.scenario) for p in speed_run.points] == [(2, "offline")]
    assert speed_run.skipped == [
        {"batch_size": 4, "prompt_tokens": 8, "reason": "out of memory: toy allocator: no room for batch 4"}
    ]
    assert toy.finished == 2  # the point that raised was finished too
    assert speed_run.result(device="toy", threads=1, timer="t").scenario == "offline"


def test_an_error_that_is_not_running_out_of_memory_is_raised(monkeypatch):
    spec = SpeedSpec(batch_sizes=[1, 4], prompt_tokens=8, new_tokens=3, warmup=0, repeats=1, threads=1)
    with pytest.raises(ValueError, match="a real bug"):
        _speed_run(monkeypatch, spec).run(ToyAdapter(fail_at=(4,)))


def test_a_busy_host_a_busy_probe_and_varying_repeats_are_warned(monkeypatch):
    spec = SpeedSpec(batch_sizes=[1], prompt_tokens=8, new_tokens=3, warmup=0, repeats=2, threads=1)
    speed_run = _speed_run(monkeypatch, spec, load=BUSY, probe_load=BUSY)
    speed_run.run(ToyAdapter(step_ms=(2.0, 4.0)))  # 500 then 250 tok/s: CV 33%
    probe, host, varies = speed_run.warnings
    assert probe.startswith(f"the cached bandwidth probe ran at load avg {BUSY:.1f} on ") and "MBU overstated" in probe
    assert host.startswith(f"host load avg {BUSY:.1f} on ") and host.endswith("so these timings are contended")
    assert varies == f"batch 1, prompt 8: decode tok/s varies 33% over 2 repeats (> 10%); host load avg {BUSY:.1f}"
    assert speed_run.result(device="toy", threads=1, timer="t").load_avg == BUSY


class ToyServer(DecodeAdapter):
    """An adapter timed per request (a server): its statistics come whole; what a step reads is not known."""

    def measure(self, spec: SpeedSpec, batch: int, prompt: int) -> Measured:
        stats = TimingStats(
            ttft_ms=20.0, ttft_p90_ms=25.0, tpot_ms=4.0, tpot_p90_ms=5.0, itl_p50_ms=4.0, itl_p90_ms=5.0, itl_p99_ms=6.0,
            e2e_ms=40.0, e2e_p90_ms=45.0, decode_tok_s=250.0, prefill_tok_s=800.0, cv=0.0,
        )  # fmt: skip
        return Measured(stats, Reads(weight_bytes=None, context=prompt + spec.new_tokens / 2), None, "4 requests")


def test_a_request_timed_adapter_goes_through_the_same_loop(monkeypatch):
    spec = SpeedSpec(batch_sizes=[1, 8], prompt_tokens=16, new_tokens=4, warmup=0, repeats=2, threads=1)
    speed_run = _speed_run(monkeypatch, spec)
    speed_run.run(ToyServer(), batches=[1], prompts=[16], scenario="server")
    (p,) = speed_run.points
    assert (p.batch_size, p.prompt_tokens, p.scenario, p.decode_tok_s, p.e2e_p90_ms) == (1, 16, "server", 250.0, 45.0)
    assert (p.mbu, p.wall_tok_s, p.mfu, p.bytes_per_token, p.peak_mem_mb) == (None, None, None, 0.0, None)
    assert p.context_tokens == 18.0
    metrics = speed_run.result(device="server", threads=1, timer="t").metrics()
    assert "mbu" not in metrics and "peak_mem_mb" not in metrics and metrics["decode_tok_s"] == 250.0


def test_speed_points_and_their_mbu_are_built_in_the_harness_only():
    """One construction of `SpeedPoint` and one MBU / ceiling computation, so a fix to one runtime's timing
    arithmetic cannot miss the others."""
    root = Path(pipeline.__file__).parent
    sources = {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in root.rglob("*.py")}
    assert sorted(name for name, text in sources.items() if re.search(r"\bSpeedPoint\(", text)) == [
        "runtime/speed/harness.py"
    ]
    for call in (r"\bmbu\(", r"\bceiling_tok_s\("):
        callers = sorted(name for name, text in sources.items() if re.search(r"(?<!def )" + call, text))
        assert callers == ["runtime/speed/harness.py"], (call, callers)
