"""Analysis of a sweep as logged: each record's base, paired statistics against it and the references,
frontier verdicts on every axis with data, the baseline ladder, flat table rows and per-subject deltas.

Pure: works on `SweepRecord`s. Tolerates missing metrics (speed disabled, a FAILED child): a missing value
is None and a record that cannot be placed is `unplaced`, never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline import metrics as M
from pipeline.config.policy import DEFAULT_POLICY, Policy, dominance_rule
from pipeline.records import SweepRecord, VariantRecord
from pipeline.verdict.design import design_of
from pipeline.verdict.frontier import (
    Axis,
    LadderRung,
    Verdict,
    axes_for,
    baseline_ladder,
    frontier_verdicts,
    roofline_tok_s,
)
from pipeline.verdict.paired import compare_records, paired_margin
from pipeline.verdict.stats import PairedComparison, PairingError, two_sided_z


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
    policy: Policy = DEFAULT_POLICY  # whose dominance rule the verdicts follow

    @property
    def records(self) -> tuple[VariantRecord, ...]:
        return self.sweep.children

    @property
    def speed_axis(self) -> str | None:
        """The batch-1 decode axis when it has data (what the tables show as "speed")."""
        return M.DECODE_TOK_S if M.DECODE_TOK_S in self.verdicts else None

    @property
    def size_axis(self) -> str | None:
        return M.WEIGHT_BYTES if M.WEIGHT_BYTES in self.verdicts else None


def base_for(record: VariantRecord, records: Sequence[VariantRecord]) -> VariantRecord | None:
    """The FINISHED unmodified candidate measured on the same runtime a record is compared with: same model for
    a candidate; the first candidate's for a reference; None for a base itself or when none finished."""
    if record.is_base:
        return None
    return finished_base(records, record.runtime, record.model if record.role == "candidate" else None)


def finished_base(records: Sequence[VariantRecord], runtime: str, model: str | None = None) -> VariantRecord | None:
    """The first FINISHED unmodified candidate measured on `runtime` (of `model` when given)."""
    return next(
        (
            r
            for r in records
            if r.is_base and r.status == "FINISHED" and r.runtime == runtime and model in (None, r.model)
        ),
        None,
    )


def _paired(
    a: VariantRecord, b: VariantRecord, confidence: float, n_boot: int, seed: int
) -> tuple[PairedComparison | None, str | None]:
    if a.status != "FINISHED" or b.status != "FINISHED":
        return None, None
    if not a.questions or not b.questions:
        who = a.label if not a.questions else b.label
        return None, f"no per-question outcomes for {who}"
    try:
        return compare_records(a, b, confidence=confidence, n_boot=n_boot, seed=seed), None
    except PairingError as exc:
        return None, f"{a.label} vs {b.label}: {exc}"


def dominance(records: Sequence[VariantRecord], policy: Policy, axes: Sequence[Axis]) -> dict[str, dict[str, Verdict]]:
    """The one definition of dominance, used by the gate, `compare`, the plots and the sweep's `frontier.*` tags
    alike: the policy's paired margin (confidence, bootstrap, seed; the bound each pair's sampling design allows,
    the wider of bootstrap and exact), speed tolerance and dominators."""
    margin = paired_margin(policy.confidence, n_boot=min(policy.bootstrap_samples, 2_000), seed=policy.seed)
    dominators = (lambda r: r.role == "reference") if policy.dominated_by == "references" else None
    return {
        ax.metric: frontier_verdicts(
            records, ax, margin=margin, tolerance=policy.speed_tolerance, dominators=dominators
        )
        for ax in axes
    }


def analyze(
    sweep: SweepRecord,
    policy: Policy | None = None,
    *,
    confidence: float | None = None,
    n_boot: int | None = None,
    seed: int | None = None,
    axes: Sequence[Axis] | None = None,
) -> SweepAnalysis:
    """`policy` (default `DEFAULT_POLICY`) decides dominance and the statistics' confidence, bootstrap
    samples and seed; `confidence`, `n_boot` and `seed` override those of the policy."""
    policy = policy or DEFAULT_POLICY
    over = {
        k: v for k, v in (("confidence", confidence), ("bootstrap_samples", n_boot), ("seed", seed)) if v is not None
    }
    if over:
        policy = Policy.model_validate({**policy.model_dump(), **over})
    confidence, n_boot, seed = policy.confidence, policy.bootstrap_samples, policy.seed
    records = list(sweep.children)
    axes = list(axes) if axes is not None else axes_for(records)
    verdicts = dominance(records, policy, axes)
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
            if ref.run_id == r.run_id or ref.runtime != r.runtime:
                continue
            cmp, note = _paired(r, ref, confidence, n_boot, seed)
            if cmp is not None:
                vs.vs_refs[ref.label] = cmp
            elif note and note not in vs.notes:
                vs.notes.append(note)
        stats[r.run_id] = vs
    return SweepAnalysis(sweep, axes, verdicts, stats, baseline_ladder(records), confidence, policy)


# -- table rows -----------------------------------------------------------------------------------------


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
    z = two_sided_z(analysis.confidence)
    out: list[dict[str, Any]] = []
    for r in ordered(analysis.records):
        st = analysis.stats[r.run_id]
        acc, se = r.metric(M.MMLU_ACC), r.metric(M.MMLU_ACC_STDERR)
        if design_of(r).kind == "sequential":
            se = None  # a fixed-n interval does not hold for a sample that may have stopped early: none shown
        row: dict[str, Any] = {
            "label": r.label,
            "model": r.model,
            "variant": r.variant,
            "role": r.role,
            "method": r.tags.get(M.TAG_METHOD, ""),
            "status": r.status,
            "run_id": r.run_id,
            "mmlu_acc_pct": _pct(acc),
            "mmlu_ci_low_pct": _pct(acc - z * se) if acc is not None and se is not None else None,
            "mmlu_ci_high_pct": _pct(acc + z * se) if acc is not None and se is not None else None,
            M.MMLU_N_QUESTIONS: r.metric(M.MMLU_N_QUESTIONS) or (len(r.questions) if r.questions else None),
            "base": st.base.label if st.base is not None else "",
            "delta_vs_base_pts": st.vs_base.diff_points if st.vs_base else None,
            "delta_ci_low_pts": st.vs_base.ci_points[0] if st.vs_base else None,
            "delta_ci_high_pts": st.vs_base.ci_points[1] if st.vs_base else None,
            "mcnemar_p_vs_base": st.vs_base.mcnemar_p if st.vs_base else None,
            "flip_rate_vs_base": st.vs_base.flip_rate if st.vs_base else None,
            "vs_references": "; ".join(
                f"{lbl}: {c.diff_points:+.2f} [{c.ci_points[0]:+.2f}, {c.ci_points[1]:+.2f}] p={c.mcnemar_p:.3g}"
                for lbl, c in st.vs_refs.items()
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
    cols = [
        r
        for r in records
        if r.status == "FINISHED" and r.run_id != base.run_id and (r.model == model or r.role == "reference")
    ]
    if not base_s or not cols:
        return None
    subjects = sorted(base_s)
    data = []
    for s in subjects:
        data.append([None if subjects_of(c).get(s) is None else 100 * (subjects_of(c)[s] - base_s[s]) for c in cols])
    return subjects, [c.label for c in cols], data


def verdict_tags(analysis: SweepAnalysis) -> dict[str, dict[str, str]]:
    """run id -> tags: `frontier.<axis>` per child, Δ vs base; a summary on the parent."""
    tags: dict[str, dict[str, str]] = {}
    for r in analysis.records:
        t = {M.TAG_FRONTIER_PREFIX + metric: str(v[r.run_id])[:500] for metric, v in analysis.verdicts.items()}
        st = analysis.stats[r.run_id]
        if st.vs_base is not None:
            lo, hi = st.vs_base.ci_points
            t[M.TAG_MMLU_DELTA_VS_BASE] = f"{st.vs_base.diff_points:+.2f} [{lo:+.2f}, {hi:+.2f}] pts"
        if t:
            tags[r.run_id] = t
    parent: dict[str, str] = {}
    for metric, v in analysis.verdicts.items():
        front = [r.label for r in analysis.records if v[r.run_id].status == "frontier"]
        parent[M.TAG_FRONTIER_PREFIX + metric] = ", ".join(front)[:5000] or "none"
    parent[M.TAG_FRONTIER_POLICY] = dominance_rule(analysis.policy)
    tags[analysis.sweep.parent_run_id] = parent
    return tags
