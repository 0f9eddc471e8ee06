"""An anytime-valid paired test: look after every question, stop when the answer is known, stay valid.

Questions are scored in one seeded random order (`pipeline.results.question_rank`) for a variant and the
model it is judged against. Per question the paired difference d = right(variant) - right(other) is in
{-1, 0, 1}; the question is whether the mean drop (-E[d], in points) is below `delta_points`.

Two one-sided tests by betting (Waudby-Smith & Ramdas 2023, "Estimating means of bounded random variables by
betting"; bets by aGRAPA, their approximate growth-rate-adaptive rule, from the questions before each one):
with y = (d + 1) / 2 in [0, 1] and m = (1 - delta) / 2,
  pass: capital prod(1 + lambda_i (y_i - m)) reaches 1/alpha  -> the drop is < delta  (H0: drop >= delta rejected)
  fail: capital prod(1 - lambda_i (y_i - m)) reaches 1/alpha  -> the drop is > delta  (H0: drop <= delta rejected)
Each capital is a nonnegative supermartingale under its null, so by Ville's inequality the chance it ever
reaches 1/alpha is <= alpha however often one looks: a pass is false at most alpha of the time, with no
alpha spent per look. A naive test repeated after every batch of questions has no such bound (the simulation
test shows it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

SequentialDecision = Literal["pass", "fail", "undecided"]
BET_CAP = 0.5  # bets at most half the way to ruin: keeps capital positive and the test stable on small n


def _running_moments(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance estimates known before each step (shrunk towards 1/2 and 1/4), along the last axis."""
    t = np.arange(1, y.shape[-1] + 1, dtype=float)
    mean_after = (0.5 + np.cumsum(y, axis=-1)) / (t + 1)
    start = np.full(y.shape[:-1] + (1,), 0.5)
    prev_mean = np.concatenate([start, mean_after[..., :-1]], axis=-1)
    var_after = (0.25 + np.cumsum((y - prev_mean) ** 2, axis=-1)) / (t + 1)
    prev_var = np.concatenate([start / 2, var_after[..., :-1]], axis=-1)
    return prev_mean, prev_var


def log_capitals(
    differences: np.ndarray, delta_points: float, confidence: float, population: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(log pass-capital, log fail-capital) after each question; `differences` in {-1, 0, 1} along the last axis.

    `population`: the number of questions the order was drawn from without replacement (MMLU's 14,042); the
    null mean of the next question then moves with what was already seen (Waudby-Smith & Ramdas, sec. 6),
    which keeps the test exact up to the whole population. None: an unbounded population.
    """
    if not 0.5 <= confidence < 1.0:
        raise ValueError("confidence must be in [0.5, 1)")
    if not -100.0 < delta_points < 100.0:
        raise ValueError("delta_points must be in (-100, 100)")
    y = (np.asarray(differences, dtype=float) + 1.0) / 2.0
    n = y.shape[-1]
    m = (1.0 - delta_points / 100.0) / 2.0
    if population is not None:
        if population < n:
            raise ValueError(f"population {population} is smaller than the {n} questions seen")
        seen = np.concatenate([np.zeros(y.shape[:-1] + (1,)), np.cumsum(y, axis=-1)[..., :-1]], axis=-1)
        # a null mean the questions seen already rule out leaves the next one's outside [0, 1]: clip (it then bets its cap)
        m = np.clip((population * m - seen) / (population - np.arange(n, dtype=float)), 0.0, 1.0)
    mean, var = _running_moments(y)
    out = []
    for sign, room in ((1.0, np.maximum(m, 1e-9)), (-1.0, np.maximum(1.0 - m, 1e-9))):
        edge = sign * (mean - m)  # the Kelly bet for a mean `mean` and variance `var` is edge / (var + edge^2)
        bets = np.minimum(np.clip(edge / (var + edge * edge), 0.0, None), BET_CAP / room)
        out.append(np.cumsum(np.log1p(sign * bets * (y - m)), axis=-1))
    return out[0], out[1]


@dataclass(frozen=True)
class SequentialResult:
    decision: SequentialDecision
    questions_used: int  # questions looked at when it stopped (all of them when undecided)
    questions_available: int
    drop_points: float  # observed mean drop over the questions used
    delta_points: float
    confidence: float
    reason: str


def sequential_non_inferiority(
    differences,
    delta_points: float,
    confidence: float = 0.95,
    max_questions: int | None = None,
    population: int | None = None,
) -> SequentialResult:
    """Walk the paired differences (variant right - other right, in the seeded question order) and stop at the
    first question where a pass or a fail is decided at `confidence`; undecided when neither by the end (or
    `max_questions`). A pass means: drop < delta_points with confidence, however many looks were taken."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or not np.isin(d, (-1.0, 0.0, 1.0)).all():
        raise ValueError("differences must be a 1-D sequence of -1, 0, 1 (variant right minus other right)")
    if max_questions is not None:
        d = d[:max_questions]
    n = len(d)
    if n == 0:
        return SequentialResult("undecided", 0, 0, math.nan, delta_points, confidence, "no paired questions")
    threshold = math.log(1.0 / (1.0 - confidence))
    log_pass, log_fail = log_capitals(d, delta_points, confidence, population)
    hits_pass, hits_fail = np.flatnonzero(log_pass >= threshold), np.flatnonzero(log_fail >= threshold)
    first_pass = int(hits_pass[0]) + 1 if hits_pass.size else None
    first_fail = int(hits_fail[0]) + 1 if hits_fail.size else None
    if first_pass is not None and (first_fail is None or first_pass <= first_fail):
        decision: SequentialDecision = "pass"
        used = first_pass
    elif first_fail is not None:
        decision, used = "fail", first_fail
    else:
        decision, used = "undecided", n
    drop = -float(d[:used].mean()) * 100.0
    conf = f"{confidence:.0%}"
    if decision == "pass":
        reason = f"stopped at question {used} of {n}: drop {drop:+.2f} pts is below {delta_points:g} at {conf} (anytime-valid)"
    elif decision == "fail":
        reason = f"stopped at question {used} of {n}: drop {drop:+.2f} pts is above {delta_points:g} at {conf} (anytime-valid)"
    else:
        reason = f"not decided after all {n} questions: drop {drop:+.2f} pts vs {delta_points:g} at {conf}; raise the maximum"
    return SequentialResult(decision, used, n, drop, float(delta_points), confidence, reason)


def _crosses(d: np.ndarray, delta_points: float, confidence: float, population: int | None, side: int) -> bool:
    """Did the pass (side 0) or fail (side 1) capital at `delta_points` reach 1/alpha at some question of `d`?"""
    return bool(log_capitals(d, delta_points, confidence, population)[side].max() >= math.log(1.0 / (1.0 - confidence)))


def drop_bounds(
    differences, confidence: float = 0.95, population: int | None = None, *, tol: float = 1e-3
) -> tuple[float, float]:
    """Anytime-valid (lower, upper) bounds of the drop in points after the questions in `differences`, each
    one-sided at `confidence`: the drops the two capitals have rejected by now. Upper: the smallest margin the
    test has passed at some question so far; lower: the largest it has failed. They hold however the sample was
    stopped (the confidence sequence of the betting test, intersected over time); (-100, 100) when nothing is
    rejected yet. Bisection to `tol` points (the pass and fail capitals are monotone in the margin)."""
    d = np.asarray(differences, dtype=float)
    edge = 100.0 - 1e-6
    if d.size == 0:
        return -100.0, 100.0

    def search(side: int) -> float:
        # side 0: smallest delta that passed; side 1: largest delta that failed
        lo, hi = -edge, edge
        if side == 0 and not _crosses(d, hi, confidence, population, 0):
            return 100.0
        if side == 1 and not _crosses(d, lo, confidence, population, 1):
            return -100.0
        while hi - lo > tol:
            mid = (lo + hi) / 2
            hit = _crosses(d, mid, confidence, population, side)
            if side == 0:
                hi, lo = (mid, lo) if hit else (hi, mid)
            else:
                lo, hi = (mid, hi) if hit else (lo, mid)
        return hi if side == 0 else lo

    return search(1), search(0)


def questions_to_decide(
    losses: int, gains: int, n: int, delta_points: float, confidence: float = 0.95, population: int | None = None
) -> int | None:
    """About how many questions in all the sequential test would take to decide at the observed loss and gain
    shares: run it on a sequence that spreads losses and gains evenly at those shares, doubling its length until
    it decides. None when no length up to `population` (or 10^6) would."""
    if n <= 0:
        return None
    p_loss, p_gain = losses / n, gains / n
    cap = population or 1_000_000

    def sequence(m: int) -> np.ndarray:
        i = np.arange(1, m + 1)
        lost = np.floor(i * p_loss) - np.floor((i - 1) * p_loss)
        won = np.floor(i * p_gain + 0.5) - np.floor((i - 1) * p_gain + 0.5)
        return np.clip(won - lost, -1, 1)

    m = max(n, 16)
    while True:
        m = min(m, cap)
        result = sequential_non_inferiority(sequence(m), delta_points, confidence, population=population)
        if result.decision != "undecided":
            return result.questions_used
        if m >= cap:
            return None
        m *= 2
