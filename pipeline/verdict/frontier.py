"""Pareto frontier of MMLU accuracy against speed or size, and per-variant dominance verdicts.

Pure functions on `VariantRecord`s (no MLflow, no torch).

Dominance: record `b` dominates record `a` on an axis when
  1. b is at least as accurate within the statistical margin: acc_b >= acc_a - margin(a, b), and
  2. b is at least as good on the axis (as fast: higher `decode_tok_s*`; as small: lower `weight_bytes`), and
  3. b is strictly better somewhere: strictly better on the axis, or a strictly higher accuracy point estimate.

Ties, deliberately:
  * Equal axis values ("equal speed") satisfy 2 but not the axis half of 3; b then dominates a only with a
    strictly higher accuracy point estimate (even one inside the margin: same speed, no evidence a is
    better, and b's estimate is higher).
  * Exact ties on both accuracy and the axis: neither dominates; both stay on the frontier.
  * `tolerance` (relative, speed axes only) counts two speeds within that ratio as equal, so timer noise
    does not decide dominance: equal means max/min <= 1 + tolerance. Rule 3 makes mutual dominance impossible
    (both would need a strictly higher accuracy estimate than the other).
  * The margin is not transitive, so a dominated record is reported with every record that dominates it
    (most accurate first), not with a chain.

Records that are not FINISHED or lack `mmlu_acc` or the axis metric are `unplaced`: they neither dominate
nor are dominated, and the gate treats that as a failure (fails closed). A record is measured against the
references and its own model's unmodified base (those allowed to dominate): when one of them is unplaced
and no placed record dominates it, its verdict is `undecided`, naming what is missing, never `frontier`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pipeline import metrics as M
from pipeline.records import VariantRecord
from pipeline.verdict.design import design_of

# (a, b) -> accuracy slack as a fraction (0.01 = one point): how far below a's accuracy b may sit and still count
# as "at least as accurate". Functions that take `margin` also accept a plain fraction.
Margin = Callable[[VariantRecord, VariantRecord], float]

_BATCH_RE = re.compile(rf"^{re.escape(M.DECODE_TOK_S)}_bs(\d+)$")


@dataclass(frozen=True)
class Axis:
    metric: str
    higher_is_better: bool
    title: str
    speed: bool  # a timed quantity (the relative tolerance applies)

    def better(self, x: float, y: float) -> bool:
        return x > y if self.higher_is_better else x < y


SIZE_AXIS = Axis(M.WEIGHT_BYTES, higher_is_better=False, title="weight bytes", speed=False)


def speed_axis(batch_size: int = 1) -> Axis:
    return Axis(M.batch_metric(M.DECODE_TOK_S, batch_size), True, f"decode tok/s (batch {batch_size})", speed=True)


def axis_by_name(name: str) -> Axis:
    """`decode_tok_s`, `decode_tok_s_bs<N>`, `weight_bytes`, or a predicted `predicted_decode_tok_s[_bs<N>]`."""
    if name == M.WEIGHT_BYTES:
        return SIZE_AXIS
    if name == M.DECODE_TOK_S:
        return speed_axis(1)
    m = _BATCH_RE.match(name)
    if m:
        return speed_axis(int(m.group(1)))
    batch = M.predicted_axis_batch(name)
    if batch is not None:
        return Axis(name, True, f"predicted decode tok/s (batch {batch})", speed=True)
    raise ValueError(
        f"unknown axis {name!r}: use decode_tok_s, decode_tok_s_bs<N>, weight_bytes or predicted_decode_tok_s[_bs<N>]"
    )


def batch_sizes(records: Iterable[VariantRecord]) -> list[int]:
    """Batch sizes with a decode_tok_s metric on at least one record."""
    found: set[int] = set()
    for r in records:
        for k in r.metrics:
            if k == M.DECODE_TOK_S:
                found.add(1)
            else:
                m = _BATCH_RE.match(k)
                if m:
                    found.add(int(m.group(1)))
    return sorted(found)


def axes_for(records: Sequence[VariantRecord]) -> list[Axis]:
    """Every axis with data: decode tok/s at each measured batch size, then weight bytes."""
    axes = [speed_axis(b) for b in batch_sizes(records)]
    if any(r.metric(M.WEIGHT_BYTES) is not None for r in records):
        axes.append(SIZE_AXIS)
    return axes


# -- margins ------------------------------------------------------------------------------------------


def fixed_margin(points: float) -> Margin:
    """The same accuracy slack for every pair, in percentage points (0 = plain Pareto dominance)."""
    slack = float(points) / 100.0
    return lambda a, b: slack


def _as_margin(margin: Margin | float) -> Margin:
    """A plain number is an accuracy fraction (0.01 = one point), like what a `Margin` returns."""
    if isinstance(margin, (int, float)):
        slack = float(margin)
        return lambda a, b: slack
    return margin


def _stderr(r: VariantRecord) -> float | None:
    se = r.metric(M.MMLU_ACC_STDERR)
    if se is not None and math.isfinite(se):
        return se
    acc, n = r.metric(M.MMLU_ACC), r.metric(M.MMLU_N_QUESTIONS)
    if acc is not None and n:
        return math.sqrt(max(acc * (1 - acc), 0.0) / n)
    return None


def stderr_margin(confidence: float = 0.95) -> Margin:
    """Unpaired margin z * sqrt(se_a^2 + se_b^2) (one-sided z): wider than the paired one; used when
    per-question outcomes are missing. A record without any stderr contributes 0."""
    from scipy.stats import norm

    z = float(norm.ppf(confidence))

    def margin(a: VariantRecord, b: VariantRecord) -> float:
        sa, sb = _stderr(a) or 0.0, _stderr(b) or 0.0
        return z * math.sqrt(sa * sa + sb * sb)

    return margin


# -- verdicts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    run_id: str
    label: str
    axis: str
    status: Literal["frontier", "dominated", "unplaced", "undecided"]
    dominated_by: tuple[str, ...] = ()  # labels, most accurate first
    reason: str = ""  # for unplaced and undecided

    @property
    def by(self) -> str | None:
        return self.dominated_by[0] if self.dominated_by else None

    def __str__(self) -> str:
        if self.status == "dominated":
            more = f" (+{len(self.dominated_by) - 1} more)" if len(self.dominated_by) > 1 else ""
            return f"dominated by {self.by}{more}"
        if self.status in ("unplaced", "undecided"):
            return f"{self.status} ({self.reason})"
        return "frontier"


def placement_problem(r: VariantRecord, axis: Axis) -> str | None:
    if r.status != "FINISHED":
        return f"status {r.status}"
    acc, x = r.metric(M.MMLU_ACC), r.metric(axis.metric)
    if acc is None or not math.isfinite(acc):
        return f"missing {M.MMLU_ACC}"
    if x is None or not math.isfinite(x):
        return f"missing {axis.metric}"
    return None


def _equal(x: float, y: float, tolerance: float) -> bool:
    if x == y:
        return True
    lo, hi = sorted((abs(x), abs(y)))
    return tolerance > 0 and lo > 0 and (x > 0) == (y > 0) and hi / lo <= 1.0 + tolerance


def dominates(
    b: VariantRecord, a: VariantRecord, axis: Axis, *, margin: Margin | float = 0.0, tolerance: float = 0.0
) -> bool:
    """Does `b` dominate `a` on `axis`? (see the module docstring; unplaced records never take part)"""
    if a.run_id == b.run_id or placement_problem(a, axis) or placement_problem(b, axis):
        return False
    margin_fn = _as_margin(margin)
    acc_a, acc_b = a.metric(M.MMLU_ACC), b.metric(M.MMLU_ACC)
    xa, xb = a.metric(axis.metric), b.metric(axis.metric)
    tol = tolerance if axis.speed else 0.0
    equal = _equal(xa, xb, tol)
    strictly_better_axis = not equal and axis.better(xb, xa)
    at_least_axis = equal or strictly_better_axis
    if not at_least_axis:
        return False
    if acc_b < acc_a - max(0.0, float(margin_fn(a, b))):
        return False
    return strictly_better_axis or acc_b > acc_a


def frontier_verdicts(
    records: Sequence[VariantRecord],
    axis: Axis,
    *,
    margin: Margin | float = 0.0,
    tolerance: float = 0.0,
    dominators: Callable[[VariantRecord], bool] | None = None,
) -> dict[str, Verdict]:
    """One verdict per record (keyed by run id). `dominators` restricts which records may dominate
    (e.g. references only); every record still gets a verdict. Only records measured on the same runtime
    (`runtime` tag) are compared. A record that no placed record dominates is `undecided` while a reference
    or its model's base on its runtime that may dominate it is unplaced."""
    margin_fn = _as_margin(margin)
    placed = [r for r in records if placement_problem(r, axis) is None]
    can_dominate = [r for r in placed if dominators is None or dominators(r)]
    yardsticks = [r for r in records if (r.role == "reference" or r.is_base) and (dominators is None or dominators(r))]
    out: dict[str, Verdict] = {}
    for a in records:
        problem = placement_problem(a, axis)
        if problem:
            out[a.run_id] = Verdict(a.run_id, a.label, axis.metric, "unplaced", reason=problem)
            continue
        # like with like: only records measured on the same runtime can dominate (or leave undecided)
        by = [
            b
            for b in can_dominate
            if b.runtime == a.runtime and dominates(b, a, axis, margin=margin_fn, tolerance=tolerance)
        ]
        by.sort(
            key=lambda b: (
                -b.metric(M.MMLU_ACC),
                -b.metric(axis.metric) if axis.higher_is_better else b.metric(axis.metric),
                b.label,
            )
        )
        if by:
            out[a.run_id] = Verdict(a.run_id, a.label, axis.metric, "dominated", tuple(b.label for b in by))
            continue
        unknown = [
            f"{y.label} {placement_problem(y, axis)}"
            for y in yardsticks
            if y.run_id != a.run_id
            and y.runtime == a.runtime
            and (y.role == "reference" or y.model == a.model)
            and placement_problem(y, axis)
        ]
        if unknown:
            out[a.run_id] = Verdict(
                a.run_id, a.label, axis.metric, "undecided", reason="cannot compare with " + ", ".join(unknown)
            )
        else:
            out[a.run_id] = Verdict(a.run_id, a.label, axis.metric, "frontier")
    return out


def frontier(
    records: Sequence[VariantRecord], axis: Axis, *, margin: Margin | float = 0.0, tolerance: float = 0.0
) -> list[VariantRecord]:
    """The non-dominated placed records, ordered along the axis from worst to best (for drawing the line)."""
    verdicts = frontier_verdicts(records, axis, margin=margin, tolerance=tolerance)
    front = [r for r in records if verdicts[r.run_id].status in ("frontier", "undecided")]
    return sorted(
        front,
        key=lambda r: (
            r.metric(axis.metric) if axis.higher_is_better else -r.metric(axis.metric),
            r.metric(M.MMLU_ACC),
        ),
    )


# -- baseline ladder ----------------------------------------------------------------------------------


def roofline_tok_s(r: VariantRecord, batch_size: int = 1) -> float | None:
    """Memory-wall ceiling: the logged `wall_tok_s` (bandwidth / bytes per token on the measured host), else
    recomputed from `host_bandwidth_gb_s` and `bytes_per_token` (x batch), else None."""
    wall = r.metric(M.batch_metric(M.WALL_TOK_S, batch_size))
    if wall is not None:
        return wall
    bw, bpt = r.metric(M.BANDWIDTH_GB_S), r.metric(M.batch_metric(M.BYTES_PER_TOKEN, batch_size))
    if bw and bpt:
        return bw * 1e9 / bpt * batch_size
    return None


@dataclass(frozen=True)
class LadderRung:
    run_id: str
    label: str
    status: str
    mmlu_acc: float | None
    mmlu_stderr: float | None
    weight_bytes: float | None
    decode_tok_s: float | None
    wall_tok_s: float | None  # roofline prediction (ceiling)

    @property
    def roofline_fraction(self) -> float | None:
        if self.decode_tok_s is None or not self.wall_tok_s:
            return None
        return self.decode_tok_s / self.wall_tok_s


def baseline_ladder(records: Sequence[VariantRecord], batch_size: int = 1) -> list[LadderRung]:
    """The reference models (smaller published models, evaluated as published), smallest first, each with
    its measured speed and its roofline ceiling."""
    refs = [r for r in records if r.role == "reference"]
    rungs = [
        LadderRung(
            run_id=r.run_id,
            label=r.label,
            status=r.status,
            mmlu_acc=r.metric(M.MMLU_ACC),
            mmlu_stderr=None
            if design_of(r).kind == "sequential"
            else r.metric(M.MMLU_ACC_STDERR),  # no fixed-n interval after stopping
            weight_bytes=r.metric(M.WEIGHT_BYTES),
            decode_tok_s=r.metric(M.batch_metric(M.DECODE_TOK_S, batch_size)),
            wall_tok_s=roofline_tok_s(r, batch_size),
        )
        for r in refs
    ]
    return sorted(rungs, key=lambda g: (g.weight_bytes is None, g.weight_bytes or 0.0, g.label))
