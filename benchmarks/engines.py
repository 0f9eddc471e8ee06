"""One model, two engines: SmolLM2-135M decode tok/s and MBU on transformers (eager and compiled fp32) and on
llama.cpp (f32, q8_0, q4_k_m, q4_0, and the published Q4_1 file), side by side in one run, batch 1 and 4.

Every figure comes from the pipeline's own measuring code (`measure_decode` for transformers,
`LlamaCppRuntime.decode` for llama.cpp, same prompts, same timer, same bandwidth probe); the GGUF files are
built the way a sweep builds them (f32 export of the dense model, then llama.cpp's quantizer). The table
gives each row's decode speed as a multiple of transformers eager at the same batch; targets are printed
beside the measured numbers, nothing is asserted. Run it with nothing else on the machine: the load average
is printed with the table.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/engines.py                # ~6 min on 2 cores (compile ~2-3 min)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/engines.py --no-compile
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.bindings.llamacpp import cpu_features  # noqa: E402
from pipeline.config.recipe import ModelSpec, SpeedSpec  # noqa: E402
from pipeline.host import default_threads, host_bandwidth, load_average  # noqa: E402
from pipeline.methods import make_method  # noqa: E402
from pipeline.models import load_model, resolve_model  # noqa: E402
from pipeline.models.gguf_facts import tensor_census  # noqa: E402
from pipeline.results import FidelityRecord, SpeedResult  # noqa: E402
from pipeline.runtime.llamacpp import LlamaCppRuntime  # noqa: E402
from pipeline.runtime.speed import measure_decode  # noqa: E402
from pipeline.variants.artifact import GGUFArtifact  # noqa: E402
from pipeline.variants.gguf_export import export_gguf  # noqa: E402
from pipeline.variants.observe import observe_reads  # noqa: E402

GGUF_TYPES = ("gguf-f32", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0")
TARGETS = (
    "best 4-bit llama.cpp type >= 4.0x transformers eager (batch 1)",
    "llama.cpp q4_k_m >= 2.5x transformers eager (batch 1)",
    "llama.cpp f32 MBU >= 60% of the measured read bandwidth (batch 1)",
)


def _gguf_artifact(path: Path, label: str) -> GGUFArtifact:
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
    return GGUFArtifact("smollm2-135m-instruct", label, "candidate", path, None, fidelity, (label,))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="default: every core this process may use")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--no-compile", action="store_true", help="skip transformers compiled (its autotuning takes minutes)"
    )
    args = ap.parse_args(argv)
    threads = args.threads or default_threads()
    spec = dict(
        prompt_tokens=args.prompt,
        new_tokens=args.new,
        batch_sizes=args.batches,
        warmup=1,
        repeats=args.repeats,
        threads=threads,
    )
    import torch

    torch.set_num_threads(threads)
    bandwidth = host_bandwidth("cpu", threads)
    load_before = load_average()
    model_spec = ModelSpec(name="smollm2-135m-instruct", source="smollm2-135m-instruct")
    resolved = resolve_model(model_spec)
    loaded = load_model(resolved, model_spec, device="cpu")
    weight_bytes = observe_reads(loaded.model, compressed=False).bytes_per_token
    rows: list[tuple[str, str, SpeedResult]] = []
    for mode in ("eager",) + (() if args.no_compile else ("compiled",)):
        res = measure_decode(
            loaded.model,
            loaded.tokenizer,
            SpeedSpec(**spec, compile=mode == "compiled"),
            weight_bytes_per_token=weight_bytes,
            device="cpu",
            bandwidth_gb_s=bandwidth,
        )
        rows.append(("transformers", f"fp32 {mode}", res))
    runtime = LlamaCppRuntime()
    with tempfile.TemporaryDirectory(prefix="shrinkgate-engines-") as tmp:
        f32 = export_gguf(
            loaded.model,
            loaded.tokenizer,
            Path(tmp) / "f32.gguf",
            source_gguf=resolved.gguf_path,
            model_name=model_spec.name,
            workdir=Path(tmp),
        )
        del loaded
        files = {"gguf-f32": f32}
        for name in GGUF_TYPES[1:]:
            files[name] = Path(tmp) / f"{name}.gguf"
            make_method(name).quantize_file(f32, files[name], threads=threads, notes={})
        files["published Q4_1"] = Path(resolved.gguf_path)
        for name, path in files.items():
            res = runtime.decode(_gguf_artifact(path, name), SpeedSpec(**spec))
            rows.append(("llama.cpp", name.removeprefix("gguf-"), res))
    print_table(rows, args.batches, bandwidth, threads, load_before)
    return 0


def print_table(
    rows: list[tuple[str, str, SpeedResult]],
    batches: list[int],
    bandwidth: float,
    threads: int,
    load_before: float | None,
) -> None:
    from rich.console import Console
    from rich.table import Table

    eager = {b: rows[0][2].at_batch(b) for b in batches}
    table = Table(title="SmolLM2-135M decode: transformers vs llama.cpp (one run, same prompts and timer)")
    for col in (
        "engine",
        "weights",
        "batch",
        "decode tok/s",
        "x eager",
        "MBU",
        "ceiling tok/s",
        "MB read/token",
        "TTFT ms",
        "prefill tok/s",
        "cv",
    ):
        table.add_column(col, justify="left" if col in ("engine", "weights") else "right")
    for engine, label, res in rows:
        for b in batches:
            p = res.at_batch(b)
            if p is None:
                table.add_row(engine, label, str(b), "skipped", "", "", "", "", "", "", "")
                continue
            base = eager.get(b)
            ratio = f"{p.decode_tok_s / base.decode_tok_s:.2f}x" if base and base.decode_tok_s else ""
            table.add_row(
                engine,
                label,
                str(b),
                f"{p.decode_tok_s:.1f}",
                ratio,
                f"{p.mbu:.0%}",
                f"{p.wall_tok_s:.1f}",
                f"{p.bytes_per_token / 1e6:.1f}",
                f"{p.ttft_ms:.0f}",
                f"{p.prefill_tok_s:.0f}",
                f"{p.cv:.2f}",
            )
    console = Console(width=160)
    console.print(table)
    flags = " ".join(cpu_features())
    console.print(
        f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads; measured read bandwidth "
        f"{bandwidth:.1f} GB/s; llama.cpp CPU features: {flags}; load average before {load_before}, after {load_average()}"
    )
    by = {(e, lbl): r.at_batch(1) for e, lbl, r in rows}
    base = by.get(("transformers", "fp32 eager"))
    if base:
        four_bit = {
            lbl: p.decode_tok_s / base.decode_tok_s
            for (e, lbl), p in by.items()
            if e == "llama.cpp" and p and lbl in ("q4_k_m", "q4_0")
        }
        best = max(four_bit.items(), key=lambda kv: kv[1]) if four_bit else None
        f32 = by.get(("llama.cpp", "f32"))
        measured = (
            f"{best[0]} {best[1]:.2f}x" if best else "n/a",
            f"{four_bit.get('q4_k_m', float('nan')):.2f}x",
            f"{f32.mbu:.0%}" if f32 else "n/a",
        )
        for target, value in zip(TARGETS, measured):
            console.print(f"target: {target}: measured {value}")


if __name__ == "__main__":
    sys.exit(main())
