"""`shrinkgate export RUN_ID --out DIR`: a measured variant as files a server loads.

Builds are deterministic (tested in `tests/test_determinism.py`), so the variant is rebuilt from its sweep's
`recipe.yaml` and the run's model and variant names, on the device the run built it on, then written in the
form its runtime takes: GGUF variants as their `.gguf` file; transformers variants as a checkpoint in their
storing method's format (llm-compressor's methods: compressed-tensors, which vLLM and SGLang load).
`shrinkgate.json` beside the weights names the run, the recipe (redacted) and the provenance.

The rebuild must hash to the run's `stored.sha256` (every stored tensor's name, dtype, shape and bytes; a GGUF
file whole) and store its `weight_bytes`, so an export is the artifact that was measured, or an error. Refused,
one line each, before anything is built: a run that is not FINISHED, a non-empty `--out`, a run that logged no
hash (older shrinkgate: nothing to check against), a device this host does not have.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline import metrics as M
from pipeline.config.recipe import RecipeError, parse_recipe
from pipeline.redact import redact_data
from pipeline.variants.plan import AS_PUBLISHED, as_published, check_recipe

_RERUN = "re-run the sweep with this shrinkgate, then export"


class ExportError(RuntimeError):
    pass


def export_run(uri: str, run_id: str, out_dir: Path) -> Path:
    """Rebuild the variant of child run `run_id` and write it under `out_dir`; returns the file or folder."""
    from pipeline.host import default_threads
    from pipeline.models import resolve_model
    from pipeline.runtime import check_runtime_names, get_runtime
    from pipeline.tracking import read_run_text, run_record
    from pipeline.variants.built import BUILDERS, NotExportable

    record = run_record(uri, run_id)
    tags = record.tags
    if tags.get(M.TAG_KIND) != "variant":
        raise ExportError(f"run {run_id}: not a variant run (export one of a sweep's children, not the sweep itself)")
    if record.status != "FINISHED":
        raise ExportError(
            f"run {run_id}: {record.status}, not FINISHED, so nothing was measured to export; export a finished run"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"--out {out_dir}: not an empty folder; name a new or empty one (export never overwrites)")
    parent = tags.get("mlflow.parentRunId")
    text = read_run_text(uri, parent, M.ART_RECIPE) if parent else None
    if text is None:
        raise ExportError(f"run {run_id}: its sweep has no {M.ART_RECIPE} artifact, so the variant cannot be rebuilt")
    try:
        where = f"run {parent} {M.ART_RECIPE}"
        recipe = check_runtime_names(check_recipe(parse_recipe(yaml.safe_load(text), where), where), where)
    except RecipeError as exc:
        raise ExportError(str(exc)) from None
    model = next((m for m in recipe.models if m.name == tags.get(M.TAG_MODEL)), None)
    runtime = tags.get(M.TAG_RUNTIME, recipe.runtime)
    variants = {v.name: v for v in recipe.variants} | {AS_PUBLISHED.name: AS_PUBLISHED}
    variants.setdefault(f"none@{runtime}", as_published(runtime, recipe))
    variant = variants.get(tags.get(M.TAG_VARIANT, ""))
    if model is None or variant is None:
        raise ExportError(
            f"run {run_id}: model {tags.get(M.TAG_MODEL)!r} / variant {tags.get(M.TAG_VARIANT)!r} are not in its recipe"
        )
    builder = BUILDERS.get(get_runtime(runtime, recipe).artifact_format)
    if not builder.builds:
        raise ExportError(
            f"run {run_id}: measured the model a server serves (serve.artifact: none); shrinkgate built nothing to export"
        )
    logged_sha = tags.get(M.TAG_STORED_SHA256)
    if not logged_sha:
        raise ExportError(
            f"run {run_id}: no {M.TAG_STORED_SHA256} tag (logged by an older shrinkgate), so a rebuild cannot be checked "
            f"against what was measured; {_RERUN}"
        )
    # a format built on one device (llama.cpp's: the CPU) is rebuilt there wherever the run was
    device = builder.build_device or _build_device(run_id, tags)
    logged_bytes = record.metric(M.WEIGHT_BYTES)
    resolved = resolve_model(model)
    about = {
        "run_id": run_id,
        "sweep_run_id": parent,
        "runtime": runtime,
        "recipe": redact_data(recipe.model_dump(mode="json")),
    }
    threads = recipe.speed.threads or default_threads()
    built = builder.build(
        resolved, model, variant, device=device, data_dir=recipe.eval.data_dir, threads=threads, measure=False
    )
    try:
        if built.fidelity is None:
            raise NotExportable("shrinkgate built nothing to export")
        _check_rebuild(run_id, logged_sha, logged_bytes, built.fidelity)
        return built.export(out_dir, about)
    except NotExportable as exc:
        raise ExportError(f"run {run_id}: {exc}") from None
    finally:
        built.close()


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
        raise ExportError(
            f"run {run_id}: built on {device}, which this host does not have; export on a host with {device}"
        ) from None


def _check_rebuild(run_id: str, logged_sha: str, logged_bytes: float | None, rebuilt) -> None:
    """The rebuilt `FidelityRecord` stores what the run logged: the same hash, the same byte count."""
    changed = (
        "the code, a library or the source weights changed since the run, so this would not be the measured artifact"
    )
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
