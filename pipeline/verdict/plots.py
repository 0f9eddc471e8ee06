"""Plots of a sweep's analysis (matplotlib, Agg backend): MMLU against each frontier axis, with the memory-wall
ceiling; per-subject accuracy change against the unmodified model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from pipeline import metrics as M
from pipeline.records import VariantRecord
from pipeline.verdict.analysis import SweepAnalysis, subject_deltas
from pipeline.verdict.frontier import Axis, roofline_tok_s
from pipeline.verdict.stats import two_sided_z


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return path


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
    z = two_sided_z(analysis.confidence)
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
                ax.plot(
                    [wall],
                    [y],
                    marker="|",
                    markersize=18,
                    markeredgewidth=2.0,
                    color=color,
                    alpha=0.8,
                    linestyle="none",
                )
                xs_all.append(wall)
    front = sorted((r for r in placed if verdicts[r.run_id].status == "frontier"), key=lambda r: r.metric(axis.metric))
    if front:
        fx = [r.metric(axis.metric) / scale for r in front]
        fy = [100 * r.metric(M.MMLU_ACC) for r in front]
        ax.plot(fx, fy, "--", color="black", linewidth=1.2, label="frontier", zorder=0)
    if axis.speed:
        ax.plot(
            [],
            [],
            marker="|",
            markersize=12,
            markeredgewidth=2.0,
            color="grey",
            linestyle="none",
            label="memory-wall ceiling (wall_tok_s)",
        )
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
    return _save(plt, fig, path)


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
                    ax.text(
                        j,
                        i,
                        f"{arr[i, j]:+.1f}" if lim < 10 else f"{arr[i, j]:+.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                    )
    fig.colorbar(im, ax=ax, label=f"MMLU points vs {model}/none")
    ax.set_title(f"Per-subject accuracy change vs the unmodified {model}")
    return _save(plt, fig, path)


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
