"""Rendering a gate's result for people and CI: Markdown, JUnit XML, the console table and the one-line verdict
that ends every run. Text in, text or files out; nothing is computed here."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.markup import escape

from pipeline import metrics as M
from pipeline.verdict.gate import GateResult, VariantGate
from pipeline.verdict.stats import questions_needed
from pipeline.verdict.units import fmt


def _check_lines(g: VariantGate) -> str:
    return "\n".join(f"[{c.outcome}] {c.name}: {c.detail}" for c in g.checks)


def write_junit(path: Path, result: GateResult, seconds: float = 0.0) -> Path:
    """One testcase per gated variant (failure message = its reasons); an error testcase when nothing could be gated."""
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
            fail.text = _check_lines(g)
        out = ET.SubElement(case, "system-out")
        out.text = _check_lines(g) + (f"\nregistered: {g.registered}" if g.registered else "")
    tests = len(result.variants) + (1 if result.error is not None else 0)
    for el in (suites, suite):
        el.set("tests", str(tests))
        el.set("failures", str(failures))
        el.set("errors", str(errors))
        el.set("time", f"{seconds:.3f}")
    suite.set("skipped", "0")
    suite.set("timestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    ET.indent(suites)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    return path


def gate_markdown(result: GateResult, policy_label: str | Path) -> str:
    pol = result.policy
    verdict = {0: "PASS", 1: "FAIL", 2: "ERROR"}[result.exit_code]
    lines = [f"# shrinkgate gate: {verdict}", ""]
    lines.append(
        f"Policy `{policy_label}` · experiment `{result.experiment or '?'}` · sweep run `{result.parent_run_id or '?'}`"
    )
    lines.append("")
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if pol is not None:
        rules = [
            f"MMLU drop ≤ {pol.max_mmlu_drop_points:g} points (one-sided {pol.confidence:.0%} upper bound, paired; the bound the "
            "sampling design allows: anytime-valid for a sequential sample, none that passes for the first N rows per subject)"
        ]
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
        lines += [
            "| variant | verdict | MMLU drop [bounds] pts | bounds are | reasons | registered |",
            "|---|---|---|---|---|---|",
        ]
        for g in result.variants:
            ni = g.mmlu
            drop = (
                "-" if ni is None else f"{ni.drop_points:+.2f} [{ni.drop_lower_points:.2f}, {ni.drop_upper_points:.2f}]"
            )
            reasons = "; ".join(g.reasons).replace("|", "\\|") or "-"
            lines.append(
                f"| {g.label} | **{g.verdict}** | {drop} | {'-' if ni is None else ni.bound} | {reasons} | {g.registered or '-'} |"
            )
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


def print_gate(result: GateResult, console, *, table: bool = True) -> None:
    from rich.table import Table

    if result.error:
        console.print(f"[red]gate error:[/red] {escape(str(result.error))}")
    if result.variants and table:
        t = Table(title=f"shrinkgate gate ({result.experiment})")
        for col in ("variant", "verdict", "reasons", "registered"):
            t.add_column(col, overflow="fold")
        colors = {"pass": "green", "fail": "red", "undecided": "yellow"}
        for g in result.variants:
            # Reasons name checks like `not_dominated[decode_tok_s]`: escape them, or rich reads them as markup.
            t.add_row(
                escape(g.label),
                f"[{colors[g.verdict]}]{g.verdict}[/]",
                escape("; ".join(g.reasons) or "-"),
                g.registered or "-",
            )
        console.print(t)
    if result.report_path:
        console.print(f"wrote {result.report_path} and {result.junit_path}")
    console.print(f"exit {result.exit_code}")


# -- the sweep's own verdict (what `shrinkgate run` ends with) ------------------------------------------------

_COLORS = {"pass": "green", "fail": "red", "undecided": "yellow"}


def verdict_sentence(variants: Sequence[VariantGate], policy_label: str) -> str:
    """The decision in one sentence (the parent run's description opens with it)."""
    if not variants:
        return f"**Verdict** under the {policy_label}: nothing to gate (no candidate variant besides the unmodified model)."
    by = {k: [g.label for g in variants if g.verdict == k] for k in ("pass", "fail", "undecided")}
    head = f"**Verdict** under the {policy_label}: {len(by['pass'])} of {len(variants)} gated variant(s) pass"
    parts = [f"{k}: {', '.join(v)}" for k, v in by.items() if v and k != "pass"]
    if by["pass"]:
        parts.insert(0, f"pass: {', '.join(by['pass'])}")
    return head + (" (" + "; ".join(parts) + ")." if parts else ".")


def print_verdict(variants: Sequence[VariantGate], policy_label: str, console) -> None:
    """What `shrinkgate run` ends with: one line per gated variant."""
    console.print(
        f"Verdict under the {escape(policy_label)}:"
        if variants
        else f"Verdict under the {escape(policy_label)}: nothing to gate"
    )
    for g in variants:
        rest = g.line()[len(g.verdict) :].lstrip(": ")  # the line starts with the verdict word
        console.print(f"  {escape(g.label)}: [{_COLORS[g.verdict]}]{g.verdict}[/] {escape(rest)}", soft_wrap=True)
