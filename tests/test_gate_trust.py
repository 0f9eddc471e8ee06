"""The gate a release manager can act on (issue #27): no fail-open path left on the verdict side.

1. dominance uses the rule every other bound uses (the wider of bootstrap and exact), in the gate, the
   frontier tags and compare alike;
2. an unknown noise floor is unknown, never zero;
3. the first N rows of each subject are not a sample: no MMLU pass on them; a stratified sample is weighted;
5. a variant that stopped early is shown the anytime-valid bounds its decision used.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _stores import Child, base_questions, changed, fresh_store, write_sweep

from pipeline import metrics as M
from pipeline.config.policy import DEFAULT_POLICY, Policy
from pipeline.records import SweepRecord, VariantRecord
from pipeline.results import QuestionOutcome, question_rank
from pipeline.verdict import evaluate, log_sweep_report, run_compare, run_gate
from pipeline.verdict.sequential import drop_bounds
from pipeline.verdict.stats import Pairing, srs_bounds
from pipeline.verdict.stratified import stratified_bounds

SUBJECTS = ("anatomy", "virology")


def _gains(base: list[QuestionOutcome], k: int) -> list[QuestionOutcome]:
    return changed(base, 0, k)


# -- 1. dominance: the wider of bootstrap and exact ----------------------------------------------------------


@pytest.fixture(scope="module")
def four_more(tmp_path_factory):
    """The review's case: base 13.2 tok/s, variant 11.0, 2,000 paired questions, the variant right on 4 more (exact
    one-sided p 0.0625). The bootstrap alone calls the variant more accurate, so nothing dominates it."""
    uri = fresh_store(tmp_path_factory, "four-more")
    base = base_questions(2000, SUBJECTS, acc=0.3)
    parent, ids = write_sweep(
        uri,
        "four-more",
        [
            Child("m", "none", base, metrics={M.DECODE_TOK_S: 13.2, M.WEIGHT_BYTES: 4e9}),
            Child("m", "q", _gains(base, 4), metrics={M.DECODE_TOK_S: 11.0, M.WEIGHT_BYTES: 1e9}),
        ],
    )
    return uri, parent, ids


def test_four_more_right_answers_are_not_evidence_and_the_faster_base_dominates(four_more, tmp_path):
    uri, parent, ids = four_more
    policy = tmp_path / "policy.yaml"
    policy.write_text("max_mmlu_drop_points: 1.0\nbootstrap_samples: 2000\n")
    result = run_gate(policy, tracking_uri=uri, run_id=parent, out_dir=tmp_path / "gate")
    [g] = result.variants
    assert result.exit_code == 1 and g.verdict == "fail" and g.registered is None  # 6b837af: pass, exit 0, registered
    check = next(c for c in g.checks if c.name == "not_dominated[decode_tok_s]")
    assert check.outcome == "fail" and check.detail == "dominated by m/none"
    # the same rule in the sweep's own verdict, its frontier tags and compare
    verdict = log_sweep_report(uri, parent)
    assert [x.verdict for x in verdict.variants] == ["fail"]
    from pipeline.tracking import load_sweep

    tags = {r.label: r.tags for r in load_sweep(uri, run_id=parent, with_questions=False).children}
    assert tags["m/q"]["frontier.decode_tok_s"] == "dominated by m/none"
    assert tags["m/q"][M.TAG_VERDICT] == "fail" and tags["m/none"][M.TAG_VERDICT] == "base"
    assert tags["m/q"][M.TAG_DESCRIPTION].startswith(
        "**fail** (default policy (policies/default.yaml)): fail by not_dominated[decode_tok_s]"
    )
    compared = run_compare(tracking_uri=uri, run_id=parent, out_dir=tmp_path / "cmp")
    assert str(compared.verdicts[M.DECODE_TOK_S][ids["m/q"]]) == "dominated by m/none"
    lo, hi = compared.analysis.stats[ids["m/q"]].vs_base.ci_points
    assert lo < 0 < hi  # compare's interval is the wider one too: +0.2 points is not shown


def test_a_real_gain_still_keeps_a_variant_on_the_frontier():
    """Not a rule that dominates everything: 60 gains and no loss in 2,000 questions are evidence."""
    base = base_questions(2000, SUBJECTS, acc=0.3)
    records = (
        _record("none", base, decode_tok_s=13.2),
        _record("q", _gains(base, 60), decode_tok_s=11.0),
    )
    (g,) = evaluate(SweepRecord("p", "e", records, planned=("m/none", "m/q")), DEFAULT_POLICY)
    assert next(c for c in g.checks if c.name.startswith("not_dominated")).outcome == "pass"


# -- 2. unknown noise is unknown -----------------------------------------------------------------------------


def _record(
    variant: str,
    questions,
    *,
    design: str | None = "all",
    deterministic: str | None = "true",
    extra_tags=None,
    params=None,
    **metrics,
) -> VariantRecord:
    tags = {
        "method": "none" if variant == "none" else "test",
        M.TAG_MODEL: "m",
        M.TAG_VARIANT: variant,
        **(extra_tags or {}),
    }
    if design is not None:
        tags[M.TAG_MMLU_DESIGN] = design
    if deterministic is not None:
        tags[M.TAG_DETERMINISTIC] = deterministic
    acc = sum(q.correct for q in questions) / len(questions)
    return VariantRecord(
        f"id-{variant}",
        "m",
        variant,
        "candidate",
        "FINISHED",
        {M.MMLU_ACC: acc, **metrics},
        tags,
        params or {},
        tuple(questions),
    )


def _mmlu(*records: VariantRecord, delta: float = 1.0):
    policy = Policy(
        max_mmlu_drop_points=delta,
        must_not_be_dominated=False,
        variants=["q"],
        register_model=False,
        bootstrap_samples=1000,
    )
    (g,) = evaluate(SweepRecord("p", "e", records, planned=tuple(r.label for r in records)), policy)
    return next(c for c in g.checks if c.name == "mmlu_drop"), g


SAME = base_questions(3000, SUBJECTS)


@pytest.mark.parametrize(
    ("tag", "words"),
    [(None, "has no deterministic tag"), ("unknown", "deterministic=unknown"), ("false", "deterministic=false")],
)
def test_a_noise_floor_nobody_measured_never_passes(tag, words):
    basis = {M.TAG_DETERMINISTIC_BASIS: "scored by a server over HTTP (runtime openai)"} if tag == "unknown" else {}
    check, _ = _mmlu(_record("none", SAME), _record("q", SAME, deterministic=tag, extra_tags=basis))
    assert check.outcome == "undecided" and words in check.detail and "add the same variant again" in check.detail
    if tag == "unknown":
        assert "(scored by a server over HTTP (runtime openai))" in check.detail
    # measured: a repeat of it (same method and params) with the same answers is a measured floor of 0 -> it passes
    same_method = {"variant.method": "test"}
    repeat = _record("q2", SAME, deterministic=tag, params=same_method)
    check, _ = _mmlu(_record("none", SAME), _record("q", SAME, deterministic=tag, params=same_method), repeat)
    assert check.outcome == "pass" and "flip rate vs m/q2" not in check.detail
    assert _mmlu(_record("none", SAME), _record("q", SAME))[0].outcome == "pass"  # declared and measured: true
    # the base's answers can move by a rerun as much as the variant's: its unknown noise is unknown too
    check, _ = _mmlu(_record("none", SAME, deterministic=tag, extra_tags=basis), _record("q", SAME))
    assert check.outcome == "undecided" and "m/none" in check.detail


# -- 3. the sampling design ----------------------------------------------------------------------------------


def test_the_first_rows_of_each_subject_cannot_pass_a_policy_about_mmlu():
    check, g = _mmlu(_record("none", SAME, design="first-n"), _record("q", SAME, design="first-n"))
    assert check.outcome == "undecided" and "not a random sample" in check.detail and "eval.sample" in check.detail
    assert g.mmlu is not None and g.mmlu.bound.startswith("first N rows per subject only")
    # the very same answers from a sample of MMLU pass
    assert _mmlu(_record("none", SAME), _record("q", SAME))[0].outcome == "pass"
    # a run that recorded nothing about how its questions were chosen: no bound can be trusted
    check, _ = _mmlu(_record("none", SAME, design=None), _record("q", SAME, design=None))
    assert check.outcome == "undecided" and "records no sampling design" in check.detail


def test_older_runs_read_their_design_from_params():
    from pipeline.verdict.design import design_of

    def rec(params) -> VariantRecord:
        return VariantRecord("r", "m", "v", "candidate", "FINISHED", {}, {}, params, None)

    assert design_of(rec({"eval.limit_per_subject": "1", "eval.sample": "None"})).kind == "first-n"
    assert design_of(rec({"eval.limit_per_subject": "None", "eval.sample": "None"})).kind == "all"
    stratified = design_of(
        rec({"eval.limit_per_subject": "None", "eval.sample.questions": "570", "eval.sample.seed": "0"})
    )
    assert stratified.kind == "stratified" and stratified.strata is None  # no sizes recorded: the gate stays undecided
    assert design_of(rec({})).kind == "unknown"


def _stratified(variant: str, questions, strata: dict | None) -> VariantRecord:
    return _record(
        variant, questions, design="stratified", extra_tags={M.TAG_MMLU_STRATA: json.dumps(strata)} if strata else {}
    )


def test_a_stratified_sample_weights_each_subject_by_its_share_of_mmlu():
    """A big subject sampled thinly carries its weight: 2 losses among its 20 sampled questions are a 10-point drop
    on 86 % of the population, not 0.1 points of 2,000 questions (what an unweighted bound would pass)."""
    strata = {"big": 12000, "small": 2000}
    base = [QuestionOutcome("big", i, 0, 0, True) for i in range(20)] + [
        QuestionOutcome("small", i, 0, 0, True) for i in range(1980)
    ]
    variant = [
        QuestionOutcome(q.subject, q.index, 0, 1, False) if q.subject == "big" and q.index < 2 else q for q in base
    ]
    unweighted = srs_bounds(2000, 2, 0)
    assert unweighted.upper * 100 < 1.0  # what a bound that ignores the design would pass at a 1-point margin
    check, g = _mmlu(_stratified("none", base, strata), _stratified("q", variant, strata))
    assert check.outcome != "pass" and g.mmlu.drop_points == pytest.approx(100 * 2 / 20 * 12000 / 14000)
    assert "stratified" in g.mmlu.bound
    # the same answers as every question of two equal subjects: the unweighted bound, and a pass
    assert _mmlu(_record("none", base), _record("q", variant))[0].outcome == "pass"
    # without its stratum sizes a stratified run cannot be judged
    check, _ = _mmlu(_stratified("none", base, strata), _stratified("q", variant, None))
    assert check.outcome == "undecided" and M.TAG_MMLU_STRATA in check.detail


def test_stratified_bounds_cover_the_weighted_drop():
    """Coverage over repeated stratified samples of a known population: each one-sided bound misses the true
    weighted difference at most ~alpha of the time (here: subjects of very unequal size and drop)."""
    rng = np.random.default_rng(3)
    sizes = {"a": 1500, "b": 300, "c": 120, "d": 60}
    # per subject: share of questions only a gets right, only b gets right
    shares = {"a": (0.02, 0.08), "b": (0.10, 0.02), "c": (0.05, 0.05), "d": (0.20, 0.00)}
    n_s = {"a": 40, "b": 25, "c": 10, "d": 5}
    total = sum(sizes.values())
    truth = sum(sizes[s] / total * (shares[s][0] - shares[s][1]) for s in sizes)
    miss_lo = miss_hi = 0
    reps = 300
    for rep in range(reps):
        keys, a_ok, b_ok = [], [], []
        for s, n in n_s.items():
            u = rng.random(n)
            a_only, b_only = u < shares[s][0], (u >= shares[s][0]) & (u < shares[s][0] + shares[s][1])
            keys += [(s, i) for i in range(n)]
            a_ok += list(a_only)
            b_ok += list(b_only)
        p = Pairing(tuple(keys), np.array(a_ok), np.array(b_ok), np.ones(len(keys), bool), 0, 0)
        b = stratified_bounds(p, sizes, confidence=0.95, n_boot=1000, seed=rep)
        miss_lo += b.lower > truth
        miss_hi += b.upper < truth
    assert miss_lo / reps <= 0.07 and miss_hi / reps <= 0.07, (miss_lo, miss_hi)


# -- 5. bounds after optional stopping -----------------------------------------------------------------------


def _ordered(n: int, losses_every: int) -> tuple[list[QuestionOutcome], list[QuestionOutcome]]:
    keys = sorted(((s, i) for s in SUBJECTS for i in range(n // 2)), key=lambda k: question_rank(0, *k))
    base = [QuestionOutcome(s, i, 0, 0, True) for s, i in keys]
    variant = [
        QuestionOutcome(s, i, 0, 1, False) if r % losses_every == 0 else QuestionOutcome(s, i, 0, 0, True)
        for r, (s, i) in enumerate(keys)
    ]
    return base, variant


def test_a_stopped_sample_shows_the_anytime_valid_bounds_its_decision_used():
    base, variant = _ordered(1200, 50)  # a 2-point drop, stopped after its first 600 questions
    seq = {M.TAG_MMLU_ORDER_SEED: "0", M.TAG_MMLU_POPULATION: "14042"}
    stopped = variant[:600]
    check, g = _mmlu(
        _record("none", base, design="sequential", extra_tags=seq),
        _record("q", stopped, design="sequential", extra_tags=seq),
        delta=5.0,
    )
    ni = g.mmlu
    assert ni.anytime_valid and ni.bound.startswith("anytime-valid")
    d = [int(v.correct) - int(b.correct) for v, b in zip(stopped, base[:600])]
    lower, upper = drop_bounds(d, 0.95, 14042)
    assert (ni.drop_lower_points, ni.drop_upper_points) == pytest.approx((lower, upper))
    fixed = srs_bounds(600, 12, 0)  # the fixed-n bounds 6b837af printed: its upper bound does not hold after stopping
    assert upper > fixed.upper * 100 and lower > 0
    assert (check.outcome == "pass") == (upper <= 5.0)  # the decision and the bound shown agree
    assert "sequential (anytime-valid)" in check.detail


def test_anytime_bounds_hold_at_every_look():
    """The confidence sequence's upper bound stays above the true drop at every question at once, in >= 95 % of
    sequences (checked at the end: the bounds are running intersections)."""
    rng = np.random.default_rng(11)
    true_drop, n, reps, misses = 2.0, 600, 150, 0
    p_loss, p_gain = (0.10 + true_drop / 100) / 2, (0.10 - true_drop / 100) / 2
    for _ in range(reps):
        u = rng.random(n)
        d = np.where(u < p_loss, -1, np.where(u < p_loss + p_gain, 1, 0))
        lower, upper = drop_bounds(d, 0.95)
        misses += upper < true_drop
    assert misses / reps <= 0.05


def test_compare_shows_no_fixed_n_interval_for_a_stopped_sample():
    """compare's accuracy interval and Δ interval for a sequential sample: none, and the anytime-valid one."""
    from pipeline.verdict import analyze
    from pipeline.verdict.analysis import rows

    base, variant = _ordered(1200, 50)
    seq = {M.TAG_MMLU_ORDER_SEED: "0", M.TAG_MMLU_POPULATION: "14042"}
    records = (
        _record("none", base, design="sequential", extra_tags=seq, **{M.MMLU_ACC_STDERR: 0.01}),
        _record("q", variant[:600], design="sequential", extra_tags=seq, **{M.MMLU_ACC_STDERR: 0.01}),
    )
    analysis = analyze(SweepRecord("p", "e", records, planned=("m/none", "m/q")), DEFAULT_POLICY)
    row = next(r for r in rows(analysis) if r["label"] == "m/q")
    assert row["mmlu_ci_low_pct"] is None and row["mmlu_acc_pct"] is not None  # 6b837af: acc +- z * stderr
    d = [int(v.correct) - int(b.correct) for v, b in zip(variant[:600], base[:600])]
    lower, upper = drop_bounds(d, 0.975, 14042)  # two-sided 95 %: each side at 97.5 %
    assert (row["delta_ci_low_pts"], row["delta_ci_high_pts"]) == pytest.approx((-upper, -lower))
