"""The MLflow Model Registry: a gated variant's bundle registered under an alias, and the run behind an alias."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline import metrics as M
from pipeline.records import VariantRecord
from pipeline.redact import redact
from pipeline.tracking.connect import TAG_VALUE_MAX, client
from pipeline.tracking.read import read_run_text
from pipeline.tracking.write import redacted_tags

MODEL_BUNDLE_DIR = (
    "shrinkgate_model"  # what a passing variant registers: recipe + provenance (weights are not serialized)
)


def register_passing(
    uri: str,
    record: VariantRecord,
    *,
    name: str,
    alias: str,
    files: dict[str, str],
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Register a gated variant: log `files` (name -> text; its recipe/provenance, since the compressed weights
    are not serialized) plus the parent's recipe under `shrinkgate_model/` on the child run, create the
    registered model if needed, a version from `runs:/<child>/shrinkgate_model`, and point `alias` at it.
    Returns (registered name, version)."""
    from mlflow.exceptions import MlflowException

    c = client(uri, registry=True)
    bundle = dict(files)
    if parent_run_id and M.ART_RECIPE not in bundle:
        recipe = read_run_text(uri, parent_run_id, M.ART_RECIPE)
        if recipe is not None:
            bundle[M.ART_RECIPE] = recipe
    with tempfile.TemporaryDirectory() as d:
        for fname, text in bundle.items():
            (Path(d) / fname).write_text(redact(text), encoding="utf-8")
        c.log_artifacts(record.run_id, d, MODEL_BUNDLE_DIR)
    try:
        c.create_registered_model(
            name, description="shrinkgate: compressed variants that passed the gate (recipe + provenance)"
        )
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
            raise
    version = c.create_model_version(
        name,
        f"runs:/{record.run_id}/{MODEL_BUNDLE_DIR}",
        run_id=record.run_id,
        tags={k: v[:TAG_VALUE_MAX] for k, v in redacted_tags(tags or {}).items()},
        description=f"{record.label} passed the shrinkgate gate",
    )
    c.set_registered_model_alias(name, alias, version.version)
    return name, str(version.version)


def alias_run_id(uri: str, name: str, alias: str) -> str | None:
    """The run behind `name@alias`, or None when the model or alias does not exist."""
    c = client(uri, registry=True)
    try:
        return c.get_model_version_by_alias(name, alias).run_id
    except Exception:  # noqa: BLE001 - unknown model or alias
        return None
