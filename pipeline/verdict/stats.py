"""Paired statistics on per-question MMLU outcomes. Pure functions; no MLflow, no torch.

Every variant of a sweep answers the same questions, so two variants are compared question by question
(matched by `(subject, index)`), which is far more sensitive than comparing two accuracies with their
separate standard errors:

* `mcnemar_exact`: exact McNemar test = two-sided exact binomial test on the discordant pairs.
* `paired_bootstrap`: percentile CI of the accuracy difference. Resampling n question pairs with
  replacement only changes how many of them are "a right, b wrong" (+1), "a wrong, b right" (-1) or
  concordant (0), and those three counts are Multinomial(n, observed shares): drawing the counts directly
  is the same paired bootstrap distribution, exactly, at O(n_boot) instead of O(n * n_boot).
* `PairedBounds` / `srs_bounds`: one-sided bounds of a paired difference, and the ONE rule for every bound the
  verdict prints or uses (non-inferiority, dominance margins, compare's intervals): the wider of the paired
  bootstrap bound and an exact (Clopper-Pearson, Bonferroni-split) bound on the discordant shares. The
  bootstrap alone is anti-conservative with few discordant pairs (4 gains and no loss in 2,000 questions is
  not evidence at 95 %: exact one-sided p 0.0625). Stratified samples: `pipeline.verdict.stratified`;
  sequential ones: `pipeline.verdict.sequential`.
* `non_inferiority` / `decide_drop`: "the drop is at most delta points" passes only when the one-sided upper
  bound of the drop is <= delta; fails when the lower bound is > delta; otherwise `undecided`, with how many
  questions a decision would take at the observed shares. A variant that is not bit-reproducible widens both
  bounds by its run-to-run flip rate (`noise_points`, from the gate).

Units: accuracies are fractions (0..1, like the `mmlu_acc` metric); differences and deltas named
`*_points` are percentage points (100 x fraction).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

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

    @property
    def discordant(self) -> tuple[int, int]:
        """(questions only a got right, questions only b got right)."""
        return int((self.a_correct & ~self.b_correct).sum()), int((~self.a_correct & self.b_correct).sum())


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
    a: Sequence[QuestionOutcome],
    b: Sequence[QuestionOutcome],
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> BootstrapCI:
    p = pair(a, b)
    return paired_bootstrap_counts(p.n, *p.discordant, confidence=confidence, n_boot=n_boot, seed=seed)


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
class PairedBounds:
    """acc(a) - acc(b) on paired questions (fractions) with one-sided lower and upper bounds, each holding at
    `confidence` for how the questions were chosen; `method` says how. The wider of bootstrap and exact is the
    one rule every verdict uses; `shares` are the (design-weighted) discordant shares the point estimate rests on."""

    diff: float
    lower: float
    upper: float
    confidence: float
    n: int
    a_only_right: int  # questions a got right and b wrong (unweighted count)
    b_only_right: int
    method: str
    share_a_only: float  # design-weighted share of questions only a got right
    share_b_only: float
    boot_lower: float | None = None
    boot_upper: float | None = None
    exact_lower: float | None = None
    exact_upper: float | None = None
    design_effect: float = 1.0  # variance of this design / a simple random sample's of the same size
    anytime_valid: bool = False  # holds however the sample was stopped (a confidence sequence)


def srs_bounds(
    n: int, a_only_right: int, b_only_right: int, *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> PairedBounds:
    """Bounds for questions that are exchangeable draws (every question, or a simple random sample): the wider of
    the paired bootstrap's and the exact (Clopper-Pearson, Bonferroni-split) bound, on each side."""
    boot = paired_bootstrap_counts(n, a_only_right, b_only_right, confidence=confidence, n_boot=n_boot, seed=seed)
    ex_lo, ex_hi = exact_diff_bounds(n, a_only_right, b_only_right, confidence)
    return PairedBounds(
        diff=boot.diff,
        lower=min(boot.lower_one_sided, ex_lo),
        upper=max(boot.upper_one_sided, ex_hi),
        confidence=confidence,
        n=n,
        a_only_right=int(a_only_right),
        b_only_right=int(b_only_right),
        method="wider of paired bootstrap and exact",
        share_a_only=a_only_right / n,
        share_b_only=b_only_right / n,
        boot_lower=boot.lower_one_sided,
        boot_upper=boot.upper_one_sided,
        exact_lower=ex_lo,
        exact_upper=ex_hi,
    )


def two_sided(confidence: float) -> float:
    """The one-sided level whose lower and upper bounds together make a two-sided interval at `confidence`."""
    return 1.0 - (1.0 - confidence) / 2.0


@dataclass(frozen=True)
class PairedComparison:
    """`a` against `b` on their common questions; `diff` = acc(a) - acc(b). `bounds` is the two-sided interval
    at `confidence` (each side at `two_sided(confidence)`), by the same rule as every verdict."""

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
    bounds: PairedBounds
    confidence: float = 0.95

    @property
    def diff_points(self) -> float:
        return 100.0 * self.bounds.diff

    @property
    def ci_points(self) -> tuple[float, float]:
        return 100.0 * self.bounds.lower, 100.0 * self.bounds.upper

    @property
    def complete(self) -> bool:
        return self.only_a == 0 and self.only_b == 0


def comparison(p: Pairing, bounds: PairedBounds, *, a_label: str, b_label: str, confidence: float) -> PairedComparison:
    """A `PairedComparison` of a pairing with its (two-sided) bounds."""
    n10, n01 = p.discordant
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
        bounds=bounds,
        confidence=confidence,
    )


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
    """`a` vs `b` treating the common questions as exchangeable draws (`pipeline.verdict.paired` picks the bound
    for a run's sampling design)."""
    p = pair(a, b)
    if p.n == 0:
        raise PairingError(f"{a_label} and {b_label} share no question (matched by subject, index)")
    bounds = srs_bounds(p.n, *p.discordant, confidence=two_sided(confidence), n_boot=n_boot, seed=seed)
    return comparison(p, bounds, a_label=a_label, b_label=b_label, confidence=confidence)


def two_sided_z(confidence: float) -> float:
    """Normal quantile of a two-sided `confidence` interval (1.96 at 0.95): accuracy ± z * stderr."""
    return float(_st.norm.ppf(1 - (1 - confidence) / 2))


# -- non-inferiority ---------------------------------------------------------------------------------


def questions_needed(
    delta_points: float, acc: float = 0.5, confidence: float = 0.95, *, discordance: float | None = None
) -> int:
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
    drop_upper_points: float  # one-sided upper confidence bound used for the decision (noise floor included)
    drop_lower_points: float  # one-sided lower confidence bound used for "fail"
    bootstrap_upper_points: float | None
    exact_upper_points: float | None
    questions_needed: int | None  # questions in all a decision would take if the observed shares held (None: never)
    reason: str
    noise_points: float = 0.0  # run-to-run noise floor added to the upper and taken off the lower bound
    bound: str = "wider of paired bootstrap and exact"  # what the bounds are and what they hold for
    anytime_valid: bool = False

    @property
    def more_questions(self) -> int | None:
        """How many questions beyond those scored a decision would take (None: no number would)."""
        return None if self.questions_needed is None else max(self.questions_needed - self.n, 0)


def decide_drop(
    bounds: PairedBounds,
    delta_points: float,
    *,
    noise_points: float = 0.0,
    needed: int | None = None,
    bound: str | None = None,
) -> NonInferiority:
    """pass: upper bound of the drop (+ noise) <= delta; fail: lower bound (- noise) > delta; else undecided.
    `bounds` are of acc(base) - acc(variant). `needed`: questions in all a decision would take (default: the
    fixed-sample estimate of `questions_for_decision`)."""
    if delta_points < 0 or noise_points < 0:
        raise ValueError("delta_points and noise_points must be >= 0")
    upper = bounds.upper * 100.0 + noise_points
    lower = bounds.lower * 100.0 - noise_points
    drop = bounds.diff * 100.0
    if needed is None and not bounds.anytime_valid:
        needed = questions_for_decision(bounds, delta_points, noise_points)
    bound = bound or bounds.method
    conf_s = f"{bounds.confidence:.0%}" + (f" (+ {noise_points:.2f} pts run-to-run noise)" if noise_points else "")
    over = f"over {bounds.n} questions ({bound})"
    if upper <= delta_points + 1e-12:
        decision: Decision = "pass"
        reason = f"drop {drop:+.2f} pts, {conf_s} upper bound {upper:.2f} <= {delta_points:g} {over}"
    elif lower > delta_points:
        decision = "fail"
        reason = f"drop {drop:+.2f} pts, {conf_s} lower bound {lower:.2f} > {delta_points:g} {over}"
    else:
        decision = "undecided"
        discord = bounds.share_a_only + bounds.share_b_only
        if needed is None:
            tail = f"at this drop no number of questions decides it ({discord:.1%} of answers differ)"
        else:
            tail = f"a decision needs about {max(needed - bounds.n, 1):,} more questions ({needed:,} in all) at this discordance ({discord:.1%} of answers differ)"
        reason = (
            f"drop {drop:+.2f} pts, {conf_s} bounds [{lower:.2f}, {upper:.2f}] straddle {delta_points:g} {over}; {tail}"
        )
    return NonInferiority(
        decision=decision,
        delta_points=float(delta_points),
        confidence=bounds.confidence,
        n=bounds.n,
        drop_points=drop,
        drop_upper_points=upper,
        drop_lower_points=lower,
        bootstrap_upper_points=None if bounds.boot_upper is None else bounds.boot_upper * 100.0,
        exact_upper_points=None if bounds.exact_upper is None else bounds.exact_upper * 100.0,
        questions_needed=needed,
        reason=reason,
        noise_points=float(noise_points),
        bound=bound,
        anytime_valid=bounds.anytime_valid,
    )


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
    """`decide_drop` on questions that are exchangeable draws (every question or a simple random sample).

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
    losses, gains = p.discordant  # base right and variant wrong; base wrong and variant right
    bounds = srs_bounds(p.n, losses, gains, confidence=confidence, n_boot=n_boot, seed=seed)
    return decide_drop(bounds, delta_points, noise_points=noise_points)


def _decision_bound(m: int, p_loss: float, p_gain: float, confidence: float, side: str) -> float:
    """The decision bound of the drop (a fraction) over `m` questions if the observed shares held exactly: the
    exact one and a normal approximation of the bootstrap's, the wider."""
    exact = exact_diff_bounds(m, round(p_loss * m), round(p_gain * m), confidence)
    z = float(_st.norm.ppf(confidence))
    half = z * math.sqrt(max(p_loss + p_gain - (p_loss - p_gain) ** 2, 0.0) / m)
    return max(exact[1], p_loss - p_gain + half) if side == "upper" else min(exact[0], p_loss - p_gain - half)


def _fewest(ok: Callable[[int], bool], start: int, cap: int) -> int | None:
    """Smallest m >= 1 with ok(m) (monotone up to count rounding), searching from `start`; None beyond `cap`."""
    hi = max(start, 1)
    while not ok(hi):
        hi *= 2
        if hi > cap:
            return None
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def questions_for_pass(
    n: int, losses: int, gains: int, delta_points: float, confidence: float = 0.95, cap: int = 10_000_000
) -> int | None:
    """Fewest questions for which `non_inferiority` would pass if the observed loss/gain shares held: the
    decision bound (the exact one, which dominates the bootstrap's, and a normal approximation of the
    bootstrap's) falls to `delta_points`. None when the observed drop is already >= delta (or beyond `cap`)."""
    if n <= 0:
        raise PairingError("no paired questions")
    p_loss, p_gain, delta = losses / n, gains / n, delta_points / 100.0
    if p_loss - p_gain >= delta:
        return None
    return _fewest(lambda m: _decision_bound(m, p_loss, p_gain, confidence, "upper") <= delta, n, cap)


def questions_for_fail(
    n: int, losses: int, gains: int, delta_points: float, confidence: float = 0.95, cap: int = 10_000_000
) -> int | None:
    """Fewest questions for which the lower bound of the drop would exceed `delta_points` if the observed shares
    held (a fail). None when the observed drop is not above delta (or beyond `cap`)."""
    if n <= 0:
        raise PairingError("no paired questions")
    p_loss, p_gain, delta = losses / n, gains / n, delta_points / 100.0
    if p_loss - p_gain <= delta:
        return None
    return _fewest(lambda m: _decision_bound(m, p_loss, p_gain, confidence, "lower") > delta, n, cap)


def questions_for_decision(bounds: PairedBounds, delta_points: float, noise_points: float = 0.0) -> int | None:
    """Questions in all a pass or a fail would take at the observed (design-weighted) discordant shares of
    `bounds` (of base - variant), scaled by the design effect; None when the observed drop sits where neither
    can be decided."""
    n, conf, deff = bounds.n, bounds.confidence, bounds.design_effect
    losses, gains = bounds.share_a_only * n, bounds.share_b_only * n
    if delta_points - noise_points > 0 and bounds.diff * 100.0 < delta_points - noise_points:
        m = questions_for_pass(n, losses, gains, delta_points - noise_points, conf)
    else:
        m = questions_for_fail(n, losses, gains, delta_points + noise_points, conf)
    return None if m is None else int(math.ceil(m * deff))


def _check_conf(confidence: float) -> None:
    if not 0.5 <= confidence < 1.0:
        raise ValueError("confidence must be in [0.5, 1)")
