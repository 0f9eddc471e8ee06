"""`eval.sample`: a seeded random sample stratified by subject, and the estimate of full-MMLU accuracy it gives."""

from __future__ import annotations

import json
import math
import random

import pytest

from pipeline.config.recipe import EvalSpec, RecipeError, apply_overrides, parse_recipe
from pipeline.data.estimates import stratified_estimate
from pipeline.data.mmlu import MMLUDataError, read_split, resolve_data, split_path
from pipeline.data.sampling import allocate, sample_questions


@pytest.fixture(scope="module")
def data(mmlu_dir):
    return resolve_data(EvalSpec(data_dir=str(mmlu_dir)))


def test_allocation_is_proportional_with_one_per_subject(data):
    sizes = data.test_rows
    assert sum(sizes.values()) == 14042
    counts = allocate(1000, sizes)
    assert sum(counts.values()) == 1000 and min(counts.values()) >= 1
    for s, n in counts.items():  # Sainte-Lague: here within one question of the proportional share of the rest
        share = 1 + (1000 - len(sizes)) * (sizes[s] - 1) / (14042 - len(sizes))
        assert abs(n - share) < 1, s
    assert allocate(20_000, sizes) == sizes  # more than there is: every question
    with pytest.raises(MMLUDataError, match="fewer than the 57 selected subjects"):
        allocate(56, sizes)


def test_same_seed_same_questions_and_samples_nest(data):
    a, b = sample_questions(data, 500, seed=7), sample_questions(data, 500, seed=7)
    assert a == b
    assert sample_questions(data, 500, seed=8) != a
    bigger = sample_questions(data, 1500, seed=7)
    assert all(set(a[s]) <= set(bigger[s]) for s in a)
    assert all(rows == tuple(sorted(set(rows))) and rows[-1] < data.test_rows[s] for s, rows in a.items())
    # not lm-eval's first N: a sample of 57 (one per subject) is not all row 0
    assert sum(rows == (0,) for rows in sample_questions(data, 57, seed=0).values()) < 10


def test_every_larger_sample_contains_the_smaller_one(data):
    """N -> N + 1 adds one question to one subject and takes none away, for every N up to 2,000 on the real
    subject sizes (largest remainder broke this at 132 of these N, first at 78 -> 79)."""
    sizes = data.test_rows
    before = allocate(57, sizes)
    for n in range(58, 2001):
        after = allocate(n, sizes)
        grown = {s: after[s] - before[s] for s in sizes if after[s] != before[s]}
        assert list(grown.values()) == [1] and all(after[s] <= sizes[s] for s in sizes), (n, grown)
        before = after
    for n in (57, 78, 125, 1000, 1968, 2000):  # the question sets themselves nest (78, 125, 1968 broke)
        small, large = sample_questions(data, n, seed=3), sample_questions(data, n + 1, seed=3)
        assert all(set(small[s]) <= set(large[s]) for s in data.subjects), n
    subject = max(sizes, key=sizes.get)
    assert allocate(sum(sizes.values()) - 1, sizes) == {
        **sizes,
        subject: sizes[subject] - 1,
    }  # the cap holds to the end


def test_stratified_estimate_is_unbiased_with_a_true_stderr(data):
    """A population with known per-subject accuracies: over many seeds the estimate centres on the truth and
    its stderr matches the spread of the estimates."""
    rng = random.Random(0)
    truth_rate = {s: rng.uniform(0.2, 0.8) for s in data.subjects}
    population = {s: [rng.random() < truth_rate[s] for _ in range(n)] for s, n in data.test_rows.items()}
    true_acc = sum(sum(v) for v in population.values()) / 14042
    estimates, stderrs = [], []
    for seed in range(200):
        rows = sample_questions(data, 400, seed)
        est = stratified_estimate({s: [population[s][i] for i in r] for s, r in rows.items()}, data.test_rows)
        estimates.append(est.acc)
        stderrs.append(est.stderr)
    mean = sum(estimates) / len(estimates)
    spread = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1))
    assert abs(mean - true_acc) < 3 * spread / math.sqrt(len(estimates))
    assert 0.8 < (sum(stderrs) / len(stderrs)) / spread < 1.25
    # lm-eval's first-N is not: the same population scored on the first 7 rows of each subject
    first = stratified_estimate({s: population[s][:7] for s in data.subjects}, data.test_rows)
    assert first.acc != mean


def test_every_question_scored_when_the_sample_is_everything(data):
    population = {s: [i % 3 == 0 for i in range(n)] for s, n in data.test_rows.items()}
    est = stratified_estimate(population, data.test_rows)
    assert est.acc == pytest.approx(sum(sum(v) for v in population.values()) / 14042)
    assert est.stderr == 0.0  # finite-population correction: nothing left unsampled


def test_scored_sample_keeps_the_rows_of_its_questions(tiny_model_dir, mmlu_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.runtime.mmlu import score_mmlu
    from pipeline.runtime.transformers import _hflm_class

    spec = EvalSpec(
        num_fewshot=0,
        subjects=["anatomy", "marketing", "virology"],
        sample={"questions": 12, "seed": 3},
        data_dir=str(mmlu_dir),
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    result = score_mmlu(
        _hflm_class()(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), device="cpu"), spec
    )
    chosen = sample_questions(resolve_data(spec), 12, 3)
    assert {(q.subject, q.index) for q in result.questions} == {(s, i) for s, rows in chosen.items() for i in rows}
    rows = [json.loads(line) for line in read_split(split_path(mmlu_dir, "test")).decode().splitlines() if line]
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row)
    assert all(q.answer == by_subject[q.subject][q.index]["answer"] for q in result.questions)
    est = stratified_estimate(
        {s: [q.correct for q in result.questions if q.subject == s] for s in chosen}, resolve_data(spec).test_rows
    )
    assert result.acc == pytest.approx(est.acc) and result.acc_stderr == pytest.approx(est.stderr)
    assert result.lm_eval_results["shrinkgate"]["sample"]["seed"] == 3


def test_recipe_and_cli_take_one_subset():
    base = {"name": "s", "models": [{"name": "m", "source": "x"}], "variants": [{"name": "none", "method": "none"}]}
    with pytest.raises(RecipeError, match="not both"):
        parse_recipe({**base, "eval": {"limit_per_subject": 2, "sample": {"questions": 100}}})
    recipe = parse_recipe({**base, "eval": {"sample": {"questions": 100, "seed": 5}}})
    assert apply_overrides(recipe, sample_questions=300).eval.sample.key_fields() == {"questions": 300, "seed": 5}
    limited = apply_overrides(recipe, limit_per_subject=2)
    assert limited.eval.sample is None and limited.eval.limit_per_subject == 2
    with pytest.raises(RecipeError, match="give one"):
        apply_overrides(recipe, limit_per_subject=2, sample_questions=10)
    # runs keyed before `sample` existed keep their key
    assert "sample" not in parse_recipe(base).eval.key_fields("cpu")
