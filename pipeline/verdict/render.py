"""Rendering verdicts for people and CI: the compare Markdown, CSV and console table; the gate Markdown,
JUnit XML and console table. Text in, text or files out; nothing is computed here."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from rich.markup import escape

from pipeline import metrics as M
from pipeline.verdict.analysis import SweepAnalysis, ordered
from pipeline.verdict.gate import GateResult, VariantGate
from pipeline.verdict.stats import questions_needed, two_sided_z
from pipeline.verdict.units import fmt

# -- compare ------------------------------------------------------------------------------------------------


def md_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines)


def acc_cell(row: dict[str, Any]) -> str:
    if row["mmlu_acc_pct"] is None:
        return "-"
    if row["mmlu_ci_low_pct"] is None:
        return f"{row['mmlu_acc_pct']:.2f}"
    return f"{row['mmlu_acc_pct']:.2f} ± {(row['mmlu_ci_high_pct'] - row['mmlu_ci_low_pct']) / 2:.2f}"


def delta_cell(row: dict[str, Any]) -> str:
    if row["delta_vs_base_pts"] is None:
        return "-"
    return f"{row['delta_vs_base_pts']:+.2f} [{row['delta_ci_low_pts']:+.2f}, {row['delta_ci_high_pts']:+.2f}]"


TABLE_COLUMNS = ("model/variant", "role", "status", "MMLU %", "Δ vs base [CI]", "McNemar p", "flips", "tok/s", "ceiling", "weights", "verdict (speed)", "verdict (size)")


def table_cells(analysis: SweepAnalysis, table_rows: list[dict[str, Any]]) -> list[list[str]]:
    speed, size = analysis.speed_axis, analysis.size_axis
    return [
        [
            row["label"],
            row["role"],
            row["status"],
            acc_cell(row),
            delta_cell(row),
            fmt(row["mcnemar_p_vs_base"], "mcnemar"),
            fmt(row["flip_rate_vs_base"], "flip"),
            fmt(row[M.DECODE_TOK_S]),
            fmt(row[M.WALL_TOK_S]),
            fmt(row[M.WEIGHT_BYTES], M.WEIGHT_BYTES),
            row[f"verdict_{speed}"] if speed else "-",
            row[f"verdict_{size}"] if size else "-",
        ]
        for row in table_rows
    ]


def compare_markdown(analysis: SweepAnalysis, table_rows: list[dict[str, Any]], plots: Sequence[Path] = ()) -> str:
    sw = analysis.sweep
    conf = analysis.confidence
    lines = [
        f"# shrinkgate compare: {sw.experiment}",
        "",
        f"Sweep run `{sw.parent_run_id}` · {len(sw.children)} child runs · confidence {conf:.0%} · host `{sw.tags.get('host', '?')}`",
        "",
        "## Baseline ladder (published reference models, as published)",
        "",
    ]
    if analysis.ladder:
        body = [
            [
                g.label,
                g.status,
                "-" if g.mmlu_acc is None else f"{100 * g.mmlu_acc:.2f}" + ("" if g.mmlu_stderr is None else f" ± {100 * two_sided_z(conf) * g.mmlu_stderr:.2f}"),
                fmt(g.weight_bytes, M.WEIGHT_BYTES),
                fmt(g.decode_tok_s),
                fmt(g.wall_tok_s),
                "-" if g.roofline_fraction is None else f"{g.roofline_fraction:.0%}",
            ]
            for g in analysis.ladder
        ]
        lines.append(md_table(["reference", "status", "MMLU %", "weights", "decode tok/s", "roofline ceiling tok/s", "of ceiling"], body))
        lines += ["", "Ceiling = measured host bandwidth ÷ bytes read per decoded token (`wall_tok_s`)."]
    else:
        lines.append("No reference models in this sweep.")
    lines += ["", "## Variants", "", md_table(list(TABLE_COLUMNS), table_cells(analysis, table_rows)), ""]
    lines += [
        "Δ vs base: paired difference to the unmodified candidate (method `none`) in MMLU points, "
        f"{conf:.0%} paired-bootstrap CI; McNemar: exact test on discordant questions; flips: share of questions "
        "whose predicted letter changed. Dominated = another record is at least as accurate within the paired "
        "statistical margin and at least as fast (speed) / small (size).",
        "",
    ]
    lines += predicted_section(analysis)
    lines += ["## Frontier verdicts", ""]
    if analysis.axes:
        header = ["model/variant"] + [ax.title for ax in analysis.axes]
        body = [[r.label] + [str(analysis.verdicts[ax.metric][r.run_id]) for ax in analysis.axes] for r in ordered(analysis.records)]
        lines.append(md_table(header, body))
    else:
        lines.append("No speed or size metric was logged: nothing to place on a frontier.")
    ref_rows = [(row["label"], row["vs_references"]) for row in table_rows if row["vs_references"]]
    if ref_rows:
        lines += ["", "## Paired differences vs each reference (points, CI, McNemar p)", "", md_table(["model/variant", "vs references"], [list(x) for x in ref_rows])]
    accs = [r.metric(M.MMLU_ACC) for r in analysis.records if r.metric(M.MMLU_ACC) is not None]
    acc = sum(accs) / len(accs) if accs else 0.5
    ns = [row["mmlu_n_questions"] for row in table_rows if row["mmlu_n_questions"]]
    lines += [
        "",
        "## How many questions a margin needs",
        "",
        f"Unpaired, one-sided {conf:.0%}, at accuracy {acc:.2f}: "
        + ", ".join(f"{d:g} pt → {questions_needed(d, acc, conf):,}" for d in (0.5, 1, 2, 5))
        + f" questions (MMLU test has 14,042; this sweep scored {int(max(ns)) if ns else 0:,} per variant). "
        "Paired comparisons need fewer when few answers change.",
    ]
    notes = [(row["label"], row["notes"]) for row in table_rows if row["notes"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {lbl}: {n}" for lbl, n in notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def predicted_section(analysis: SweepAnalysis) -> list[str]:
    """`speed.target_hardware`'s predictions, apart from the measured table and named as predictions."""
    records = [r for r in ordered(analysis.records) if M.TAG_PREDICTED_HARDWARE in r.tags]
    if not records:
        return []
    batches = sorted({b for r in records for k in r.metrics if (b := M.predicted_axis_batch(k)) is not None})
    devices = ", ".join(sorted({r.tags[M.TAG_PREDICTED_HARDWARE] for r in records}))
    header = ["model/variant", "measured tok/s here (batch 1)"] + [f"PREDICTED tok/s (batch {b})" for b in batches] + ["PREDICTED TTFT ms (batch 1)"]
    body = [
        [r.label, fmt(r.metric(M.DECODE_TOK_S))]
        + [fmt(r.metric(M.PREDICTED + M.batch_metric(M.DECODE_TOK_S, b))) for b in batches]
        + [fmt(r.metric(M.PREDICTED + M.TTFT_MS))]
        for r in records
    ]
    lines = [f"## Predicted on {devices} (roofline, not measured)", "", md_table(header, body), ""]
    lines += [f"- {r.label}: " + (f"no prediction: {r.tags[M.TAG_PREDICTED_ERROR]}" if M.TAG_PREDICTED_ERROR in r.tags else r.tags.get(M.TAG_PREDICTED_BASIS, "")) for r in records]
    return lines + [""]


REVIEW_COLUMNS = ("model/variant", "role", "status", "MMLU %", "Δ vs base [CI]", "tok/s", "weights", "verdict (speed)", "verdict (size)")


def review_markdown(
    analysis: SweepAnalysis, table_rows: list[dict[str, Any]], images: Sequence[tuple[str, str]] = (), *, max_chars: int = 8000
) -> str:
    """The sweep's verdict for the parent run's description in the MLflow UI: a one-line summary first (the
    runs table's Description column shows only that), the verdict table, the plots as `(alt, url)` images.
    Rows that do not fit in `max_chars` are left to report/compare.md, and the text says so."""
    sw = analysis.sweep
    speed, size = analysis.speed_axis, analysis.size_axis
    summary = []
    for ax in analysis.axes:
        front = [r.label for r in ordered(analysis.records) if analysis.verdicts[ax.metric][r.run_id].status == "frontier"]
        summary.append(f"frontier on {ax.title}: {', '.join(front) or 'none'}")
    head = [
        "**shrinkgate verdict** · " + (" · ".join(summary) if summary else "no speed or size metric: nothing placed on a frontier"),
        "",
        f"Sweep `{sw.experiment}` · {len(sw.children)} model × variant runs · confidence {analysis.confidence:.0%} · "
        f"dominated = another run as accurate within the paired margin and at least as fast (speed) / small (size).",
        "",
    ]
    cells = [
        [row["label"], row["role"], row["status"], acc_cell(row), delta_cell(row), fmt(row[M.DECODE_TOK_S]),
         fmt(row[M.WEIGHT_BYTES], M.WEIGHT_BYTES), row[f"verdict_{speed}"] if speed else "-", row[f"verdict_{size}"] if size else "-"]
        for row in table_rows
    ]
    tail = [""] + [f"![{alt}]({url})" for alt, url in images]
    tail += ["", "Full report (ladder, paired Δ per reference, McNemar p, questions a margin needs): `report/compare.md` under Artifacts."]
    shown = len(cells)
    while True:
        more = [] if shown == len(cells) else ["", f"… {len(cells) - shown} more row(s) in `report/compare.md`."]
        text = "\n".join(head + [md_table(list(REVIEW_COLUMNS), cells[:shown])] + more + tail) + "\n"
        if len(text) <= max_chars or shown == 0:
            return text[:max_chars]
        shown -= 1


def write_csv(path: Path, table_rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in table_rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for row in table_rows:
            w.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})


def _short_verdict(v: str) -> str:
    return v.replace("dominated by ", "dom. by ").replace("unplaced ", "")


def print_compare(analysis: SweepAnalysis, table_rows: list[dict[str, Any]], console) -> None:
    """A compact terminal table (the Markdown/CSV have every column)."""
    from rich.table import Table

    speed, size = analysis.speed_axis, analysis.size_axis
    t = Table(title=f"shrinkgate compare: {analysis.sweep.experiment} ({analysis.sweep.parent_run_id[:8]})", title_justify="left")
    for col, justify in (("model/variant", "left"), ("MMLU %", "right"), ("Δ vs base [CI]", "right"), ("tok/s (ceiling)", "right"), ("weights", "right"), ("speed", "left"), ("size", "left")):
        t.add_column(col, justify=justify)
    for row in table_rows:
        finished = row["status"] == "FINISHED"
        label = row["label"] + (" (ref)" if row["role"] == "reference" else "")
        tok = "-" if row[M.DECODE_TOK_S] is None else f"{row[M.DECODE_TOK_S]:.1f}" + ("" if row[M.WALL_TOK_S] is None else f" ({row[M.WALL_TOK_S]:.0f})")
        t.add_row(
            label,
            acc_cell(row) if finished else f"[red]{row['status']}[/]",
            delta_cell(row),
            tok,
            fmt(row[M.WEIGHT_BYTES], M.WEIGHT_BYTES),
            _short_verdict(row[f"verdict_{speed}"]) if speed else "-",
            _short_verdict(row[f"verdict_{size}"]) if size else "-",
            style="dim" if row["role"] == "reference" else None,
        )
    console.print(t)


# -- gate ---------------------------------------------------------------------------------------------------


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
    suite.set("timestamp", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    ET.indent(suites)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    return path


def gate_markdown(result: GateResult, policy_label: str | Path) -> str:
    pol = result.policy
    verdict = {0: "PASS", 1: "FAIL", 2: "ERROR"}[result.exit_code]
    lines = [f"# shrinkgate gate: {verdict}", ""]
    lines.append(f"Policy `{policy_label}` · experiment `{result.experiment or '?'}` · sweep run `{result.parent_run_id or '?'}`")
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
        lines += ["| variant | verdict | MMLU drop [bounds] pts | bounds are | reasons | registered |", "|---|---|---|---|---|---|"]
        for g in result.variants:
            ni = g.mmlu
            drop = "-" if ni is None else f"{ni.drop_points:+.2f} [{ni.drop_lower_points:.2f}, {ni.drop_upper_points:.2f}]"
            reasons = "; ".join(g.reasons).replace("|", "\\|") or "-"
            lines.append(f"| {g.label} | **{g.verdict}** | {drop} | {'-' if ni is None else ni.bound} | {reasons} | {g.registered or '-'} |")
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
            t.add_row(escape(g.label), f"[{colors[g.verdict]}]{g.verdict}[/]", escape("; ".join(g.reasons) or "-"), g.registered or "-")
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
    console.print(f"Verdict under the {escape(policy_label)}:" if variants else f"Verdict under the {escape(policy_label)}: nothing to gate")
    for g in variants:
        rest = g.line()[len(g.verdict) :].lstrip(": ")  # the line starts with the verdict word
        console.print(f"  {escape(g.label)}: [{_COLORS[g.verdict]}]{g.verdict}[/] {escape(rest)}", soft_wrap=True)
