"""Speed harness: timing on a fake clock, roofline maths on known numbers, measure_decode on the tiny model.

No timing is asserted: only that the harness computes what it says from what it measured.
"""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch

from pipeline import host
from pipeline.config.recipe import SpeedSpec, parse_recipe
from pipeline.models import shapes
from pipeline.predict import roofline
from pipeline.runtime.speed import harness, torch_adapter
from pipeline.runtime.speed.measure import measure_decode
from pipeline.runtime.speed.plan import planned_batches, prompt_ids
from pipeline.runtime.speed.timing import ClockTimer, Timeline, decode_timeline, percentile, summarize

MS = 1_000_000  # ns


@pytest.fixture(autouse=True)
def _isolated_host_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(host.CACHE_ENV, str(tmp_path / "host.json"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_llama import build_tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = build_tiny_llama(tmp_path_factory.mktemp("tiny"))
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def _weight_bytes(model) -> int:
    from pipeline.variants.storage import storage_bytes

    return storage_bytes(model).bytes_read_per_token


# ---------------------------------------------------------------------------------------------
# Timing on a fake clock
# ---------------------------------------------------------------------------------------------


def _fake_clock(times_ms):
    it = iter(times_ms)
    return lambda: int(next(it) * MS)


def test_decode_timeline_marks_every_token_on_a_fake_clock():
    calls = []
    timer = ClockTimer(_fake_clock([5, 105, 115, 130, 140]))
    marks, last = decode_timeline(lambda: calls.append("p") or 0, lambda t: calls.append("s") or t + 1, 4, timer)
    assert calls == ["p", "s", "s", "s"]  # one prefill, N-1 steps
    assert last == 3
    tl = Timeline(tuple(marks))
    assert tl.marks_ns == (0, 100 * MS, 110 * MS, 125 * MS, 135 * MS)
    assert tl.ttft_ns == 100 * MS
    assert tl.itls_ns == [10 * MS, 15 * MS, 10 * MS]
    assert tl.tpot_ns == pytest.approx(35 * MS / 3)
    assert tl.e2e_ns == 135 * MS


def test_summarize_medians_percentiles_and_rates():
    # three repeats: TTFT 100/120/200 ms; decode steps 10 ms, 20 ms, 30 ms each
    runs = [
        Timeline((0, 100 * MS, 110 * MS, 120 * MS)),
        Timeline((0, 120 * MS, 140 * MS, 160 * MS)),
        Timeline((0, 200 * MS, 230 * MS, 260 * MS)),
    ]
    s = summarize(runs, batch=2, prompt_tokens=50)
    assert s.ttft_ms == pytest.approx(120)
    assert s.ttft_p90_ms == pytest.approx(184)  # 120 + 0.8 * (200 - 120)
    assert s.tpot_ms == pytest.approx(20)
    assert s.tpot_p90_ms == pytest.approx(28)
    assert s.itl_p50_ms == pytest.approx(20)
    assert s.itl_p99_ms == pytest.approx(30)
    assert s.e2e_ms == pytest.approx(160)
    assert s.decode_tok_s == pytest.approx(2 * 1000 / 20)  # batch / TPOT
    assert s.prefill_tok_s == pytest.approx(2 * 50 * 1000 / 120)
    rates = [200.0, 100.0, 2000 / 30]
    mean = sum(rates) / 3
    cv = (sum((r - mean) ** 2 for r in rates) / 3) ** 0.5 / mean
    assert s.cv == pytest.approx(cv)


def test_percentile_matches_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([4, 1, 3, 2], 90) == pytest.approx(3.7)
    assert percentile([7], 99) == 7
    with pytest.raises(ValueError):
        percentile([], 50)


def test_measure_decode_on_a_fake_clock_gives_exact_figures(tiny):
    model, tok = tiny
    spec = SpeedSpec(prompt_tokens=8, new_tokens=4, batch_sizes=[1, 2], warmup=0, repeats=2, threads=1)
    ticks = itertools.count(step=2 * MS)  # every mark 2 ms after the previous one
    wb = _weight_bytes(model)
    res = measure_decode(
        model,
        tok,
        spec,
        weight_bytes_per_token=wb,
        device="cpu",
        clock=lambda: next(ticks),
        bandwidth_gb_s=10.0,
        matmul_flops=1e11,
    )
    assert [p.batch_size for p in res.points] == [1, 2]
    for p in res.points:
        assert (
            p.ttft_ms == pytest.approx(2.0) and p.tpot_ms == pytest.approx(2.0) and p.itl_p99_ms == pytest.approx(2.0)
        )
        assert p.e2e_ms == pytest.approx(8.0)  # 4 tokens x 2 ms
        assert p.decode_tok_s == pytest.approx(p.batch_size * 500.0)
        assert p.prefill_tok_s == pytest.approx(p.batch_size * 8 * 500.0)
        assert p.cv == 0.0
        context = 8 + 4 / 2
        kv = shapes.kv_bytes_per_token(model.config, 4)
        assert p.kv_bytes_per_token == kv == 2 * 2 * 2 * 16 * 4  # layers x K,V x kv heads x head_dim x fp32
        assert p.bytes_per_step == pytest.approx(wb + p.batch_size * kv * context)
        assert p.wall_tok_s == pytest.approx(10e9 / p.bytes_per_step * p.batch_size)
        assert p.mbu == pytest.approx(p.decode_tok_s / p.wall_tok_s)
        assert p.mfu == pytest.approx(p.decode_tok_s * p.flops_per_token / 1e11)


# ---------------------------------------------------------------------------------------------
# measure_decode for real on the tiny model
# ---------------------------------------------------------------------------------------------


def test_cpu_compiled_decode_is_frozen_autotuned_and_decodes_the_eager_tokens(tiny):
    """`compile` on CPU (inductor, frozen weights, max-autotune GEMM) times the same greedy tokens as eager."""
    model, tok = tiny
    runs = {}
    for compiled in (False, True):
        spec = SpeedSpec(
            prompt_tokens=12, new_tokens=5, batch_sizes=[1], warmup=1, repeats=1, threads=1, compile=compiled
        )
        runs[compiled] = measure_decode(
            model,
            tok,
            spec,
            weight_bytes_per_token=_weight_bytes(model),
            device="cpu",
            bandwidth_gb_s=5.0,
            matmul_flops=2e10,
        )
    eager, compiled = runs[False], runs[True]
    assert compiled.compiled and compiled.kv_cache == "static" and "frozen weights" in compiled.compile_mode
    assert not eager.compiled and eager.compile_mode == ""
    tokens = {
        k: next(x["inputs"]["generated_ids_row0"] for x in r.points[0].samples if "inputs" in x)
        for k, r in runs.items()
    }
    assert tokens[True] == tokens[False] and len(tokens[False]) == 5


def test_decode_runs_on_quanto_int4_weights(tiny):
    """optimum-quanto's packed int4 weights raise under torch.inference_mode; the harness must time them."""
    import copy

    from optimum.quanto import freeze, qint4, quantize

    model, tok = tiny
    q = copy.deepcopy(model)
    quantize(q, weights=qint4)
    freeze(q)
    spec = SpeedSpec(prompt_tokens=8, new_tokens=3, batch_sizes=[1], warmup=0, repeats=1, threads=1)
    res = measure_decode(
        q, tok, spec, weight_bytes_per_token=_weight_bytes(model), device="cpu", bandwidth_gb_s=5.0, matmul_flops=2e10
    )
    assert res.points[0].decode_tok_s > 0


def test_busy_host_and_busy_bandwidth_probe_are_warned(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(harness, "load_average", lambda: 99.0)
    monkeypatch.setattr(harness, "bandwidth_probe", lambda device, threads: {"bandwidth_gb_s": 10.0, "load_avg": 99.0})
    spec = SpeedSpec(prompt_tokens=8, new_tokens=3, batch_sizes=[1], warmup=0, repeats=1, threads=1)
    res = measure_decode(model, tok, spec, weight_bytes_per_token=_weight_bytes(model), device="cpu", matmul_flops=2e10)
    assert res.bandwidth_gb_s == 10.0 and res.load_avg == 99.0
    assert any(w.startswith("host load avg 99.0 on") for w in res.warnings), res.warnings
    assert any(w.startswith("the cached bandwidth probe ran at load avg 99.0") for w in res.warnings), res.warnings


def test_measure_decode_tiny_model_returns_sane_fields(tiny):
    model, tok = tiny
    spec = SpeedSpec(prompt_tokens=16, new_tokens=6, batch_sizes=[1, 3], warmup=1, repeats=2, threads=1)
    res = measure_decode(
        model,
        tok,
        spec,
        weight_bytes_per_token=_weight_bytes(model),
        device="cpu",
        bandwidth_gb_s=5.0,
        matmul_flops=2e10,
        kernel="dense matmul (cpu)",
        model_name="tiny",
        method="none",
    )
    assert res.threads == 1 and res.device == "cpu" and "perf_counter" in res.timer
    assert res.kv_cache == "dynamic" and not res.compiled and res.skipped == ()
    assert res.dtype == "float32" and res.model == "tiny" and res.kernel == "dense matmul (cpu)"
    assert res.weight_bytes_per_token > 0 and res.matmul_tflops == pytest.approx(0.02)
    assert res.compute_bound_batch is None or res.compute_bound_batch >= 1
    assert len(res.points) == 2
    for p in res.points:
        for name in (
            "ttft_ms",
            "ttft_p90_ms",
            "tpot_ms",
            "tpot_p90_ms",
            "itl_p50_ms",
            "itl_p90_ms",
            "itl_p99_ms",
            "e2e_ms",
            "decode_tok_s",
            "prefill_tok_s",
            "peak_mem_mb",
            "bytes_per_token",
            "bytes_per_step",
            "wall_tok_s",
            "mbu",
        ):
            assert getattr(p, name) > 0, name
        assert p.ttft_ms <= p.ttft_p90_ms and p.itl_p50_ms <= p.itl_p90_ms <= p.itl_p99_ms
        assert 0 < p.mbu <= 1.5 and p.mfu is not None and p.mfu > 0
        assert p.e2e_ms >= p.ttft_ms
        timed = [s for s in p.samples if "marks_ms" in s]
        assert len(timed) == 2 and all(len(s["marks_ms"]) == 7 for s in timed)
        inputs = next(s["inputs"] for s in p.samples if "inputs" in s)
        assert inputs["distinct_prompt_ids"] > 4 and any(inputs["prompt_ids_row0_head"])
        assert len(inputs["generated_ids_row0"]) == 6
        # an unmodified model is not profiled per batch: its points read the bytes given
        assert (
            p.dense_fallback is None and p.kernel_observed == "" and p.weight_bytes_read == res.weight_bytes_per_token
        )
    assert res.at_batch(3) is res.points[1]


def test_static_cache_is_recorded_and_charged_full_length(tiny):
    model, tok = tiny
    spec = SpeedSpec(prompt_tokens=8, new_tokens=4, warmup=0, repeats=1, threads=1, static_cache=True)
    res = measure_decode(
        model, tok, spec, weight_bytes_per_token=1000, device="cpu", bandwidth_gb_s=5.0, matmul_flops=1e10
    )
    assert res.kv_cache == "static"
    assert res.points[0].context_tokens == 12


def test_harness_decode_matches_generate_tokens(tiny):
    from transformers import GenerationConfig

    from pipeline.runtime.speed.torch_adapter import decode_once

    model, tok = tiny
    ids = prompt_ids(tok, model.config.vocab_size, 2, 10)
    _, ours = decode_once(model, ids, 5)
    cfg = GenerationConfig(max_new_tokens=5, min_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        theirs = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)[:, 10:]
    assert torch.equal(ours, theirs)


def test_dense_fallback_is_carried_and_flagged(tiny):
    model, tok = tiny
    spec = SpeedSpec(prompt_tokens=4, new_tokens=2, warmup=0, repeats=1, threads=1)
    res = measure_decode(
        model,
        tok,
        spec,
        weight_bytes_per_token=1000,
        device="cpu",
        bandwidth_gb_s=5.0,
        matmul_flops=1e10,
        kernel="dense matmul on masked weights",
        dense_fallback=True,
    )
    assert res.dense_fallback and res.speed_kind == "dense-fallback speed"
    assert any("falls back to dense" in w for w in res.warnings)


def test_a_fallback_at_some_batch_sizes_is_reported_at_those_batch_sizes():
    """Kernels observed per batch (bnb on CUDA: its 4-bit kernel for a few rows, dequantize + matmul from 8): the run
    falls back, its label, tags and table rows say at which batches; points not observed follow the run's flag."""
    from rich.console import Console

    from pipeline import metrics as M
    from pipeline.results import SpeedPoint, SpeedResult
    from pipeline.runtime.speed.command import print_table

    def point(batch: int, fell: bool | None) -> SpeedPoint:
        return SpeedPoint(
            batch_size=batch,
            prompt_tokens=16,
            new_tokens=4,
            ttft_ms=1,
            ttft_p90_ms=1,
            tpot_ms=1,
            tpot_p90_ms=1,
            itl_p99_ms=1,
            e2e_ms=4,
            decode_tok_s=1000.0 * batch,
            prefill_tok_s=1,
            peak_mem_mb=1,
            bytes_per_token=1,
            wall_tok_s=1,
            mbu=0.5,
            cv=0,
            weight_bytes_read=4e6 if fell else 1e6,
            dense_fallback=fell,
        )

    res = SpeedResult(
        points=(point(1, False), point(4, False), point(8, True)),
        bandwidth_gb_s=10,
        device="cuda",
        threads=1,
        timer="t",
        dense_fallback=True,
        method="bnb-nf4",
    )
    assert res.speed_kind == "dense-fallback speed at batch 8; kernel speed at batch 1, 4"
    assert res.tags()[M.TAG_DENSE_FALLBACK] == "true" and res.tags()[M.TAG_DENSE_FALLBACK_BATCHES] == "8@16"
    m = res.metrics()
    assert m[M.WEIGHT_BYTES_READ_PER_STEP] == 1e6 and m[M.batch_metric(M.WEIGHT_BYTES_READ_PER_STEP, 8)] == 4e6
    console = Console(record=True, width=220)
    print_table(res, console=console)
    rows = [line for line in console.export_text().splitlines() if "│" in line and "bnb-nf4" in line]
    assert len(rows) == 3 and [("(dense fallback)" in r) for r in rows] == [False, False, True], rows
    unobserved = SpeedResult(
        points=(point(1, None),), bandwidth_gb_s=10, device="cpu", threads=1, timer="t", dense_fallback=True
    )
    assert unobserved.speed_kind == "dense-fallback speed" and M.TAG_DENSE_FALLBACK_BATCHES not in unobserved.tags()


def test_a_batch_that_does_not_fit_is_reported_not_raised(tiny, monkeypatch):
    model, tok = tiny
    real = torch_adapter.TorchAdapter.measure

    def flaky(self, spec, batch, prompt):
        if batch == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, spec, batch, prompt)

    monkeypatch.setattr(torch_adapter.TorchAdapter, "measure", flaky)
    spec = SpeedSpec(prompt_tokens=4, new_tokens=2, batch_sizes=[1, 4], warmup=0, repeats=1, threads=1)
    res = measure_decode(
        model, tok, spec, weight_bytes_per_token=1000, device="cpu", bandwidth_gb_s=5.0, matmul_flops=1e10
    )
    assert [p.batch_size for p in res.points] == [1]
    assert res.skipped[0]["batch_size"] == 4 and "out of memory" in res.skipped[0]["reason"]
    assert any("skipped" in w for w in res.warnings)


def test_points_estimated_not_to_fit_are_skipped(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(torch_adapter, "free_bytes", lambda device: 1.0)
    spec = SpeedSpec(prompt_tokens=4, new_tokens=2, warmup=0, repeats=1, threads=1)
    res = measure_decode(
        model, tok, spec, weight_bytes_per_token=1000, device="cpu", bandwidth_gb_s=5.0, matmul_flops=1e10
    )
    assert res.points == () and "does not fit" in res.skipped[0]["reason"]


def test_offline_scenario_measures_the_largest_batch_that_fits(tiny, monkeypatch):
    model, tok = tiny
    need4 = torch_adapter.estimate_point_bytes(model.config, 4, 4, 2, 4)
    need8 = torch_adapter.estimate_point_bytes(model.config, 8, 4, 2, 4)
    free = (need4 + need8) / 2 / harness.MEMORY_HEADROOM
    monkeypatch.setattr(torch_adapter, "free_bytes", lambda device: free)
    spec = SpeedSpec(prompt_tokens=4, new_tokens=2, warmup=0, repeats=1, threads=1, scenario="offline", max_batch=64)
    res = measure_decode(
        model, tok, spec, weight_bytes_per_token=1000, device="cpu", bandwidth_gb_s=5.0, matmul_flops=1e10
    )
    assert [p.batch_size for p in res.points] == [4] and res.points[0].scenario == "offline"


# ---------------------------------------------------------------------------------------------
# Inputs and scenarios
# ---------------------------------------------------------------------------------------------


def test_prompt_ids_are_real_varied_and_nonzero(tiny):
    _, tok = tiny
    ids = prompt_ids(tok, 512, 3, 40)
    assert ids.shape == (3, 40) and ids.dtype == torch.long
    assert int(ids.unique().numel()) > 10 and bool((ids != 0).any())
    assert not torch.equal(ids[0], ids[1])  # rows differ
    assert int(ids.max()) < 512 and not set(ids.flatten().tolist()) & set(tok.all_special_ids)
    no_tok = prompt_ids(None, 1000, 2, 64)
    assert int(no_tok.min()) >= 3 and int(no_tok.unique().numel()) > 20


def test_scenarios_plan_batches():
    assert planned_batches(SpeedSpec(scenario="single-stream", batch_sizes=[8])) == [1]
    assert planned_batches(SpeedSpec(scenario="server")) == [1, 4, 16, 64]
    assert planned_batches(SpeedSpec(scenario="server", batch_sizes=[2, 1])) == [1, 2]
    assert planned_batches(SpeedSpec(scenario="offline", max_batch=32)) == [32]
    assert planned_batches(SpeedSpec(batch_sizes=[4, 1])) == [1, 4]


def test_recipe_accepts_speed_fields():
    r = parse_recipe(
        {
            "name": "t",
            "models": [{"name": "m", "source": "x"}],
            "speed": {"scenario": "server", "prompt_lengths": [512, 128], "compile": True, "static_cache": True},
        }
    )
    assert r.speed.prompt_lengths == [128, 512] and r.speed.compile and r.speed.scenario == "server"


# ---------------------------------------------------------------------------------------------
# Roofline maths on known numbers
# ---------------------------------------------------------------------------------------------


def test_ceiling_llama8b_bf16_on_3_2_tb_s_is_200_tok_s():
    assert roofline.ceiling_tok_s(3.2e12, 16e9, 1) == pytest.approx(200.0)
    assert roofline.ceiling_tok_s(3.2e12, 16e9, 4) == pytest.approx(800.0)
    # 150 tok/s at batch 1 moves 150 x 16 GB = 2.4 TB/s of 3.2: MBU 75%
    assert roofline.mbu(150.0, 16e9, 1, 3.2e12) == pytest.approx(0.75)
    assert roofline.bytes_per_step(16e9, 131072 * 1000, 4) == pytest.approx(16e9 + 4 * 131072 * 1000)


def test_kv_bytes_per_token_is_gqa_aware():
    from pipeline.models.shapes import published_config

    assert shapes.kv_bytes_per_token(published_config("llama-3.1-8b"), 2) == 32 * 2 * 8 * 128 * 2 == 131072
    assert shapes.kv_bytes_per_token(published_config("llama-3.1-70b"), 2) == 80 * 2 * 8 * 128 * 2
    assert shapes.kv_bytes_per_token(published_config("smollm2-135m"), 4) == 30 * 2 * 3 * 64 * 4
    # no num_key_value_heads: multi-head attention, head_dim from hidden / heads
    mha = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    assert shapes.kv_bytes_per_token(mha, 2) == 2 * 2 * 4 * 16 * 2


def test_sliding_window_layers_cap_kv_reads():
    from pipeline.models.shapes import published_config

    cfg = published_config("gemma-3-270m")
    per_layer_token = 2 * 1 * 256 * 2
    full = sum(t == "full_attention" for t in cfg.layer_types)
    sliding = len(cfg.layer_types) - full
    window = cfg.sliding_window
    assert shapes.kv_bytes_at_context(cfg, 4096, 2) == per_layer_token * (full * 4096 + sliding * window)
    assert shapes.kv_bytes_at_context(cfg, 100, 2) == per_layer_token * 18 * 100


def test_decode_flops_for_llama8b():
    from pipeline.models.shapes import published_config

    cfg = published_config("llama-3.1-8b")
    params = shapes.linear_params_per_token(cfg)
    assert params == pytest.approx(7.5e9, rel=0.01)  # 8.03B minus the 0.53B input embedding gathered, not multiplied
    assert shapes.decode_flops_per_token(cfg, 0) == 2 * params
    assert shapes.decode_flops_per_token(cfg, 1000) == 2 * params + 32 * 4 * 32 * 128 * 1000


def test_compute_bound_batch():
    # memory-wall analysis: 8B bf16 (16 GFLOP, 16 GB per token) on 3.35 TB/s at ~1.9 PFLOP/s -> ~567
    assert roofline.compute_bound_batch(1.9e15, 3.35e12, 16e9, 16e9) == pytest.approx(567, abs=1)
    # dense bf16 peak 989 TFLOP/s: the ridge point, ~295
    assert roofline.compute_bound_batch(989e12, 3.35e12, 16e9, 16e9) == pytest.approx(295, abs=1)
    # KV reads that grow faster than compute: never compute-bound
    assert roofline.compute_bound_batch(989e12, 3.35e12, 16e9, 16e9, kv_bytes_per_seq=1e9) is None
    # at the returned batch compute time >= memory time, one below it is not
    b = roofline.compute_bound_batch(1e12, 1e11, 2e8, 4e8, 1e5)
    assert b * 2e8 / 1e12 >= (4e8 + b * 1e5) / 1e11 > (b - 1) * 2e8 / 1e12


def _pt(batch: int, tok_s: float, prompt: int = 128) -> SimpleNamespace:
    return SimpleNamespace(batch_size=batch, prompt_tokens=prompt, decode_tok_s=tok_s)


def test_crossover_batch_on_hand_made_points():
    base = [_pt(1, 20), _pt(4, 70), _pt(16, 200), _pt(64, 400)]
    assert roofline.crossover_batch(base, [_pt(1, 35), _pt(4, 110), _pt(16, 190), _pt(64, 300)]) == 16
    assert roofline.crossover_batch(base, [_pt(1, 35), _pt(4, 110), _pt(16, 250), _pt(64, 500)]) is None
    assert roofline.crossover_batch(base, [_pt(1, 15), _pt(4, 110)]) == 1  # never beat it
    assert roofline.crossover_batch(base, [_pt(1, 35), _pt(4, 70)]) == 4  # a tie is no longer beating
    assert roofline.crossover_batch(base, [_pt(2, 5), _pt(8, 5)]) is None  # no common batch
    swept = base + [_pt(1, 10, 2048), _pt(4, 30, 2048)]
    variant = [_pt(1, 35), _pt(4, 110), _pt(1, 12, 2048), _pt(4, 29, 2048)]
    assert roofline.crossover_batch(swept, variant) is None  # prompt 128 by default
    assert roofline.crossover_batch(swept, variant, prompt_tokens=2048) == 4


# ---------------------------------------------------------------------------------------------
# Host probes and their cache
# ---------------------------------------------------------------------------------------------


def test_bandwidth_cache_is_reused(tmp_path, monkeypatch):
    calls = []
    readings = iter([12.5, 11.0, 12.5, 10.0, 15.0])

    def fake_probe(device, threads, buffer_bytes=None, reps=7):
        calls.append((device, threads))
        gb = next(readings)
        return {"bandwidth_gb_s": gb, "probes_gb_s": {"copy": gb}}

    monkeypatch.setattr(host, "probe_bandwidth", fake_probe)
    path = tmp_path / "h.json"
    assert host.host_bandwidth("cpu", 2, path=path) == 12.5
    assert host.host_bandwidth("cpu", 2, path=path) == 12.5
    assert calls == [("cpu", 2)]
    data = json.loads(path.read_text())
    key = host.host_key("cpu", 2)
    assert key in data and "threads=2" in key and data[key]["bandwidth"]["bandwidth_gb_s"] == 12.5
    assert host.host_bandwidth("cpu", 1, path=path) == 11.0  # another thread count is another key
    # a refresh keeps the best reading: a lower one only means the host was busy
    assert host.host_bandwidth("cpu", 2, path=path, refresh=True) == 12.5
    assert host.host_bandwidth("cpu", 2, path=path, refresh=True) == 12.5
    assert host.host_bandwidth("cpu", 2, path=path, refresh=True) == 15.0
    assert calls == [("cpu", 2), ("cpu", 1), ("cpu", 2), ("cpu", 2), ("cpu", 2)]
    assert host.host_bandwidth("cpu", 2, path=path) == 15.0 and len(calls) == 5
    # the default path comes from the environment (the autouse fixture points it at tmp)
    assert host.cache_path() != path


def test_cpu_probes_measure_something():
    bw = host.probe_bandwidth("cpu", 1, buffer_bytes=16 * 2**20, reps=2)
    assert bw["bandwidth_gb_s"] > 0 and set(bw["probes_gb_s"]) == {"copy", "triad", "read"}
    mm = host.probe_matmul("cpu", 1, torch.float32, size=128, reps=2)
    assert mm["flops"] > 0


# ---------------------------------------------------------------------------------------------
# GPU paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_events_static_cache_and_compile(tiny):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, tok = tiny
    model = model.to("cuda")
    try:
        spec = SpeedSpec(prompt_tokens=16, new_tokens=8, batch_sizes=[1, 2], warmup=1, repeats=2, compile=True)
        res = measure_decode(model, tok, spec, weight_bytes_per_token=_weight_bytes(model), device="cuda")
        assert res.timer == "cuda events" and res.compiled and res.kv_cache == "static"
        assert res.bandwidth_gb_s > 100 and all(0 < p.mbu <= 1.5 and p.peak_mem_mb > 0 for p in res.points)
    finally:
        model.to("cpu")


@pytest.mark.gpu
def test_cuda_bandwidth_probe():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    bw = host.probe_bandwidth("cuda", 1, buffer_bytes=256 * 2**20, reps=3)
    assert bw["bandwidth_gb_s"] > 100


# ---------------------------------------------------------------------------------------------
# CPU bandwidth probe: buffer sizing (nothing big is allocated: the allocators are faked)
# ---------------------------------------------------------------------------------------------

MiB, GiB = 2**20, 2**30


def _planned_probe(monkeypatch, llc_bytes: int, available_bytes: int) -> tuple[list[int], dict]:
    """Run the CPU probe with a faked LLC and available memory; return the bytes each buffer asked for."""
    import psutil

    asked: list[int] = []

    def fake_alloc(n, *args, **kwargs):
        asked.append(int(n) * 4)  # float32 elements
        return torch.zeros(1024)  # the kernels still run, on something tiny

    with monkeypatch.context() as m:  # undone on return, so one test can plan several hosts
        m.setattr(host, "_last_level_cache_bytes", lambda: llc_bytes)
        m.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available_bytes, total=available_bytes))
        m.setattr(torch, "empty", fake_alloc)
        m.setattr(torch, "rand", fake_alloc)
        res = host.probe_bandwidth("cpu", 1, reps=1)
    return asked, res


@pytest.mark.parametrize("llc", [480 * MiB, 4 * GiB])
def test_cpu_probe_buffers_bounded_whatever_the_llc_reports(monkeypatch, llc):
    # a VM's sysfs reported a 480 MiB LLC: 8x that per buffer took a fresh quickstart to 14.7 GB RSS
    asked, res = _planned_probe(monkeypatch, llc, available_bytes=256 * GiB)
    assert len(asked) == 3
    assert sum(asked) <= 1 * GiB  # the fixed cap, with memory to spare
    assert all(b >= 256 * MiB for b in asked)  # still far above any LLC slice: DRAM is what is timed
    assert res["buffer_mb"] == asked[0] / MiB and res["buffer_limit"] == "cap" and res["llc_mb"] == llc / MiB


def test_cpu_probe_buffers_shrink_with_available_memory(monkeypatch):
    roomy, _ = _planned_probe(monkeypatch, 8 * MiB, available_bytes=64 * GiB)
    assert sum(roomy) <= 1 * GiB and all(b >= 256 * MiB for b in roomy)
    asked, res = _planned_probe(monkeypatch, 8 * MiB, available_bytes=2 * GiB)
    assert sum(asked) <= 2 * GiB // 8 and max(asked) < min(roomy)  # leaves the rest for the model
    assert res["buffer_limit"] == "available" and res["available_mb"] == 2 * 1024
    starved, res = _planned_probe(monkeypatch, 8 * MiB, available_bytes=64 * MiB)
    assert all(b == 16 * MiB for b in starved) and res["buffer_limit"] == "tiny"
