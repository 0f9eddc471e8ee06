"""Entry points: read a sweep back through `pipeline.tracking`, decide, and write the files, tags and
registry entries. Everything between reading and writing is the pure analysis and gate.

    run_compare        compare.md, compare.csv and PNG plots to a folder, a table on the console
    log_sweep_report   the sweep's own verdict under its policy (default or `run --policy`): the same files under
                       `report/` on its parent, `verdict` / `frontier.*` tags and a one-line description on each
                       of its children (a child belongs to one sweep), the decision as the parent's description
                       and the experiment's shared runs view
    run_gate           gate_report.md and gate_junit.xml, `gate.<policy key>.*` tags (never another gate's or the
                       sweep's), passing variants registered
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import metrics as M
from pipeline.config import RecipeError, load_policy
from pipeline.config.policy import DEFAULT_POLICY, Policy, policy_key
from pipeline.env import tracking_uri as resolve_tracking_uri
from pipeline.records import SweepRecord
from pipeline.tracking import TrackingError, load_sweep, log_run_artifacts, register_passing, set_run_tags
from pipeline.tracking.ui import NOTE_MAX, ReviewView, artifact_url, publish_review
from pipeline.verdict.analysis import SweepAnalysis, analyze, rows, verdict_tags
from pipeline.verdict.frontier import Verdict
from pipeline.verdict.gate import GateError, GateResult, VariantGate, evaluate, exit_code
from pipeline.verdict.gate_report import gate_markdown, print_gate, verdict_sentence, write_junit
from pipeline.verdict.plots import write_plots
from pipeline.verdict.render import compare_markdown, print_compare, review_markdown, write_csv
from pipeline.verdict.writes import child_tags, parent_tags, registry_bundle, registry_name, sweep_verdict_tags

DEFAULT_POLICY_LABEL = "default policy (policies/default.yaml)"

REPORT_ARTIFACT_DIR = "report"
GATE_ARTIFACT_DIR = "gate"
REPORT_NAME = "gate_report.md"
JUNIT_NAME = "gate_junit.xml"


def _console(console):
    from rich.console import Console

    return console or Console()


def _quiet_downloads() -> None:
    # MLflow draws a progress bar per downloaded artifact (one per child's questions CSV).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# -- compare ------------------------------------------------------------------------------------------------


@dataclass
class CompareResult:
    analysis: SweepAnalysis
    rows: list[dict[str, Any]]
    markdown_path: Path
    csv_path: Path
    plots: list[Path]

    @property
    def verdicts(self) -> dict[str, dict[str, Verdict]]:
        return self.analysis.verdicts


def write_compare(analysis: SweepAnalysis, out_dir: str | Path) -> CompareResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table_rows = rows(analysis)
    plots = write_plots(analysis, out)
    md = out / "compare.md"
    md.write_text(compare_markdown(analysis, table_rows, plots), encoding="utf-8")
    csv_path = out / "compare.csv"
    write_csv(csv_path, table_rows)
    return CompareResult(analysis, table_rows, md, csv_path, plots)


def run_compare(
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    out_dir: str | Path = "reports/compare",
    policy_path: str | Path | None = None,
    confidence: float | None = None,
    seed: int | None = None,
    console=None,
) -> CompareResult:
    """Read a sweep back, print the table, write compare.md, compare.csv and PNG plots to `out_dir`.
    Dominance follows the policy at `policy_path` (default `DEFAULT_POLICY`, as the gate's policies/default.yaml);
    `confidence` / `seed` override its statistics. Raises `TrackingError` for an unknown run/experiment, an
    unusable store or an incomplete sweep, `RecipeError` for a bad policy (the CLI exits 2 on both)."""
    _quiet_downloads()
    console = _console(console)
    policy = load_policy(policy_path) if policy_path is not None else DEFAULT_POLICY
    sweep = _complete(load_sweep(resolve_tracking_uri(tracking_uri), run_id=run_id, experiment=experiment))
    analysis = analyze(sweep, policy, confidence=confidence, seed=seed)
    result = write_compare(analysis, out_dir)
    print_compare(analysis, result.rows, console)
    console.print(f"wrote {result.markdown_path}, {result.csv_path} and {len(result.plots)} plot(s) to {Path(out_dir)}")
    return result


def _complete(sweep: SweepRecord) -> SweepRecord:
    """A verdict on part of a sweep could pass by accident: refuse a sweep whose planned children are not all there."""
    problem = sweep.completeness_problem()
    if problem:
        raise TrackingError(problem)
    return sweep


@dataclass
class SweepVerdict:
    """The sweep's own verdict under its policy, as `shrinkgate run` prints it at the end."""

    policy: Policy
    policy_label: str
    variants: list[VariantGate]
    artifacts: list[str] = field(default_factory=list)  # the report files logged on the parent

    @property
    def sentence(self) -> str:
        return verdict_sentence(self.variants, self.policy_label)[:2000]


def load_policy_or_default(policy_path: str | Path | None) -> tuple[Policy, str]:
    """(policy, label for reports): the file's, or DEFAULT_POLICY (policies/default.yaml) when none is named."""
    if policy_path is None:
        return DEFAULT_POLICY, DEFAULT_POLICY_LABEL
    policy = load_policy(policy_path)
    return policy, f"policy {policy_path}"


def log_sweep_report(tracking_uri: str, parent_run_id: str, policy_path: str | Path | None = None) -> SweepVerdict:
    """The sweep's verdict under `policy_path` (default: DEFAULT_POLICY): compare.md, compare.csv and the plots
    under `report/` on the parent run; on every child of this sweep the `frontier.*` / Δ-vs-base tags, its
    `verdict` and a one-line description; the decision as the parent's description. Missing metrics (speed
    disabled, failed children) only leave cells empty and plots out. Called by the sweep at its end; the children
    it tags are its own (a resumed sweep copies what it reuses), so no later sweep rewrites them."""
    policy, label = load_policy_or_default(policy_path)
    sweep = _complete(load_sweep(tracking_uri, run_id=parent_run_id))
    analysis = analyze(sweep, policy)
    verdict = SweepVerdict(policy, label, evaluate(sweep, policy))
    with tempfile.TemporaryDirectory() as d:
        report = write_compare(analysis, d)
        log_run_artifacts(tracking_uri, parent_run_id, d, REPORT_ARTIFACT_DIR)
        verdict.artifacts = sorted(f"{REPORT_ARTIFACT_DIR}/{p.name}" for p in Path(d).iterdir())
    tags = verdict_tags(analysis)
    for run_id, extra in sweep_verdict_tags(sweep, verdict.variants, label, policy_key(policy)).items():
        tags.setdefault(run_id, {}).update(extra)
    set_run_tags(tracking_uri, tags)
    publish_sweep_review(tracking_uri, analysis, report, verdict.sentence)
    return verdict


def publish_sweep_review(tracking_uri: str, analysis: SweepAnalysis, report: CompareResult, sentence: str = "") -> None:
    """What a reviewer sees first in the MLflow UI: the decision and the verdict table and Pareto plots as the
    parent run's description, and the experiment's shared runs view (this sweep's runs, the verdict columns)."""
    parent = analysis.sweep.parent_run_id
    images = [
        (p.stem, artifact_url(parent, f"{REPORT_ARTIFACT_DIR}/{p.name}"))
        for p in report.plots
        if p.name.startswith("pareto_")
    ]
    metrics = [M.MMLU_ACC, M.MMLU_ACC_STDERR, M.DECODE_TOK_S, M.WEIGHT_BYTES]
    metrics += [ax.metric for ax in analysis.axes if ax.metric not in metrics]
    view = ReviewView(
        run_ids=(parent, *(r.run_id for r in analysis.records)),
        metric_columns=tuple(metrics),
        tag_columns=(M.TAG_ROLE, M.TAG_VERDICT, *(M.TAG_FRONTIER_PREFIX + ax.metric for ax in analysis.axes)),
    )
    text = review_markdown(analysis, report.rows, images, max_chars=NOTE_MAX - len(sentence) - 2)
    publish_review(tracking_uri, parent, (sentence + "\n\n" if sentence else "") + text, view)


# -- gate ---------------------------------------------------------------------------------------------------


def run_gate(
    policy_path: str | Path | None,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    out_dir: str | Path = "reports/gate",
    console=None,
    table: bool = True,
) -> GateResult:
    """Gate one sweep (`run_id` of its parent run, or the latest sweep of `experiment`) with the policy at
    `policy_path` (None: DEFAULT_POLICY): exit code 0 every gated variant passed, 1 any failed or is undecided,
    2 error.

    Writes `gate_report.md` and `gate_junit.xml` to `out_dir`; records the verdict under the policy's key
    (`gate.<key>.verdict` / `.reasons` on each gated child, `gate.<key>.*` on the parent, both files under
    `gate/<key>/` on the parent), so gates with other policies never overwrite each other or the sweep's own
    verdict; registers each passing variant with the policy's alias. Never raises: a bad policy, an unknown run,
    an unreachable store or any failure while tagging or registering returns exit code 2 with `error` set (one
    line), and still writes the report and a JUnit file (with an error testcase when nothing could be gated)
    so CI shows why. `table=False` prints only where the files went and the exit code."""
    _quiet_downloads()
    console = _console(console)
    started = time.perf_counter()
    out = Path(out_dir)
    result = GateResult(exit_code=2)
    policy_label = str(policy_path) if policy_path is not None else DEFAULT_POLICY_LABEL
    try:
        result.policy = load_policy_or_default(policy_path)[0]
        uri = resolve_tracking_uri(tracking_uri)
        sweep = load_sweep(uri, run_id=run_id, experiment=experiment)
        result.parent_run_id, result.experiment = sweep.parent_run_id, sweep.experiment
        if sweep.tags.get(M.TAG_KIND) != "sweep":
            raise GateError(
                f"run {sweep.parent_run_id} is not a sweep parent run (tag {M.TAG_KIND}=sweep); give the parent's id to --run"
            )
        if not sweep.children:
            raise GateError(f"sweep run {sweep.parent_run_id} has no child runs; nothing to gate")
        problem = sweep.completeness_problem()
        if problem:
            raise GateError(problem)
        result.variants = evaluate(sweep, result.policy)
        if not result.variants:
            raise GateError(
                f"sweep run {sweep.parent_run_id} has no candidate variant besides the unmodified model; nothing to gate"
            )
    except Exception as exc:  # noqa: BLE001 - every error is exit 2 with one line
        known = isinstance(exc, (RecipeError, TrackingError, GateError))
        result.error = _one_line(exc, with_type=not known)
        result.variants = []
        _write_safely(result, out, policy_label, time.perf_counter() - started)
        print_gate(result, console, table=table)
        return result

    result.exit_code = exit_code(result.variants)
    key = policy_key(result.policy)
    try:
        _record(result, sweep, uri, key, policy_label)
    except Exception as exc:  # noqa: BLE001 - verdicts stand, but the store was not updated as promised
        result.error = f"verdicts not fully recorded in {uri}: {_one_line(exc, with_type=True)}"
        result.exit_code = 2
    _write_safely(result, out, policy_label, time.perf_counter() - started)
    try:
        with tempfile.TemporaryDirectory() as d:
            for p in (result.report_path, result.junit_path):
                if p is not None:
                    Path(d, p.name).write_bytes(p.read_bytes())
            log_run_artifacts(uri, sweep.parent_run_id, d, f"{GATE_ARTIFACT_DIR}/{key}")
    except Exception as exc:  # noqa: BLE001
        result.error = (
            result.error or f"report not logged to run {sweep.parent_run_id}: {_one_line(exc, with_type=True)}"
        )
        result.exit_code = 2
    print_gate(result, console, table=table)
    return result


def _one_line(exc: BaseException, *, with_type: bool) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if with_type or not msg else msg


def _record(result: GateResult, sweep: SweepRecord, uri: str, key: str, policy_label: str) -> None:
    """Verdict tags under the policy's key on each gated child, registry entries for passes, the gate's record
    on the parent."""
    policy = result.policy
    by_id = {r.run_id: r for r in sweep.children}
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    set_run_tags(uri, child_tags(result.variants, key))
    if policy.register_model:
        for g in result.variants:
            if g.verdict != "pass" or g.run_id is None:
                continue
            r = by_id[g.run_id]
            reg_name, version = register_passing(
                uri,
                r,
                name=registry_name(policy, sweep, r),
                alias=policy.alias,
                files=registry_bundle(g, r, policy, sweep),
                parent_run_id=sweep.parent_run_id,
                tags={
                    M.TAG_GATE_PREFIX + M.GATE_VERDICT: "pass",
                    M.TAG_GATE_PREFIX + M.GATE_POLICY: policy_label,
                    M.TAG_GATE_PREFIX + M.GATE_POLICY_KEY: key,
                    M.TAG_MODEL: r.model,
                    M.TAG_VARIANT: r.variant,
                },
            )
            g.registered = f"{reg_name} v{version} @{policy.alias}"
    set_run_tags(uri, {sweep.parent_run_id: parent_tags(result, key, policy_label, stamp)})


def _write_safely(result: GateResult, out: Path, policy_label: str, seconds: float) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        result.report_path = out / REPORT_NAME
        result.report_path.write_text(gate_markdown(result, policy_label), encoding="utf-8")
        result.junit_path = write_junit(out / JUNIT_NAME, result, seconds)
    except OSError as exc:
        result.report_path = result.junit_path = None
        result.error = result.error or f"cannot write the report to {out}: {exc.strerror or exc}; fix --out"
        result.exit_code = 2
