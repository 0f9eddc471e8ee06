"""`shrinkgate speed`: size hardware for a published architecture without downloading it.

Builds the architecture from `shapes.PUBLISHED` with random non-zero weights (meta device ->
materialized on the target device), applies an in-memory compression method, measures decode and
prints a rich table. Load-time methods run through their in-memory form where the library has one
(bitsandbytes 4-bit: `Linear4bit` over the random weights); the others, and methods that need calibration
text, cannot run on a random in-memory model and are refused with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.config.recipe import SpeedSpec
from pipeline.models import shapes
from pipeline.results import SpeedResult
from pipeline.runtime.speed.measure import measure_decode
from pipeline.runtime.speed.torch_adapter import free_bytes


class SpeedCommandError(ValueError):
    """A request `shrinkgate speed` cannot serve; the message says why and what to do (the CLI prints it)."""


def _device(requested: str) -> str:
    from pipeline.env import DeviceUnavailable, pick_device

    try:
        return pick_device(requested)
    except DeviceUnavailable as exc:
        raise SpeedCommandError(f"--device {requested}: {exc}") from None


def _in_memory_method(name: str, params: dict[str, Any] | None, device: str):
    """The configured method, if it can transform an in-memory model here."""
    from pipeline.methods import Method, MethodError, make_method

    try:
        method = make_method(name, params)
    except MethodError as exc:
        raise SpeedCommandError(f"--method {name}: {exc}") from None
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if kind not in method.devices:
        raise SpeedCommandError(f"--method {name} runs on {', '.join(method.devices)} only, not {kind}")
    if method.quantizes_at_load and type(method).quantize_loaded is Method.quantize_loaded:
        raise SpeedCommandError(
            f"--method {name} quantizes while loading a checkpoint (from_pretrained); `speed` builds an in-memory "
            "random model, so only methods that transform a loaded model work here — measure it in a recipe sweep"
        )
    if method.needs_calibration:
        raise SpeedCommandError(
            f"--method {name} needs calibration text from a real tokenizer; measure it in a recipe sweep"
        )
    return method


@dataclass
class SpeedModel:
    """A published shape with random weights, compressed in memory, ready to time (and what it reads per token)."""

    model: Any
    method: str
    device: str
    weight_bytes_per_token: int
    kernel: str
    dense_fallback: bool
    label: str


def build_speed_model(
    config: str, dtype: str, method: str, device: str, *, method_params: dict[str, Any] | None = None, seed: int = 0
) -> SpeedModel:
    """Random weights of a published architecture on `device`, with `method` applied in memory."""
    from pipeline.methods import BuildContext
    from pipeline.variants.artifact import apply_steps
    from pipeline.variants.observe import observe_reads

    device = _device(device)
    try:
        shape = shapes.shape(config)
    except KeyError as exc:
        raise SpeedCommandError(f"--config: {exc.args[0]}") from None
    dt = shapes.torch_dtype(dtype)
    need = shapes.param_count(config) * torch.empty((), dtype=dt).element_size()
    free = free_bytes(device)
    if need > 0.9 * free:
        raise SpeedCommandError(
            f"{config} in {dtype} needs {need / 1e9:.1f} GB of weights; {device} has {free / 1e9:.1f} GB free — "
            "use a smaller config, a lower-precision dtype, or a bigger device"
        )
    m = _in_memory_method(method, method_params, device)
    if "compute_dtype" in type(m).model_fields and "compute_dtype" not in (method_params or {}):
        m = m.model_copy(update={"compute_dtype": shapes.DTYPES[dtype.lower()]})  # matmuls in the model's dtype
    model = shapes.random_model(config, dtype, device, seed)
    if m.quantizes_at_load:
        model = m.quantize_loaded(model, device)  # the layers from_pretrained would build, on the random weights
    model = apply_steps(model, [m], BuildContext(tokenizer=None, device=device))
    reads = observe_reads(model, compressed=m.kind != "none")  # what runs: a dense fallback reads dense bytes
    return SpeedModel(
        model=model,
        method=method,
        device=device,
        weight_bytes_per_token=reads.bytes_per_token,
        kernel=f"{m.kernel(device, model)}; observed: {reads.observation.summary()}",
        dense_fallback=reads.observation.dense_fallback,
        label=f"{config} (random, {shape.hub_id} shape)",
    )


def measure_speed_model(built: SpeedModel, spec: SpeedSpec, seed: int = 0) -> SpeedResult:
    """Time decode of a built model at every point `spec` asks for (`measure_decode`)."""
    return measure_decode(
        built.model,
        None,
        spec,
        weight_bytes_per_token=built.weight_bytes_per_token,
        device=built.device,
        kernel=built.kernel,
        dense_fallback=built.dense_fallback,
        model_name=built.label,
        method=built.method,
        seed=seed,
    )


def speed_command(
    config: str,
    dtype: str,
    method: str,
    batch_sizes: list[int],
    prompt_tokens: int,
    new_tokens: int,
    device: str,
    compile: bool,
    threads: int | None,
    *,
    method_params: dict[str, Any] | None = None,
    scenario: str | None = None,
    prompt_lengths: list[int] | None = None,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
) -> SpeedResult:
    """Measure decode of a published architecture (random weights) under `method` on `device`."""
    spec = SpeedSpec(
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        batch_sizes=batch_sizes,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
        scenario=scenario,  # type: ignore[arg-type]
        prompt_lengths=prompt_lengths,
        compile=compile,
    )
    built = build_speed_model(config, dtype, method, device, method_params=method_params, seed=seed)
    try:
        return measure_speed_model(built, spec, seed)
    finally:
        del built.model


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def print_table(results: SpeedResult | Sequence[SpeedResult], console: Any = None) -> None:
    """One row per (result, point): the memory-wall view (tok/s vs ceiling, MBU), then each run's host facts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if isinstance(results, SpeedResult):
        results = [results]

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped/logged: do not squeeze the table into 80 columns
            console = Console(width=170)
    table = Table(title="decode at the memory wall", show_lines=False)
    for col, just in (
        ("model", "left"),
        ("method", "left"),
        ("batch", "right"),
        ("prompt", "right"),
        ("TTFT ms", "right"),
        ("TPOT ms", "right"),
        ("ITL p99", "right"),
        ("tok/s", "right"),
        ("ceiling", "right"),
        ("MBU", "right"),
        ("MFU", "right"),
        ("peak MB", "right"),
        ("CV", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in results:
        label = r.model or "model"
        method = r.method + (" (dense fallback)" if r.dense_fallback else "")
        for p in r.points:
            fell = r.dense_fallback if p.dense_fallback is None else p.dense_fallback  # observed at this batch
            table.add_row(
                label,
                r.method + (" (dense fallback)" if fell else ""),
                str(p.batch_size),
                str(p.prompt_tokens),
                _fmt(p.ttft_ms),
                _fmt(p.tpot_ms, ".2f"),
                _fmt(p.itl_p99_ms, ".2f"),
                _fmt(p.decode_tok_s),
                _fmt(p.wall_tok_s),
                _fmt(p.mbu * 100, ".0f") + "%",
                "—" if p.mfu is None else f"{p.mfu * 100:.2f}%",
                _fmt(p.peak_mem_mb, ".0f"),
                f"{p.cv:.0%}",
            )
        for s in r.skipped:
            table.add_row(label, method, str(s["batch_size"]), str(s["prompt_tokens"]), *(["—"] * 8), "skipped")
    console.print(table)
    for r in results:
        facts = (
            f"{r.model or 'model'} / {r.method or '?'}: {r.device}, {r.threads} threads, {r.dtype}, timer {r.timer}, "
            f"KV cache {r.kv_cache}{', compiled' if r.compiled else ''}; measured bandwidth {r.bandwidth_gb_s:.1f} GB/s, "
            f"matmul {_fmt(r.matmul_tflops, '.3f')} TFLOP/s, compute-bound from batch ~{r.compute_bound_batch}; "
            f"weights read/token {r.weight_bytes_per_token / 1e6:.1f} MB; load avg {_fmt(r.load_avg, '.2f')}; "
            f"kernel: {r.kernel or 'n/a'} ({r.speed_kind})"
            + (
                f"; timed steps observed: {r.kernel_observed}"
                if r.kernel_observed and r.kernel_observed not in r.kernel
                else ""
            )
        )
        console.print(f"[dim]{escape(facts)}[/dim]")
        for w in r.warnings:
            console.print(f"[yellow]warning:[/yellow] {escape(w)}")
