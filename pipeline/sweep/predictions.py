"""A child's predicted speed on `speed.target_hardware`, logged beside what it measured."""

from __future__ import annotations

from pathlib import Path

from pipeline import metrics as M
from pipeline.variants.plan import WorkItem


def log_predictions(
    recipe, item: WorkItem, resolved, fidelity, tracker, run_id: str, *, runs_stored_form: bool
) -> dict[str, str]:
    """Predicted decode tok/s, TPOT and TTFT on `speed.target_hardware` at the recipe's batches, from the model's
    config and the bits per weight this build measured (`runs_stored_form`: the build's `Built.runs_stored_form`); the tags say on what basis, or why there is none (a
    prediction that cannot be made never fails the run: it measured what it measures)."""
    from pipeline.predict.formats import UnknownFormat, weight_format
    from pipeline.predict.hardware import hardware
    from pipeline.predict.targets import PredictError, Target, model_facts, predict_targets

    spec = recipe.speed
    tags = {M.TAG_PREDICTED_HARDWARE: spec.target_hardware}
    try:
        kind = hardware(spec.target_hardware).device_kind
        dtype = (
            "bf16" if kind == "gpu" else {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[item.model.dtype]
        )
        config_dir = Path(resolved.dense_dir) if resolved.dense_dir else None
        source = (
            str(config_dir) if config_dir is not None and (config_dir / "config.json").is_file() else item.model.source
        )
        method = item.variant.last_method
        # measured bits where they are the stored form (a GGUF file, a quantized format); dense forms run in `dtype`
        stored_form = runs_stored_form or weight_format(method).bits_per_weight is not None
        bits = fidelity.bits_per_weight if fidelity is not None and stored_form else None
        target = Target(
            model_facts(source, dtype, item.model.name),
            method,
            item.variant.name,
            bits,
            "measured: this run's fidelity record" if bits else None,
        )
        predictions = predict_targets(
            [target], spec.target_hardware, item.runtime, spec.batch_sizes, spec.prompt_tokens, spec.new_tokens
        )
    except (PredictError, UnknownFormat, ValueError) as exc:
        return tags | {M.TAG_PREDICTED_ERROR: exc.args[0] if exc.args else str(exc)}
    metrics = {}
    for p in predictions:
        for name, value in ((M.DECODE_TOK_S, p.decode_tok_s), (M.TPOT_MS, p.tpot_ms), (M.TTFT_MS, p.ttft_ms)):
            metrics[M.PREDICTED + M.batch_metric(name, p.batch)] = value
    tracker.log_metrics(run_id, metrics)
    f = predictions[0].factors
    basis = f"{dtype}, {predictions[0].bits_per_weight:.2f} bits/weight ({predictions[0].bits_source}); {f.runtime} factors: {f.provenance}"
    return tags | {M.TAG_PREDICTED_BASIS: basis[:5000]}
