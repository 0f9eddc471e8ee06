"""Paired statistics on per-question MMLU outcomes. Pure functions; no MLflow, no torch.

Every variant of a sweep answers the same questions, so two variants are compared question by question
(matched by `(subject, index)`), which is far more sensitive than comparing two accuracies with their
separate standard errors:

* `mcnemar_exact`: exact McNemar test = two-sided exact binomial test on the discordant pairs.
* `paired_bootstrap`: percentile CI of the accuracy difference. Resampling n question pairs with
  replacement only changes how many of them are "a right, b wrong" (+1), "a wrong, b right" (-1) or
  concordant (0), and those three counts are Multinomial(n, observed shares): drawing the counts directly
  is the same paired bootstrap distribution, exactly, at O(n_boot) instead of O(n * n_boot).
* `non_inferiority`: "the drop is at most delta points" passes only when the one-sided upper confidence
  bound of the drop is <= delta; fails when the lower bound is > delta; otherwise `undecided`. The bound
  is the more conservative of the bootstrap bound and an exact (Clopper-Pearson, Bonferroni-split) bound
  on the discordant shares: the bootstrap alone is anti-conservative with few discordant pairs (no changed
  answer among 10 questions would give a zero-width interval and a false "pass"). A variant that is not
  bit-reproducible widens both bounds by its run-to-run flip rate (`noise_points`, from the gate).

Units: accuracies are fractions (0..1, like the `mmlu_acc` metric); differences and deltas named
`*_points` are percentage points (100 x fraction).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
from scipy import stats as _st

from pipeline.results import QuestionOutcome

Key = tuple[str, int]
MMLU_TEST_QUESTIONS = 14042


class PairingError(ValueError):
    """Per-question outcomes cannot be paired (duplicates or no common question)."""


def _index(questions: Iterable[QuestionOutcome], who: str) -> dict[Key, QuestionOutcome]:
    out: dict[Key, QuestionOutcome] = {}
    for q in questions:
        key = (q.subject, int(q.index))
        if key in out:
            raise PairingError(f"{who}: question {key[0]}#{key[1]} appears twice")
        out[key] = q
    return out


@dataclass(frozen=True)
class Pairing:
    """Outcomes of two variants on their common questions (sorted by subject, index)."""

    keys: tuple[Key, ...]
    a_correct: np.ndarray  # bool, one per common question
    b_correct: np.ndarray
    same_prediction: np.ndarray
    only_a: int  # questions only `a` answered
    only_b: int

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def complete(self) -> bool:
        """Both answered exactly the same question set."""
        return self.only_a == 0 and self.only_b == 0


@dataclass(frozen=True)
class _Indexed:
    keys: tuple[Key, ...]  # sorted
    correct: np.ndarray
    predicted: np.ndarray


_CACHE: OrderedDict[int, tuple[Sequence[QuestionOutcome], _Indexed]] = OrderedDict()


def _indexed(questions: Sequence[QuestionOutcome], who: str) -> _Indexed:
    """Sorted keys + arrays; memoised for tuples (records hold tuples, and a sweep pairs each many times)."""
    hit = _CACHE.get(id(questions))
    if hit is not None and hit[0] is questions:
        return hit[1]
    idx = _index(questions, who)
    keys = tuple(sorted(idx))
    out = _Indexed(
        keys,
        np.array([bool(idx[k].correct) for k in keys], dtype=bool),
        np.array([int(idx[k].predicted) for k in keys], dtype=np.int64),
    )
    if isinstance(questions, tuple):
        _CACHE[id(questions)] = (questions, out)  # holds the tuple, so its id cannot be reused meanwhile
        while len(_CACHE) > 64:
            _CACHE.popitem(last=False)
    return out


def pair(a: Sequence[QuestionOutcome], b: Sequence[QuestionOutcome]) -> Pairing:
    ia, ib = _indexed(a, "a"), _indexed(b, "b")
    if ia.keys == ib.keys:
        keys, sa, sb = ia.keys, slice(None), slice(None)
    else:
        pos_b = {k: i for i, k in enumerate(ib.keys)}
        common = [(i, pos_b[k]) for i, k in enumerate(ia.keys) if k in pos_b]
        keys = tuple(ia.keys[i] for i, _ in common)
        sa = np.array([i for i, _ in common], dtype=np.int64)
        sb = np.array([j for _, j in common], dtype=np.int64)
    return Pairing(
        keys=keys,
        a_correct=ia.correct[sa],
        b_correct=ib.correct[sb],
        same_prediction=ia.predicted[sa] == ib.predicted[sb],
        only_a=len(ia.keys) - len(keys),
        only_b=len(ib.keys) - len(keys),
    )


def mcnemar_exact(a_only_right: int, b_only_right: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    m = int(a_only_right) + int(b_only_right)
    if m == 0:
        return 1.0
    return float(_st.binomtest(min(int(a_only_right), int(b_only_right)), m, 0.5, alternative="two-sided").pvalue)


def flip_rate(a: Sequence[QuestionOutcome], b: Sequence[QuestionOutcome]) -> float:
    """Share of common questions whose predicted letter differs (right->wrong, wrong->right, wrong->other wrong)."""
    p = pair(a, b)
    if p.n == 0:
        raise PairingError("no common questions")
    return float(1.0 - p.same_prediction.mean())


@dataclass(frozen=True)
class BootstrapCI:
    diff: float  # acc(a) - acc(b), fraction
    low: float  # two-sided percentile CI at `confidence`
    high: float
    upper_one_sided: float  # one-sided upper bound at `confidence` (quantile `confidence`)
    lower_one_sided: float  # one-sided lower bound (quantile 1 - confidence)
    confidence: float
    n_boot: int
    seed: int


def paired_bootstrap_counts(
    n: int, a_only_right: int, b_only_right: int, *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> BootstrapCI:
    """Paired bootstrap of acc(a) - acc(b) from the discordant counts over `n` paired questions."""
    if n <= 0:
        raise PairingError("no paired questions")
    _check_conf(confidence)
    shares = np.array([a_only_right, b_only_right, n - a_only_right - b_only_right], dtype=float) / n
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, shares, size=n_boot)
    diffs = (draws[:, 0] - draws[:, 1]) / n
    alpha = 1.0 - confidence
    lo, hi, lo1, hi1 = np.quantile(diffs, [alpha / 2, 1 - alpha / 2, alpha, confidence])
    return BootstrapCI(
        diff=(a_only_right - b_only_right) / n,
        low=float(lo),
        high=float(hi),
        upper_one_sided=float(hi1),
        lower_one_sided=float(lo1),
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )


def paired_bootstrap(
    a: Sequence[QuestionOutcome], b: Sequence[QuestionOutcome], *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> BootstrapCI:
    p = pair(a, b)
    n10 = int((p.a_correct & ~p.b_correct).sum())
    n01 = int((~p.a_correct & p.b_correct).sum())
    return paired_bootstrap_counts(p.n, n10, n01, confidence=confidence, n_boot=n_boot, seed=seed)


def exact_diff_bounds(n: int, a_only_right: int, b_only_right: int, confidence: float = 0.95) -> tuple[float, float]:
    """Conservative one-sided (lower, upper) bounds on acc(a) - acc(b) = p10 - p01, each at `confidence`.

    Clopper-Pearson intervals for the two discordant shares, each two-sided at `confidence` (so each side
    holds at 1 - alpha/2); by Bonferroni the combined one-sided bound holds at >= `confidence`.
    """
    if n <= 0:
        raise PairingError("no paired questions")
    ci10 = _st.binomtest(int(a_only_right), n).proportion_ci(confidence_level=confidence, method="exact")
    ci01 = _st.binomtest(int(b_only_right), n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci10.low - ci01.high), float(ci10.high - ci01.low)


@dataclass(frozen=True)
class PairedComparison:
    """`a` against `b` on their common questions; `diff` = acc(a) - acc(b)."""

    a: str
    b: str
    n: int
    only_a: int
    only_b: int
    acc_a: float
    acc_b: float
    a_only_right: int  # a right, b wrong
    b_only_right: int  # a wrong, b right
    mcnemar_p: float
    flip_rate: float
    ci: BootstrapCI

    @property
    def diff_points(self) -> float:
        return 100.0 * self.ci.diff

    @property
    def ci_points(self) -> tuple[float, float]:
        return 100.0 * self.ci.low, 100.0 * self.ci.high

    @property
    def complete(self) -> bool:
        return self.only_a == 0 and self.only_b == 0


def compare_paired(
    a: Sequence[QuestionOutcome],
    b: Sequence[QuestionOutcome],
    *,
    a_label: str = "a",
    b_label: str = "b",
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    p = pair(a, b)
    if p.n == 0:
        raise PairingError(f"{a_label} and {b_label} share no question (matched by subject, index)")
    n10 = int((p.a_correct & ~p.b_correct).sum())
    n01 = int((~p.a_correct & p.b_correct).sum())
    return PairedComparison(
        a=a_label,
        b=b_label,
        n=p.n,
        only_a=p.only_a,
        only_b=p.only_b,
        acc_a=float(p.a_correct.mean()),
        acc_b=float(p.b_correct.mean()),
        a_only_right=n10,
        b_only_right=n01,
        mcnemar_p=mcnemar_exact(n10, n01),
        flip_rate=float(1.0 - p.same_prediction.mean()),
        ci=paired_bootstrap_counts(p.n, n10, n01, confidence=confidence, n_boot=n_boot, seed=seed),
    )


def two_sided_z(confidence: float) -> float:
    """Normal quantile of a two-sided `confidence` interval (1.96 at 0.95): accuracy ± z * stderr."""
    return float(_st.norm.ppf(1 - (1 - confidence) / 2))


# -- non-inferiority ---------------------------------------------------------------------------------


def questions_needed(delta_points: float, acc: float = 0.5, confidence: float = 0.95, *, discordance: float | None = None) -> int:
    """Questions needed so that a one-sided `confidence` bound is within `delta_points` of the estimate.

    Unpaired (default): one accuracy's standard error sqrt(acc(1-acc)/n), e.g. 0.42 points at acc 0.5 on
    the 14,042 MMLU test questions; n = (z * sqrt(acc(1-acc)) / delta)^2 with z the one-sided normal
    quantile. Paired (`discordance` = share of questions the two variants answer differently, right vs
    wrong): the variance of a paired difference is about `discordance`, so n = (z * sqrt(discordance) / delta)^2,
    usually far fewer questions.
    """
    if delta_points <= 0:
        raise ValueError("delta_points must be > 0")
    _check_conf(confidence)
    z = float(_st.norm.ppf(confidence))
    if discordance is not None:
        var = max(float(discordance), 1e-9)
    else:
        a = min(max(float(acc), 0.0), 1.0)
        var = max(a * (1.0 - a), 1e-9)
    return int(math.ceil((z * math.sqrt(var) / (delta_points / 100.0)) ** 2))


Decision = Literal["pass", "fail", "undecided"]


@dataclass(frozen=True)
class NonInferiority:
    """Is the variant's MMLU drop vs its base at most `delta_points`? drop = acc(base) - acc(variant)."""

    decision: Decision
    delta_points: float
    confidence: float
    n: int
    drop_points: float
    drop_upper_points: float  # one-sided upper confidence bound used for the decision
    drop_lower_points: float  # one-sided lower confidence bound used for "fail"
    bootstrap_upper_points: float
    exact_upper_points: float
    questions_needed: int | None  # for a pass if the observed shares held (None: the observed drop is >= delta)
    reason: str
    noise_points: float = 0.0  # run-to-run noise floor added to the upper and taken off the lower bound


def non_inferiority(
    variant: Sequence[QuestionOutcome],
    base: Sequence[QuestionOutcome],
    delta_points: float,
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
    noise_points: float = 0.0,
) -> NonInferiority:
    """pass: upper bound of the drop <= delta; fail: lower bound of the drop > delta; else undecided.

    `noise_points`: the variant's own run-to-run flip rate (points) when it is not bit-reproducible. A rerun
    can move its accuracy by at most that much, so both bounds widen by it: a pass must hold on any rerun.

    Raises PairingError when the question sets cannot be paired; unequal question sets are not decided
    here (the gate fails them closed), only reported through `compare_paired`.
    """
    if delta_points < 0 or noise_points < 0:
        raise ValueError("delta_points and noise_points must be >= 0")
    p = pair(base, variant)
    if p.n == 0:
        raise PairingError("variant and base share no question (matched by subject, index)")
    gains = int((~p.a_correct & p.b_correct).sum())  # base wrong, variant right
    losses = int((p.a_correct & ~p.b_correct).sum())  # base right, variant wrong
    boot = paired_bootstrap_counts(p.n, losses, gains, confidence=confidence, n_boot=n_boot, seed=seed)  # of the drop
    ex_lo, ex_hi = exact_diff_bounds(p.n, losses, gains, confidence)
    upper = max(boot.upper_one_sided, ex_hi) * 100.0 + noise_points
    lower = min(boot.lower_one_sided, ex_lo) * 100.0 - noise_points
    drop = boot.diff * 100.0
    needed = questions_for_pass(p.n, losses, gains, delta_points - noise_points, confidence) if delta_points > noise_points else None
    conf_s = f"{confidence:.0%}" + (f" (+ {noise_points:.2f} pts run-to-run noise)" if noise_points else "")
    if upper <= delta_points + 1e-12:
        decision: Decision = "pass"
        reason = f"drop {drop:+.2f} pts, {conf_s} upper bound {upper:.2f} <= {delta_points:g} over {p.n} questions"
    elif lower > delta_points:
        decision = "fail"
        reason = f"drop {drop:+.2f} pts, {conf_s} lower bound {lower:.2f} > {delta_points:g} over {p.n} questions"
    else:
        decision = "undecided"
        reason = (
            f"drop {drop:+.2f} pts, {conf_s} bounds [{lower:.2f}, {upper:.2f}] straddle {delta_points:g} over {p.n} questions"
            + (
                f" (a pass needs about {needed:,} questions at this discordance)"
                if needed is not None
                else " (the observed drop is not below delta: more questions cannot make it pass)"
            )
        )
    return NonInferiority(
        decision=decision,
        delta_points=float(delta_points),
        confidence=confidence,
        n=p.n,
        drop_points=drop,
        drop_upper_points=upper,
        drop_lower_points=lower,
        bootstrap_upper_points=boot.upper_one_sided * 100.0,
        exact_upper_points=ex_hi * 100.0,
        questions_needed=needed,
        reason=reason,
        noise_points=float(noise_points),
    )


def questions_for_pass(n: int, losses: int, gains: int, delta_points: float, confidence: float = 0.95, cap: int = 10_000_000) -> int | None:
    """Fewest questions for which `non_inferiority` would pass if the observed loss/gain shares held: the
    decision bound (the exact one, which dominates the bootstrap's, and a normal approximation of the
    bootstrap's) falls to `delta_points`. None when the observed drop is already >= delta (or beyond `cap`)."""
    if n <= 0:
        raise PairingError("no paired questions")
    p_loss, p_gain = losses / n, gains / n
    delta = delta_points / 100.0
    if p_loss - p_gain >= delta:
        return None
    z = float(_st.norm.ppf(confidence))

    def upper(m: int) -> float:
        lo_c, ga_c = round(p_loss * m), round(p_gain * m)
        exact = exact_diff_bounds(m, lo_c, ga_c, confidence)[1]
        var = p_loss + p_gain - (p_loss - p_gain) ** 2
        return max(exact, (p_loss - p_gain) + z * math.sqrt(max(var, 0.0) / m))

    hi = max(n, 1)
    while upper(hi) > delta:
        hi *= 2
        if hi > cap:
            return None
    lo = 1
    while lo < hi:  # smallest m with upper(m) <= delta (monotone up to count rounding)
        mid = (lo + hi) // 2
        if upper(mid) <= delta:
            hi = mid
        else:
            lo = mid + 1
    return lo


# -- margins for dominance (see pipeline.verdict.frontier) ----------------------------------------------------


def paired_margin(
    confidence: float = 0.95, *, n_boot: int = 2_000, seed: int = 0, fallback: Callable | None = None
) -> Callable:
    """A `frontier` margin: how far b's accuracy may sit below a's while b still counts as "at least as accurate".

    margin(a, b) = diff - one-sided lower bound of acc(a) - acc(b), so `acc_b >= acc_a - margin` exactly when
    a is not significantly more accurate than b (paired bootstrap on common questions). Records without
    per-question data use `fallback` (default: the unpaired stderr margin).
    """
    from pipeline.verdict.frontier import stderr_margin

    fb = fallback or stderr_margin(confidence)
    cache: dict[tuple[str, str], float] = {}

    def margin(a, b) -> float:
        key = (a.run_id, b.run_id)
        if key not in cache:
            if not a.questions or not b.questions:
                cache[key] = float(fb(a, b))
            else:
                try:
                    ci = paired_bootstrap(a.questions, b.questions, confidence=confidence, n_boot=n_boot, seed=seed)
                    cache[key] = max(0.0, ci.diff - ci.lower_one_sided)
                except PairingError:
                    cache[key] = float(fb(a, b))
        return cache[key]

    return margin


def _check_conf(confidence: float) -> None:
    if not 0.5 <= confidence < 1.0:
        raise ValueError("confidence must be in [0.5, 1)")
