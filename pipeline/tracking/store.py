"""The only module that imports mlflow: parent/child runs, metric names, artifacts, reading runs back."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from pipeline import metrics as M
from pipeline.records import SweepRecord, VariantRecord
from pipeline.results import AccuracyResult, FidelityRecord, QuestionOutcome, SpeedResult

_PACKAGES = ("torch", "transformers", "lm_eval", "torchao", "bitsandbytes", "mlflow", "accelerate", "gguf", "optimum-quanto", "hqq", "llmcompressor")


# MLflow 3 opens untagged experiments in GenAI mode (traces); ours are training-style runs.
_EXPERIMENT_KIND = "mlflow.experimentKind"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; one line naming the URI and the fix."""


def _mlflow():
    import mlflow

    return mlflow


def artifact_root_for(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (`sqlite:///mlruns/mlflow.db` -> `mlruns/artifacts`)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db_path = Path(uri.removeprefix("sqlite:///"))
        return (db_path.parent / "artifacts").resolve().as_uri()
    if parsed.scheme in ("", "file"):
        return None
    return None  # a tracking server decides (e.g. --artifacts-destination s3://...)


def _prepare_local_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any model loads when a remote tracking server cannot be reached."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise TrackingError(
            f"tracking.uri {uri}: server unreachable ({exc.strerror or exc}); start it (`mlflow server ...`) or fix --tracking-uri"
        ) from None


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested recipe/variant data -> `a.b.c` params (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(f"{prefix}.{i}", v))
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def host_tags(threads: int | None = None) -> dict[str, str]:
    import importlib.metadata as md

    tags = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version()}
    tags["cpu"] = _cpu_name()
    try:
        import torch

        tags["threads"] = str(threads or torch.get_num_threads())
        tags["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    for pkg in _PACKAGES:
        try:
            tags[f"version.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def fidelity_metrics(f: FidelityRecord) -> dict[str, float]:
    values = {
        M.WEIGHT_BYTES: f.weight_bytes,
        M.BITS_PER_WEIGHT: f.bits_per_weight,
        M.SPARSITY: f.sparsity,
        M.WEIGHT_REL_ERROR: f.weight_rel_error,
        M.KL_VS_BASE: f.kl_vs_base,
        M.TOP1_AGREE_VS_BASE: f.top1_agree_vs_base,
        M.SERIALIZED_BYTES: f.serialized_bytes,
        M.RUNTIME_WEIGHT_BYTES: f.runtime_weight_bytes,
        M.BUILD_SECONDS: f.build_seconds,
        M.BUILD_PEAK_MEM_MB: f.build_peak_mem_mb,
    }
    return {k: float(v) for k, v in values.items() if v is not None}


def accuracy_metrics(a: AccuracyResult) -> dict[str, float]:
    out = {M.MMLU_ACC: a.acc, M.MMLU_ACC_STDERR: a.acc_stderr, M.MMLU_N_QUESTIONS: float(a.n_questions)}
    out.update({M.subject_metric(s): v for s, v in a.per_subject.items()})
    return out


def questions_csv(questions: Iterable[QuestionOutcome]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["subject", "index", "answer", "predicted", "correct"])
    for q in questions:
        w.writerow([q.subject, q.index, q.answer, q.predicted, int(q.correct)])
    return buf.getvalue()


def parse_questions_csv(text: str) -> tuple[QuestionOutcome, ...]:
    rows = csv.DictReader(io.StringIO(text))
    return tuple(
        QuestionOutcome(r["subject"], int(r["index"]), int(r["answer"]), int(r["predicted"]), r["correct"] == "1")
        for r in rows
    )


class Tracker:
    """Writes one sweep: a parent run and one child run per model x variant."""

    def __init__(self, uri: str, experiment: str) -> None:
        mlflow = _mlflow()
        from mlflow.tracking import MlflowClient

        check_reachable(uri)
        _prepare_local_store(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                experiment, artifact_location=artifact_root_for(uri), tags={_EXPERIMENT_KIND: "custom_model_development"}
            )
            if exp is not None and exp.tags.get(_EXPERIMENT_KIND) is None:
                self.client.set_experiment_tag(self.experiment_id, _EXPERIMENT_KIND, "custom_model_development")
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(f"tracking.uri {uri}: {str(exc).splitlines()[0]}; fix the URI or start the server") from None
        self.experiment = experiment

    # -- runs -------------------------------------------------------------------------------------
    def start_parent(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**tags, M.TAG_KIND: "sweep"})
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def start_child(self, parent_id: str, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={**tags, M.TAG_KIND: "variant", "mlflow.parentRunId": parent_id},
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, tags=items[i : i + 100])

    def log_metrics(self, run_id: str, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in values.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_json(self, run_id: str, data: Any, name: str) -> None:
        self.client.log_text(run_id, json.dumps(data, indent=2, default=str), name)

    def log_file(self, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_dir)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # -- measurements -----------------------------------------------------------------------------
    def log_fidelity(self, run_id: str, f: FidelityRecord) -> None:
        self.log_metrics(run_id, fidelity_metrics(f))
        # extra holds provenance notes (calibration.source/sha256/samples, heldout.sha256, nm_pattern).
        tags = {k: str(v) for k, v in f.extra.items()}
        tags.update({M.TAG_KERNEL: f.kernel, M.TAG_DENSE_FALLBACK: str(f.dense_fallback).lower()})
        if f.serializable is not None:
            tags[M.TAG_SERIALIZABLE] = str(f.serializable).lower()
            if f.serializable_reason:
                tags["serializable_reason"] = f.serializable_reason
        if f.nm_pattern_ok is not None:
            tags["nm_pattern_ok"] = str(f.nm_pattern_ok).lower()
        self.set_tags(run_id, tags)
        self.log_json(run_id, asdict(f), M.ART_FIDELITY)

    def log_accuracy(self, run_id: str, a: AccuracyResult) -> None:
        self.log_metrics(run_id, accuracy_metrics(a))
        self.log_json(run_id, a.lm_eval_results, M.ART_LM_EVAL)
        self.log_text(run_id, questions_csv(a.questions), M.ART_QUESTIONS)

    def log_speed(self, run_id: str, s: SpeedResult) -> None:
        # Imported here: the speed package pulls in torch, which the verdict side never needs.
        from pipeline.runtime.speed.report import speed_metrics, speed_tags

        self.log_metrics(run_id, speed_metrics(s))
        tags = speed_tags(s)
        if s.warnings:
            tags["speed.warnings"] = " | ".join(s.warnings)
        self.set_tags(run_id, tags)
        self.log_json(run_id, asdict(s), M.ART_SPEED)


# -- reading back (the verdict side reads only what was written here) ------------------------------
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    return MlflowClient(tracking_uri=uri)


def _record(client, run, with_questions: bool) -> VariantRecord:
    tags = dict(run.data.tags)
    questions = None
    if with_questions and run.info.status == "FINISHED":
        questions = _load_questions(client, run.info.run_id)
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


def _load_questions(client, run_id: str) -> tuple[QuestionOutcome, ...] | None:
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as d:
            path = client.download_artifacts(run_id, M.ART_QUESTIONS, d)
            return parse_questions_csv(Path(path).read_text())
    except Exception:  # missing artifact: the caller treats None as "no per-question data" (fails closed)
        return None


def load_sweep(uri: str, *, run_id: str | None = None, experiment: str | None = None, with_questions: bool = True) -> SweepRecord:
    """A parent run and its children; with `experiment`, the latest parent run of that experiment."""
    client = _client(uri)
    if run_id is None:
        if experiment is None:
            raise TrackingError("give a parent run id (--run) or an experiment name (--experiment)")
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(f"experiment {experiment!r} not found in {uri}; check --experiment and --tracking-uri")
        parents = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{M.TAG_KIND}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
        )
        if not parents:
            raise TrackingError(f"experiment {experiment!r} has no sweep runs in {uri}")
        parent = parents[0]
    else:
        try:
            parent = client.get_run(run_id)
        except Exception:
            raise TrackingError(f"run {run_id} not found in {uri}; check --run and --tracking-uri") from None
    exp_id = parent.info.experiment_id
    children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=5000)
    exp_name = client.get_experiment(exp_id).name
    records = tuple(sorted((_record(client, c, with_questions) for c in children), key=lambda r: (r.role != "candidate", r.model, r.variant)))
    return SweepRecord(parent_run_id=parent.info.run_id, experiment=exp_name, children=records, tags=dict(parent.data.tags))


def find_finished_child(uri: str, experiment: str, content_key: str) -> str | None:
    """A FINISHED child run with this content key, for resume."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{M.TAG_CONTENT_KEY}` = '{content_key}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None



def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics)


# -- verdict side ----------------------------------------------------------------------------------
# Writers used by pipeline.verdict.gate / pipeline.verdict.report (the only mlflow imports stay in this module).

MODEL_BUNDLE_DIR = "shrinkgate_model"  # what a passing variant registers: recipe + provenance (weights are not serialized)


def set_run_tags(uri: str, tags_by_run: dict[str, dict[str, str]]) -> None:
    """Tags on several runs (e.g. `gate.verdict` / `gate.reasons` on each child)."""
    from mlflow.entities import RunTag

    client = _client(uri)
    for run_id, tags in tags_by_run.items():
        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, tags=items[i : i + 100])


def log_run_artifacts(uri: str, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    """Every file under `local_dir` as artifacts of `run_id` (under `artifact_path`)."""
    _client(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def read_run_text(uri: str, run_id: str, artifact: str) -> str | None:
    """A text artifact of a run, or None when it is missing."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as d:
            return Path(_client(uri).download_artifacts(run_id, artifact, d)).read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - missing artifact
        return None


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
    import tempfile

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    bundle = dict(files)
    if parent_run_id and M.ART_RECIPE not in bundle:
        recipe = read_run_text(uri, parent_run_id, M.ART_RECIPE)
        if recipe is not None:
            bundle[M.ART_RECIPE] = recipe
    with tempfile.TemporaryDirectory() as d:
        for fname, text in bundle.items():
            (Path(d) / fname).write_text(text, encoding="utf-8")
        client.log_artifacts(record.run_id, d, MODEL_BUNDLE_DIR)
    try:
        client.create_registered_model(name, description="shrinkgate: compressed variants that passed the gate (recipe + provenance)")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
            raise
    version = client.create_model_version(
        name,
        f"runs:/{record.run_id}/{MODEL_BUNDLE_DIR}",
        run_id=record.run_id,
        tags={k: str(v)[:5000] for k, v in (tags or {}).items()},
        description=f"{record.label} passed the shrinkgate gate",
    )
    client.set_registered_model_alias(name, alias, version.version)
    return name, str(version.version)


def alias_run_id(uri: str, name: str, alias: str) -> str | None:
    """The run behind `name@alias`, or None when the model or alias does not exist."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        return client.get_model_version_by_alias(name, alias).run_id
    except Exception:  # noqa: BLE001 - unknown model or alias
        return None
