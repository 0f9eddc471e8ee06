"""Compare a sweep: baseline ladder, frontier verdicts, paired statistics, table, CSV, Markdown and plots.

`run_compare` reads a sweep back from MLflow (through `pipeline.tracking`, the only mlflow importer) and
writes to `out_dir`; `log_sweep_report` logs the same files and verdict tags to the sweep's parent run.
Everything tolerates missing metrics (speed disabled, a FAILED child): a missing value is shown as "-"
and a record that cannot be placed is `unplaced`, never an exception.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline import metrics as M
from pipeline.verdict.frontier import (
    Axis,
    LadderRung,
    Verdict,
    axes_for,
    baseline_ladder,
    frontier_verdicts,
    roofline_tok_s,
)
from pipeline.records import SweepRecord, VariantRecord
from pipeline.verdict.stats import PairedComparison, PairingError, compare_paired, paired_margin, questions_needed

REPORT_ARTIFACT_DIR = "report"


# -- analysis ------------------------------------------------------------------------------------------


@dataclass
class VariantStats:
    record: VariantRecord
    base: VariantRecord | None  # the unmodified candidate it is compared with (None for a base itself)
    vs_base: PairedComparison | None = None
    vs_refs: dict[str, PairedComparison] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why a paired comparison is missing


@dataclass
class SweepAnalysis:
    sweep: SweepRecord
    axes: list[Axis]
    verdicts: dict[str, dict[str, Verdict]]  # axis metric -> run id -> verdict
    stats: dict[str, VariantStats]  # run id -> paired stats
    ladder: list[LadderRung]
    confidence: float

    @property
    def records(self) -> tuple[VariantRecord, ...]:
        return self.sweep.children


def base_for(record: VariantRecord, records: Sequence[VariantRecord]) -> VariantRecord | None:
    """The FINISHED unmodified candidate a record is compared with: same model for a candidate; the first
    candidate's for a reference; None for a base itself or when none finished."""
    bases = [r for r in records if r.is_base and r.status == "FINISHED"]
    if record.is_base:
        return None
    if record.role == "candidate":
        same = [b for b in bases if b.model == record.model]
        return same[0] if same else None
    return bases[0] if bases else None


def _paired(a: VariantRecord, b: VariantRecord, confidence: float, n_boot: int, seed: int) -> tuple[PairedComparison | None, str | None]:
    if a.status != "FINISHED" or b.status != "FINISHED":
        return None, None
    if not a.questions or not b.questions:
        who = a.label if not a.questions else b.label
        return None, f"no per-question outcomes for {who}"
    try:
        return compare_paired(a.questions, b.questions, a_label=a.label, b_label=b.label, confidence=confidence, n_boot=n_boot, seed=seed), None
    except PairingError as exc:
        return None, f"{a.label} vs {b.label}: {exc}"


def analyze(
    sweep: SweepRecord,
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
    tolerance: float = 0.0,
    dominated_by: str = "any",
    axes: Sequence[Axis] | None = None,
) -> SweepAnalysis:
    records = list(sweep.children)
    axes = list(axes) if axes is not None else axes_for(records)
    margin = paired_margin(confidence, n_boot=min(n_boot, 2_000), seed=seed)
    dominators = (lambda r: r.role == "reference") if dominated_by == "references" else None
    verdicts = {ax.metric: frontier_verdicts(records, ax, margin=margin, tolerance=tolerance, dominators=dominators) for ax in axes}
    refs = [r for r in records if r.role == "reference" and r.status == "FINISHED"]
    stats: dict[str, VariantStats] = {}
    for r in records:
        vs = VariantStats(r, base_for(r, records))
        if vs.base is not None:
            vs.vs_base, note = _paired(r, vs.base, confidence, n_boot, seed)
            if note:
                vs.notes.append(note)
        elif r.role == "candidate" and not r.is_base:
            vs.notes.append(f"no FINISHED unmodified candidate (method none) for model {r.model}")
        for ref in refs:
            if ref.run_id == r.run_id:
                continue
            cmp, note = _paired(r, ref, confidence, n_boot, seed)
            if cmp is not None:
                vs.vs_refs[ref.label] = cmp
            elif note and note not in vs.notes:
                vs.notes.append(note)
        stats[r.run_id] = vs
    return SweepAnalysis(sweep, axes, verdicts, stats, baseline_ladder(records), confidence)


# -- table rows -----------------------------------------------------------------------------------------


def _z2(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / 2))


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def ordered(records: Sequence[VariantRecord]) -> list[VariantRecord]:
    """Candidates by model (the unmodified one first), then references from the smallest."""

    def key(r: VariantRecord):
        if r.role == "reference":
            wb = r.metric(M.WEIGHT_BYTES)
            return (1, "", wb is None, wb or 0.0, r.label)
        return (0, r.model, not r.is_base, 0.0, r.variant)

    return sorted(records, key=key)


def rows(analysis: SweepAnalysis) -> list[dict[str, Any]]:
    """One flat row per child run (the CSV; the Markdown and rich tables show a subset)."""
    z = _z2(analysis.confidence)
    out: list[dict[str, Any]] = []
    for r in ordered(analysis.records):
        st = analysis.stats[r.run_id]
        acc, se = r.metric(M.MMLU_ACC), r.metric(M.MMLU_ACC_STDERR)
        row: dict[str, Any] = {
            "label": r.label,
            "model": r.model,
            "variant": r.variant,
            "role": r.role,
            "method": r.tags.get("method", ""),
            "status": r.status,
            "run_id": r.run_id,
            "mmlu_acc_pct": _pct(acc),
            "mmlu_ci_low_pct": _pct(acc - z * se) if acc is not None and se is not None else None,
            "mmlu_ci_high_pct": _pct(acc + z * se) if acc is not None and se is not None else None,
            "mmlu_n_questions": r.metric(M.MMLU_N_QUESTIONS) or (len(r.questions) if r.questions else None),
            "base": st.base.label if st.base is not None else "",
            "delta_vs_base_pts": st.vs_base.diff_points if st.vs_base else None,
            "delta_ci_low_pts": st.vs_base.ci_points[0] if st.vs_base else None,
            "delta_ci_high_pts": st.vs_base.ci_points[1] if st.vs_base else None,
            "mcnemar_p_vs_base": st.vs_base.mcnemar_p if st.vs_base else None,
            "flip_rate_vs_base": st.vs_base.flip_rate if st.vs_base else None,
            "vs_references": "; ".join(
                f"{lbl}: {c.diff_points:+.2f} [{c.ci_points[0]:+.2f}, {c.ci_points[1]:+.2f}] p={c.mcnemar_p:.3g}" for lbl, c in st.vs_refs.items()
            ),
            M.DECODE_TOK_S: r.metric(M.DECODE_TOK_S),
            M.WALL_TOK_S: roofline_tok_s(r, 1),
            M.MBU: r.metric(M.MBU),
            M.WEIGHT_BYTES: r.metric(M.WEIGHT_BYTES),
            M.BITS_PER_WEIGHT: r.metric(M.BITS_PER_WEIGHT),
            M.KL_VS_BASE: r.metric(M.KL_VS_BASE),
        }
        for ax in analysis.axes:
            if ax.metric not in row:
                row[ax.metric] = r.metric(ax.metric)
            row[f"verdict_{ax.metric}"] = str(analysis.verdicts[ax.metric][r.run_id])
        row["notes"] = "; ".join(st.notes)
        out.append(row)
    return out


def fmt(value: Any, key: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        if key == M.WEIGHT_BYTES:
            return f"{value / 1e9:.3f} GB" if value >= 1e8 else f"{value / 1e6:.2f} MB"
        if key.startswith("mcnemar"):
            return f"{value:.3g}"
        if key.startswith(("flip", M.MBU)):
            return f"{value:.1%}"
        if key.endswith("_pts"):
            return f"{value:+.2f}"
        return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def _md_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines)


def _acc_cell(row: dict[str, Any]) -> str:
    if row["mmlu_acc_pct"] is None:
        return "-"
    if row["mmlu_ci_low_pct"] is None:
        return f"{row['mmlu_acc_pct']:.2f}"
    return f"{row['mmlu_acc_pct']:.2f} ± {(row['mmlu_ci_high_pct'] - row['mmlu_ci_low_pct']) / 2:.2f}"


def _delta_cell(row: dict[str, Any]) -> str:
    if row["delta_vs_base_pts"] is None:
        return "-"
    return f"{row['delta_vs_base_pts']:+.2f} [{row['delta_ci_low_pts']:+.2f}, {row['delta_ci_high_pts']:+.2f}]"


TABLE_COLUMNS = ("model/variant", "role", "status", "MMLU %", "Δ vs base [CI]", "McNemar p", "flips", "tok/s", "ceiling", "weights", "verdict (speed)", "verdict (size)")


def table_cells(analysis: SweepAnalysis, table_rows: list[dict[str, Any]]) -> list[list[str]]:
    speed = M.DECODE_TOK_S if M.DECODE_TOK_S in analysis.verdicts else None
    size = M.WEIGHT_BYTES if M.WEIGHT_BYTES in analysis.verdicts else None
    return [
        [
            row["label"],
            row["role"],
            row["status"],
            _acc_cell(row),
            _delta_cell(row),
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


def markdown(analysis: SweepAnalysis, table_rows: list[dict[str, Any]], plots: Sequence[Path] = ()) -> str:
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
                "-" if g.mmlu_acc is None else f"{100 * g.mmlu_acc:.2f}" + ("" if g.mmlu_stderr is None else f" ± {100 * _z2(conf) * g.mmlu_stderr:.2f}"),
                fmt(g.weight_bytes, M.WEIGHT_BYTES),
                fmt(g.decode_tok_s),
                fmt(g.wall_tok_s),
                "-" if g.roofline_fraction is None else f"{g.roofline_fraction:.0%}",
            ]
            for g in analysis.ladder
        ]
        lines.append(_md_table(["reference", "status", "MMLU %", "weights", "decode tok/s", "roofline ceiling tok/s", "of ceiling"], body))
        lines += ["", "Ceiling = measured host bandwidth ÷ bytes read per decoded token (`wall_tok_s`)."]
    else:
        lines.append("No reference models in this sweep.")
    lines += ["", "## Variants", "", _md_table(list(TABLE_COLUMNS), table_cells(analysis, table_rows)), ""]
    lines += [
        "Δ vs base: paired difference to the unmodified candidate (method `none`) in MMLU points, "
        f"{conf:.0%} paired-bootstrap CI; McNemar: exact test on discordant questions; flips: share of questions "
        "whose predicted letter changed. Dominated = another record is at least as accurate within the paired "
        "statistical margin and at least as fast (speed) / small (size).",
        "",
        "## Frontier verdicts",
        "",
    ]
    if analysis.axes:
        header = ["model/variant"] + [ax.title for ax in analysis.axes]
        body = [[r.label] + [str(analysis.verdicts[ax.metric][r.run_id]) for ax in analysis.axes] for r in ordered(analysis.records)]
        lines.append(_md_table(header, body))
    else:
        lines.append("No speed or size metric was logged: nothing to place on a frontier.")
    ref_rows = [(row["label"], row["vs_references"]) for row in table_rows if row["vs_references"]]
    if ref_rows:
        lines += ["", "## Paired differences vs each reference (points, CI, McNemar p)", "", _md_table(["model/variant", "vs references"], [list(x) for x in ref_rows])]
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


def write_csv(path: Path, table_rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in table_rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for row in table_rows:
            w.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})


# -- plots ------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _style(records: Sequence[VariantRecord]) -> dict[str, tuple[str, str]]:
    """run id -> (color, marker): references grey squares, candidates one colour per model (base: diamond)."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    models = sorted({r.model for r in records if r.role == "candidate"})
    out = {}
    for r in records:
        if r.role == "reference":
            out[r.run_id] = ("#555555", "s")
        else:
            out[r.run_id] = (palette[models.index(r.model) % len(palette)], "D" if r.is_base else "o")
    return out


def plot_pareto(analysis: SweepAnalysis, axis: Axis, path: Path) -> Path | None:
    """MMLU (± CI) against one axis, the frontier line, each model's memory-wall ceiling as a vertical mark."""
    verdicts = analysis.verdicts[axis.metric]
    placed = [r for r in analysis.records if verdicts[r.run_id].status != "unplaced"]
    if not placed:
        return None
    plt = _plt()
    z = _z2(analysis.confidence)
    style = _style(analysis.records)
    scale, unit = 1.0, ""
    if axis.metric == M.WEIGHT_BYTES:
        scale, unit = (1e9, "GB") if max(r.metric(axis.metric) for r in placed) >= 1e9 else (1e6, "MB")
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    batch = 1
    if axis.speed and "_bs" in axis.metric:
        batch = int(axis.metric.rsplit("_bs", 1)[1])
    xs_all: list[float] = []
    seen_legend: set[str] = set()
    spots: dict[tuple[float, float], int] = {}  # near-coincident points get stacked labels
    for r in placed:
        x, y = r.metric(axis.metric) / scale, 100 * r.metric(M.MMLU_ACC)
        se = r.metric(M.MMLU_ACC_STDERR)
        color, marker = style[r.run_id]
        kind = "reference" if r.role == "reference" else ("base (as published)" if r.is_base else "candidate variant")
        legend = f"{kind}" if r.role == "reference" else f"{r.model}: {kind}"
        half = None if se is None else 100 * z * se
        ax.errorbar(
            x,
            y,
            yerr=None if half is None else [[min(half, y)], [min(half, 100 - y)]],  # accuracy lives in 0-100 %
            fmt=marker,
            color=color,
            markersize=8,
            capsize=3,
            markeredgecolor="black" if verdicts[r.run_id].status == "frontier" else color,
            label=None if legend in seen_legend else legend,
        )
        seen_legend.add(legend)
        xs_all.append(x)
        spot = (round(math.log10(x), 2) if x > 0 else x, round(y, 1))
        k = spots[spot] = spots.get(spot, -1) + 1
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(6, 6 + 11 * k), fontsize=8)
        if axis.speed:
            wall = roofline_tok_s(r, batch)
            if wall:
                ax.plot([x, wall], [y, y], ":", color=color, linewidth=0.8)
                ax.plot([wall], [y], marker="|", markersize=18, markeredgewidth=2.0, color=color, alpha=0.8, linestyle="none")
                xs_all.append(wall)
    front = sorted((r for r in placed if verdicts[r.run_id].status == "frontier"), key=lambda r: r.metric(axis.metric))
    if front:
        fx = [r.metric(axis.metric) / scale for r in front]
        fy = [100 * r.metric(M.MMLU_ACC) for r in front]
        ax.plot(fx, fy, "--", color="black", linewidth=1.2, label="frontier", zorder=0)
    if axis.speed:
        ax.plot([], [], marker="|", markersize=12, markeredgewidth=2.0, color="grey", linestyle="none", label="memory-wall ceiling (wall_tok_s)")
    positive = [v for v in xs_all if v > 0]
    if positive and max(positive) / min(positive) > 20:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    if axis.metric == M.WEIGHT_BYTES:
        ax.set_xlabel(f"weight bytes ({unit}, lower is better)")
    else:
        ax.set_xlabel(f"{axis.title} (higher is better)")
    ax.set_ylabel(f"MMLU accuracy % (± {analysis.confidence:.0%} CI)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{analysis.sweep.experiment}: MMLU vs {axis.title}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def subject_deltas(analysis: SweepAnalysis, model: str) -> tuple[list[str], list[str], list[list[float | None]]] | None:
    """(subjects, column labels, rows of points) of per-subject accuracy minus the base's, for one candidate model."""
    records = analysis.records
    bases = [r for r in records if r.is_base and r.model == model and r.status == "FINISHED"]
    if not bases:
        return None
    base = bases[0]

    def subjects_of(r: VariantRecord) -> dict[str, float]:
        return {
            k.removeprefix(M.MMLU_SUBJECT_PREFIX): v
            for k, v in r.metrics.items()
            if k.startswith(M.MMLU_SUBJECT_PREFIX) and k != M.MMLU_ACC_STDERR
        }

    base_s = subjects_of(base)
    cols = [r for r in records if r.status == "FINISHED" and r.run_id != base.run_id and (r.model == model or r.role == "reference")]
    if not base_s or not cols:
        return None
    subjects = sorted(base_s)
    data = []
    for s in subjects:
        data.append([None if subjects_of(c).get(s) is None else 100 * (subjects_of(c)[s] - base_s[s]) for c in cols])
    return subjects, [c.label for c in cols], data


def plot_subject_heatmap(analysis: SweepAnalysis, model: str, path: Path) -> Path | None:
    found = subject_deltas(analysis, model)
    if found is None:
        return None
    subjects, labels, data = found
    import numpy as np

    plt = _plt()
    arr = np.array([[np.nan if v is None else v for v in row] for row in data], dtype=float)
    finite = arr[np.isfinite(arr)]
    lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 4), max(3.0, 0.26 * len(subjects) + 2)), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(arr), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(subjects)), subjects, fontsize=7)
    if arr.size <= 600:
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                if np.isfinite(arr[i, j]):
                    ax.text(j, i, f"{arr[i, j]:+.1f}" if lim < 10 else f"{arr[i, j]:+.0f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label=f"MMLU points vs {model}/none")
    ax.set_title(f"Per-subject accuracy change vs the unmodified {model}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_plots(analysis: SweepAnalysis, out_dir: Path) -> list[Path]:
    plots: list[Path] = []
    for ax in analysis.axes:
        p = plot_pareto(analysis, ax, out_dir / f"pareto_{ax.metric}.png")
        if p is not None:
            plots.append(p)
    for model in sorted({r.model for r in analysis.records if r.is_base}):
        p = plot_subject_heatmap(analysis, model, out_dir / f"subject_delta_{_safe(model)}.png")
        if p is not None:
            plots.append(p)
    return plots


# -- compare ----------------------------------------------------------------------------------------------


@dataclass
class CompareResult:
    analysis: SweepAnalysis
    rows: list[dict[str, Any]]
    markdown_path: Path
    csv_path: Path
    plots: list[Path]
    exit_code: int = 0

    @property
    def verdicts(self) -> dict[str, dict[str, Verdict]]:
        return self.analysis.verdicts


def write_compare(analysis: SweepAnalysis, out_dir: str | Path) -> CompareResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table_rows = rows(analysis)
    plots = write_plots(analysis, out)
    md = out / "compare.md"
    md.write_text(markdown(analysis, table_rows, plots), encoding="utf-8")
    csv_path = out / "compare.csv"
    write_csv(csv_path, table_rows)
    return CompareResult(analysis, table_rows, md, csv_path, plots)


def _short_verdict(v: str) -> str:
    return v.replace("dominated by ", "dom. by ").replace("unplaced ", "")


def print_table(analysis: SweepAnalysis, table_rows: list[dict[str, Any]], console=None) -> None:
    """A compact terminal table (the Markdown/CSV have every column)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    speed = M.DECODE_TOK_S if M.DECODE_TOK_S in analysis.verdicts else None
    size = M.WEIGHT_BYTES if M.WEIGHT_BYTES in analysis.verdicts else None
    t = Table(title=f"shrinkgate compare: {analysis.sweep.experiment} ({analysis.sweep.parent_run_id[:8]})", title_justify="left")
    for col, justify in (("model/variant", "left"), ("MMLU %", "right"), ("Δ vs base [CI]", "right"), ("tok/s (ceiling)", "right"), ("weights", "right"), ("speed", "left"), ("size", "left")):
        t.add_column(col, justify=justify)
    for row in table_rows:
        finished = row["status"] == "FINISHED"
        label = row["label"] + (" (ref)" if row["role"] == "reference" else "")
        tok = "-" if row[M.DECODE_TOK_S] is None else f"{row[M.DECODE_TOK_S]:.1f}" + ("" if row[M.WALL_TOK_S] is None else f" ({row[M.WALL_TOK_S]:.0f})")
        t.add_row(
            label,
            _acc_cell(row) if finished else f"[red]{row['status']}[/]",
            _delta_cell(row),
            tok,
            fmt(row[M.WEIGHT_BYTES], M.WEIGHT_BYTES),
            _short_verdict(row[f"verdict_{speed}"]) if speed else "-",
            _short_verdict(row[f"verdict_{size}"]) if size else "-",
            style="dim" if row["role"] == "reference" else None,
        )
    console.print(t)


def run_compare(
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    out_dir: str | Path = "reports/compare",
    confidence: float = 0.95,
    seed: int = 0,
    console=None,
) -> CompareResult:
    """Read a sweep back, print the table, write compare.md, compare.csv and PNG plots to `out_dir`.
    Raises `TrackingError` for an unknown run/experiment (see `compare_exit_code`)."""
    import os

    from pipeline.tracking.store import load_sweep

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    sweep = load_sweep(_uri(tracking_uri), run_id=run_id, experiment=experiment)
    analysis = analyze(sweep, confidence=confidence, seed=seed)
    result = write_compare(analysis, out_dir)
    print_table(analysis, result.rows, console)
    from rich.console import Console

    (console or Console()).print(f"wrote {result.markdown_path}, {result.csv_path} and {len(result.plots)} plot(s) to {Path(out_dir)}")
    return result


def compare_exit_code(
    *, tracking_uri: str | None = None, run_id: str | None = None, experiment: str | None = None, out_dir: str | Path = "reports/compare", console=None
) -> int:
    """For the CLI: 0 after writing the comparison, 2 with a one-line error (unknown run, bad store)."""
    from rich.console import Console

    console = console or Console()
    try:
        run_compare(tracking_uri=tracking_uri, run_id=run_id, experiment=experiment, out_dir=out_dir, console=console)
    except Exception as exc:  # noqa: BLE001 - one line for the user, exit code 2
        console.print(f"[red]error:[/red] {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return 2
    return 0


def _uri(tracking_uri: str | None) -> str:
    from pipeline.env import tracking_uri as resolve_tracking_uri

    return resolve_tracking_uri(tracking_uri)


# -- on the parent run (called by the sweep) --------------------------------------------------------------


def verdict_tags(analysis: SweepAnalysis) -> dict[str, dict[str, str]]:
    """run id -> tags: `frontier.<axis>` per child, Δ vs base; a summary on the parent."""
    tags: dict[str, dict[str, str]] = {}
    for r in analysis.records:
        t = {f"frontier.{metric}": str(v[r.run_id])[:500] for metric, v in analysis.verdicts.items()}
        st = analysis.stats[r.run_id]
        if st.vs_base is not None:
            lo, hi = st.vs_base.ci_points
            t["mmlu_delta_vs_base"] = f"{st.vs_base.diff_points:+.2f} [{lo:+.2f}, {hi:+.2f}] pts"
        if t:
            tags[r.run_id] = t
    parent: dict[str, str] = {}
    for metric, v in analysis.verdicts.items():
        front = [r.label for r in analysis.records if v[r.run_id].status == "frontier"]
        parent[f"frontier.{metric}"] = ", ".join(front)[:5000] or "none"
    tags[analysis.sweep.parent_run_id] = parent
    return tags


def log_sweep_report(tracking_uri: str, parent_run_id: str) -> list[str]:
    """Log compare.md, compare.csv and the plots under `report/` on the parent run and verdict tags on
    every child, so the MLflow UI shows them; returns the artifact paths logged. Missing metrics (speed
    disabled, failed children) only leave cells empty and plots out."""
    from pipeline.tracking.store import load_sweep, log_run_artifacts, set_run_tags

    sweep = load_sweep(tracking_uri, run_id=parent_run_id)
    analysis = analyze(sweep)
    with tempfile.TemporaryDirectory() as d:
        result = write_compare(analysis, d)
        log_run_artifacts(tracking_uri, parent_run_id, d, REPORT_ARTIFACT_DIR)
        logged = sorted(f"{REPORT_ARTIFACT_DIR}/{p.name}" for p in Path(d).iterdir())
    set_run_tags(tracking_uri, verdict_tags(analysis))
    return logged
