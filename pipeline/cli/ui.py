"""`shrinkgate ui`: the MLflow UI over the store, one link per experiment to its verdict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import app, console, err_console
from pipeline.env import tracking_uri as resolve_tracking_uri


@app.command()
def ui(
    tracking_uri: Optional[str] = typer.Option(
        None,
        "--tracking-uri",
        help="the store to browse (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address (loopback unless you mean otherwise)"),
    port: int = typer.Option(5000, "--port"),
    open_browser: bool = typer.Option(
        False, "--open", help="open the newest experiment's link in a browser once the server answers"
    ),
) -> None:
    """Start the MLflow UI over the store (one worker, loopback by default) and print a link per experiment
    to its runs with the verdict columns; Ctrl-C or SIGTERM stops it."""
    import signal

    from pipeline.processes import stop_group
    from pipeline.tracking import artifact_root_for

    venv_mlflow = Path(sys.executable).with_name("mlflow")
    exe = str(venv_mlflow) if venv_mlflow.is_file() else (shutil.which("mlflow") or "mlflow")
    tracking_uri = resolve_tracking_uri(tracking_uri)
    cmd = [exe, "server", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port), "--workers", "1"]
    artifacts = artifact_root_for(tracking_uri)  # sqlite: runs' artifacts beside the db; new ones go there too
    if artifacts:
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--artifacts-destination", artifacts]
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    console.print(f"MLflow UI on {base}  ({tracking_uri})", highlight=False, soft_wrap=True)
    links = _review_links(tracking_uri, base)
    for link in links:
        what = "latest sweep's verdict" if link.reviewed else "runs"
        console.print(f"  {link.name} ({what}): {link.url}", highlight=False, soft_wrap=True)
    # The server (and its uvicorn worker) live in their own process group, which we end on Ctrl-C / SIGTERM.
    # MLflow's GenAI job runner (a job process + 7 huey consumers) is of no use here; opt back in by setting it.
    env = {**os.environ}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def _stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread: Ctrl-C handling is the caller's
        previous = None
    try:
        if open_browser:
            _open_when_up(proc, base, links[0].url if links else base)
        code = proc.wait()
    except KeyboardInterrupt:
        stop_group(proc, grace_s=15.0)
        code = 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(code)


def _review_links(tracking_uri: str, base: str) -> list:
    """Each experiment's deep link; a store that cannot be listed still gets its UI (the base URL)."""
    from pipeline.tracking.ui import review_links

    try:
        return review_links(tracking_uri, base)
    except Exception as exc:  # noqa: BLE001 - the server itself reports a broken store
        err_console.print(
            f"[yellow]warning:[/] cannot list experiments in {tracking_uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            soft_wrap=True,
        )
        return []


def _open_when_up(proc: subprocess.Popen, base: str, url: str, timeout_s: float = 120.0) -> None:
    import time
    import urllib.request
    import webbrowser

    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):  # noqa: S310 - our own UI on loopback
                webbrowser.open(url)
                return
        except OSError:
            time.sleep(0.5)
