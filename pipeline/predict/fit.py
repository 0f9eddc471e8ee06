"""Fitting each runtime's efficiency factors to measured decode points, and the factors shipped with the package.

A measured point carries what the roofline needs (bytes per step, FLOPs per token, the host's measured
bandwidth and matmul peak) and what it measured (TPOT, TTFT). The fit chooses bandwidth / compute / prefill
efficiency, how far memory and compute overlap, and fixed overheads that minimise the squared log-error of TPOT and TTFT together (scipy's
`least_squares`), so a factor is a property of the runtime, not of one model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import metrics as M
from pipeline.predict.roofline import RuntimeFactors, prefill_flops_per_seq, step_seconds, ttft_seconds
from pipeline.records import VariantRecord
from pipeline.results import SpeedResult

FACTORS_FILE = Path(__file__).with_name("factors.json")


@dataclass(frozen=True)
class MeasuredPoint:
    label: str  # model/variant (or config/method) it was measured on
    runtime: str
    device_kind: str  # cpu | gpu
    batch: int
    prompt_tokens: int
    weight_bytes: float  # read per decode step, shared by the batch
    bytes_per_step: float  # weights + batch x KV
    flops_per_token: float | None  # None: not known (the compute term is left out)
    bandwidth: float  # bytes/s the host's probe measured
    peak_flops: float | None
    tpot_s: float
    ttft_s: float | None
    layers: int = 0  # decoder layers (0: not known; the per-layer overhead cannot be charged)
    model: str = ""  # the architecture measured (held-out validation never splits one across halves); "": the label
    method: str = "none"  # whose kernel ran the matmuls (a method name, as `predict --method` takes it)
    head_params: int = (
        0  # output-head weights (prefill runs the head once per sequence); 0: not known, counted per token
    )

    @property
    def shape(self) -> str:
        return self.model or self.label


def points_from_speed(
    result: SpeedResult, runtime: str, label: str | None = None, method: str | None = None
) -> list[MeasuredPoint]:
    """Every measured batch of a `speed` result (the harness's own accounting of bytes and FLOPs)."""
    kind = "gpu" if result.device.startswith("cuda") else "cpu"
    peak = result.matmul_tflops * 1e12 if result.matmul_tflops else None
    return [
        MeasuredPoint(
            label=label or f"{result.model}/{result.method}",
            runtime=runtime,
            device_kind=kind,
            batch=p.batch_size,
            prompt_tokens=p.prompt_tokens,
            weight_bytes=float(result.weight_bytes_per_token),
            bytes_per_step=p.bytes_per_step,
            flops_per_token=p.flops_per_token,
            bandwidth=result.bandwidth_gb_s * 1e9,
            peak_flops=peak,
            tpot_s=p.tpot_ms / 1e3,
            ttft_s=p.ttft_ms / 1e3,
            layers=result.layers,
            model=result.model,
            method=method or result.method or "none",
            head_params=result.head_params,
        )
        for p in result.points
        if p.tpot_ms > 0 and p.bytes_per_step > 0
    ]


def points_from_record(record: VariantRecord) -> list[MeasuredPoint]:
    """A FINISHED child's decode points, read back from its metrics (batch 1 unsuffixed, `_bs<N>` otherwise)."""
    if record.status != "FINISHED":
        return []
    bandwidth = record.metric(M.BANDWIDTH_GB_S)
    if not bandwidth:  # a server on another host: its bandwidth was not measured
        return []
    tflops = record.metric(M.HOST_MATMUL_TFLOPS)
    device = record.tags.get(M.TAG_SPEED_DEVICE, "cpu")
    prompt = int(record.params.get(M.PARAM_SPEED_PROMPT_TOKENS, "0") or 0)
    layers = int(record.metric(M.MODEL_LAYERS) or 0)
    head = int(record.metric(M.HEAD_PARAMS) or 0)
    method = next((m for m in reversed(record.tags.get("method", "none").split("+")) if m != "none"), "none")
    batches = sorted(
        {1}
        | {
            int(k.rsplit("_bs", 1)[1])
            for k in record.metrics
            if k.startswith(M.TPOT_MS + "_bs") and k.rsplit("_bs", 1)[1].isdigit()
        }
    )
    out = []
    for b in batches:
        tpot, step_bytes = (
            record.metric(M.batch_metric(M.TPOT_MS, b)),
            record.metric(M.batch_metric(M.BYTES_PER_STEP, b)),
        )
        tok_s, mfu = record.metric(M.batch_metric(M.DECODE_TOK_S, b)), record.metric(M.batch_metric(M.MFU, b))
        if not tpot or not step_bytes:
            continue
        flops = mfu * tflops * 1e12 / tok_s if mfu and tflops and tok_s else None
        weights = record.metric(M.WEIGHT_BYTES_READ) or step_bytes  # unlogged: the step's bytes bound it from above
        ttft = record.metric(M.batch_metric(M.TTFT_MS, b))
        out.append(
            MeasuredPoint(
                label=record.label,
                runtime=record.runtime,
                device_kind="gpu" if device.startswith("cuda") else "cpu",
                batch=b,
                prompt_tokens=prompt,
                weight_bytes=weights,
                bytes_per_step=step_bytes,
                flops_per_token=flops,
                bandwidth=bandwidth * 1e9,
                peak_flops=tflops * 1e12 if tflops else None,
                tpot_s=tpot / 1e3,
                ttft_s=ttft / 1e3 if ttft else None,
                layers=layers,
                model=record.model,
                method=method,
                head_params=head,
            )
        )
    return out


def predicted(point: MeasuredPoint, f: RuntimeFactors) -> tuple[float, float | None]:
    """(TPOT s, TTFT s) the model gives for a measured point's bytes and FLOPs under `f`."""
    tpot, _ = step_seconds(
        point.bytes_per_step,
        point.batch,
        point.flops_per_token,
        point.bandwidth,
        point.peak_flops,
        f,
        point.layers,
        point.method,
    )
    prefill = (
        prefill_flops_per_seq(point.prompt_tokens, point.flops_per_token, point.head_params)
        if point.flops_per_token
        else None
    )
    ttft = (
        None
        if point.ttft_s is None
        else ttft_seconds(point.weight_bytes, point.batch, prefill, point.bandwidth, point.peak_flops, f, point.method)
    )
    return tpot, ttft


# the fitted factors: (name, start, lower, upper, fitted on a log scale)
FIT_PARAMS = (
    ("bandwidth_eff", 0.5, 0.01, 2.0, True),
    ("batched_bandwidth_eff", 0.5, 0.01, 2.0, True),
    ("compute_eff", 0.5, 0.01, 2.0, True),
    ("prefill_eff", 0.5, 0.01, 2.0, True),
    ("step_overhead_ms", 1.0, 0.0, 1e4, False),
    ("ttft_overhead_ms", 5.0, 0.0, 1e5, False),
    ("overlap", 0.5, 0.0, 1.0, False),
    ("layer_overhead_ms", 0.1, 0.0, 1e3, False),
)


def fit(points: Sequence[MeasuredPoint], runtime: str, device_kind: str, provenance: str) -> RuntimeFactors:
    """Factors minimising the log-error of TPOT and TTFT over `points` (all of one runtime and device kind)."""
    import numpy as np
    from scipy.optimize import least_squares

    if not points:
        raise ValueError(f"no measured points of {runtime} on {device_kind} to fit")
    pinned: dict[str, float | None] = {}
    if not any(p.flops_per_token and p.peak_flops for p in points):
        # no FLOPs known (a runtime that logs no MFU): compute terms cannot be fitted; pin them to the ideal
        pinned.update(compute_eff=1.0, prefill_eff=1.0, overlap=1.0)
        provenance += "; compute, prefill and overlap not fitted (no FLOPs known for these points): ideal"
    if not any(p.batch > 1 for p in points):
        pinned["batched_bandwidth_eff"] = None
        provenance += "; batch 1 only: the batched kernels' bandwidth is taken as batch 1's"
    if not any(p.layers for p in points):
        pinned["layer_overhead_ms"] = 0.0
        provenance += "; no layer counts known: no per-layer overhead"
    free = [spec for spec in FIT_PARAMS if spec[0] not in pinned]
    # each method's kernel its own arithmetic and streaming rates, relative to the reference: "none" where measured, else the first
    methods = sorted({p.method for p in points}, key=lambda m: (m != "none", m))
    extra = len(methods) - 1
    if len(methods) > 1:
        provenance += f"; kernel speeds relative to {methods[0]}'s"

    def factors(x) -> RuntimeFactors:
        values = {
            name: float(math.exp(v) if log else v) for (name, _, _, _, log), v in zip(free, x[: len(free)], strict=True)
        }
        speeds = {m: float(math.exp(v)) for m, v in zip(methods[1:], x[len(free) : len(free) + extra], strict=True)}
        streams = {m: float(math.exp(v)) for m, v in zip(methods[1:], x[len(free) + extra :], strict=True)}
        return RuntimeFactors(
            runtime,
            device_kind,
            **values,
            **pinned,
            kernel_speed=speeds,
            kernel_bandwidth=streams,
            provenance=provenance,
            points=len(points),
        )

    def residuals(x):
        f, out = factors(x), []
        for p in points:
            tpot, ttft = predicted(p, f)
            out.append(math.log(tpot / p.tpot_s))
            if ttft is not None and p.ttft_s:
                out.append(math.log(ttft / p.ttft_s))
        return out

    def scaled(v: float, log: bool) -> float:
        return math.log(v) if log else v

    x0 = np.array([scaled(start, log) for _, start, _, _, log in free] + [0.0] * 2 * extra)
    bounds = (
        [scaled(lo, log) for _, _, lo, _, log in free] + [math.log(0.05)] * 2 * extra,
        [scaled(hi, log) for _, _, _, hi, log in free] + [math.log(20.0)] * 2 * extra,
    )
    return factors(least_squares(residuals, x0, bounds=bounds).x)


def geomean_abs_error(pairs: Iterable[tuple[float, float]]) -> float:
    """Geometric mean of |predicted / measured - 1| (as the analytical-model papers report it)."""
    errs = [abs(p / m - 1) for p, m in pairs if m > 0]
    if not errs:
        return math.nan
    return math.exp(sum(math.log(max(e, 1e-6)) for e in errs) / len(errs))


def _renamed(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored factors or point entry with its runtime under today's key: files written before call it "engine"."""
    entry = dict(entry)
    if "engine" in entry:
        entry.setdefault("runtime", entry.pop("engine"))
    return entry


def point_from_dict(entry: dict[str, Any]) -> MeasuredPoint:
    """A measured point as `asdict` stored it (old files' "engine" read as `runtime`)."""
    return MeasuredPoint(**_renamed(entry))


def load_factors(path: Path = FACTORS_FILE) -> dict[tuple[str, str], RuntimeFactors]:
    if not path.is_file():
        return {}
    factors = [RuntimeFactors(**_renamed(e)) for e in json.loads(path.read_text())["factors"]]
    return {(f.runtime, f.device_kind): f for f in factors}


def factors_for(runtime: str, device_kind: str, path: Path = FACTORS_FILE) -> RuntimeFactors:
    """The fitted factors of `runtime` on this kind of device, else the ideal roofline (said in its provenance)."""
    return load_factors(path).get((runtime, device_kind)) or RuntimeFactors(runtime, device_kind)


def save_factors(fitted: Sequence[RuntimeFactors], path: Path = FACTORS_FILE, note: str = "") -> None:
    known = load_factors(path)
    known.update({(f.runtime, f.device_kind): f for f in fitted})
    doc = {
        "note": note or "fitted by benchmarks/predict_error.py --write-factors",
        "factors": [asdict(f) for f in known.values()],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
