"""Thin command-line layer: parse, call, print. Errors users can fix print one line and exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.env import absolute_env_paths, quiet_libraries
from pipeline.env import tracking_uri as resolve_tracking_uri

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Is this quantized or pruned model really better than a smaller published model?")
# Logs and CI pipes have no terminal width; 160 columns keeps table rows on one line there.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.data.mmlu import MMLUDataError
    from pipeline.methods import MethodError
    from pipeline.env import DeviceUnavailable
    from pipeline.models import ModelError
    from pipeline.config.recipe import RecipeError
    from pipeline.tracking import TrackingError

    return (RecipeError, ModelError, MMLUDataError, TrackingError, MethodError, DeviceUnavailable)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)




def _split(csv: str | None) -> list[str] | None:
    return [s.strip() for s in csv.split(",") if s.strip()] if csv else None


def _batch_sizes(csv: str | None) -> list[int] | None:
    """The whole numbers >= 1 of a comma-separated --batch-sizes; None when it was not given. Anything else exits 2."""
    if csv is None:
        return None
    sizes = []
    for item in _split(csv) or [csv]:
        try:
            size = int(item)
        except ValueError:
            size = 0  # refused below like any size < 1
        if size < 1:
            _fail(f"--batch-sizes: {item!r} is not a whole number >= 1; give comma-separated batch sizes, e.g. --batch-sizes 1,8,64")
        sizes.append(size)
    return sizes


def _load(recipe_path: Path, **overrides):
    from pipeline.build.plan import load_recipe, preflight
    from pipeline.config.recipe import apply_overrides

    from pipeline.runtime import check_runtimes

    recipe = apply_overrides(load_recipe(recipe_path), **overrides)
    preflight(recipe)
    check_runtimes(recipe, str(recipe_path))
    if recipe.speed.target_hardware:
        from pipeline.config.recipe import RecipeError
        from pipeline.predict.hardware import HardwareError, check_name

        try:
            check_name(recipe.speed.target_hardware)
        except HardwareError as exc:
            raise RecipeError(f"{recipe_path}: field speed.target_hardware: {exc.args[0].removeprefix('--hardware ')} -> use one of them or remove the key") from None
    return recipe


@app.command()
def validate(recipe: Path = typer.Argument(..., help="recipe YAML")) -> None:
    """Check a recipe (schema, methods, params, MMLU data) without loading any model."""
    try:
        r = _load(recipe)
    except _user_errors() as exc:
        _fail(str(exc))
    from pipeline.build.plan import check_variants_fit, plan

    items = plan(r)
    try:
        check_variants_fit(recipe, r, items)
    except _user_errors() as exc:
        _fail(str(exc))
    console.print(f"[green]ok[/] {recipe}: {len(r.models)} model(s), {len(r.variants)} variant(s) -> {len(items)} run(s)")
    for item in items:
        console.print(f"  {item.label}  [dim]{'+'.join(s.method for s in item.variant.pipeline_steps)} on {item.runtime}[/]")


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    limit_per_subject: Optional[int] = typer.Option(None, "--limit-per-subject", help="first N test questions per subject"),
    sample: Optional[int] = typer.Option(
        None, "--sample", help="a seeded random sample of N questions stratified by subject (eval.sample; its seed, else 0)"
    ),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated variant names"),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: the recipe's tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"
    ),
    rerun: bool = typer.Option(False, "--rerun", help="measure again even when a FINISHED run with the same content key exists"),
    executor: str = typer.Option(
        "process", "--executor",
        help="process: each model x variant in a fresh subprocess (a crash fails that run only) | inline: in this process (alias: local) | ray: each a Ray task",
    ),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a local Ray)"),
    policy: Optional[Path] = typer.Option(
        None, "--policy", help="the policy the closing verdict (and the sweep's verdict tags) use; default: policies/default.yaml's"
    ),
    gate: bool = typer.Option(
        False, "--gate", help="also gate the sweep as `shrinkgate gate` does (report, JUnit, registry) and exit with its code: 0 pass, 1 fail or undecided, 2 error"
    ),
    gate_out: Path = typer.Option(Path("gate-report"), "--gate-out", help="with --gate: where the gate's Markdown report and JUnit XML go"),
) -> None:
    """Build every variant, score MMLU through lm-eval, time decode, log to MLflow, print the table and the verdict."""
    quiet_libraries()
    from pipeline.build.plan import plan
    from pipeline.sweep.driver import run_sweep
    from pipeline.sweep.executors import executor_name, get_executor

    try:
        name = executor_name(executor)
        if address and name != "ray":
            _fail(f"--address {address}: only --executor ray joins a cluster")
        runner = get_executor(name, address=address) if name == "ray" else get_executor(name)
        r = _load(recipe, limit_per_subject=limit_per_subject, sample_questions=sample, only=_split(only), tracking_uri=tracking_uri)
    except _user_errors() as exc:
        _fail(str(exc))
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    items = plan(r)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as bar:
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
        except _user_errors() as exc:
            _fail(str(exc))
    _print_outcome(outcome)
    if outcome.interrupted:
        err_console.print("[bold red]interrupted:[/] active run and parent marked KILLED; run again to resume")
        raise typer.Exit(130)
    if outcome.verdict is not None:
        from pipeline.verdict.render import print_verdict

        print_verdict(outcome.verdict.variants, outcome.verdict.policy_label, console)
    else:
        err_console.print(f"[bold red]no verdict:[/] {outcome.verdict_error}", soft_wrap=True)
    if outcome.failures:
        names = ", ".join(f"{c.item.label} ({c.error})" for c in outcome.failures)
        err_console.print(f"[bold red]{len(outcome.failures)} variant(s) failed:[/] {names}", soft_wrap=True)
    if gate:
        from pipeline.verdict import run_gate

        result = run_gate(policy, tracking_uri=outcome.tracking_uri, run_id=outcome.parent_run_id, out_dir=gate_out, console=console, table=False)
        raise typer.Exit(result.exit_code)
    if outcome.failures or outcome.verdict is None:
        raise typer.Exit(1)


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _print_outcome(outcome) -> None:
    from pipeline import metrics as M
    from pipeline.tracking import run_metrics

    t = Table(title=f"{outcome.experiment}  (parent run {outcome.parent_run_id}, {outcome.seconds:.0f} s)")
    for col in ("model", "variant", "status", "MMLU ± stderr", "n", "decode tok/s", "MBU", "weight MB", "bits/w", "sparsity"):
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

    console.print(render_catalog(as_json), highlight=False, soft_wrap=True) if not as_json else print(render_catalog(True))


@app.command()
def ui(
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="the store to browse (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address (loopback unless you mean otherwise)"),
    port: int = typer.Option(5000, "--port"),
    open_browser: bool = typer.Option(False, "--open", help="open the newest experiment's link in a browser once the server answers"),
) -> None:
    """Start the MLflow UI over the store (one worker, loopback by default) and print a link per experiment
    to its runs with the verdict columns; Ctrl-C or SIGTERM stops it."""
    import signal

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
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # a worker that outlived the server's main process
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
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
        err_console.print(f"[yellow]warning:[/] cannot list experiments in {tracking_uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", soft_wrap=True)
        return []


def _open_when_up(proc: subprocess.Popen, base: str, url: str, timeout_s: float = 120.0) -> None:
    import time
    import urllib.request
    import webbrowser

    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                webbrowser.open(url)
                return
        except OSError:
            time.sleep(0.5)


@app.command()
def speed(
    config: str = typer.Option(..., "--config", help="published architecture, e.g. llama-3.1-8b (random weights)"),
    dtype: str = typer.Option("bf16", "--dtype"),
    method: str = typer.Option("none", "--method"),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="comma-separated"),
    prompt_tokens: int = typer.Option(128, "--prompt-tokens"),
    new_tokens: int = typer.Option(32, "--new-tokens"),
    device: str = typer.Option("auto", "--device"),
    compile: bool = typer.Option(False, "--compile", help="static KV cache + torch.compile (CUDA graphs)"),
    threads: Optional[int] = typer.Option(None, "--threads"),
) -> None:
    """Decode speed of a published architecture with random weights: size hardware without downloads."""
    from pipeline.runtime.speed.command import print_table, speed_command

    batches = _batch_sizes(batch_sizes)
    try:
        result = speed_command(
            config=config, dtype=dtype, method=method, batch_sizes=batches,
            prompt_tokens=prompt_tokens, new_tokens=new_tokens, device=device, compile=compile, threads=threads,
        )
    except (*_user_errors(), ValueError) as exc:
        _fail(str(exc))
    print_table(result)


@app.command()
def predict(
    hardware: str = typer.Option(..., "--hardware", help="a device of pipeline/predict/hardware.yaml (h100-sxm, l4, ...) or this-host"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="every model x variant of a recipe"),
    config: Optional[str] = typer.Option(None, "--config", help="comma-separated published architectures, e.g. llama-3.1-8b,llama-3.2-3b"),
    model: Optional[Path] = typer.Option(None, "--model", help="a model folder with config.json"),
    method: Optional[str] = typer.Option(None, "--method", help="comma-separated methods (default: none; with --recipe its variants)"),
    engine: Optional[str] = typer.Option(None, "--engine", help="transformers | llama.cpp | openai (default: the recipe's runtime, else transformers)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16 (default: bf16; with --recipe each model's dtype)"),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="comma-separated (default: 1,8,64; with --recipe its speed.batch_sizes)"),
    prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens", help="default 128 (with --recipe its speed.prompt_tokens)"),
    new_tokens: Optional[int] = typer.Option(None, "--new-tokens", help="default 32 (with --recipe its speed.new_tokens)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="with --recipe: read measured bits per weight from its latest sweep here"),
) -> None:
    """Predicted TTFT, TPOT, decode tok/s, memory and bottleneck per variant and batch on a named device (roofline
    with engine factors fitted from this project's measurements); nothing is downloaded or run."""
    from pipeline.predict.command import PredictError, Target, model_facts, predict_targets, print_predictions, recipe_targets
    from pipeline.predict.hardware import HardwareError
    from pipeline.predict.hardware import hardware as hardware_named

    if sum(x is not None for x in (recipe, config, model)) != 1:
        _fail("give exactly one of --recipe, --config, --model")
    given_batches = _batch_sizes(batch_sizes)
    try:
        if recipe is not None:
            doc = _load_recipe_only(recipe)
            records = _latest_records(tracking_uri, doc.tracking.experiment) if tracking_uri else ()
            targets = recipe_targets(doc, dtype, records)
            if method:
                targets = [t for t in targets if t.method in _split(method)]
            engine = engine or doc.runtime
            batches = given_batches or doc.speed.batch_sizes
            prompt, new = prompt_tokens or doc.speed.prompt_tokens, new_tokens or doc.speed.new_tokens
        else:
            sources = _split(config) if config else [str(model)]
            facts = [model_facts(src, dtype or "bf16") for src in sources]
            targets = [Target(f, m, m) for f in facts for m in _split(method) or ["none"]]
            batches = given_batches or [1, 8, 64]
            prompt, new = prompt_tokens or 128, new_tokens or 32
        device = hardware_named(hardware)
        predictions = predict_targets(targets, device, engine or "transformers", batches, prompt, new)
    except (*_user_errors(), PredictError, HardwareError) as exc:
        _fail(str(exc))
    print_predictions(predictions, device, console)


def _load_recipe_only(path: Path):
    from pipeline.config.recipe import load_recipe

    return load_recipe(path)


def _latest_records(tracking_uri: str, experiment: str):
    from pipeline.tracking.read import load_sweep

    return load_sweep(resolve_tracking_uri(tracking_uri), experiment=experiment, with_questions=False).children


@app.command()
def gate(
    policy: Path = typer.Option(..., "--policy", help="policy YAML"),
    run_id: Optional[str] = typer.Option(None, "--run", help="parent run id"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="latest sweep of this experiment"),
    out: Path = typer.Option(Path("gate-report"), "--out", help="where the Markdown report and JUnit XML go"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"),
) -> None:
    """Pass/fail every variant against a policy (exit 0 pass, 1 fail, 2 error); fails closed."""
    from pipeline.verdict import run_gate

    # run_gate never raises: every error is exit 2 with one line, in the report and on the console
    result = run_gate(policy, tracking_uri=tracking_uri, run_id=run_id, experiment=experiment, out_dir=out, console=console)
    raise typer.Exit(result.exit_code)


@app.command()
def compare(
    run_id: Optional[str] = typer.Option(None, "--run", help="parent run id"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="latest sweep of this experiment"),
    out: Path = typer.Option(Path("compare-report"), "--out"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="policy YAML whose dominance rule to use (default: the gate's default policy)"),
) -> None:
    """Frontier table, Pareto plot and per-subject deltas for a sweep (Markdown, CSV, PNG)."""
    from pipeline.verdict import run_compare

    try:
        run_compare(tracking_uri=tracking_uri, run_id=run_id, experiment=experiment, out_dir=out, policy_path=policy, console=console)
    except _user_errors() as exc:
        _fail(str(exc))
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else None
        if where is None or not (where == out or out in where.parents or where in out.parents):
            raise  # not the report folder: the store or an artifact, which raise their own errors
        _fail(f"--out {out}: cannot write the report there ({exc.strerror or exc}: {where}); give --out a folder you can create and write to")


@app.command()
def export(
    run_id: str = typer.Argument(..., help="a variant (child) run id"),
    out: Path = typer.Option(..., "--out", help="a new or empty folder to write the GGUF file or checkpoint into"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"),
) -> None:
    """A measured variant as files a server loads: its .gguf, or a (compressed-tensors) checkpoint. A FINISHED
    run only; rebuilt from the sweep's recipe on the device the run used, and refused unless the rebuild's
    sha256 over its stored tensors (a GGUF: the whole file) and its byte count equal what the run logged."""
    from pipeline.env import tracking_uri as resolve_uri
    from pipeline.methods import NotSerializable
    from pipeline.sweep.export import ExportError, export_run

    try:
        path = export_run(resolve_uri(tracking_uri), run_id, out)
    except (*_user_errors(), ExportError, NotSerializable) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    console.print(f"exported run {run_id} to {path}")


def main() -> None:
    absolute_env_paths()  # a child process started in another cwd reads the same files
    app()


if __name__ == "__main__":
    main()
