"""Paired bounds for a sample stratified by subject (`eval.sample: {questions: N, seed: S}`).

A stratified sample is not a simple random sample of MMLU: subject s contributes n_s of its N_s questions, so
its questions stand for weight W_s = N_s / N of the test set (one question per subject makes a
professional_law question stand for 11 % of MMLU). The difference acc(a) - acc(b) is estimated as
sum_s W_s * mean_s(d), and its bounds are, on each side, the wider of

* a stratified paired bootstrap: within each subject its n_s question pairs are resampled with replacement
  (the counts of "a only right", "b only right" and concordant drawn as a multinomial, as in
  `pipeline.verdict.stats.paired_bootstrap_counts`), weighted by W_s; and
* an exact bound of each weighted discordant share by Clopper-Pearson at the design's effective sample size
  (Korn & Graubard 1998, "Confidence intervals for proportions with small expected number of positive counts
  estimated from survey data": n* = p(1 - p) / var_design(p), capped at n; where the design variance is 0,
  Kish's weight-based n = (sum w)^2 / sum w^2), Bonferroni-split as in `exact_diff_bounds`.

A subject with one sampled question has no within-subject variance to measure; it borrows the pooled
variance (as `pipeline.data.estimates.stratified_estimate` does for accuracy), so the exact side still widens
where the bootstrap cannot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats as _st

from pipeline.verdict.stats import PairedBounds, Pairing, PairingError


def _beta_bounds(x: float, n: float, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson interval (two-sided at `confidence`) for x successes in n trials; x and n may be
    fractional (an effective sample size)."""
    alpha = 1.0 - confidence
    lo = 0.0 if x <= 0 else float(_st.beta.ppf(alpha / 2, x, n - x + 1))
    hi = 1.0 if x >= n else float(_st.beta.ppf(1 - alpha / 2, x + 1, n - x))
    return lo, hi


def stratified_bounds(
    p: Pairing, strata: Mapping[str, int], *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> PairedBounds:
    """One-sided bounds of the weighted acc(a) - acc(b) at `confidence` for a pairing of a stratified sample.
    `strata`: test rows per subject (each stratum's population); every paired subject must be in it."""
    if p.n == 0:
        raise PairingError("no paired questions")
    subjects = np.array([k[0] for k in p.keys])
    names = sorted(set(subjects.tolist()))
    unknown = [s for s in names if s not in strata]
    if unknown:
        raise PairingError(f"no stratum size for subject(s) {', '.join(unknown[:3])}")
    a_only = p.a_correct & ~p.b_correct
    b_only = ~p.a_correct & p.b_correct
    total = float(sum(strata[s] for s in names))
    rows = []  # (weight, n_s, a-only count, b-only count, population)
    for s in names:
        mask = subjects == s
        rows.append((strata[s] / total, int(mask.sum()), int(a_only[mask].sum()), int(b_only[mask].sum()), strata[s]))
    w = np.array([r[0] for r in rows])
    n_s = np.array([r[1] for r in rows], dtype=float)
    x_a = np.array([r[2] for r in rows], dtype=float)
    x_b = np.array([r[3] for r in rows], dtype=float)
    pop = np.array([r[4] for r in rows], dtype=float)
    share_a, share_b = float((w * x_a / n_s).sum()), float((w * x_b / n_s).sum())
    diff = share_a - share_b

    # stratified paired bootstrap: multinomial counts within each subject
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_boot)
    for wi, ni, xa, xb in zip(w, n_s, x_a, x_b):
        probs = np.array([xa, xb, ni - xa - xb]) / ni
        c = rng.multinomial(int(ni), probs, size=n_boot)
        draws += wi * (c[:, 0] - c[:, 1]) / ni
    alpha = 1.0 - confidence
    boot_lo, boot_hi = (float(v) for v in np.quantile(draws, [alpha, confidence]))

    # exact side: Clopper-Pearson of each weighted share at its design-effective sample size
    n = p.n
    kish = (
        float(w.sum() ** 2 / (w * w / n_s).sum()) if n else 0.0
    )  # sum over questions of (W_s / n_s)^2 = sum_s W_s^2 / n_s
    kish = min(kish, float(n))

    def effective_n(share: float, x: np.ndarray) -> float:
        pooled = share * (1.0 - share) * n / (n - 1) if n > 1 else 0.25
        p_s = x / n_s
        s2 = np.where(n_s > 1, p_s * (1 - p_s) * n_s / np.maximum(n_s - 1, 1), pooled)
        var = float((w * w * (1 - n_s / pop) * s2 / n_s).sum())
        if var <= 0 or share <= 0 or share >= 1:
            return kish
        return min(share * (1 - share) / var, float(n))

    n_a, n_b = effective_n(share_a, x_a), effective_n(share_b, x_b)
    a_lo, a_hi = _beta_bounds(share_a * n_a, n_a, confidence)
    b_lo, b_hi = _beta_bounds(share_b * n_b, n_b, confidence)
    ex_lo, ex_hi = a_lo - b_hi, a_hi - b_lo
    deff = n / max(min(n_a, n_b), 1e-9)
    return PairedBounds(
        diff=diff,
        lower=min(boot_lo, ex_lo),
        upper=max(boot_hi, ex_hi),
        confidence=confidence,
        n=n,
        a_only_right=int(a_only.sum()),
        b_only_right=int(b_only.sum()),
        method="stratified: wider of stratified bootstrap and exact at the effective sample size",
        share_a_only=share_a,
        share_b_only=share_b,
        boot_lower=boot_lo,
        boot_upper=boot_hi,
        exact_lower=ex_lo,
        exact_upper=ex_hi,
        design_effect=max(deff, 1.0) if math.isfinite(deff) else 1.0,
    )
