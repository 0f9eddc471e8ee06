"""What `shrinkgate predict` (and a sweep's predicted metrics) predict for: model x method targets from a recipe, a
published config or a model folder, their predictions on a named device per batch, and the table that prints them;
nothing is downloaded or run, and no torch or transformers is loaded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import metrics as M
from pipeline.models import shapes
from pipeline.models.shapes import ModelFacts
from pipeline.predict.fit import factors_for
from pipeline.predict.formats import UnknownFormat, weight_format
from pipeline.predict.hardware import Hardware, HardwareError, hardware
from pipeline.predict.roofline import DTYPE_BITS, Prediction, predict

RECIPE_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_SUFFIXES = ("-instruct", "-it", "-chat")


class PredictError(ValueError):
    """A request `predict` cannot serve; the message names the option and the fix."""


@dataclass(frozen=True)
class Target:
    """One model x method to predict; `bits` from a measured fidelity record when the store has one."""

    model: ModelFacts
    method: str
    variant: str
    bits: float | None = None
    bits_source: str | None = None


def model_facts(source: str, dtype: str, name: str | None = None) -> ModelFacts:
    """A model's config without downloading: a published shape by name or hub id, else a folder's config.json."""
    if dtype not in DTYPE_BITS:
        raise PredictError(f"--dtype {dtype}: use one of {', '.join(DTYPE_BITS)}")
    path = Path(source).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        return ModelFacts(
            name or path.name,
            cfg.get("text_config", cfg) | {"tie_word_embeddings": cfg.get("tie_word_embeddings", True)},
            dtype,
        )
    key = source.lower().rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        key = key.removesuffix(suffix)
    for known, s in shapes.PUBLISHED.items():
        if key in (known, s.hub_id.lower().rsplit("/", 1)[-1]):
            return ModelFacts(name or known, shapes.config_dict(known, dtype), dtype)
    raise PredictError(
        f"model {source!r}: no config known offline; give --model DIR (a folder with config.json) or --config NAME "
        f"(one of {', '.join(sorted(shapes.PUBLISHED))})"
    )


def recipe_targets(recipe, dtype: str | None, records: Sequence[Any] = ()) -> list[Target]:
    """Every model x variant of a recipe; a variant's bits per weight from its FINISHED record when one is given."""
    measured = {(r.model, r.variant): r for r in records if r.status == "FINISHED"}
    out = []
    for m in recipe.models:
        facts = model_facts(m.source, dtype or RECIPE_DTYPES[m.dtype], m.name)
        for v in recipe.variants:
            method = v.last_method
            record = measured.get((m.name, v.name))
            bits = record.metric(M.BITS_PER_WEIGHT) if record is not None else None
            source = f"measured: run {record.run_id[:8]}'s fidelity record" if bits else None
            out.append(Target(facts, method, v.name, bits, source))
    return out


def predict_targets(
    targets: Sequence[Target],
    hardware_name: str | Hardware,
    runtime: str,
    batch_sizes: Sequence[int],
    prompt_tokens: int,
    new_tokens: int,
) -> list[Prediction]:
    try:
        hw = hardware_name if isinstance(hardware_name, Hardware) else hardware(hardware_name)
    except HardwareError as exc:
        raise PredictError(str(exc)) from None
    factors = factors_for(runtime, hw.device_kind)
    out = []
    for t in targets:
        try:
            fmt = weight_format(t.method)
        except UnknownFormat as exc:
            raise PredictError(exc.args[0]) from None
        for b in batch_sizes:
            out.append(
                predict(
                    t.model,
                    fmt,
                    hw,
                    factors,
                    b,
                    prompt_tokens,
                    new_tokens,
                    bits_per_weight=t.bits,
                    bits_source=t.bits_source,
                )
            )
    return out


def print_predictions(predictions: Sequence[Prediction], hw: Hardware, console: Any = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=200)
    if not predictions:
        return
    first = predictions[0]
    table = Table(
        title=f"predicted on {first.hardware} ({first.runtime}), prompt {first.prompt_tokens} + {first.new_tokens} new tokens"
    )
    for col in (
        "model",
        "method",
        "bits/w",
        "batch",
        "TTFT ms",
        "TPOT ms",
        "decode tok/s",
        "memory GB (w+kv+act)",
        "bound by",
        "compute-bound from",
    ):
        table.add_column(col, justify="left" if col in ("model", "method", "bound by") else "right")
    for p in predictions:
        fits = p.memory_gb <= hw.memory_gb
        memory = f"{p.memory_gb:.1f} ({p.weights_gb:.1f}+{p.kv_gb:.2f}+{p.activations_gb:.2f})" + (
            "" if fits else " does not fit"
        )
        table.add_row(
            p.model,
            p.method,
            f"{p.bits_per_weight:.2f}",
            str(p.batch),
            f"{p.ttft_ms:.1f}",
            f"{p.tpot_ms:.2f}",
            f"{p.decode_tok_s:.1f}",
            memory,
            p.bottleneck,
            "never" if p.compute_bound_batch is None else str(p.compute_bound_batch),
        )
    console.print(table)
    f = first.factors
    console.print(
        escape(
            f"factors ({f.runtime} on {f.device_kind}): bandwidth x{f.bandwidth_eff:.2f} (batch >= 2: x{f.bandwidth_eff_at(2):.2f}), "
            f"compute x{f.compute_eff:.2f}, prefill x{f.prefill_eff:.2f}, overlap {f.overlap:.2f}, "
            f"+{f.step_overhead_ms:.2f} ms/step + {f.layer_overhead_ms:.3f} ms/layer, +{f.ttft_overhead_ms:.1f} ms TTFT"
            + "".join(
                f", {m} kernel: arithmetic x{f.speed_of(m):.2f}, streaming x{f.stream_of(m):.2f}"
                for m in sorted({p.method for p in predictions})
                if m in f.kernel_speed
            )
            + f"; {f.provenance}"
        )
    )
    console.print(
        escape(
            f"{hw.name}: {hw.bandwidth_gb_s:g} GB/s, {hw.memory_gb:g} GB; {hw.source}"
            + (f"; compute {hw.compute_source}" if hw.compute_source else "")
        )
    )
    for source in sorted(
        {f"{p.method}: {p.bits_source}" + (f" (needs {p.needs_kernel})" if p.needs_kernel else "") for p in predictions}
    ):
        console.print(escape(source))
