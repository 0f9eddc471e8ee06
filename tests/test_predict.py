"""`shrinkgate predict`: the hardware table, the formats, the roofline arithmetic, the fit of runtime factors
(recovering known factors, and on points the speed harness really measured), and the command, which runs with
torch and transformers unimportable."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import host
from pipeline.cli import app
from pipeline.methods.base import registry
from pipeline.models import shapes
from pipeline.models.shapes import linear_params_per_token
from pipeline.predict import fit as fitting
from pipeline.predict.fit import MeasuredPoint, fit, geomean_abs_error, points_from_speed, predicted
from pipeline.predict.formats import FORMATS, weight_format
from pipeline.predict.hardware import hardware, table
from pipeline.predict.roofline import RuntimeFactors, predict
from pipeline.predict.targets import model_facts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_host_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(host.CACHE_ENV, str(tmp_path / "host.json"))


def test_every_device_names_its_source_and_has_bf16_or_fp32():
    devices = table()
    assert {"h100-sxm", "h100-pcie", "h200", "a100-sxm-80gb", "l4", "l40s", "mi300x"} <= set(devices)
    assert {d.kind for d in devices.values()} == {"gpu", "cpu", "apple"}
    for d in devices.values():
        assert d.source and ("bf16" in d.tflops or "fp32" in d.tflops)
    assert devices["h100-sxm"].bandwidth_gb_s == 3350 and devices["h100-sxm"].tflops["bf16"] == 989.5
    assert devices["h200"].tflops == devices["h100-sxm"].tflops and devices["h200"].bandwidth_gb_s == 4800


def test_every_registered_method_has_a_format():
    missing = {n for n in registry() if n not in FORMATS and not n.startswith("test-")}
    assert not missing, f"add these methods to pipeline/predict/formats.py: {sorted(missing)}"


def _facts(name="llama-3.1-8b", dtype="bf16"):
    return model_facts(name, dtype)


def test_llama_8b_on_an_h100_is_memory_bound_at_batch_1_and_compute_bound_past_the_ridge():
    facts, h100, ideal = _facts(), hardware("h100-sxm"), RuntimeFactors("transformers", "gpu")
    one = predict(facts, weight_format("none"), h100, ideal, 1, 128, 32)
    weights = linear_params_per_token(facts.config) * 2
    assert one.weight_bytes_per_token == weights
    assert one.decode_tok_s == pytest.approx(3350e9 / (weights + one.kv_bytes_per_seq), rel=1e-9)
    assert one.bottleneck == "memory (weights)" and 400 < one.compute_bound_batch < 500
    assert 15 < one.weights_gb < 17  # 8.03 B parameters in bf16
    big = predict(facts, weight_format("none"), h100, ideal, 1024, 128, 32)
    assert big.bottleneck == "compute"
    # int4 weight-only reads ~3.7x fewer bytes: ~3.5x faster at batch 1, no faster once both are compute-bound
    int4_one = predict(facts, weight_format("int4-weight-only"), h100, ideal, 1, 128, 32)
    int4_big = predict(facts, weight_format("int4-weight-only"), h100, ideal, 1024, 128, 32)
    assert 3.0 < int4_one.decode_tok_s / one.decode_tok_s < 3.8
    assert int4_big.decode_tok_s == pytest.approx(big.decode_tok_s, rel=0.01)
    # a measured fidelity record's bits override the format's
    measured = predict(
        facts,
        weight_format("int4-weight-only"),
        h100,
        ideal,
        1,
        128,
        32,
        bits_per_weight=4.5,
        bits_source="measured: x",
    )
    assert measured.weight_bytes_per_token > int4_one.weight_bytes_per_token and measured.bits_source == "measured: x"


def test_long_context_batches_are_bound_by_the_kv_cache_and_gemma_windows_cap_it():
    facts, l4, ideal = _facts("llama-3.2-1b"), hardware("l4"), RuntimeFactors("transformers", "gpu")
    p = predict(facts, weight_format("none"), l4, ideal, 64, 8192, 128)
    assert p.bottleneck == "memory (KV cache)" and p.kv_gb > p.weights_gb
    gemma = _facts("gemma-3-270m")
    short, long = (predict(gemma, weight_format("none"), l4, ideal, 1, n, 32).kv_bytes_per_seq for n in (256, 16384))
    assert long < 16384 / 256 * short / 2  # 15 of 18 layers keep a 512-token window


def test_prefill_runs_the_output_head_once_per_prompt():
    """Both runtimes keep only the last position's logits: Gemma 3's 262k-vocabulary head is counted once, not 128 times."""
    from pipeline.predict import roofline

    gemma = _facts("gemma-3-270m")
    per_token = shapes.decode_flops_per_token(gemma.config, 64)
    head = gemma.head_params
    assert 2 * head > 0.5 * per_token  # the head is most of a decode token's FLOPs
    assert roofline.prefill_flops_per_seq(128, per_token, head) == pytest.approx(
        128 * (per_token - 2 * head) + 2 * head
    )
    slow = RuntimeFactors(
        "transformers", "cpu", compute_eff=0.01, prefill_eff=0.01
    )  # compute-bound prefill: TTFT follows the FLOPs
    ttft = predict(gemma, weight_format("none"), hardware("l4"), slow, 1, 128, 32).ttft_ms
    peak, _ = hardware("l4").peak_flops("bf16")
    assert ttft == pytest.approx(roofline.prefill_flops_per_seq(128, per_token, head) / (0.01 * peak) * 1e3, rel=0.01)


def test_fit_recovers_known_factors():
    truth = RuntimeFactors(
        "e",
        "cpu",
        bandwidth_eff=0.6,
        batched_bandwidth_eff=0.4,
        compute_eff=0.3,
        prefill_eff=0.45,
        step_overhead_ms=2.0,
        ttft_overhead_ms=12.0,
        overlap=0.4,
        layer_overhead_ms=0.25,
        kernel_speed={"gguf-q4_k_m": 0.5},
        provenance="truth",
        points=1,
    )
    points = []
    for gb, layers in ((0.5, 30), (2.0, 16), (8.0, 24)):
        for batch in (1, 4, 16, 64):
            for method, bytes_scale in (("none", 1.0), ("gguf-q4_k_m", 0.3)):
                weights = gb * 1e9 * bytes_scale
                p = MeasuredPoint(
                    f"m{gb}/{method}",
                    "e",
                    "cpu",
                    batch,
                    128,
                    weights,
                    weights + batch * 1e6,
                    gb * 1e9,
                    30e9,
                    1e12,
                    1.0,
                    1.0,
                    layers,
                    f"m{gb}",
                    method,
                )
                tpot, ttft = predicted(p, truth)
                points.append(MeasuredPoint(**{**p.__dict__, "tpot_s": tpot, "ttft_s": ttft}))
    got = fit(points, "e", "cpu", "synthetic")
    for name in (
        "bandwidth_eff",
        "batched_bandwidth_eff",
        "compute_eff",
        "prefill_eff",
        "step_overhead_ms",
        "ttft_overhead_ms",
        "overlap",
        "layer_overhead_ms",
    ):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=0.02), name
    assert got.speed_of("gguf-q4_k_m") == pytest.approx(0.5, rel=0.02) and got.speed_of("none") == 1.0
    assert "relative to none" in got.provenance
    assert geomean_abs_error((predicted(p, got)[0], p.tpot_s) for p in points) < 1e-3


def test_batch_one_points_leave_the_batched_bandwidth_unfitted():
    p = MeasuredPoint("m", "e", "cpu", 1, 128, 1e9, 1e9, 1e9, 30e9, 1e12, 0.05, 0.2, 16)
    got = fit(
        [p, MeasuredPoint(**{**p.__dict__, "label": "n", "weight_bytes": 2e9, "bytes_per_step": 2e9, "tpot_s": 0.09})],
        "e",
        "cpu",
        "one batch",
    )
    assert got.batched_bandwidth_eff is None and got.bandwidth_eff_at(8) == got.bandwidth_eff
    assert "batch 1 only" in got.provenance and not got.kernel_speed


def test_fit_on_points_the_harness_measured_predicts_them(tmp_path):
    """Real decode of a small published shape at batch 1 and 4: the fitted model is within 25 % of each."""
    from pipeline.runtime.speed.command import speed_command

    result = speed_command("smollm2-135m", "fp32", "none", [1, 4], 32, 8, "cpu", False, None, warmup=1, repeats=2)
    points = points_from_speed(result, "transformers")
    assert [p.batch for p in points] == [1, 4]
    assert all(p.flops_per_token and p.peak_flops and p.bandwidth > 1e9 for p in points)
    assert all(p.layers == 30 and p.head_params == 576 * 49152 for p in points)  # SmolLM2-135M's, from the speed result
    factors = fit(points, "transformers", "cpu", "test")
    assert 0.01 <= factors.bandwidth_eff <= 2.0
    for p in points:
        assert predicted(p, factors)[0] == pytest.approx(p.tpot_s, rel=0.25)
    path = tmp_path / "factors.json"
    fitting.save_factors([factors], path)
    assert fitting.factors_for("transformers", "cpu", path) == factors
    assert not fitting.factors_for("llama.cpp", "gpu", path).calibrated


def test_shipped_factors_say_where_they_came_from():
    shipped = fitting.load_factors()
    assert ("transformers", "cpu") in shipped
    for f in shipped.values():
        assert f.calibrated and "fitted" in f.provenance and 0.01 <= f.bandwidth_eff <= 2.0


def test_factors_stored_under_the_old_engine_key_stay_readable(tmp_path):
    """factors.json files (and benchmark point caches) written before the rename call the runtime "engine"."""
    path = tmp_path / "factors.json"
    old = {
        "engine": "llama.cpp",
        "device_kind": "cpu",
        "bandwidth_eff": 0.9,
        "provenance": "fitted on 3 points",
        "points": 3,
    }
    path.write_text(json.dumps({"note": "old", "factors": [old]}))
    assert fitting.factors_for("llama.cpp", "cpu", path) == RuntimeFactors(
        "llama.cpp", "cpu", bandwidth_eff=0.9, provenance="fitted on 3 points", points=3
    )
    fitting.save_factors([RuntimeFactors("transformers", "cpu", points=1)], path)
    saved = json.loads(path.read_text())["factors"]
    assert [e.get("runtime") for e in saved] == ["llama.cpp", "transformers"] and not any("engine" in e for e in saved)
    point = MeasuredPoint("m", "llama.cpp", "cpu", 1, 128, 1e9, 1e9, 1e9, 30e9, 1e12, 0.05, 0.2, 16)
    stored = {("engine" if k == "runtime" else k): v for k, v in point.__dict__.items()}
    assert fitting.point_from_dict(stored) == point


def test_published_configs_give_transformers_facts_without_transformers():
    """`predict` reads published shapes as plain dicts; each must size a model exactly as transformers' own config
    does (Gemma 3's sliding layers included: transformers derives them, the table states them)."""
    for name in shapes.PUBLISHED:
        plain, full = shapes.config_dict(name), shapes.published_config(name).to_dict()
        assert shapes.linear_params_per_token(plain) == shapes.linear_params_per_token(full), name
        assert (shapes.head_params(plain), shapes.layer_count(plain)) == (
            shapes.head_params(full),
            shapes.layer_count(full),
        ), name
        for context in (100, 600, 5000):
            assert shapes.kv_bytes_at_context(plain, context, 2) == shapes.kv_bytes_at_context(full, context, 2), (
                name,
                context,
            )
            assert shapes.decode_flops_per_token(plain, context) == shapes.decode_flops_per_token(full, context), (
                name,
                context,
            )
        assert plain.get("tie_word_embeddings", True) == full.get("tie_word_embeddings", True), name


def test_predict_command_for_published_configs():
    result = CliRunner().invoke(
        app, ["predict", "--config", "llama-3.1-8b,llama-3.2-3b", "--hardware", "h100-sxm", "--batch-sizes", "1,8,64"]
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "llama-3." in line and "│" in line]
    assert len(rows) == 6
    assert "NVIDIA H100" in result.output and "ideal roofline" in result.output


def test_predict_command_for_a_recipe_resolves_bundled_models_and_runtime():
    result = CliRunner().invoke(
        app, ["predict", "--recipe", "recipes/quickstart.yaml", "--hardware", "l4", "--dtype", "bf16"]
    )
    assert result.exit_code == 0, result.output
    assert "(llama.cpp)" in result.output
    for needle in ("gemma-3-270m", "smollm2-135m-instruct", "gguf-q4_k_m", "gguf-q8_0"):
        assert needle in result.output


def test_predict_takes_runtime_and_the_old_engine_spelling():
    outputs = []
    for flag in ("--runtime", "--engine"):
        result = CliRunner().invoke(
            app, ["predict", "--config", "llama-3.2-1b", "--hardware", "l4", flag, "llama.cpp", "--batch-sizes", "1"]
        )
        assert result.exit_code == 0, result.output
        assert "predicted on l4 (llama.cpp)" in result.output
        outputs.append(result.output)
    assert outputs[0] == outputs[1]


_NO_TORCH = """
import sys


class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is unimportable in this test")
        return None


sys.meta_path.insert(0, _Refuse())
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "llama-3.1-8b,gemma-3-270m", "--method", "none,gguf-q4_k_m", "--hardware", "h100-sxm"],
        ["--recipe", "recipes/quickstart.yaml", "--hardware", "l4", "--runtime", "llama.cpp"],
    ],
    ids=["config", "recipe"],
)
def test_predict_runs_with_torch_and_transformers_unimportable(tmp_path, args):
    """Predicting is arithmetic: `shrinkgate predict` must not need torch, transformers or any runtime loaded."""
    (tmp_path / "sitecustomize.py").write_text(_NO_TORCH)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "unimportable in this test" in blocked.stderr  # the hook is in force
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "predict", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "predicted on" in run.stdout and "decode tok/s" in run.stdout
    assert "gguf-q4_k_m" in run.stdout


def test_predict_command_for_a_model_folder(tmp_path):
    cfg = model_facts("smollm2-135m", "fp32").config | {"model_type": "llama"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(
        app, ["predict", "--model", str(tmp_path), "--hardware", "apple-m4-max", "--batch-sizes", "1"]
    )
    assert result.exit_code == 0, result.output
    assert tmp_path.name in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "llama-3.1-8b", "--hardware", "h900"], "--hardware 'h900': unknown; known:"),
        (
            ["--config", "llama-3.1-8b", "--hardware", "l4", "--method", "int3-magic"],
            "--method 'int3-magic': no format definition",
        ),
        (["--config", "llama-9b", "--hardware", "l4"], "model 'llama-9b': no config known offline; give --model DIR"),
        (["--hardware", "l4"], "give exactly one of --recipe, --config, --model"),
    ],
)
def test_predict_command_refuses_with_one_line(args, message):
    result = CliRunner().invoke(app, ["predict", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_this_host_comes_from_the_probes(monkeypatch):
    from pipeline.predict import hardware as hw_mod

    monkeypatch.setattr(host, "host_bandwidth", lambda device, n: 21.5)
    monkeypatch.setattr(host, "host_matmul_flops", lambda device, n, dtype: 1.2e11)
    me = hw_mod.hardware("this-host")
    assert me.bandwidth_gb_s == 21.5 and me.tflops == {"fp32": 0.12} and me.device_kind == "cpu"
    assert math.isfinite(me.memory_gb) and "measured on this host" in me.source


def test_a_policy_gates_on_predicted_speed_only_when_it_says_so():
    from pipeline.config.loader import RecipeError
    from pipeline.config.policy import parse_policy
    from pipeline.verdict.frontier import axis_by_name

    with pytest.raises(
        RecipeError,
        match="predicted_decode_tok_s_bs8 is a prediction, not a measurement -> set use_predicted_axes: true",
    ):
        parse_policy({"max_mmlu_drop_points": 1, "dominance_axes": ["decode_tok_s", "predicted_decode_tok_s_bs8"]})
    policy = parse_policy(
        {"max_mmlu_drop_points": 1, "dominance_axes": ["predicted_decode_tok_s_bs8"], "use_predicted_axes": True}
    )
    axis = axis_by_name(policy.dominance_axes[0])
    assert axis.metric == "predicted_decode_tok_s_bs8" and axis.higher_is_better and "predicted" in axis.title


def test_validate_refuses_an_unknown_target_hardware(tmp_path):
    import yaml

    doc = yaml.safe_load(open("recipes/quickstart.yaml"))
    doc["speed"]["target_hardware"] = "h900"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "field speed.target_hardware: 'h900': unknown; known:" in result.output and "Traceback" not in result.output


def test_validation_folds_hold_each_model_out_once_and_never_split_one():
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_error", REPO / "benchmarks" / "predict_error.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    base = MeasuredPoint("x", "llama.cpp", "cpu", 1, 128, 1e9, 1e9, 1e9, 30e9, 1e12, 0.05, 0.2, 16)
    points = [
        MeasuredPoint(**{**base.__dict__, "label": f"{m} ({t})", "model": m, "method": t, "batch": b})
        for m in ("a", "b", "c")
        for t in ("gguf-q4_0", "gguf-q8_0")
        for b in (1, 4)
    ]
    folds = bench.folds(points)
    assert len(folds) == 2
    held = []
    for fit_half, test_half in folds:
        assert not {p.shape for p in fit_half} & {
            p.shape for p in test_half
        }  # both quant types of a model stay together
        held += sorted({p.shape for p in test_half})
    assert sorted(held) == ["a", "b", "c"]
