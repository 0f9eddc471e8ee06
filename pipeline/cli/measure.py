"""Commands that measure or predict without a sweep: speed (random weights of a published shape), predict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import app, console, fail, parse_batch_sizes, split_csv, user_errors
from pipeline.env import tracking_uri as resolve_tracking_uri


@app.command()
def speed(
    config: str = typer.Option(..., "--config", help="published architecture, e.g. llama-3.1-8b (random weights)"),
    dtype: str = typer.Option("bf16", "--dtype"),
    method: str = typer.Option("none", "--method"),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="comma-separated"),
    prompt_tokens: int = typer.Option(128, "--prompt-tokens"),
    new_tokens: int = typer.Option(32, "--new-tokens"),
    device: str = typer.Option("auto", "--device"),
    compile: bool = typer.Option(False, "--compile", help="static KV cache + torch.compile (CUDA graphs)"),
    threads: Optional[int] = typer.Option(None, "--threads"),
) -> None:
    """Decode speed of a published architecture with random weights: size hardware without downloads."""
    from pipeline.runtime.speed.command import print_table, speed_command

    batches = parse_batch_sizes(batch_sizes)
    try:
        result = speed_command(
            config=config,
            dtype=dtype,
            method=method,
            batch_sizes=batches,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            device=device,
            compile=compile,
            threads=threads,
        )
    except (*user_errors(), ValueError) as exc:
        fail(str(exc))
    print_table(result)


@app.command()
def predict(
    hardware: str = typer.Option(
        ..., "--hardware", help="a device of pipeline/predict/hardware.yaml (h100-sxm, l4, ...) or this-host"
    ),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="every model x variant of a recipe"),
    config: Optional[str] = typer.Option(
        None, "--config", help="comma-separated published architectures, e.g. llama-3.1-8b,llama-3.2-3b"
    ),
    model: Optional[Path] = typer.Option(None, "--model", help="a model folder with config.json"),
    method: Optional[str] = typer.Option(
        None, "--method", help="comma-separated methods (default: none; with --recipe its variants)"
    ),
    runtime: Optional[str] = typer.Option(
        None,
        "--runtime",
        "--engine",
        help="transformers | llama.cpp | openai (default: the recipe's runtime, else transformers); --engine is the old spelling",
    ),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="fp32 | bf16 | fp16 (default: bf16; with --recipe each model's dtype)"
    ),
    batch_sizes: Optional[str] = typer.Option(
        None, "--batch-sizes", help="comma-separated (default: 1,8,64; with --recipe its speed.batch_sizes)"
    ),
    prompt_tokens: Optional[int] = typer.Option(
        None, "--prompt-tokens", help="default 128 (with --recipe its speed.prompt_tokens)"
    ),
    new_tokens: Optional[int] = typer.Option(
        None, "--new-tokens", help="default 32 (with --recipe its speed.new_tokens)"
    ),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="with --recipe: read measured bits per weight from its latest sweep here"
    ),
) -> None:
    """Predicted TTFT, TPOT, decode tok/s, memory and bottleneck per variant and batch on a named device (roofline
    with runtime factors fitted from this project's measurements); nothing is downloaded, run, or loaded (no torch)."""
    from pipeline.predict.hardware import HardwareError
    from pipeline.predict.hardware import hardware as hardware_named
    from pipeline.predict.targets import (
        PredictError,
        Target,
        model_facts,
        predict_targets,
        print_predictions,
        recipe_targets,
    )

    if sum(x is not None for x in (recipe, config, model)) != 1:
        fail("give exactly one of --recipe, --config, --model")
    given_batches = parse_batch_sizes(batch_sizes)
    try:
        if recipe is not None:
            from pipeline.config.recipe import load_recipe

            doc = load_recipe(recipe)
            records = _latest_records(tracking_uri, doc.tracking.experiment) if tracking_uri else ()
            targets = recipe_targets(doc, dtype, records)
            if method:
                targets = [t for t in targets if t.method in split_csv(method)]
            runtime = runtime or doc.runtime
            batches = given_batches or doc.speed.batch_sizes
            prompt, new = prompt_tokens or doc.speed.prompt_tokens, new_tokens or doc.speed.new_tokens
        else:
            sources = split_csv(config) if config else [str(model)]
            facts = [model_facts(src, dtype or "bf16") for src in sources]
            targets = [Target(f, m, m) for f in facts for m in split_csv(method) or ["none"]]
            batches = given_batches or [1, 8, 64]
            prompt, new = prompt_tokens or 128, new_tokens or 32
        device = hardware_named(hardware)
        predictions = predict_targets(targets, device, runtime or "transformers", batches, prompt, new)
    except (*user_errors(), PredictError, HardwareError) as exc:
        fail(str(exc))
    print_predictions(predictions, device, console)


def _latest_records(tracking_uri: str, experiment: str):
    from pipeline.tracking.read import load_sweep

    return load_sweep(resolve_tracking_uri(tracking_uri), experiment=experiment, with_questions=False).children
