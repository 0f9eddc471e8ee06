"""The gate: check a sweep's candidate variants against a policy; exit 0 (all pass), 1 (any fails), 2 (error).

Fails closed: a gated variant passes only when every check it is subject to could be evaluated and passed.
A FAILED/KILLED/RUNNING child, a missing metric, missing or mismatched per-question outcomes, a missing
unmodified candidate to compare against, or a variant named in the policy but absent from the sweep is a
failure with its reason. The MMLU check is three-way (see `pipeline.verdict.stats.non_inferiority`): `undecided`
(too few questions to tell) is not a pass, so it also exits 1.

Writes `gate_report.md` and `gate_junit.xml` (one testcase per gated variant) to `out_dir`, tags each
child run `gate.verdict` / `gate.reasons`, logs both files under `gate/` on the parent run, and registers
each passing variant in the MLflow Model Registry with the policy's alias (`gate-passed`).
"""

from __future__ import annotations

import json
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pipeline import metrics as M
from pipeline.verdict.frontier import axis_by_name, frontier_verdicts
from pipeline.config.policy import Policy, load_policy
from pipeline.records import SweepRecord, VariantRecord
from pipeline.config.recipe import RecipeError
from pipeline.verdict.report import _uri, base_for, fmt
from pipeline.verdict.stats import NonInferiority, PairingError, non_inferiority, pair, paired_margin, questions_needed

Outcome = Literal["pass", "fail", "undecided"]
REPORT_NAME = "gate_report.md"
JUNIT_NAME = "gate_junit.xml"
GATE_ARTIFACT_DIR = "gate"


class GateError(RuntimeError):
    """Nothing can be gated (exit 2); one line."""


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str


@dataclass
class VariantGate:
    label: str
    model: str
    variant: str
    run_id: str | None
    checks: list[Check] = field(default_factory=list)
    mmlu: NonInferiority | None = None
    registered: str | None = None  # "name vN" once registered

    @property
    def verdict(self) -> Outcome:
        outcomes = {c.outcome for c in self.checks}
        if not self.checks or "fail" in outcomes:
            return "fail"
        return "undecided" if "undecided" in outcomes else "pass"

    @property
    def reasons(self) -> list[str]:
        if not self.checks:
            return ["no check could run"]
        return [f"{c.name}: {c.detail}" for c in self.checks if c.outcome != "pass"]


@dataclass
class GateResult:
    exit_code: int
    variants: list[VariantGate] = field(default_factory=list)
    policy: Policy | None = None
    parent_run_id: str | None = None
    experiment: str | None = None
    report_path: Path | None = None
    junit_path: Path | None = None
    error: str | None = None  # set with exit code 2

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


# -- checks -------------------------------------------------------------------------------------------


def select(sweep: SweepRecord, names: list[str] | None) -> list[tuple[str, VariantRecord | None]]:
    """(name, record) for each gated variant: every candidate variant except the unmodified one, or the
    named ones (variant name or model/variant); a name with no child run gives (name, None)."""
    candidates = [r for r in sweep.children if r.role == "candidate"]
    if names is None:
        return [(r.label, r) for r in candidates if not r.is_base]
    out: list[tuple[str, VariantRecord | None]] = []
    for name in names:
        hits = [r for r in candidates if name in (r.variant, r.label)]
        out += [(r.label, r) for r in hits] if hits else [(name, None)]
    return out


def _metric_check(r: VariantRecord, name: str, metric: str, limit: float, upper: bool) -> Check:
    v = r.metric(metric)
    if v is None:
        return Check(name, "fail", f"missing metric {metric}")
    ok = v <= limit if upper else v >= limit
    op = "<=" if upper else ">="
    shown = fmt(v, metric) if metric == M.WEIGHT_BYTES else f"{v:.4g}"
    limit_s = fmt(float(limit), metric) if metric == M.WEIGHT_BYTES else f"{limit:g}"
    return Check(name, "pass" if ok else "fail", f"{metric} {shown} {'' if ok else 'not '}{op} {limit_s}")


def _mmlu_check(r: VariantRecord, base: VariantRecord | None, policy: Policy) -> tuple[Check, NonInferiority | None]:
    name = "mmlu_drop"
    if base is None:
        return Check(name, "fail", f"no FINISHED unmodified candidate (method none) for model {r.model} to compare with"), None
    if not r.questions:
        return Check(name, "fail", f"no per-question outcomes ({M.ART_QUESTIONS}) for {r.label}"), None
    if not base.questions:
        return Check(name, "fail", f"no per-question outcomes ({M.ART_QUESTIONS}) for {base.label}"), None
    try:
        p = pair(r.questions, base.questions)
        if not p.complete:
            return Check(name, "fail", f"question sets differ from {base.label}: {p.only_a} only here, {p.only_b} only in base"), None
        ni = non_inferiority(r.questions, base.questions, policy.max_mmlu_drop_points, confidence=policy.confidence, n_boot=policy.bootstrap_samples, seed=policy.seed)
    except PairingError as exc:
        return Check(name, "fail", str(exc)), None
    return Check(name, ni.decision, ni.reason), ni


def evaluate(sweep: SweepRecord, policy: Policy) -> list[VariantGate]:
    """Every gated variant with its checks (pure: no MLflow)."""
    gated = select(sweep, policy.variants)
    records = list(sweep.children)
    margin = paired_margin(policy.confidence, n_boot=min(policy.bootstrap_samples, 2_000), seed=policy.seed)
    dominators = (lambda x: x.role == "reference") if policy.dominated_by == "references" else None
    axes = [axis_by_name(a) for a in policy.dominance_axes] if policy.must_not_be_dominated else []
    verdicts = {ax.metric: frontier_verdicts(records, ax, margin=margin, tolerance=policy.speed_tolerance, dominators=dominators) for ax in axes}
    out: list[VariantGate] = []
    for name, r in gated:
        if r is None:
            g = VariantGate(name, name.split("/")[0] if "/" in name else "?", name.split("/")[-1], None)
            g.checks.append(Check("run", "fail", f"no candidate child run named {name!r} in sweep {sweep.parent_run_id}"))
            out.append(g)
            continue
        g = VariantGate(r.label, r.model, r.variant, r.run_id)
        out.append(g)
        if r.status != "FINISHED":
            err = r.tags.get(M.TAG_STATUS_ERROR)
            g.checks.append(Check("run", "fail", f"status {r.status}" + (f" ({err})" if err else "")))
            continue
        g.checks.append(Check("run", "pass", "FINISHED"))
        if r.metric(M.MMLU_ACC) is None:
            g.checks.append(Check("mmlu", "fail", f"missing metric {M.MMLU_ACC}"))
        base = r if r.is_base else base_for(r, records)
        check, g.mmlu = _mmlu_check(r, base, policy)
        g.checks.append(check)
        if policy.min_decode_tok_s is not None:
            g.checks.append(_metric_check(r, "min_decode_tok_s", M.DECODE_TOK_S, policy.min_decode_tok_s, upper=False))
        if policy.max_weight_bytes is not None:
            g.checks.append(_metric_check(r, "max_weight_bytes", M.WEIGHT_BYTES, policy.max_weight_bytes, upper=True))
        if policy.max_kl_vs_base is not None:
            g.checks.append(_metric_check(r, "max_kl_vs_base", M.KL_VS_BASE, policy.max_kl_vs_base, upper=True))
        for ax in axes:
            v = verdicts[ax.metric][r.run_id]
            if v.status == "frontier":
                g.checks.append(Check(f"not_dominated[{ax.metric}]", "pass", "on the frontier"))
            elif v.status == "unplaced":
                g.checks.append(Check(f"not_dominated[{ax.metric}]", "fail", f"cannot place: {v.reason}"))
            else:
                g.checks.append(Check(f"not_dominated[{ax.metric}]", "fail", "dominated by " + ", ".join(v.dominated_by)))
    return out


# -- outputs ------------------------------------------------------------------------------------------


def write_junit(path: Path, result: GateResult, seconds: float = 0.0) -> Path:
    suites = ET.Element("testsuites", name="shrinkgate gate")
    suite = ET.SubElement(suites, "testsuite", name=f"shrinkgate.gate.{result.experiment or 'unknown'}")
    props = ET.SubElement(suite, "properties")
    for k, v in (("parent_run_id", result.parent_run_id), ("experiment", result.experiment)):
        if v:
            ET.SubElement(props, "property", name=k, value=str(v))
    failures = errors = 0
    if result.error is not None:
        errors = 1
        case = ET.SubElement(suite, "testcase", classname="shrinkgate.gate", name="gate", time="0")
        err = ET.SubElement(case, "error", message=result.error, type="error")
        err.text = result.error
    for g in result.variants:
        case = ET.SubElement(suite, "testcase", classname=f"shrinkgate.gate.{g.model}", name=g.label, time="0")
        if g.verdict != "pass":
            failures += 1
            fail = ET.SubElement(case, "failure", message="; ".join(g.reasons), type=g.verdict)
            fail.text = "\n".join(f"[{c.outcome}] {c.name}: {c.detail}" for c in g.checks)
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(f"[{c.outcome}] {c.name}: {c.detail}" for c in g.checks) + (f"\nregistered: {g.registered}" if g.registered else "")
    tests = len(result.variants) + (1 if result.error is not None else 0)
    for el in (suites, suite):
        el.set("tests", str(tests))
        el.set("failures", str(failures))
        el.set("errors", str(errors))
        el.set("time", f"{seconds:.3f}")
    suite.set("skipped", "0")
    suite.set("timestamp", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    ET.indent(suites)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    return path


def markdown(result: GateResult, policy_path: str | Path) -> str:
    pol = result.policy
    verdict = {0: "PASS", 1: "FAIL", 2: "ERROR"}[result.exit_code]
    lines = [f"# shrinkgate gate: {verdict}", ""]
    lines.append(f"Policy `{policy_path}` · experiment `{result.experiment or '?'}` · sweep run `{result.parent_run_id or '?'}`")
    lines.append("")
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if pol is not None:
        rules = [f"MMLU drop ≤ {pol.max_mmlu_drop_points:g} points (one-sided {pol.confidence:.0%} upper bound, paired)"]
        if pol.must_not_be_dominated:
            rules.append(f"not dominated on {', '.join(pol.dominance_axes)} (by {pol.dominated_by})")
        if pol.min_decode_tok_s is not None:
            rules.append(f"decode_tok_s ≥ {pol.min_decode_tok_s:g}")
        if pol.max_weight_bytes is not None:
            rules.append(f"weight_bytes ≤ {fmt(float(pol.max_weight_bytes), M.WEIGHT_BYTES)}")
        if pol.max_kl_vs_base is not None:
            rules.append(f"kl_vs_base ≤ {pol.max_kl_vs_base:g}")
        lines += ["Rules: " + "; ".join(rules) + ".", ""]
    if result.variants:
        lines += ["| variant | verdict | MMLU drop [bounds] pts | reasons | registered |", "|---|---|---|---|---|"]
        for g in result.variants:
            ni = g.mmlu
            drop = "-" if ni is None else f"{ni.drop_points:+.2f} [{ni.drop_lower_points:.2f}, {ni.drop_upper_points:.2f}]"
            reasons = "; ".join(g.reasons).replace("|", "\\|") or "-"
            lines.append(f"| {g.label} | **{g.verdict}** | {drop} | {reasons} | {g.registered or '-'} |")
        lines += ["", "## Checks", ""]
        for g in result.variants:
            lines.append(f"### {g.label}: {g.verdict}")
            lines += [f"- [{c.outcome}] {c.name}: {c.detail}" for c in g.checks]
            lines.append("")
        if pol is not None:
            accs = [g.mmlu for g in result.variants if g.mmlu is not None]
            n = max((ni.n for ni in accs), default=0)
            lines.append(
                f"A {pol.max_mmlu_drop_points:g}-point margin needs about "
                f"{questions_needed(max(pol.max_mmlu_drop_points, 1e-3), 0.5, pol.confidence):,} questions unpaired at accuracy 0.5 "
                f"(one-sided {pol.confidence:.0%}); paired comparisons need fewer when few answers change. This sweep scored {n:,}."
            )
    return "\n".join(lines) + "\n"


def _print(result: GateResult, console) -> None:
    from rich.table import Table

    if result.error:
        console.print(f"[red]gate error:[/red] {result.error}")
    if result.variants:
        t = Table(title=f"shrinkgate gate ({result.experiment})")
        for col in ("variant", "verdict", "reasons", "registered"):
            t.add_column(col, overflow="fold")
        colors = {"pass": "green", "fail": "red", "undecided": "yellow"}
        for g in result.variants:
            t.add_row(g.label, f"[{colors[g.verdict]}]{g.verdict}[/]", "; ".join(g.reasons) or "-", g.registered or "-")
        console.print(t)
    if result.report_path:
        console.print(f"wrote {result.report_path} and {result.junit_path}")
    console.print(f"exit {result.exit_code}")


def _write(result: GateResult, out: Path, policy_path: str | Path, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.report_path = out / REPORT_NAME
    result.report_path.write_text(markdown(result, policy_path), encoding="utf-8")
    result.junit_path = write_junit(out / JUNIT_NAME, result, seconds)


def _bundle(g: VariantGate, r: VariantRecord, policy: Policy, sweep: SweepRecord) -> dict[str, str]:
    provenance = {k: v for k, v in r.tags.items() if k.startswith("provenance.")}
    doc = {
        "model": r.model,
        "variant": r.variant,
        "method": r.tags.get("method"),
        "run_id": r.run_id,
        "parent_run_id": sweep.parent_run_id,
        "experiment": sweep.experiment,
        "content_key": r.tags.get(M.TAG_CONTENT_KEY),
        "provenance": provenance,
        "params": r.params,
        "metrics": r.metrics,
        "gate": {"verdict": g.verdict, "checks": [c.__dict__ for c in g.checks], "policy": policy.model_dump(mode="json")},
        "note": "the compressed weights are not serialized: rebuild them from recipe.yaml + this variant's params",
    }
    return {"shrinkgate_variant.json": json.dumps(doc, indent=2, default=str)}


# -- entry points -------------------------------------------------------------------------------------


def run_gate(
    policy_path: str | Path,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    out_dir: str | Path = "reports/gate",
    console=None,
) -> GateResult:
    """Gate one sweep (`run_id` of its parent run, or the latest sweep of `experiment`).

    Never raises: a bad policy, an unknown run, an unreachable store or any failure while tagging or
    registering returns exit code 2 with `error` set (one line), and still writes the report and a JUnit
    file (with an error testcase when nothing could be gated) so CI shows why."""
    import os

    from rich.console import Console

    from pipeline.tracking.store import TrackingError, load_sweep

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    console = console or Console()
    started = time.perf_counter()
    out = Path(out_dir)
    result = GateResult(exit_code=2)
    try:
        result.policy = load_policy(policy_path)
        uri = _uri(tracking_uri)
        sweep = load_sweep(uri, run_id=run_id, experiment=experiment)
        result.parent_run_id, result.experiment = sweep.parent_run_id, sweep.experiment
        if sweep.tags.get(M.TAG_KIND) != "sweep":
            raise GateError(f"run {sweep.parent_run_id} is not a sweep parent run (tag {M.TAG_KIND}=sweep); give the parent's id to --run")
        if not sweep.children:
            raise GateError(f"sweep run {sweep.parent_run_id} has no child runs; nothing to gate")
        result.variants = evaluate(sweep, result.policy)
        if not result.variants:
            raise GateError(f"sweep run {sweep.parent_run_id} has no candidate variant besides the unmodified model; nothing to gate")
    except Exception as exc:  # noqa: BLE001 - every error is exit 2 with one line
        known = isinstance(exc, (RecipeError, TrackingError, GateError))
        result.error = _one_line(exc, with_type=not known)
        result.variants = []
        _write_safely(result, out, policy_path, time.perf_counter() - started)
        _print(result, console)
        return result

    result.exit_code = 0 if all(g.verdict == "pass" for g in result.variants) else 1
    try:
        _record(result, sweep, uri, policy_path)
    except Exception as exc:  # noqa: BLE001 - verdicts stand, but the store was not updated as promised
        result.error = f"verdicts not fully recorded in {uri}: {_one_line(exc, with_type=True)}"
        result.exit_code = 2
    _write_safely(result, out, policy_path, time.perf_counter() - started)
    try:
        with tempfile.TemporaryDirectory() as d:
            for p in (result.report_path, result.junit_path):
                if p is not None:
                    Path(d, p.name).write_bytes(p.read_bytes())
            from pipeline.tracking.store import log_run_artifacts

            log_run_artifacts(uri, sweep.parent_run_id, d, GATE_ARTIFACT_DIR)
    except Exception as exc:  # noqa: BLE001
        result.error = result.error or f"report not logged to run {sweep.parent_run_id}: {_one_line(exc, with_type=True)}"
        result.exit_code = 2
    _print(result, console)
    return result


def _one_line(exc: BaseException, *, with_type: bool) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if with_type or not msg else msg


def _record(result: GateResult, sweep: SweepRecord, uri: str, policy_path: str | Path) -> None:
    """Verdict tags on each child, registry entries for passes, a summary on the parent."""
    from pipeline.tracking.store import register_passing, set_run_tags

    policy = result.policy
    by_id = {r.run_id: r for r in sweep.children}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    set_run_tags(
        uri,
        {
            g.run_id: {"gate.verdict": g.verdict, "gate.reasons": "; ".join(g.reasons) or "all checks passed", "gate.policy": str(policy_path), "gate.time": stamp}
            for g in result.variants
            if g.run_id
        },
    )
    if policy.register_model:
        for g in result.variants:
            if g.verdict != "pass" or g.run_id is None:
                continue
            r = by_id[g.run_id]
            name = policy.registry_name.format(experiment=sweep.experiment, model=r.model, variant=r.variant).replace("/", "-").replace(":", "-")
            reg_name, version = register_passing(
                uri,
                r,
                name=name,
                alias=policy.alias,
                files=_bundle(g, r, policy, sweep),
                parent_run_id=sweep.parent_run_id,
                tags={"gate.verdict": "pass", "gate.policy": str(policy_path), "model": r.model, "variant": r.variant},
            )
            g.registered = f"{reg_name} v{version} @{policy.alias}"
            set_run_tags(uri, {g.run_id: {"gate.registered": g.registered}})
    set_run_tags(
        uri,
        {
            sweep.parent_run_id: {
                "gate.verdict": {0: "pass", 1: "fail"}[result.exit_code],
                "gate.summary": ", ".join(f"{g.label}={g.verdict}" for g in result.variants)[:5000],
                "gate.time": stamp,
            }
        },
    )


def _write_safely(result: GateResult, out: Path, policy_path: str | Path, seconds: float) -> None:
    try:
        _write(result, out, policy_path, seconds)
    except OSError as exc:
        result.report_path = result.junit_path = None
        result.error = result.error or f"cannot write the report to {out}: {exc.strerror or exc}; fix --out"
        result.exit_code = 2


def gate_exit_code(
    result_or_policy: GateResult | str | Path,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    out_dir: str | Path = "reports/gate",
    console=None,
) -> int:
    """0 every gated variant passed, 1 any failed or is undecided, 2 error.

    Given a `GateResult`, its exit code; given a policy path, runs the gate first (any unexpected exception,
    e.g. the store going away mid-gate, is printed as one line and gives 2)."""
    if isinstance(result_or_policy, GateResult):
        return result_or_policy.exit_code
    from rich.console import Console

    console = console or Console()
    try:
        return run_gate(result_or_policy, tracking_uri=tracking_uri, run_id=run_id, experiment=experiment, out_dir=out_dir, console=console).exit_code
    except Exception as exc:  # noqa: BLE001 - one line for the user, exit code 2
        console.print(f"[red]gate error:[/red] {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 2
