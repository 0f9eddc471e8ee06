"""`shrinkgate speed` pieces: the published-shape table, random models, method gating, table, metric names."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline import host
from pipeline import metrics as M
from pipeline.models import shapes
from pipeline.results import SpeedPoint, SpeedResult
from pipeline.runtime.speed import command, harness


@pytest.fixture(autouse=True)
def _isolated_host_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(host.CACHE_ENV, str(tmp_path / "host.json"))


@pytest.mark.parametrize("name", sorted(shapes.PUBLISHED))
def test_published_shapes_match_the_model_cards_parameter_count(name):
    from pipeline.models.shapes import linear_params_per_token

    s = shapes.PUBLISHED[name]
    cfg = shapes.published_config(name)
    # linears incl. lm_head, plus the input embedding when untied (norms and biases are < 1%)
    total = linear_params_per_token(cfg) + (0 if s.tie_word_embeddings else s.vocab_size * s.hidden_size)
    assert total == pytest.approx(s.published_params, rel=0.01)


def test_meta_model_parameter_count_is_exact_for_smollm2():
    assert shapes.param_count("smollm2-135m") == 134_515_008  # what the published checkpoint loads as


def test_random_model_is_materialized_with_nonzero_weights():
    model = shapes.random_model("smollm2-135m", "fp32", "cpu")
    assert model.device.type == "cpu" and model.dtype == torch.float32
    w = model.model.layers[0].mlp.up_proj.weight
    w = w.detach()
    assert float((w == 0).float().mean()) < 1e-3 and 0.01 < float(w.std()) < 0.03
    assert torch.all(model.model.norm.weight == 1)
    inv = model.model.rotary_emb.inv_freq
    assert inv[0] == pytest.approx(1.0) and torch.all(inv[1:] < inv[:-1])  # RoPE recomputed, not garbage
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as published
    with torch.inference_mode():
        logits = model(torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(logits).all()


def test_unknown_config_and_dtype_are_named():
    with pytest.raises(KeyError, match="known: .*llama-3.1-8b"):
        shapes.shape("llama-9")
    with pytest.raises(ValueError, match="fp32, bf16"):
        shapes.torch_dtype("int3")


def test_speed_command_refuses_what_it_cannot_do():
    with pytest.raises(command.SpeedCommandError, match="needs 141.* GB"):
        command.speed_command("llama-3.1-70b", "bf16", "none", [1], 8, 4, "cpu", False, 1)
    with pytest.raises(command.SpeedCommandError, match="--config: unknown config 'gpt-9'"):
        command.speed_command("gpt-9", "bf16", "none", [1], 8, 4, "cpu", False, 1)
    with pytest.raises(
        command.SpeedCommandError, match="while loading a checkpoint"
    ):  # LLM.int8 has no in-memory form here
        command.speed_command("smollm2-135m", "fp32", "bnb-int8", [1], 8, 4, "cpu", False, 1)


def test_bnb_4bit_runs_in_memory_as_the_layers_from_pretrained_builds(monkeypatch):
    import bitsandbytes as bnb

    from pipeline.variants.storage import storage_bytes

    monkeypatch.setitem(
        shapes.PUBLISHED,
        "tiny-speed-test",
        shapes.PublishedShape("test/tiny", "llama", 128, 256, 2, 4, 2, 512, False, 32),
    )
    dense = command.build_speed_model("tiny-speed-test", "bf16", "none", "cpu")
    built = command.build_speed_model("tiny-speed-test", "bf16", "bnb-nf4", "cpu")
    layers = [m for m in built.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7 and not isinstance(built.model.lm_head, bnb.nn.Linear4bit)  # lm_head stays dense
    assert all(m.weight.quant_type == "nf4" and m.compute_dtype == torch.bfloat16 for m in layers)  # the model's dtype
    stored, full = storage_bytes(built.model), storage_bytes(dense.model)
    assert full.bits_per_weight == 16 and 4 < stored.bits_per_weight < 4.6  # 4-bit values + fp32 absmax per 64
    assert stored.linear_count == full.linear_count
    x = torch.randint(3, 512, (1, 8))
    with torch.no_grad():  # same weights, quantized: the logits move a little, not arbitrarily
        a, b = dense.model(x).logits.float(), built.model(x).logits.float()
    assert 0 < (a - b).abs().max() < 0.5 * a.abs().max()


def test_speed_command_end_to_end_with_an_in_memory_method(monkeypatch):
    monkeypatch.setattr(harness, "bandwidth_probe", lambda device, threads: {"bandwidth_gb_s": 20.0, "load_avg": 0.0})
    monkeypatch.setattr(harness, "host_matmul_flops", lambda device, threads, dtype: 1e11)
    res = command.speed_command("smollm2-135m", "fp32", "none", [1], 4, 2, "cpu", False, 1, repeats=1, warmup=0)
    assert res.method == "none" and not res.dense_fallback and "dense" in res.kernel
    assert res.points[0].decode_tok_s > 0 and 0 < res.points[0].mbu <= 1.5
    assert res.weight_bytes_per_token > 100e6  # ~135M fp32 weights (tied embedding counted once)
    assert res.points[0].kv_bytes_per_token == 30 * 2 * 3 * 64 * 4

    from rich.console import Console

    pruned = dataclasses.replace(
        res,
        method="magnitude-prune",
        dense_fallback=True,
        skipped=({"batch_size": 64, "prompt_tokens": 4, "reason": "oom"},),
    )
    console = Console(record=True, width=220)
    command.print_table([res, pruned], console=console)
    text = console.export_text()
    assert "MBU" in text and "magnitude-prune (dense fallback)" in text and "dense-fallback speed" in text
    assert "skipped" in text and "smollm2-135m" in text
    console = Console(record=True, width=220)
    command.print_table(res, console=console)  # one result, as the CLI passes it
    assert "smollm2-135m" in console.export_text()


def _point(batch: int, prompt: int = 128) -> SpeedPoint:
    return SpeedPoint(
        batch_size=batch,
        prompt_tokens=prompt,
        new_tokens=32,
        ttft_ms=10,
        ttft_p90_ms=11,
        tpot_ms=5,
        tpot_p90_ms=6,
        itl_p99_ms=7,
        e2e_ms=165,
        decode_tok_s=200 * batch,
        prefill_tok_s=1000,
        peak_mem_mb=500,
        bytes_per_token=1e6,
        wall_tok_s=300 * batch,
        mbu=0.66,
        cv=0.02,
        mfu=0.01,
    )


def test_speed_metrics_use_the_shared_names():
    res = SpeedResult(
        points=(_point(1), _point(4), _point(1, 512)),
        bandwidth_gb_s=20.0,
        device="cpu",
        threads=2,
        timer="t",
        matmul_tflops=0.1,
        compute_bound_batch=9,
        kernel="dense",
        scenario="server",
        skipped=({"batch_size": 64, "prompt_tokens": 128, "reason": "oom"},),
        layers=30,
        head_params=576 * 49152,
    )
    m = res.metrics()
    for name in M.PER_BATCH:
        assert name in m and M.batch_metric(name, 4) in m
    assert m[M.DECODE_TOK_S] == 200 and m["decode_tok_s_bs4"] == 800 and m["decode_tok_s_p512"] == 200
    assert m[M.BANDWIDTH_GB_S] == 20.0 and m[M.COMPUTE_BOUND_BATCH] == 9 and m[M.MFU] == 0.01
    assert m[M.MODEL_LAYERS] == 30 and m[M.HEAD_PARAMS] == 576 * 49152
    tags = res.tags()
    assert tags[M.TAG_DENSE_FALLBACK] == "false" and tags[M.TAG_SPEED_SKIPPED] == "64@128"
