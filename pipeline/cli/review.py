"""Commands on past sweeps: gate, compare, export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import app, console, fail, user_errors


@app.command()
def gate(
    policy: Path = typer.Option(..., "--policy", help="policy YAML"),
    run_id: Optional[str] = typer.Option(None, "--run", help="parent run id"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="latest sweep of this experiment"),
    out: Path = typer.Option(Path("gate-report"), "--out", help="where the Markdown report and JUnit XML go"),
    tracking_uri: Optional[str] = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    ),
) -> None:
    """Pass/fail every variant against a policy (exit 0 pass, 1 fail, 2 error); fails closed."""
    from pipeline.verdict import run_gate

    # run_gate never raises: every error is exit 2 with one line, in the report and on the console
    result = run_gate(
        policy, tracking_uri=tracking_uri, run_id=run_id, experiment=experiment, out_dir=out, console=console
    )
    raise typer.Exit(result.exit_code)


@app.command()
def compare(
    run_id: Optional[str] = typer.Option(None, "--run", help="parent run id"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="latest sweep of this experiment"),
    out: Path = typer.Option(Path("compare-report"), "--out"),
    tracking_uri: Optional[str] = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    ),
    policy: Optional[Path] = typer.Option(
        None, "--policy", help="policy YAML whose dominance rule to use (default: the gate's default policy)"
    ),
) -> None:
    """Frontier table, Pareto plot and per-subject deltas for a sweep (Markdown, CSV, PNG)."""
    from pipeline.verdict import run_compare

    try:
        run_compare(
            tracking_uri=tracking_uri,
            run_id=run_id,
            experiment=experiment,
            out_dir=out,
            policy_path=policy,
            console=console,
        )
    except user_errors() as exc:
        fail(str(exc))
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else None
        if where is None or not (where == out or out in where.parents or where in out.parents):
            raise  # not the report folder: the store or an artifact, which raise their own errors
        fail(
            f"--out {out}: cannot write the report there ({exc.strerror or exc}: {where}); give --out a folder you can create and write to"
        )


@app.command()
def export(
    run_id: str = typer.Argument(..., help="a variant (child) run id"),
    out: Path = typer.Option(..., "--out", help="a new or empty folder to write the GGUF file or checkpoint into"),
    tracking_uri: Optional[str] = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    ),
) -> None:
    """A measured variant as files a server loads: its .gguf, or a (compressed-tensors) checkpoint. A FINISHED
    run only; rebuilt from the sweep's recipe on the device the run used, and refused unless the rebuild's
    sha256 over its stored tensors (a GGUF: the whole file) and its byte count equal what the run logged."""
    from pipeline.env import tracking_uri as resolve_uri
    from pipeline.methods import NotSerializable
    from pipeline.sweep.export import ExportError, export_run

    try:
        path = export_run(resolve_uri(tracking_uri), run_id, out)
    except (*user_errors(), ExportError, NotSerializable) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    console.print(f"exported run {run_id} to {path}")
