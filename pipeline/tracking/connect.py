"""Opening a tracking store: URI checks, the MLflow client, where a local store keeps its artifacts."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

BATCH = 100  # MLflow's log_batch takes at most 100 params or tags per call
TAG_VALUE_MAX = 5000  # and a tag value of at most 5000 characters


class TrackingError(RuntimeError):
    """The tracking store cannot be used; one line naming the URI and the fix."""


def artifact_root_for(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (`sqlite:///mlruns/mlflow.db` -> `mlruns/artifacts`)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db_path = Path(uri.removeprefix("sqlite:///"))
        return (db_path.parent / "artifacts").resolve().as_uri()
    return None  # file stores keep MLflow's default; a tracking server decides (e.g. --artifacts-destination s3://...)


def prepare_local_store(uri: str) -> None:
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


def client(uri: str, *, registry: bool = False):
    """An `MlflowClient` on a reachable store (with the Model Registry at the same URI when `registry`)."""
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri) if registry else MlflowClient(tracking_uri=uri)


def log_tags(mlflow_client: Any, run_id: str, tags: dict[str, Any]) -> None:
    """Tags on one run, in batches MLflow accepts (long values cut to its limit)."""
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:TAG_VALUE_MAX]) for k, v in tags.items()]
    for i in range(0, len(items), BATCH):
        mlflow_client.log_batch(run_id, tags=items[i : i + BATCH])
