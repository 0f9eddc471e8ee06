"""`shrinkgate export RUN_ID --out DIR`: a measured variant as files a server loads.

Builds are deterministic (tested in `tests/test_determinism.py`), so the variant is rebuilt from its sweep's
`recipe.yaml` and the run's model and variant names, on the device the run built it on, then written in the
form its engine takes: GGUF variants as their `.gguf` file; transformers variants as a checkpoint in their
storing method's format (llm-compressor's methods: compressed-tensors, which vLLM and SGLang load).
`shrinkgate.json` beside the weights names the run, the recipe (redacted) and the provenance.

The rebuild must hash to the run's `stored.sha256` (every stored tensor's name, dtype, shape and bytes; a GGUF
file whole) and store its `weight_bytes`, so an export is the artifact that was measured, or an error. Refused,
one line each, before anything is built: a run that is not FINISHED, a non-empty `--out`, a run that logged no
hash (older shrinkgate: nothing to check against), a device this host does not have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from pipeline import metrics as M
from pipeline.build.plan import AS_PUBLISHED, as_published, parse_recipe
from pipeline.config.recipe import RecipeError
from pipeline.redact import redact, redact_data

_RERUN = "re-run the sweep with this shrinkgate, then export"


class ExportError(RuntimeError):
    pass


def export_run(uri: str, run_id: str, out_dir: Path) -> Path:
    """Rebuild the variant of child run `run_id` and write it under `out_dir`; returns the file or folder."""
    from pipeline.build.artifact import save_checkpoint
    from pipeline.build.gguf_artifact import build_gguf_artifact
    from pipeline.models import resolve_model
    from pipeline.runtime.speed.host import default_threads
    from pipeline.tracking import read_run_text, run_record

    record = run_record(uri, run_id)
    tags = record.tags
    if tags.get(M.TAG_KIND) != "variant":
        raise ExportError(f"run {run_id}: not a variant run (export one of a sweep's children, not the sweep itself)")
    if record.status != "FINISHED":
        raise ExportError(f"run {run_id}: {record.status}, not FINISHED, so nothing was measured to export; export a finished run")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"--out {out_dir}: not an empty folder; name a new or empty one (export never overwrites)")
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
    fmt = recipe.format_of(runtime)
    if fmt == "none":
        raise ExportError(f"run {run_id}: measured the model a server serves (serve.artifact: none); shrinkgate built nothing to export")
    logged_sha = tags.get(M.TAG_STORED_SHA256)
    if not logged_sha:
        raise ExportError(
            f"run {run_id}: no {M.TAG_STORED_SHA256} tag (logged by an older shrinkgate), so a rebuild cannot be checked "
            f"against what was measured; {_RERUN}"
        )
    gguf = fmt == "gguf"
    device = "cpu" if gguf else _build_device(run_id, tags)  # llama.cpp's build runs on the CPU wherever the run was
    logged_bytes = record.metric(M.WEIGHT_BYTES)
    resolved = resolve_model(model)
    about = {"run_id": run_id, "sweep_run_id": parent, "runtime": runtime, "recipe": redact_data(recipe.model_dump(mode="json"))}
    if gguf:
        artifact = build_gguf_artifact(resolved, model, variant, data_dir=recipe.eval.data_dir, threads=recipe.speed.threads or default_threads())
        try:
            _check_rebuild(run_id, logged_sha, logged_bytes, artifact.fidelity)
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / f"{model.name}-{variant.name}.gguf"
            shutil.copyfile(artifact.gguf_path, target)
        finally:
            artifact.close()
        about |= {"methods": list(artifact.methods), "provenance": artifact.provenance.tags()}
        (out_dir / "shrinkgate.json").write_text(redact(json.dumps(about, indent=1, default=str)))
        return target
    from pipeline.build.artifact import build_artifact

    artifact = build_artifact(resolved, model, variant, device=device, data_dir=recipe.eval.data_dir, measure_serialized=False)
    _check_rebuild(run_id, logged_sha, logged_bytes, artifact.fidelity)
    return save_checkpoint(artifact, out_dir, about)


def _build_device(run_id: str, tags: dict[str, str]) -> str:
    """The device the run built its variant on, when this host has it: a build on another device may store
    other values."""
    from pipeline.env import DeviceUnavailable, pick_device

    device = tags.get(M.TAG_DEVICE)
    if not device:
        raise ExportError(f"run {run_id}: no {M.TAG_DEVICE} tag, so the device its build ran on is unknown; {_RERUN}")
    try:
        return pick_device(device)
    except DeviceUnavailable:
        raise ExportError(f"run {run_id}: built on {device}, which this host does not have; export on a host with {device}") from None


def _check_rebuild(run_id: str, logged_sha: str, logged_bytes: float | None, rebuilt) -> None:
    """The rebuilt `FidelityRecord` stores what the run logged: the same hash, the same byte count."""
    changed = "the code, a library or the source weights changed since the run, so this would not be the measured artifact"
    if rebuilt.stored_sha256 != logged_sha:
        raise ExportError(
            f"run {run_id}: the rebuilt weights hash to {str(rebuilt.stored_sha256)[:16]}..., the run logged "
            f"{logged_sha[:16]}... ({M.TAG_STORED_SHA256}); {changed} ({_RERUN})"
        )
    if logged_bytes is None or int(logged_bytes) != int(rebuilt.weight_bytes):
        raise ExportError(
            f"run {run_id}: the rebuilt weights store {rebuilt.weight_bytes} bytes, the run logged "
            f"{'none' if logged_bytes is None else int(logged_bytes)} ({M.WEIGHT_BYTES}); {changed} ({_RERUN})"
        )
