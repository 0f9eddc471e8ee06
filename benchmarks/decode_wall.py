"""Decode at the memory wall: tok/s vs the measured-bandwidth ceiling (MBU), per method and batch.

One run prints a table (model, method, batch, tok/s, ceiling, MBU) plus the ratio of the harness's
batch-1 speed to a plain `model.generate()` of the same tokens (>= 1.0: the harness adds nothing).
Eager and compiled decode (static KV cache + torch.compile; on CPU with frozen weights and max-autotune
GEMM, ~2.5 min of autotuning per method on 2 cores) run side by side in one process.
Targets are printed beside the measured numbers; nothing is asserted.

Model, first that works: --model-dir (any HF dir); the bundled SmolLM2-135M-Instruct (fp32, via
`pipeline.models`); a published shape from the config table with random weights (--config).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode_wall.py            # CPU, SmolLM2-135M fp32
    .venv/bin/python benchmarks/decode_wall.py --config llama-3.1-8b --dtype bf16 --device cuda --modes eager compiled
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.recipe import SpeedSpec  # noqa: E402
from pipeline.env import pick_device  # noqa: E402
from pipeline.host import default_threads, host_bandwidth, host_matmul_flops  # noqa: E402
from pipeline.models import shapes  # noqa: E402
from pipeline.predict import roofline  # noqa: E402
from pipeline.results import SpeedResult  # noqa: E402
from pipeline.runtime.speed import measure_decode  # noqa: E402
from pipeline.runtime.speed.plan import prompt_ids  # noqa: E402
from pipeline.runtime.speed.timing import ClockTimer, CudaEventTimer  # noqa: E402
from pipeline.runtime.speed.torch_adapter import decode_once  # noqa: E402
from pipeline.variants.observe import observe_reads  # noqa: E402

TARGETS = {
    ("cpu", "smollm2"): ("fp32 SmolLM2-135M, batch 1, CPU", 0.60),
    ("cuda", "llama-3.1-8b"): ("bf16 8B-shaped Llama, batch 1, H100, compile", 0.85),
}


def load(args: argparse.Namespace, device: str) -> tuple[Any, Any, str]:
    """(model, tokenizer or None, label)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = shapes.torch_dtype(args.dtype)
    if args.model_dir:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).to(device).eval()
        return model, AutoTokenizer.from_pretrained(args.model_dir), Path(args.model_dir).name
    if args.config == "smollm2-135m" and not args.random:
        try:
            from pipeline.config.recipe import ModelSpec
            from pipeline.models import load_model, resolve_model

            spec = ModelSpec(
                name="smollm2-135m-instruct", source="smollm2-135m-instruct", dtype=str(dtype).removeprefix("torch.")
            )
            loaded = load_model(resolve_model(spec), spec, device=device)
            return loaded.model, loaded.tokenizer, "smollm2-135m-instruct (bundled)"
        except Exception as exc:  # noqa: BLE001 - fall back to the config-table shape, and say so
            print(f"[bundled SmolLM2 unavailable ({type(exc).__name__}: {exc}); using the config-table shape]")
    model = shapes.random_model(args.config, args.dtype, device)
    return model, None, f"{args.config} (random weights)"


def _apply(model: Any, method: str, device: str, tokenizer: Any) -> tuple[Any, str, bool]:
    from pipeline.methods import BuildContext, make_method
    from pipeline.variants.artifact import apply_steps
    from pipeline.variants.observe import observe_kernel

    m = make_method(method)
    model = apply_steps(model, [m], BuildContext(tokenizer=tokenizer, device=device))
    observed = observe_kernel(model, compressed=m.kind != "none")
    return model, f"{m.kernel(device, model)}; observed: {observed.summary()}", observed.dense_fallback


def harness_vs_generate(
    model: Any, tokenizer: Any, device: str, prompt: int, new_tokens: int, pairs: int
) -> dict[str, Any]:
    """Interleaved pairs of (harness decode, plain generate()) of the same prompt at batch 1.

    Ratio = median generate wall / median harness e2e (prefill + every token): >= 1 means the
    harness's loop is no slower than generate() doing the same work. Tokens are compared too.
    """
    from transformers import GenerationConfig

    vocab = model.config.get_text_config(decoder=True).vocab_size
    ids = prompt_ids(tokenizer, vocab, 1, prompt).to(device)
    gen_cfg = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    is_cuda = device.startswith("cuda")
    ours, theirs, same = [], [], True
    for i in range(pairs + 1):  # pair 0 warms both paths up
        timer = CudaEventTimer() if is_cuda else ClockTimer()
        tl, toks = decode_once(model, ids, new_tokens, timer=timer)
        if is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
        if is_cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter_ns() - t0
        if i == 0:
            continue
        ours.append(tl.e2e_ns)
        theirs.append(wall)
        same = same and torch.equal(out[:, ids.shape[1] :].cpu(), toks.cpu())
    h, g = statistics.median(ours), statistics.median(theirs)
    return {
        "harness_tok_s": new_tokens / (h * 1e-9),
        "generate_tok_s": new_tokens / (g * 1e-9),
        "ratio": g / h,
        "same_tokens": same,
        "pairs": pairs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None)
    ap.add_argument(
        "--config", default="smollm2-135m", help=f"shape from the table: {', '.join(sorted(shapes.PUBLISHED))}"
    )
    ap.add_argument(
        "--random", action="store_true", help="use the config-table shape even when the bundled model exists"
    )
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", nargs="+", default=["none", "int8-weight-only"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=5, help="harness/generate() pairs for the overhead ratio")
    ap.add_argument(
        "--attn", default=None, help="attention implementation to set (e.g. eager, sdpa); default: as loaded"
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=["eager", "compiled"],
        default=["eager", "compiled"],
        help="decode-step modes, side by side (compiled: static KV cache + torch.compile; on CPU with frozen weights and max-autotune GEMM)",
    )
    ap.add_argument("--compile", action="store_true", help="same as --modes compiled")
    ap.add_argument(
        "--refresh-host", action="store_true", help="re-probe bandwidth/matmul peaks (the cache keeps the best)"
    )
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    base, tokenizer, label = load(args, device)
    if args.refresh_host:
        host_bandwidth(device, threads, refresh=True)
        host_matmul_flops(device, threads, shapes.torch_dtype(args.dtype), refresh=True)
    base.requires_grad_(False)
    if args.attn:
        base.set_attn_implementation(args.attn)
    if args.compile:
        args.modes = ["compiled"]

    results: list[SpeedResult] = []
    ratio: dict[str, Any] | None = None
    for method in args.methods:
        model = base if method == "none" else copy.deepcopy(base)
        try:
            model, kernel, fallback = _apply(model, method, device, tokenizer)
        except Exception as exc:  # noqa: BLE001 - one method failing must not lose the table
            print(f"[method {method} skipped: {type(exc).__name__}: {exc}]")
            continue
        for mode in args.modes:
            spec = SpeedSpec(
                prompt_tokens=args.prompt_tokens,
                new_tokens=args.new_tokens,
                batch_sizes=args.batch_sizes,
                warmup=args.warmup,
                repeats=args.repeats,
                threads=threads,
                compile=mode == "compiled",
            )
            try:
                res = measure_decode(
                    model,
                    tokenizer,
                    spec,
                    weight_bytes_per_token=observe_reads(model, compressed=method != "none").bytes_per_token,
                    device=device,
                    kernel=kernel,
                    dense_fallback=fallback,
                    model_name=label,
                    method=method,
                )
            except Exception as exc:  # noqa: BLE001 - e.g. a quantized tensor subclass that inductor cannot freeze
                print(
                    f"[method {method} ({mode}) skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]"
                )
                continue
            results.append(res)
        if method == "none":
            ratio = harness_vs_generate(model, tokenizer, device, args.prompt_tokens, args.new_tokens, args.pairs)
        if model is not base:
            del model

    print_report(results, ratio, args, device)
    return 0


def _target(device: str, label: str, batch: int, compiled: bool) -> tuple[str, float] | None:
    kind = "cuda" if device.startswith("cuda") else "cpu"
    for (dev, key), target in TARGETS.items():
        # The GPU target is stated for compiled decode; the CPU target for either mode.
        if dev == kind and key in label.lower() and batch == 1 and (compiled or dev == "cpu"):
            return target
    return None


def _mode(r: SpeedResult) -> str:
    return f"compiled, {r.kv_cache} KV" if r.compiled else f"eager, {r.kv_cache} KV"


def print_report(
    results: list[SpeedResult], ratio: dict[str, Any] | None, args: argparse.Namespace, device: str
) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    table = Table(title="decode_wall: tok/s against the memory wall (measured bandwidth)")
    for col in (
        "model",
        "method",
        "mode",
        "kernel",
        "batch",
        "TPOT ms",
        "tok/s",
        "ceiling",
        "MBU",
        "MFU",
        "CV",
        "target MBU",
    ):
        table.add_column(col, justify="left" if col in ("model", "method", "kernel") else "right")
    for r in results:
        for p in r.points:
            tgt = _target(device, r.model, p.batch_size, r.compiled) if r.method == "none" else None
            table.add_row(
                r.model,
                r.method + (" (dense fallback)" if r.dense_fallback else ""),
                _mode(r),
                r.kernel,
                str(p.batch_size),
                f"{p.tpot_ms:.1f}",
                f"{p.decode_tok_s:.1f}",
                f"{p.wall_tok_s:.1f}",
                f"{p.mbu:.0%}",
                "—" if p.mfu is None else f"{p.mfu:.1%}",
                f"{p.cv:.0%}",
                f">= {tgt[1]:.0%} ({tgt[0]})" if tgt else "",
            )
        for s in r.skipped:
            table.add_row(
                r.model, r.method, _mode(r), r.kernel, str(s["batch_size"]), "—", "—", "—", "—", "—", "—", s["reason"]
            )
    console.print(table)
    if results:
        r0 = results[0]
        console.print(
            f"host: {r0.device}, {r0.threads} threads, {r0.dtype}; measured bandwidth {r0.bandwidth_gb_s:.1f} GB/s, "
            f"matmul {r0.matmul_tflops or 0:.3f} TFLOP/s; load avg {r0.load_avg}; prompt {args.prompt_tokens}, "
            f"{args.new_tokens} new tokens, {args.repeats} repeats"
        )
        for mode in sorted({r.compile_mode for r in results if r.compile_mode}):
            console.print(f"compiled = {mode}")
        console.print(f"compute-bound from batch ~{r0.compute_bound_batch} on this host (roofline, measured peaks)")
        for r in results:
            base = next((b for b in results if b.method == "none" and b.compiled == r.compiled), None)
            if base is not None and r is not base:
                cb = roofline.crossover_batch(base.points, r.points)
                console.print(
                    f"crossover {r.method} vs none ({_mode(r)}): "
                    + (
                        f"stops beating the unmodified model at batch {cb}"
                        if cb
                        else "beats it at every measured batch"
                    )
                )
        for r in results:
            for w in r.warnings:
                console.print(f"[yellow]warning ({escape(r.method)}):[/yellow] {escape(w)}")
    if ratio:
        verdict = "ok" if ratio["ratio"] >= 1.0 else "BELOW 1.0"
        console.print(
            f"harness vs generate() at batch 1 ({ratio['pairs']} interleaved pairs): harness {ratio['harness_tok_s']:.1f} tok/s, "
            f"generate {ratio['generate_tok_s']:.1f} tok/s, ratio {ratio['ratio']:.3f} (target >= 1.0: {verdict}); "
            f"same tokens: {'yes' if ratio['same_tokens'] else 'NO'}"
        )
    console.print(
        "targets: fp32 SmolLM2-135M batch 1 on CPU >= 60% MBU; bf16 8B-shaped Llama batch 1 on H100 >= 85% MBU with --compile"
    )


if __name__ == "__main__":
    raise SystemExit(main())
