"""`shrinkgate export RUN_ID --out DIR`: a measured variant as files a server loads.

Builds are deterministic (tested in `tests/test_determinism.py`), so the variant is rebuilt from its sweep's
`recipe.yaml` and the run's model and variant names, then written in the form its engine takes: GGUF variants
as their `.gguf` file; transformers variants as a checkpoint in their storing method's format
(llm-compressor's methods: compressed-tensors, which vLLM and SGLang load). `shrinkgate.json` beside the
weights names the run, the recipe and the provenance. The rebuilt weights' byte count is checked against what
the run logged, so an export is the artifact that was measured, or an error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from pipeline import metrics as M
from pipeline.build.plan import AS_PUBLISHED, as_published, parse_recipe
from pipeline.config.recipe import RecipeError


class ExportError(RuntimeError):
    pass


def export_run(uri: str, run_id: str, out_dir: Path) -> Path:
    """Rebuild the variant of child run `run_id` and write it under `out_dir`; returns the file or folder."""
    from pipeline.build.artifact import save_checkpoint
    from pipeline.build.gguf_artifact import build_gguf_artifact
    from pipeline.models import resolve_model
    from pipeline.runtime.speed.host import default_threads
    from pipeline.tracking import read_run_text, run_metrics, run_tags

    tags = run_tags(uri, run_id)
    if tags.get(M.TAG_KIND) != "variant":
        raise ExportError(f"run {run_id}: not a variant run (export one of a sweep's children, not the sweep itself)")
    parent = tags.get("mlflow.parentRunId")
    text = read_run_text(uri, parent, M.ART_RECIPE) if parent else None
    if text is None:
        raise ExportError(f"run {run_id}: its sweep has no {M.ART_RECIPE} artifact, so the variant cannot be rebuilt")
    try:
        recipe = parse_recipe(yaml.safe_load(text), f"run {parent} {M.ART_RECIPE}")
    except RecipeError as exc:
        raise ExportError(str(exc)) from None
    model = next((m for m in recipe.models if m.name == tags.get(M.TAG_MODEL)), None)
    runtime = tags.get(M.TAG_RUNTIME, recipe.runtime)
    variants = {v.name: v for v in recipe.variants} | {AS_PUBLISHED.name: AS_PUBLISHED}
    variants.setdefault(f"none@{runtime}", as_published(runtime, recipe))
    variant = variants.get(tags.get(M.TAG_VARIANT, ""))
    if model is None or variant is None:
        raise ExportError(f"run {run_id}: model {tags.get(M.TAG_MODEL)!r} / variant {tags.get(M.TAG_VARIANT)!r} are not in its recipe")
    logged = run_metrics(uri, run_id).get(M.WEIGHT_BYTES)
    resolved = resolve_model(model)
    about = {"run_id": run_id, "sweep_run_id": parent, "runtime": runtime, "recipe": recipe.model_dump(mode="json")}
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe.format_of(runtime) == "gguf":
        artifact = build_gguf_artifact(resolved, model, variant, data_dir=recipe.eval.data_dir, threads=recipe.speed.threads or default_threads())
        try:
            _check_bytes(run_id, logged, artifact.fidelity.weight_bytes)
            target = out_dir / f"{model.name}-{variant.name}.gguf"
            shutil.copyfile(artifact.gguf_path, target)
        finally:
            artifact.close()
        about |= {"methods": list(artifact.methods), "provenance": artifact.provenance.tags()}
        (out_dir / "shrinkgate.json").write_text(json.dumps(about, indent=1, default=str))
        return target
    from pipeline.build.artifact import build_artifact

    artifact = build_artifact(resolved, model, variant, device="cpu", data_dir=recipe.eval.data_dir, measure_serialized=False)
    _check_bytes(run_id, logged, artifact.fidelity.weight_bytes)
    return save_checkpoint(artifact, out_dir, about)


def _check_bytes(run_id: str, logged: float | None, rebuilt: int) -> None:
    if logged is not None and int(logged) != int(rebuilt):
        raise ExportError(
            f"run {run_id}: the rebuilt weights store {rebuilt} bytes, the run logged {int(logged)}; the code or a library "
            "changed since the run, so this would not be the measured artifact (re-run the sweep, then export)"
        )
