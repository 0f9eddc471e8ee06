"""The sequential paired test keeps its false-pass rate at any number of looks (1,000 simulated sweeps)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.verdict.sequential import log_capitals, sequential_non_inferiority

CONFIDENCE = 0.95
SWEEPS = 1000
MAX_QUESTIONS = 4000
DISCORDANCE = 0.12  # share of questions where variant and base disagree (compressed variants: ~5-20 %)


def _sweeps(drop_points: float, seed: int) -> np.ndarray:
    """Paired differences (variant right - base right) of SWEEPS sweeps in question order: losses and gains
    around a true drop of `drop_points`."""
    rng = np.random.default_rng(seed)
    drop = drop_points / 100.0
    p_loss, p_gain = (DISCORDANCE + drop) / 2, (DISCORDANCE - drop) / 2
    u = rng.random((SWEEPS, MAX_QUESTIONS))
    return np.where(u < p_loss, -1.0, np.where(u < p_loss + p_gain, 1.0, 0.0))


def _first_crossing(log_capital: np.ndarray) -> np.ndarray:
    """Per sweep: index of the first look where the capital reaches 1/alpha (MAX_QUESTIONS: never)."""
    hit = log_capital >= math.log(1 / (1 - CONFIDENCE))
    return np.where(hit.any(axis=1), hit.argmax(axis=1), MAX_QUESTIONS)


@pytest.mark.parametrize(("true_drop", "delta"), [(0.0, 0.0), (3.0, 3.0)])
def test_false_pass_rate_stays_below_alpha_at_the_margin(true_drop, delta):
    """A true drop equal to the margin: every pass is false. Looked at after every question."""
    d = _sweeps(true_drop, seed=int(true_drop * 10) + 1)
    log_pass, log_fail = log_capitals(d, delta, CONFIDENCE)
    first_pass, first_fail = _first_crossing(log_pass), _first_crossing(log_fail)
    false_pass = float(((first_pass < MAX_QUESTIONS) & (first_pass <= first_fail)).mean())
    print(
        f"\ntrue drop {true_drop} delta {delta}: false-pass rate {false_pass:.3f} over {SWEEPS} sweeps x {MAX_QUESTIONS} looks"
    )
    assert false_pass <= 1 - CONFIDENCE


def test_without_replacement_holds_up_to_the_whole_population():
    """Sweeps that read a finite population of questions to the end: a population whose drop is exactly the
    margin, drawn in random order without replacement, passes falsely at most alpha of the time."""
    rng = np.random.default_rng(5)
    population = 3000
    base = np.zeros(population)
    base[: int(population * DISCORDANCE / 2 * 1.25)] = -1.0  # losses: 7.5 % ...
    base[-int(population * DISCORDANCE / 2 * 0.75) :] = 1.0  # ... gains 4.5 %: a drop of exactly 3 points
    drop = -base.mean() * 100
    d = np.stack([rng.permutation(base) for _ in range(SWEEPS)])
    log_pass, log_fail = log_capitals(d, drop, CONFIDENCE, population=population)
    first_pass, first_fail = _first_crossing(log_pass), _first_crossing(log_fail)
    false_pass = float(((first_pass < population) & (first_pass <= first_fail)).mean())
    assert false_pass <= 1 - CONFIDENCE
    with pytest.raises(ValueError, match="smaller than"):
        log_capitals(d[:, :10], 3.0, CONFIDENCE, population=5)


def test_naive_repeated_testing_would_not_hold():
    """The same sweeps judged by a one-sided z-test after every 100 questions pass falsely far more often:
    the simulation can tell a valid sequential method from an invalid one."""
    d = _sweeps(0.0, seed=1)
    looks = np.arange(100, MAX_QUESTIONS + 1, 100)
    csum, csq = np.cumsum(d, axis=1)[:, looks - 1], np.cumsum(d * d, axis=1)[:, looks - 1]
    mean = csum / looks
    se = np.sqrt(np.maximum(csq / looks - mean**2, 1e-12) / looks)
    naive_false_pass = float(((mean - 1.645 * se) > 0).any(axis=1).mean())  # "drop < 0" claimed at some look
    assert naive_false_pass > 2 * (1 - CONFIDENCE)


@pytest.mark.parametrize(("true_drop", "delta", "expected"), [(0.0, 3.0, "pass"), (6.0, 1.0, "fail")])
def test_clear_cases_stop_early(true_drop, delta, expected):
    d = _sweeps(true_drop, seed=7)
    decided = [sequential_non_inferiority(row, delta, CONFIDENCE) for row in d[:200]]
    share = sum(r.decision == expected for r in decided) / len(decided)
    used = float(np.mean([r.questions_used for r in decided if r.decision == expected]))
    print(
        f"\ntrue drop {true_drop} delta {delta}: {expected} in {share:.0%} of sweeps, mean questions {used:.0f} of {MAX_QUESTIONS}"
    )
    assert share >= 0.95 and used < MAX_QUESTIONS / 2


def test_result_reports_questions_used_and_why():
    d = np.zeros(2000)
    d[::20] = 1.0  # 5 % gains, no losses
    r = sequential_non_inferiority(d, delta_points=1.0, confidence=0.95)
    assert r.decision == "pass" and r.questions_used < 2000 and "stopped at question" in r.reason
    assert sequential_non_inferiority(np.zeros(50), 1.0).decision == "undecided"  # no discordance: no evidence yet
    capped = sequential_non_inferiority(d, 1.0, max_questions=10)
    assert capped.decision == "undecided" and capped.questions_available == 10 and "raise the maximum" in capped.reason
    with pytest.raises(ValueError, match="-1, 0, 1"):
        sequential_non_inferiority([0.5, 1.0], 1.0)
