"""Speed results as MLflow metric/tag dicts (names from `pipeline.metrics`); no MLflow import here."""

from __future__ import annotations

from pipeline import metrics as M
from pipeline.results import SpeedPoint, SpeedResult


def _point_values(p: SpeedPoint) -> dict[str, float | None]:
    return {
        M.TTFT_MS: p.ttft_ms,
        M.TPOT_MS: p.tpot_ms,
        M.DECODE_TOK_S: p.decode_tok_s,
        M.PREFILL_TOK_S: p.prefill_tok_s,
        M.PEAK_MEM_MB: p.peak_mem_mb,
        M.WALL_TOK_S: p.wall_tok_s,
        M.MBU: p.mbu,
        M.TTFT_P90_MS: p.ttft_p90_ms,
        M.TPOT_P90_MS: p.tpot_p90_ms,
        M.ITL_P50_MS: p.itl_p50_ms,
        M.ITL_P90_MS: p.itl_p90_ms,
        M.ITL_P99_MS: p.itl_p99_ms,
        M.E2E_MS: p.e2e_ms,
        M.MFU: p.mfu,
        M.SPEED_CV: p.cv,
        M.BYTES_PER_TOKEN: p.bytes_per_token,
        M.BYTES_PER_STEP: p.bytes_per_step,
    }


def speed_metrics(result: SpeedResult) -> dict[str, float]:
    """Per-point metrics: `name` at batch 1, `name_bs<N>` otherwise (`metrics.batch_metric`); points at
    other prompt lengths than the first measured one get a `_p<len>` suffix. Plus host-level figures."""
    out: dict[str, float] = {}
    primary = result.points[0].prompt_tokens if result.points else None
    for p in result.points:
        suffix = "" if p.prompt_tokens == primary else f"_p{p.prompt_tokens}"
        for name, value in _point_values(p).items():
            if value is not None:
                out[M.batch_metric(name, p.batch_size) + suffix] = float(value)
    out[M.BANDWIDTH_GB_S] = result.bandwidth_gb_s
    out[M.SPEED_THREADS] = float(result.threads)
    if result.matmul_tflops is not None:
        out[M.HOST_MATMUL_TFLOPS] = result.matmul_tflops
    if result.load_avg is not None:
        out[M.HOST_LOAD_AVG] = result.load_avg
    if result.compute_bound_batch is not None:
        out[M.COMPUTE_BOUND_BATCH] = float(result.compute_bound_batch)
    if result.points:
        out[M.KV_BYTES_PER_TOKEN] = float(result.points[0].kv_bytes_per_token)
    return out


def speed_tags(result: SpeedResult) -> dict[str, str]:
    tags = {
        M.TAG_SPEED_TIMER: result.timer,
        M.TAG_SPEED_COMPILED: str(result.compiled).lower(),
        M.TAG_SPEED_KV_CACHE: result.kv_cache,
        M.TAG_SPEED_DEVICE: result.device,
        M.TAG_DENSE_FALLBACK: str(result.dense_fallback).lower(),
    }
    if result.kernel:
        tags[M.TAG_KERNEL] = result.kernel
    if result.compile_mode:
        tags[M.TAG_SPEED_COMPILE_MODE] = result.compile_mode
    if result.scenario:
        tags[M.TAG_SPEED_SCENARIO] = result.scenario
    if result.skipped:
        tags[M.TAG_SPEED_SKIPPED] = ",".join(f"{s['batch_size']}@{s['prompt_tokens']}" for s in result.skipped)
    return tags
