"""Paired statistics on per-question outcomes: McNemar, paired bootstrap, non-inferiority, sample sizes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pipeline.results import QuestionOutcome
from pipeline.verdict.stats import (
    PairingError,
    compare_paired,
    exact_diff_bounds,
    flip_rate,
    mcnemar_exact,
    non_inferiority,
    pair,
    paired_bootstrap,
    paired_bootstrap_counts,
    questions_for_fail,
    questions_for_pass,
    questions_needed,
)


def outcomes(n_both: int, n_a_only: int, n_b_only: int, n_neither: int, *, subjects=("algebra", "biology"), seed=0):
    """Two aligned outcome lists with exactly these concordant/discordant counts (answer is always 0)."""
    cells = [(1, 1)] * n_both + [(1, 0)] * n_a_only + [(0, 1)] * n_b_only + [(0, 0)] * n_neither
    random.Random(seed).shuffle(cells)
    a, b = [], []
    for i, (ca, cb) in enumerate(cells):
        subject, index = subjects[i % len(subjects)], i // len(subjects)
        a.append(QuestionOutcome(subject, index, 0, 0 if ca else 1, bool(ca)))
        b.append(QuestionOutcome(subject, index, 0, 0 if cb else 1, bool(cb)))
    return a, b


def test_mcnemar_exact_known_table():
    # exact binomial on the discordant pairs: b=10, c=2 -> two-sided p = 0.0386
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857421875, abs=1e-12)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)


@pytest.mark.parametrize("b,c", [(10, 2), (7, 1), (30, 18), (0, 6), (3, 3)])
def test_mcnemar_matches_statsmodels(b, c):
    from statsmodels.stats.contingency_tables import mcnemar

    ref = mcnemar([[40, b], [c, 25]], exact=True).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9)


def test_compare_paired_counts_and_pvalue():
    a, b = outcomes(60, 10, 2, 28)
    cmp = compare_paired(a, b, a_label="A", b_label="B")
    assert (cmp.n, cmp.a_only_right, cmp.b_only_right) == (100, 10, 2)
    assert cmp.acc_a == pytest.approx(0.70) and cmp.acc_b == pytest.approx(0.62)
    assert cmp.diff_points == pytest.approx(8.0)
    assert cmp.mcnemar_p == pytest.approx(0.0386, abs=5e-5)
    assert cmp.flip_rate == pytest.approx(0.12)  # only the discordant ones changed letter here
    lo, hi = cmp.ci_points
    # the interval is the wider of the paired bootstrap's and the exact one on each side (the one rule): with 12
    # discordant questions the bootstrap alone would call a better (its lower bound > 0), the exact bound does not
    boot = paired_bootstrap_counts(100, 10, 2, confidence=0.95)
    ex_lo, ex_hi = exact_diff_bounds(100, 10, 2, 0.975)
    assert (
        boot.low > 0
        and lo == pytest.approx(100 * min(boot.low, ex_lo))
        and hi == pytest.approx(100 * max(boot.high, ex_hi))
    )
    assert lo < 0 < 8.0 < hi
    stronger = compare_paired(*outcomes(60, 25, 2, 13))  # 25 vs 2: shown by every bound
    assert stronger.ci_points[0] > 0


def test_pairing_matches_by_subject_and_index_not_order():
    a, b = outcomes(30, 5, 1, 14)
    shuffled = list(b)
    random.Random(3).shuffle(shuffled)
    assert compare_paired(a, shuffled).a_only_right == 5
    # a question only one side answered is not paired, and is reported
    p = pair(a[:-2], b)
    assert (p.n, p.only_a, p.only_b, p.complete) == (48, 0, 2, False)
    with pytest.raises(PairingError):
        pair(a + a[:1], b)  # duplicate (subject, index)
    with pytest.raises(PairingError):
        compare_paired(a, [QuestionOutcome("other", 0, 0, 0, True)])


def test_flip_rate_counts_changed_wrong_letters():
    a = [QuestionOutcome("s", i, 0, p, p == 0) for i, p in enumerate([0, 1, 2, 0])]
    b = [QuestionOutcome("s", i, 0, p, p == 0) for i, p in enumerate([0, 3, 2, 1])]
    # q1: wrong -> other wrong letter (no accuracy change, still a flip); q3: right -> wrong
    assert flip_rate(a, b) == pytest.approx(0.5)
    assert compare_paired(a, b).a_only_right == 1


def test_paired_bootstrap_is_seeded_and_matches_explicit_resampling():
    a, b = outcomes(120, 25, 10, 45)
    ci1 = paired_bootstrap(a, b, seed=7, n_boot=4000)
    ci2 = paired_bootstrap(a, b, seed=7, n_boot=4000)
    assert ci1 == ci2
    assert ci1.diff == pytest.approx(15 / 200)
    # the multinomial shortcut has the same distribution as resampling question pairs with replacement
    ca = np.array([q.correct for q in a], dtype=float)
    cb = np.array([q.correct for q in b], dtype=float)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(ca), size=(4000, len(ca)))
    explicit = (ca[idx] - cb[idx]).mean(axis=1)
    lo, hi = np.quantile(explicit, [0.025, 0.975])
    assert ci1.low == pytest.approx(lo, abs=0.01) and ci1.high == pytest.approx(hi, abs=0.01)
    # and with the normal approximation of a paired difference
    n, p10, p01 = 200, 25 / 200, 10 / 200
    sd = math.sqrt((p10 + p01 - (p10 - p01) ** 2) / n)
    assert (ci1.high - ci1.low) / 2 == pytest.approx(1.96 * sd, rel=0.12)
    assert ci1.lower_one_sided > ci1.low and ci1.upper_one_sided < ci1.high


def test_bootstrap_degenerates_without_discordance_but_exact_bound_does_not():
    ci = paired_bootstrap_counts(10, 0, 0)
    assert (ci.low, ci.high) == (0.0, 0.0)
    lo, hi = exact_diff_bounds(10, 0, 0, 0.95)
    assert hi > 0.25 and lo < -0.25  # ten identical answers say little


def test_non_inferiority_pass():
    base, variant = outcomes(1300, 12, 10, 678)  # 2000 questions, 12 losses, 10 gains
    ni = non_inferiority(variant, base, 1.0)
    assert ni.decision == "pass"
    assert ni.drop_points == pytest.approx(0.1)
    assert ni.drop_upper_points <= 1.0
    assert ni.drop_upper_points >= ni.bootstrap_upper_points  # the more conservative bound decides


def test_non_inferiority_fail():
    base, variant = outcomes(1100, 200, 5, 695)  # ~9.75 point drop
    ni = non_inferiority(variant, base, 1.0)
    assert ni.decision == "fail"
    assert ni.drop_points == pytest.approx(9.75)
    assert ni.drop_lower_points > 1.0
    assert "lower bound" in ni.reason


def test_non_inferiority_undecided_with_too_few_questions():
    base, variant = outcomes(12, 0, 0, 8)  # 20 identical answers: drop 0 but nothing is known
    ni = non_inferiority(variant, base, 2.0)
    assert ni.drop_points == 0.0 and ni.bootstrap_upper_points == 0.0
    assert ni.decision == "undecided"  # never a pass on 20 questions
    assert ni.questions_needed > 20 and ni.more_questions == ni.questions_needed - 20
    assert f"a decision needs about {ni.more_questions:,} more questions ({ni.questions_needed:,} in all)" in ni.reason
    # ... and that many identical answers are indeed enough, one fewer is not
    same = outcomes(ni.questions_needed, 0, 0, 0)[0]
    assert non_inferiority(same, same, 2.0).decision == "pass"
    assert non_inferiority(same[:-1], same[:-1], 2.0).decision == "undecided"
    # straddling: drop near delta with wide bounds
    base, variant = outcomes(96, 4, 0, 100)  # 200 questions, drop exactly 2 points
    ni = non_inferiority(variant, base, 2.0)
    assert ni.decision == "undecided" and ni.questions_needed is None  # drop == delta: more questions cannot help
    assert "no number of questions decides it" in ni.reason
    # above the margin: how many questions a fail would take at these shares, and that many do fail
    base, variant = outcomes(90, 10, 2, 98)  # 200 questions, drop 4 points against 2
    ni = non_inferiority(variant, base, 2.0)
    assert ni.decision == "undecided" and ni.questions_needed == questions_for_fail(200, 10, 2, 2.0) > 200
    k = ni.questions_needed // 200 + 1
    big_base, big_variant = outcomes(90 * k, 10 * k, 2 * k, 98 * k)
    assert non_inferiority(big_variant, big_base, 2.0).decision == "fail"


def test_non_inferiority_direction():
    """The variant being better never counts as a drop."""
    base, variant = outcomes(1300, 2, 40, 658)
    ni = non_inferiority(variant, base, 0.5)
    assert ni.drop_points == pytest.approx(-1.9)
    assert ni.decision == "pass"


def test_questions_for_pass():
    assert questions_for_pass(1000, 5, 5, 1.0) == 1001  # 1000 questions leave the bound at exactly 1.00 points
    assert questions_for_pass(1000, 5, 5, 2.0) < 1000
    assert questions_for_pass(1000, 30, 0, 2.0) is None  # a 3-point drop never passes a 2-point margin


def test_questions_needed():
    # one accuracy's stderr on the full MMLU test set is ~0.4 points
    assert 100 * math.sqrt(0.25 / 14042) == pytest.approx(0.42, abs=0.01)
    z = 1.6448536269514722
    assert questions_needed(1.0, 0.5, 0.95) == math.ceil((z * 0.5 / 0.01) ** 2) == 6764
    assert questions_needed(0.5, 0.5, 0.95) == pytest.approx(4 * 6764, abs=4)
    assert questions_needed(1.0, 0.9, 0.95) < questions_needed(1.0, 0.5, 0.95)
    assert questions_needed(1.0, 0.5, 0.99) > questions_needed(1.0, 0.5, 0.95)
    paired = questions_needed(1.0, 0.5, 0.95, discordance=0.05)
    assert paired == math.ceil((z * math.sqrt(0.05) / 0.01) ** 2) and paired < 6764 / 4
    with pytest.raises(ValueError):
        questions_needed(0, 0.5, 0.95)
