"""Rendering a sweep's comparison for people: the compare Markdown, the review page, CSV and the console table
(the gate's own report: `gate_report`). Text in, text or files out; nothing is computed here."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import metrics as M
from pipeline.verdict.analysis import SweepAnalysis, ordered
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


TABLE_COLUMNS = (
    "model/variant",
    "role",
    "status",
    "MMLU %",
    "Δ vs base [CI]",
    "McNemar p",
    "flips",
    "tok/s",
    "ceiling",
    "weights",
    "verdict (speed)",
    "verdict (size)",
)


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
                "-"
                if g.mmlu_acc is None
                else f"{100 * g.mmlu_acc:.2f}"
                + ("" if g.mmlu_stderr is None else f" ± {100 * two_sided_z(conf) * g.mmlu_stderr:.2f}"),
                fmt(g.weight_bytes, M.WEIGHT_BYTES),
                fmt(g.decode_tok_s),
                fmt(g.wall_tok_s),
                "-" if g.roofline_fraction is None else f"{g.roofline_fraction:.0%}",
            ]
            for g in analysis.ladder
        ]
        lines.append(
            md_table(
                ["reference", "status", "MMLU %", "weights", "decode tok/s", "roofline ceiling tok/s", "of ceiling"],
                body,
            )
        )
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
        body = [
            [r.label] + [str(analysis.verdicts[ax.metric][r.run_id]) for ax in analysis.axes]
            for r in ordered(analysis.records)
        ]
        lines.append(md_table(header, body))
    else:
        lines.append("No speed or size metric was logged: nothing to place on a frontier.")
    ref_rows = [(row["label"], row["vs_references"]) for row in table_rows if row["vs_references"]]
    if ref_rows:
        lines += [
            "",
            "## Paired differences vs each reference (points, CI, McNemar p)",
            "",
            md_table(["model/variant", "vs references"], [list(x) for x in ref_rows]),
        ]
    accs = [r.metric(M.MMLU_ACC) for r in analysis.records if r.metric(M.MMLU_ACC) is not None]
    acc = sum(accs) / len(accs) if accs else 0.5
    ns = [row[M.MMLU_N_QUESTIONS] for row in table_rows if row[M.MMLU_N_QUESTIONS]]
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
    header = (
        ["model/variant", "measured tok/s here (batch 1)"]
        + [f"PREDICTED tok/s (batch {b})" for b in batches]
        + ["PREDICTED TTFT ms (batch 1)"]
    )
    body = [
        [r.label, fmt(r.metric(M.DECODE_TOK_S))]
        + [fmt(r.metric(M.PREDICTED + M.batch_metric(M.DECODE_TOK_S, b))) for b in batches]
        + [fmt(r.metric(M.PREDICTED + M.TTFT_MS))]
        for r in records
    ]
    lines = [f"## Predicted on {devices} (roofline, not measured)", "", md_table(header, body), ""]
    lines += [
        f"- {r.label}: "
        + (
            f"no prediction: {r.tags[M.TAG_PREDICTED_ERROR]}"
            if M.TAG_PREDICTED_ERROR in r.tags
            else r.tags.get(M.TAG_PREDICTED_BASIS, "")
        )
        for r in records
    ]
    return lines + [""]


REVIEW_COLUMNS = (
    "model/variant",
    "role",
    "status",
    "MMLU %",
    "Δ vs base [CI]",
    "tok/s",
    "weights",
    "verdict (speed)",
    "verdict (size)",
)


def review_markdown(
    analysis: SweepAnalysis,
    table_rows: list[dict[str, Any]],
    images: Sequence[tuple[str, str]] = (),
    *,
    max_chars: int = 8000,
) -> str:
    """The sweep's verdict for the parent run's description in the MLflow UI: a one-line summary first (the
    runs table's Description column shows only that), the verdict table, the plots as `(alt, url)` images.
    Rows that do not fit in `max_chars` are left to report/compare.md, and the text says so."""
    sw = analysis.sweep
    speed, size = analysis.speed_axis, analysis.size_axis
    summary = []
    for ax in analysis.axes:
        front = [
            r.label for r in ordered(analysis.records) if analysis.verdicts[ax.metric][r.run_id].status == "frontier"
        ]
        summary.append(f"frontier on {ax.title}: {', '.join(front) or 'none'}")
    head = [
        "**shrinkgate verdict** · "
        + (" · ".join(summary) if summary else "no speed or size metric: nothing placed on a frontier"),
        "",
        f"Sweep `{sw.experiment}` · {len(sw.children)} model × variant runs · confidence {analysis.confidence:.0%} · "
        f"dominated = another run as accurate within the paired margin and at least as fast (speed) / small (size).",
        "",
    ]
    cells = [
        [
            row["label"],
            row["role"],
            row["status"],
            acc_cell(row),
            delta_cell(row),
            fmt(row[M.DECODE_TOK_S]),
            fmt(row[M.WEIGHT_BYTES], M.WEIGHT_BYTES),
            row[f"verdict_{speed}"] if speed else "-",
            row[f"verdict_{size}"] if size else "-",
        ]
        for row in table_rows
    ]
    tail = [""] + [f"![{alt}]({url})" for alt, url in images]
    tail += [
        "",
        "Full report (ladder, paired Δ per reference, McNemar p, questions a margin needs): `report/compare.md` under Artifacts.",
    ]
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
    t = Table(
        title=f"shrinkgate compare: {analysis.sweep.experiment} ({analysis.sweep.parent_run_id[:8]})",
        title_justify="left",
    )
    for col, justify in (
        ("model/variant", "left"),
        ("MMLU %", "right"),
        ("Δ vs base [CI]", "right"),
        ("tok/s (ceiling)", "right"),
        ("weights", "right"),
        ("speed", "left"),
        ("size", "left"),
    ):
        t.add_column(col, justify=justify)
    for row in table_rows:
        finished = row["status"] == "FINISHED"
        label = row["label"] + (" (ref)" if row["role"] == "reference" else "")
        tok = (
            "-"
            if row[M.DECODE_TOK_S] is None
            else f"{row[M.DECODE_TOK_S]:.1f}" + ("" if row[M.WALL_TOK_S] is None else f" ({row[M.WALL_TOK_S]:.0f})")
        )
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
