"""Full-MMLU accuracy and its standard error from a sample (`pipeline.data.sampling`'s designs):
stratified by subject, or a simple random sample without replacement; both finite-population corrected."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StratifiedEstimate:
    acc: float  # sum over subjects of (subject size / total) x subject accuracy: estimates full-MMLU accuracy
    stderr: float
    stderr_source: str


def srs_estimate(correct: list[bool], population: int) -> StratifiedEstimate:
    """Accuracy of a simple random sample without replacement of `population` questions: the mean, and its
    stderr with the finite-population correction."""
    n = len(correct)
    p = sum(correct) / n
    fpc = 1.0 - n / population
    stderr = math.sqrt(p * (1.0 - p) / (n - 1) * fpc) if n > 1 else math.nan
    return StratifiedEstimate(
        p, stderr, f"simple random sample of {n} of {population} questions (finite-population corrected)"
    )


def stratified_estimate(correct: dict[str, list[bool]], sizes: dict[str, int]) -> StratifiedEstimate:
    """Full-population accuracy and its standard error from a sample stratified by subject.

    Var = sum_s W_s^2 (1 - n_s/N_s) s_s^2 / n_s with W_s = N_s / N (finite-population corrected). A subject
    with one sampled question has no within-subject variance; it borrows the pooled sample variance.
    """
    total = sum(sizes[s] for s in correct)
    flat = [c for cs in correct.values() for c in cs]
    n_all = len(flat)
    p_all = sum(flat) / n_all
    pooled = p_all * (1 - p_all) * n_all / (n_all - 1) if n_all > 1 else 0.25
    acc = var = 0.0
    borrowed = 0
    for s, cs in correct.items():
        w, n = sizes[s] / total, len(cs)
        p = sum(cs) / n
        acc += w * p
        if n > 1:
            s2 = p * (1 - p) * n / (n - 1)
        else:
            s2, borrowed = pooled, borrowed + 1
        var += w * w * (1 - n / sizes[s]) * s2 / n
    source = "stratified by subject, finite-population corrected"
    if borrowed:
        source += f"; {borrowed} subject(s) with one question use the pooled variance"
    return StratifiedEstimate(acc=acc, stderr=math.sqrt(var), stderr_source=source)
