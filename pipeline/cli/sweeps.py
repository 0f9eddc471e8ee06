"""Commands that plan and run sweeps: validate, run (ending with the verdict), methods."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipeline.cli.common import app, console, err_console, fail, load_checked, split_csv, user_errors
from pipeline.env import quiet_libraries


@app.command()
def validate(recipe: Path = typer.Argument(..., help="recipe YAML")) -> None:
    """Check a recipe (schema, methods, params, MMLU data) without loading any model."""
    try:
        r = load_checked(recipe)
    except user_errors() as exc:
        fail(str(exc))
    from pipeline.runtime import artifact_formats
    from pipeline.variants.plan import check_variants_fit, plan

    items = plan(r)
    try:
        check_variants_fit(recipe, r, items, artifact_formats(r))
    except user_errors() as exc:
        fail(str(exc))
    console.print(
        f"[green]ok[/] {recipe}: {len(r.models)} model(s), {len(r.variants)} variant(s) -> {len(items)} run(s)"
    )
    for item in items:
        console.print(
            f"  {item.label}  [dim]{'+'.join(s.method for s in item.variant.pipeline_steps)} on {item.runtime}[/]"
        )


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    limit_per_subject: Optional[int] = typer.Option(
        None, "--limit-per-subject", help="first N test questions per subject"
    ),
    sample: Optional[int] = typer.Option(
        None,
        "--sample",
        help="a seeded random sample of N questions stratified by subject (eval.sample; its seed, else 0)",
    ),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated variant names"),
    tracking_uri: Optional[str] = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: the recipe's tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    ),
    rerun: bool = typer.Option(
        False, "--rerun", help="measure again even when a FINISHED run with the same content key exists"
    ),
    executor: str = typer.Option(
        "process",
        "--executor",
        help="process: each model x variant in a fresh subprocess (a crash fails that run only) | inline: in this process | ray: each a Ray task",
    ),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a local Ray)"),
    policy: Optional[Path] = typer.Option(
        None,
        "--policy",
        help="the policy the closing verdict (and the sweep's verdict tags) use; default: policies/default.yaml's",
    ),
    gate: bool = typer.Option(
        False,
        "--gate",
        help="also gate the sweep as `shrinkgate gate` does (report, JUnit, registry) and exit with its code: 0 pass, 1 fail or undecided, 2 error",
    ),
    gate_out: Path = typer.Option(
        Path("gate-report"), "--gate-out", help="with --gate: where the gate's Markdown report and JUnit XML go"
    ),
) -> None:
    """Build every variant, score MMLU through lm-eval, time decode, log to MLflow, print the table and the verdict."""
    quiet_libraries()
    from pipeline.sweep.driver import run_sweep
    from pipeline.sweep.executors import executor_name, get_executor
    from pipeline.variants.plan import plan

    try:
        name = executor_name(executor)
        if address and name != "ray":
            fail(f"--address {address}: only --executor ray joins a cluster")
        runner = get_executor(name, address=address) if name == "ray" else get_executor(name)
        r = load_checked(
            recipe,
            limit_per_subject=limit_per_subject,
            sample_questions=sample,
            only=split_csv(only),
            tracking_uri=tracking_uri,
        )
    except user_errors() as exc:
        fail(str(exc))
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    items = plan(r)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("starting", total=len(items))

        def progress(label: str, stage: str) -> None:
            if stage in ("done", "failed", "skipped", "killed"):
                bar.advance(task)
                style = {"done": "green", "failed": "red", "skipped": "yellow", "killed": "red"}[stage]
                bar.console.print(f"[{style}]{stage}[/] {label}")
            else:
                bar.update(task, description=f"{label}: {stage}")

        try:
            outcome = run_sweep(r, executor=runner, progress=progress, rerun=rerun, policy_path=policy)
        except user_errors() as exc:
            fail(str(exc))
    _print_outcome(outcome)
    if outcome.interrupted:
        err_console.print("[bold red]interrupted:[/] active run and parent marked KILLED; run again to resume")
        raise typer.Exit(130)
    if outcome.verdict is not None:
        from pipeline.verdict.gate_report import print_verdict

        print_verdict(outcome.verdict.variants, outcome.verdict.policy_label, console)
    else:
        err_console.print(f"[bold red]no verdict:[/] {outcome.verdict_error}", soft_wrap=True)
    if outcome.failures:
        names = ", ".join(f"{c.item.label} ({c.error})" for c in outcome.failures)
        err_console.print(f"[bold red]{len(outcome.failures)} variant(s) failed:[/] {names}", soft_wrap=True)
    if gate:
        from pipeline.verdict import run_gate

        result = run_gate(
            policy,
            tracking_uri=outcome.tracking_uri,
            run_id=outcome.parent_run_id,
            out_dir=gate_out,
            console=console,
            table=False,
        )
        raise typer.Exit(result.exit_code)
    if outcome.failures or outcome.verdict is None:
        raise typer.Exit(1)


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _print_outcome(outcome) -> None:
    from pipeline import metrics as M
    from pipeline.tracking import run_metrics

    t = Table(title=f"{outcome.experiment}  (parent run {outcome.parent_run_id}, {outcome.seconds:.0f} s)")
    for col in (
        "model",
        "variant",
        "status",
        "MMLU ± stderr",
        "n",
        "decode tok/s",
        "MBU",
        "weight MB",
        "bits/w",
        "sparsity",
    ):
        t.add_column(col, justify="left" if col in ("model", "variant", "status") else "right")
    for c in outcome.children:
        m = run_metrics(outcome.tracking_uri, c.run_id) if c.run_id else {}
        acc, se = m.get(M.MMLU_ACC), m.get(M.MMLU_ACC_STDERR)
        wb = m.get(M.WEIGHT_BYTES)
        status = {"FINISHED": "[green]ok[/]", "SKIPPED": "[yellow]resumed[/]"}.get(c.status, f"[red]{c.status}[/]")
        t.add_row(
            c.item.model.name,
            c.item.variant.name,
            status if not c.error else f"{status} {c.error[:60]}",
            f"{acc:.3f} ± {se:.3f}" if acc is not None and se is not None else "—",
            _fmt(m.get(M.MMLU_N_QUESTIONS), ".0f"),
            _fmt(m.get(M.DECODE_TOK_S), ".1f"),
            _fmt(m.get(M.MBU), ".0%"),
            _fmt(wb / 1e6 if wb is not None else None, ".1f"),
            _fmt(m.get(M.BITS_PER_WEIGHT), ".2f"),
            _fmt(m.get(M.SPARSITY), ".0%"),
        )
    console.print(t)


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help="machine-readable")) -> None:
    """List every compression method: library, version, params, devices, serializable, notes."""
    from pipeline.methods.catalog import render_catalog

    console.print(render_catalog(as_json), highlight=False, soft_wrap=True) if not as_json else print(
        render_catalog(True)
    )
