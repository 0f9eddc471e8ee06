"""Writing a sweep: a parent run, one child run per model x variant, their params, tags, metrics and artifacts.

Results arrive typed (`FidelityRecord`, `AccuracyResult`, `SpeedResult`) and name their own metrics and tags;
this module only logs them. Every string it writes - params, tags, run names, text artifacts, uploaded text
files - goes through `pipeline.redact` first, so a key on a launch line or in a server's log never reaches the
store.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline import metrics as M
from pipeline.env import compute_threads, gpu_name
from pipeline.host import cpu_model
from pipeline.redact import redact, redact_data
from pipeline.results import AccuracyResult, FidelityRecord, SpeedResult, questions_csv
from pipeline.tracking.connect import BATCH, TrackingError, artifact_root_for, client, log_tags, prepare_local_store

_PACKAGES = (
    "torch",
    "transformers",
    "lm_eval",
    "torchao",
    "bitsandbytes",
    "mlflow",
    "accelerate",
    "gguf",
    "optimum-quanto",
    "hqq",
    "llmcompressor",
    "llama_cpp_python",
)
_PARAM_VALUE_MAX = 6000
_METRIC_BATCH = 500  # MLflow's log_batch takes at most 1000 metrics per call

# MLflow 3 opens untagged experiments in GenAI mode (traces); ours are training-style runs.
_EXPERIMENT_KIND = M.TAG_EXPERIMENT_KIND


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


def redacted_tags(tags: dict[str, object]) -> dict[str, str]:
    """Tag values as strings, secrets redacted (`pipeline.redact`)."""
    return {k: redact(str(v)) for k, v in tags.items()}


def redacted_copy(src: Path, dst: Path) -> None:
    """`src` (a file or a folder) copied to `dst` with every UTF-8 text file redacted; other files as they are."""
    files = [src] if src.is_file() else [p for p in sorted(src.rglob("*")) if p.is_file()]
    for path in files:
        target = dst if src.is_file() else dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # binary (a plot): copied as is
            shutil.copyfile(path, target)
            continue
        target.write_text(redact(text), encoding="utf-8")


def host_tags(threads: int | None = None) -> dict[str, str]:
    """Host, platform, threads, GPU, library versions and git commit."""
    import importlib.metadata as md

    tags = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version()}
    tags["cpu"] = cpu_model()
    tags["threads"] = str(compute_threads(threads))
    tags["gpu"] = gpu_name()
    for pkg in _PACKAGES:
        try:
            tags[M.TAG_VERSION_PREFIX + pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        tags[M.TAG_VERSION] = md.version("shrinkgate")
    except md.PackageNotFoundError:
        tags[M.TAG_VERSION] = "unknown"
    commit = _git_commit()
    if commit:
        tags[M.TAG_GIT_COMMIT] = commit
        tags[M.TAG_GIT_DIRTY] = _git_dirty()
    return tags


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def _git_dirty() -> str:
    """ "false" for a clean package tree, else a hash of its uncommitted changes: results from edited code must
    not pass for the commit's. Once per process: the code that runs is the code imported at start."""
    package = Path(__file__).resolve().parents[1]
    try:
        diff = subprocess.run(["git", "diff", "HEAD", "--", "."], capture_output=True, timeout=10, cwd=package).stdout
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "--", "."],
            capture_output=True,
            timeout=10,
            cwd=package,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not diff and not untracked:
        return "false"
    h = hashlib.sha256(diff)
    for name in untracked.decode(errors="replace").splitlines():
        h.update(name.encode())
        try:
            h.update((package / name).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


class Tracker:
    """Writes one sweep: a parent run and one child run per model x variant."""

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.exceptions import MlflowException

        prepare_local_store(uri)
        self.uri = uri
        self.client = client(uri)  # an unreachable server fails here, before any model loads
        try:
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                exp.experiment_id
                if exp
                else self.client.create_experiment(
                    experiment,
                    artifact_location=artifact_root_for(uri),
                    tags={_EXPERIMENT_KIND: "custom_model_development"},
                )
            )
            if exp is not None and exp.tags.get(_EXPERIMENT_KIND) is None:
                self.client.set_experiment_tag(self.experiment_id, _EXPERIMENT_KIND, "custom_model_development")
        except MlflowException as exc:
            raise TrackingError(
                f"tracking.uri {uri}: {str(exc).splitlines()[0]}; fix the URI or start the server"
            ) from None
        self.experiment = experiment

    # -- runs -------------------------------------------------------------------------------------
    def start_parent(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=redact(run_name), tags=redacted_tags({**tags, M.TAG_KIND: "sweep"})
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def start_child(self, parent_id: str, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=redact(run_name),
            tags=redacted_tags({**tags, M.TAG_KIND: "variant", M.TAG_PARENT_RUN_ID: parent_id}),
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(v)[:_PARAM_VALUE_MAX]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i : i + BATCH])

    def record_members(self, parent_id: str, planned: list[str], members: dict[str, str]) -> None:
        """What the sweep planned and which run stands for each label (a resumed label points at the earlier
        run), so the sweep reads back whole (`load_sweep`)."""
        self.log_json(parent_id, {"planned": planned, "members": members}, M.ART_MEMBERS)
        self.set_tags(parent_id, {M.TAG_PLANNED_CHILDREN: str(len(planned))})

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        log_tags(self.client, run_id, redacted_tags(tags))

    def log_metrics(self, run_id: str, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in values.items()]
        for i in range(0, len(items), _METRIC_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _METRIC_BATCH])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, redact(text), name)

    def log_json(self, run_id: str, data: Any, name: str) -> None:
        # strings redacted in place first: a command line as a JSON list keeps its option and value apart
        self.log_text(run_id, json.dumps(redact_data(json.loads(json.dumps(data, default=str))), indent=2), name)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # -- measurements -----------------------------------------------------------------------------
    def log_fidelity(self, run_id: str, f: FidelityRecord) -> None:
        self.log_metrics(run_id, f.metrics())
        self.set_tags(run_id, f.tags())
        self.log_json(run_id, asdict(f), M.ART_FIDELITY)

    def log_accuracy(self, run_id: str, a: AccuracyResult) -> None:
        self.log_metrics(run_id, a.metrics())
        self.set_tags(run_id, a.tags())
        self.log_json(run_id, a.lm_eval_results, M.ART_LM_EVAL)
        self.log_text(run_id, questions_csv(a.questions), M.ART_QUESTIONS)

    def log_speed(self, run_id: str, s: SpeedResult) -> None:
        self.log_metrics(run_id, s.metrics())
        self.set_tags(run_id, s.tags())
        self.log_json(run_id, asdict(s), M.ART_SPEED)


# -- the verdict side's writes (verdict tags, report files) on runs that already exist ---------------------


def set_run_tags(uri: str, tags_by_run: dict[str, dict[str, str]]) -> None:
    """Tags on several runs (e.g. `gate.verdict` / `gate.reasons` on each child)."""
    c = client(uri)
    for run_id, tags in tags_by_run.items():
        log_tags(c, run_id, redacted_tags(tags))


def log_run_artifacts(uri: str, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    """Every file under `local_dir` as artifacts of `run_id` (under `artifact_path`), text files redacted."""
    with tempfile.TemporaryDirectory() as d:
        redacted_copy(Path(local_dir), Path(d))
        client(uri).log_artifacts(run_id, d, artifact_path)
