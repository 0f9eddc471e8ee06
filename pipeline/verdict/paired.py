"""Paired evidence between two runs, by the rule their sampling design allows: one function for the gate's
MMLU rule, every dominance margin (gate, `compare`, the `frontier.*` tags, the plots) and compare's intervals.

    every question, first-n   the wider of paired bootstrap and exact bounds (`stats.srs_bounds`)
    stratified                weighted by subject, stratified bootstrap and Korn-Graubard exact (`stratified`)
    sequential                the anytime-valid bounds of the betting test in the seeded order (`sequential`),
                              the only ones that hold after a sample stopped early
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline import metrics as M
from pipeline.records import VariantRecord
from pipeline.results import question_rank
from pipeline.verdict.design import Design, design_of
from pipeline.verdict.sequential import drop_bounds
from pipeline.verdict.stats import (
    PairedBounds,
    PairedComparison,
    Pairing,
    PairingError,
    comparison,
    pair,
    srs_bounds,
    two_sided,
)
from pipeline.verdict.stratified import stratified_bounds


def joint_design(a: VariantRecord, b: VariantRecord) -> Design:
    """The design that governs a comparison of two runs: sequential when either is (its stopping counts),
    stratified when both are, else the first's."""
    da, db = design_of(a), design_of(b)
    if "sequential" in (da.kind, db.kind):
        return da if da.kind == "sequential" else db
    if da.kind == db.kind == "stratified" and da.strata:
        return da
    if da.kind == "unknown" or db.kind == "unknown":
        return Design("unknown")
    return da if da.kind == db.kind else Design("first-n" if "first-n" in (da.kind, db.kind) else "all")


def sequential_bounds(d: np.ndarray, design: Design, confidence: float) -> PairedBounds:
    """Anytime-valid bounds of mean(d) (d = a right - b right, in the seeded order) as `PairedBounds`."""
    lo_drop, hi_drop = drop_bounds(d, confidence, design.population)
    a_only, b_only = int((d > 0).sum()), int((d < 0).sum())
    n = len(d)
    return PairedBounds(
        diff=float(d.mean()) if n else 0.0,
        lower=-hi_drop / 100.0,
        upper=-lo_drop / 100.0,
        confidence=confidence,
        n=n,
        a_only_right=a_only,
        b_only_right=b_only,
        method="anytime-valid (betting confidence sequence, seeded order)",
        share_a_only=a_only / n if n else 0.0,
        share_b_only=b_only / n if n else 0.0,
        anytime_valid=True,
    )


def pairing_of(a: VariantRecord, b: VariantRecord) -> Pairing:
    """The two runs' outcomes on their common questions; PairingError when there are none to pair."""
    if not a.questions or not b.questions:
        raise PairingError(f"no per-question outcomes for {a.label if not a.questions else b.label}")
    p = pair(a.questions, b.questions)
    if p.n == 0:
        raise PairingError(f"{a.label} and {b.label} share no question (matched by subject, index)")
    return p


def bounds_of(p: Pairing, design: Design, *, confidence: float, n_boot: int, seed: int) -> PairedBounds:
    """One-sided bounds of acc(a) - acc(b) over pairing `p`, each at `confidence`, by the rule `design` allows."""
    if design.kind == "sequential":
        if design.order_seed is None:
            raise PairingError("a sequential sample without its order seed")
        rank = {k: question_rank(design.order_seed, *k) for k in p.keys}
        order = sorted(range(p.n), key=lambda i: rank[p.keys[i]])
        d = p.a_correct[order].astype(int) - p.b_correct[order].astype(int)
        return sequential_bounds(d, design, confidence)
    if design.kind == "stratified" and design.strata:
        return stratified_bounds(p, design.strata, confidence=confidence, n_boot=n_boot, seed=seed)
    return srs_bounds(p.n, *p.discordant, confidence=confidence, n_boot=n_boot, seed=seed)


def bounds_between(a: VariantRecord, b: VariantRecord, *, confidence: float, n_boot: int, seed: int) -> PairedBounds:
    """One-sided bounds of acc(a) - acc(b) on their common questions, each at `confidence`, for the runs'
    sampling design. Raises PairingError when they cannot be paired."""
    return bounds_of(pairing_of(a, b), joint_design(a, b), confidence=confidence, n_boot=n_boot, seed=seed)


def compare_records(
    a: VariantRecord, b: VariantRecord, *, confidence: float, n_boot: int, seed: int
) -> PairedComparison:
    """`a` vs `b` with a two-sided interval at `confidence` by the rule of their design (compare's table)."""
    p = pairing_of(a, b)
    bounds = bounds_of(p, joint_design(a, b), confidence=two_sided(confidence), n_boot=n_boot, seed=seed)
    return comparison(p, bounds, a_label=a.label, b_label=b.label, confidence=confidence)


def paired_margin(
    confidence: float = 0.95, *, n_boot: int = 2_000, seed: int = 0, fallback: Callable | None = None
) -> Callable:
    """A `frontier` margin: how far b's accuracy may sit below a's while b still counts as "at least as accurate".

    margin(a, b) = acc(a) - acc(b) - the one-sided lower bound of their paired difference (the design's rule: the
    wider of bootstrap and exact, or anytime-valid), so `acc_b >= acc_a - margin` exactly when that lower bound is
    <= 0: a is not shown to be more accurate than b.
    Records without per-question data use `fallback` (default: the unpaired stderr margin)."""
    from pipeline.verdict.frontier import stderr_margin

    fb = fallback or stderr_margin(confidence)
    cache: dict[tuple[str, str], float] = {}

    def margin(a: VariantRecord, b: VariantRecord) -> float:
        key = (a.run_id, b.run_id)
        if key not in cache:
            try:
                lower = bounds_between(a, b, confidence=confidence, n_boot=n_boot, seed=seed).lower
                # applied to the logged accuracies (a stopped sample's cover other questions than the pair's), so
                # that `acc_b >= acc_a - margin` is exactly "the paired lower bound of acc(a) - acc(b) is <= 0"
                logged = (a.metric(M.MMLU_ACC) or 0.0) - (b.metric(M.MMLU_ACC) or 0.0)
                cache[key] = max(0.0, logged - lower)
            except PairingError:
                cache[key] = float(fb(a, b))
        return cache[key]

    return margin
