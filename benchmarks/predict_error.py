"""How far `shrinkgate predict` is from what was measured: geomean absolute error of decode tok/s and TTFT,
per engine and batch size, with the engine factors fitted on one half of the models and tested on the other.

Measured points come from `--measure DIR` (published shapes with random weights, timed here by the same
harness as `shrinkgate speed`, one JSON per shape, resumable) and from the FINISHED children of sweeps in
MLflow stores (`--store URI`: every sweep in it, e.g. the quickstart's, the methods tour's, the engines benchmark's).
Models are split by name, alternately in sorted order, so no model is in both halves. `--write-factors`
fits each engine on all its points and writes `pipeline/predict/factors.json` with their provenance.
Nothing is asserted: the goal (<= 10 % geomean on this host's measurements) is printed beside the figures.

    .venv/bin/python benchmarks/predict_error.py --measure ~/.cache/shrinkgate/bench/predict \\
        --store sqlite:///mlruns/mlflow.db --write-factors
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.predict.calibration import MeasuredPoint, fit, geomean_abs_error, points_from_record, points_from_speed, predicted, save_factors  # noqa: E402
from pipeline.predict.roofline_model import EngineFactors  # noqa: E402

GOAL = 0.10
CONFIGS = ["smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "llama-3.2-1b"]


def measure(out_dir: Path, configs: list[str], batches: list[int], dtype: str, prompt: int, new: int) -> list[MeasuredPoint]:
    """Each shape's decode at every batch (random weights, transformers, eager); a shape already in `out_dir` is read back."""
    from pipeline.runtime.speed.command import speed_command
    from pipeline.runtime.speed.host import cpu_model, load_average

    out_dir.mkdir(parents=True, exist_ok=True)
    points = []
    for config in configs:
        path = out_dir / f"{config}-{dtype}-p{prompt}.json"
        if not path.is_file():
            load = load_average()
            started = time.perf_counter()
            result = speed_command(config, dtype, "none", batches, prompt, new, "auto", False, None)
            record = {
                "points": [asdict(p) for p in points_from_speed(result, "transformers", f"{config} ({dtype})")],
                "cpu": cpu_model(), "machine": platform.machine(), "load_before": load, "load_after": load_average(),
                "seconds": time.perf_counter() - started, "device": result.device, "threads": result.threads,
            }
            path.write_text(json.dumps(record, indent=1))
            print(f"  measured {config}: {record['seconds']:.0f} s, load {load:.2f} -> {record['load_after']:.2f}", flush=True)
        points += [MeasuredPoint(**p) for p in json.loads(path.read_text())["points"]]
    return points


def from_store(uri: str) -> list[MeasuredPoint]:
    """Every FINISHED child of every sweep in the store that measured decode on this host."""
    from pipeline.tracking.read import measured_children

    return [p for r in measured_children(uri) for p in points_from_record(r)]


def halves(points: list[MeasuredPoint]) -> tuple[list[MeasuredPoint], list[MeasuredPoint]]:
    labels = sorted({p.label for p in points})
    fit_labels = set(labels[0::2])
    return [p for p in points if p.label in fit_labels], [p for p in points if p.label not in fit_labels]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", type=Path, default=None, help="measure published shapes here (resumes)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--store", action="append", default=[], metavar="URI", help="an MLflow store: every measured child of every sweep in it")
    ap.add_argument("--write-factors", action="store_true", help="fit every engine on all its points and write pipeline/predict/factors.json")
    args = ap.parse_args()

    points: list[MeasuredPoint] = []
    if args.measure:
        points += measure(args.measure.expanduser(), args.configs.split(","), [int(b) for b in args.batch_sizes.split(",")], args.dtype, args.prompt_tokens, args.new_tokens)
    for uri in args.store:
        points += from_store(uri)
    if not points:
        print("no measured points: give --measure DIR and/or --store URI", file=sys.stderr)
        return 2

    groups: dict[tuple[str, str], list[MeasuredPoint]] = defaultdict(list)
    for p in points:
        groups[(p.engine, p.device_kind)].append(p)
    print("\n| engine | model (held out) | batch | measured tok/s | predicted | error | measured TTFT ms | predicted | error | ideal roofline tok/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    fitted = []
    for (engine, kind), group in sorted(groups.items()):
        fit_half, test_half = halves(group)
        if not fit_half or not test_half:
            print(f"| {engine} ({kind}) | only {len({p.label for p in group})} model(s): no held-out half |")
            continue
        factors = fit(fit_half, engine, kind, "held-out validation")
        ideal = EngineFactors(engine, kind)
        by_batch: dict[int, list[tuple[MeasuredPoint, float, float | None, float]]] = defaultdict(list)
        for p in sorted(test_half, key=lambda p: (p.label, p.batch)):
            tpot, ttft = predicted(p, factors)
            ideal_tpot, _ = predicted(p, ideal)
            by_batch[p.batch].append((p, tpot, ttft, ideal_tpot))
            tok, ptok = p.batch / p.tpot_s, p.batch / tpot
            ttft_cells = "| — | — | —" if ttft is None or not p.ttft_s else f"| {p.ttft_s * 1e3:.1f} | {ttft * 1e3:.1f} | {ttft / p.ttft_s - 1:+.0%}"
            print(f"| {engine} ({kind}) | {p.label} | {p.batch} | {tok:.1f} | {ptok:.1f} | {ptok / tok - 1:+.0%} {ttft_cells} | {p.batch / ideal_tpot:.1f} |")
        for b, rows in sorted(by_batch.items()):
            tok_err = geomean_abs_error((p.batch / t, p.batch / p.tpot_s) for p, t, _, _ in rows)
            ttft_err = geomean_abs_error((t, p.ttft_s) for p, _, t, _ in rows if t is not None and p.ttft_s)
            ideal_err = geomean_abs_error((p.batch / i, p.batch / p.tpot_s) for p, _, _, i in rows)
            summary.append((engine, kind, b, len(rows), tok_err, ttft_err, ideal_err))
        if args.write_factors:
            labels = sorted({p.label for p in group})
            provenance = (
                f"fitted by benchmarks/predict_error.py on {len(group)} points of {len(labels)} models ({', '.join(labels)}), "
                f"{platform.node()} {time.strftime('%Y-%m-%d')}"
            )
            fitted.append(fit(group, engine, kind, provenance))
    print("\n| engine | batch | held-out points | decode tok/s geomean error | TTFT geomean error | ideal roofline tok/s error | goal |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for engine, kind, b, n, tok_err, ttft_err, ideal_err in summary:
        print(f"| {engine} ({kind}) | {b} | {n} | {tok_err:.1%} | {ttft_err:.1%} | {ideal_err:.1%} | <= {GOAL:.0%} decode |")
    for f in fitted:
        print(
            f"\nfitted {f.engine} ({f.device_kind}): bandwidth x{f.bandwidth_eff:.3f}, compute x{f.compute_eff:.3f}, prefill x{f.prefill_eff:.3f}, "
            f"overlap {f.overlap:.2f}, +{f.step_overhead_ms:.2f} ms/step, +{f.ttft_overhead_ms:.1f} ms TTFT ({f.points} points)"
        )
    if fitted:
        save_factors(fitted)
        print("wrote pipeline/predict/factors.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
