"""Reading runs back as typed records: the verdict side and resume read only what `write` logged."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pipeline import metrics as M
from pipeline.records import SweepRecord, VariantRecord
from pipeline.results import QuestionOutcome, parse_questions_csv
from pipeline.tracking.connect import TrackingError, client


def _text(mlflow_client: Any, run_id: str, artifact: str) -> str | None:
    try:
        with tempfile.TemporaryDirectory() as d:
            return Path(mlflow_client.download_artifacts(run_id, artifact, d)).read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - a missing artifact reads as None
        return None


def read_run_text(uri: str, run_id: str, artifact: str) -> str | None:
    """A text artifact of a run, or None when it is missing."""
    return _text(client(uri), run_id, artifact)


def _questions(mlflow_client: Any, run_id: str) -> tuple[QuestionOutcome, ...] | None:
    # None means "no per-question data": the verdict side fails closed on it.
    text = _text(mlflow_client, run_id, M.ART_QUESTIONS)
    if text is None:
        return None
    try:
        return parse_questions_csv(text)
    except Exception:  # noqa: BLE001 - an unreadable CSV counts as missing
        return None


def _record(mlflow_client: Any, run: Any, with_questions: bool) -> VariantRecord:
    tags = dict(run.data.tags)
    questions = None
    if with_questions and run.info.status == "FINISHED":
        questions = _questions(mlflow_client, run.info.run_id)
    return VariantRecord(
        run_id=run.info.run_id,
        model=tags.get(M.TAG_MODEL, "?"),
        variant=tags.get(M.TAG_VARIANT, "?"),
        role=tags.get(M.TAG_ROLE, "candidate"),
        status=run.info.status,
        metrics=dict(run.data.metrics),
        tags=tags,
        params=dict(run.data.params),
        questions=questions,
    )


def measured_children(uri: str) -> list[VariantRecord]:
    """Every child run of every sweep in the store (all experiments, all sweeps), without per-question data."""
    c = client(uri)
    experiments = [e.experiment_id for e in c.search_experiments()]
    if not experiments:
        return []
    runs = c.search_runs(experiments, filter_string=f"tags.`{M.TAG_KIND}` = 'variant'", max_results=50_000)
    return [_record(c, r, with_questions=False) for r in runs]


def load_sweep(
    uri: str, *, run_id: str | None = None, experiment: str | None = None, with_questions: bool = True
) -> SweepRecord:
    """A parent run and its members (its children, plus the earlier runs resume reused, as the parent's
    `sweep_members.json` lists them); with `experiment`, the latest parent run of that experiment. Planned
    labels with no run found are in `missing`."""
    c = client(uri)
    if run_id is None:
        if experiment is None:
            raise TrackingError("give a parent run id (--run) or an experiment name (--experiment)")
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(f"experiment {experiment!r} not found in {uri}; check --experiment and --tracking-uri")
        parents = c.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{M.TAG_KIND}` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not parents:
            raise TrackingError(f"experiment {experiment!r} has no sweep runs in {uri}")
        parent = parents[0]
    else:
        try:
            parent = c.get_run(run_id)
        except Exception:  # noqa: BLE001 - any lookup failure is "not found" for the user
            raise TrackingError(f"run {run_id} not found in {uri}; check --run and --tracking-uri") from None
    exp_id = parent.info.experiment_id
    children = c.search_runs(
        [exp_id], filter_string=f"tags.`{M.TAG_PARENT_RUN_ID}` = '{parent.info.run_id}'", max_results=5000
    )
    planned, members = _members(c, parent.info.run_id)
    runs = {r.info.run_id: r for r in children}
    for run_id in members.values():  # reused earlier runs: members of this sweep, children of another parent
        if run_id not in runs:
            run = _active_run(c, run_id)
            if run is not None:
                runs[run_id] = run
    exp_name = c.get_experiment(exp_id).name
    records = tuple(
        sorted(
            (_record(c, r, with_questions) for r in runs.values()),
            key=lambda r: (r.role != "candidate", r.model, r.variant),
        )
    )
    missing: tuple[str, ...] = ()
    if planned is not None:
        present = {r.label for r in records}
        missing = tuple(label for label in planned if label not in present)
    return SweepRecord(
        parent_run_id=parent.info.run_id,
        experiment=exp_name,
        children=records,
        tags=dict(parent.data.tags),
        planned=planned,
        missing=missing,
    )


def _members(mlflow_client: Any, parent_id: str) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """(planned labels, label -> run id) as the sweep recorded them; (None, {}) when it recorded none."""
    text = _text(mlflow_client, parent_id, M.ART_MEMBERS)
    if text is None:
        return None, {}
    try:
        doc = json.loads(text)
        return tuple(str(x) for x in doc["planned"]), {str(k): str(v) for k, v in doc["members"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):  # unreadable counts as not recorded: fail closed
        return None, {}


def _active_run(mlflow_client: Any, run_id: str) -> Any | None:
    try:
        run = mlflow_client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a run that is gone is a missing member
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


def runs_with_content_key(
    uri: str, experiment: str, content_key: str, *, finished: bool, max_results: int = 1
) -> list[Any]:
    """Runs of `experiment` with this content key, newest first: the FINISHED ones, or (`finished=False`) the others."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{M.TAG_CONTENT_KEY}` = '{content_key}' and attributes.status {'=' if finished else '!='} 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )


def find_finished_child(uri: str, experiment: str, content_key: str) -> str | None:
    """A FINISHED child run with this content key, for resume."""
    runs = runs_with_content_key(uri, experiment, content_key, finished=True)
    return runs[0].info.run_id if runs else None


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    return dict(client(uri).get_run(run_id).data.metrics)


def run_record(uri: str, run_id: str) -> VariantRecord:
    """One run as logged (status, metrics, tags, params; no per-question data); TrackingError names the run when
    the store does not know it."""
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - mlflow raises its own error types per store
        raise TrackingError(f"run {run_id}: not found in {uri} ({type(exc).__name__})") from None
    return _record(c, run, with_questions=False)
