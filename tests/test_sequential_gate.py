"""`eval.sample.questions: auto`: every run scores one seeded random order in looks; a variant stops as soon as
the anytime-valid paired test against its base decides, and the gate decides with that same test.

The test's false-pass rate over 1,000 simulated sweeps is in test_sequential.py; here the plumbing: the order,
the looks, the stop inside a sweep, what is logged, and the gate's check on stopped samples."""

from __future__ import annotations

import random

import pytest

from pipeline import metrics as M
from pipeline.config.policy import Policy
from pipeline.config.recipe import EvalSpec, RecipeError, parse_recipe
from pipeline.data.estimates import srs_estimate
from pipeline.data.mmlu import resolve_data
from pipeline.data.sampling import look_sizes, sequential_order
from pipeline.records import SweepRecord, VariantRecord
from pipeline.results import QuestionOutcome, question_rank
from pipeline.verdict.gate import evaluate

SUBJECTS = ["anatomy", "virology"]  # 135 + 166 test questions


def test_order_is_seeded_global_and_looks_double():
    data = resolve_data(EvalSpec(subjects=SUBJECTS))
    order = sequential_order(data, seed=7)
    assert len(order) == len(set(order)) == 135 + 166 and order == sequential_order(data, seed=7)
    assert order != sequential_order(data, seed=8)
    assert {s for s, _ in order[:40]} == set(SUBJECTS)  # subjects interleave: every prefix is a random sample
    assert look_sizes(100, 1000) == [100, 200, 400, 800, 1000] and look_sizes(50, 30) == [30]
    est = srs_estimate([True, False] * 50, population=100)
    assert est.acc == 0.5 and est.stderr == 0.0  # the whole population: no sampling error left


def test_auto_needs_max_and_max_needs_auto():
    base = {"name": "s", "models": [{"name": "m", "source": "x"}], "variants": [{"name": "none", "method": "none"}]}
    with pytest.raises(RecipeError, match="needs `max`"):
        parse_recipe({**base, "eval": {"sample": {"questions": "auto"}}})
    with pytest.raises(RecipeError, match="is for questions: auto"):
        parse_recipe({**base, "eval": {"sample": {"questions": 100, "max": 200}}})
    auto = parse_recipe({**base, "eval": {"sample": {"questions": "auto", "max": 500, "step": 50}}}).eval
    assert auto.sample.sequential and auto.key_fields("cpu")["sample"]["max"] == 500


def test_shipped_sequential_recipe_and_policy_agree_on_the_margin():
    from pathlib import Path

    from pipeline.config.policy import load_policy
    from pipeline.config.recipe import load_recipe

    repo = Path(__file__).resolve().parent.parent
    sample = load_recipe(repo / "recipes" / "sequential-smollm2.yaml").eval.sample
    policy = load_policy(repo / "policies" / "sequential-3pt.yaml")
    assert sample.sequential and (sample.delta_points, sample.confidence) == (
        policy.max_mmlu_drop_points,
        policy.confidence,
    )


def test_score_sequential_stops_when_told_and_reuses_prefixes_across_looks(tiny_model_dir, mmlu_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.runtime.mmlu import score_mmlu
    from pipeline.runtime.transformers import _hflm_class

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = EvalSpec(
        num_fewshot=5,
        subjects=SUBJECTS,
        sample={"questions": "auto", "max": 60, "step": 15, "seed": 1},
        data_dir=str(mmlu_dir),
    )
    order = sequential_order(resolve_data(spec), 1)
    lm = _hflm_class()(pretrained=model, tokenizer=tok, device="cpu")
    whole = score_mmlu(lm, spec)  # no stop rule: all of max, in looks of 15, 30, 60
    assert whole.n_questions == 60 and {(q.subject, q.index) for q in whole.questions} == set(order[:60])
    assert whole.lm_eval_results["shrinkgate"]["sample"]["looks"] == [15, 30, 60] and whole.stopped.startswith(
        "scored all 60"
    )
    assert whole.tags() == {
        M.TAG_MMLU_DESIGN: "sequential",
        M.TAG_MMLU_ORDER_SEED: "1",
        M.TAG_MMLU_POPULATION: "301",
        M.TAG_MMLU_STOPPED: whole.stopped,
        M.TAG_MMLU_LOOKS: "15,30,60",
    }
    seen = []

    def stop(scored, population):
        seen.append((len(scored), population))
        return "enough" if len(scored) >= 30 else None

    before = lm.forwarded_tokens
    early = score_mmlu(lm, spec, stop)
    assert seen == [(15, 301), (30, 301)] and early.n_questions == 30 and early.stopped == "enough"
    # the kept 5-shot prefix caches: the same looks on a fresh LM evaluate both subjects' prefixes again
    fresh = _hflm_class()(pretrained=model, tokenizer=tok, device="cpu")
    again = score_mmlu(fresh, spec, lambda scored, population: "enough" if len(scored) >= 30 else None)
    assert lm.forwarded_tokens - before <= fresh.forwarded_tokens - min(map(len, lm.prefix_cache)) * 2
    assert [q.predicted for q in again.questions] == [q.predicted for q in early.questions]
    assert [(q.subject, q.index, q.predicted) for q in early.questions] == [
        (q.subject, q.index, q.predicted) for q in whole.questions if (q.subject, q.index) in set(order[:30])
    ]


def _record(variant: str, method: str, questions, seed: str | None = "0", population: str = "2000") -> VariantRecord:
    tags = {"method": method, M.TAG_MODEL: "m", M.TAG_VARIANT: variant, M.TAG_DETERMINISTIC: "true"}
    tags[M.TAG_MMLU_DESIGN] = "all"
    if seed is not None:
        tags.update({M.TAG_MMLU_DESIGN: "sequential", M.TAG_MMLU_ORDER_SEED: seed, M.TAG_MMLU_POPULATION: population})
    metrics = {M.MMLU_ACC: sum(q.correct for q in questions) / len(questions)}
    return VariantRecord(f"id-{variant}", "m", variant, "candidate", "FINISHED", metrics, tags, {}, tuple(questions))


def _outcomes(n: int, flip_every: int = 0, seed: int = 0) -> list[QuestionOutcome]:
    """n questions, half right; with flip_every k, every k-th question of the seeded order answered wrong."""
    rng = random.Random(seed)
    qs = [("anatomy", i) for i in range(n)]
    rank = {q: r for r, q in enumerate(sorted(qs, key=lambda q: question_rank(0, *q)))}
    out = []
    for s, i in qs:
        right = rng.random() < 0.5 if not flip_every or rank[(s, i)] % flip_every else False
        out.append(QuestionOutcome(s, i, 0, 0 if right else 1, right))
    return out


def _check(*records: VariantRecord, delta: float = 3.0):
    policy = Policy(
        max_mmlu_drop_points=delta,
        must_not_be_dominated=False,
        variants=["q"],
        register_model=False,
        bootstrap_samples=1000,
    )
    (g,) = evaluate(SweepRecord("parent", "exp", tuple(records), planned=tuple(r.label for r in records)), policy)
    return next(c for c in g.checks if c.name == "mmlu_drop"), g


def test_gate_decides_stopped_samples_with_the_sequential_test():
    base = _outcomes(1500)
    same = [q for q in base]
    check, g = _check(_record("none", "none", base), _record("q", "gguf-q8_0", same))
    assert check.outcome == "pass" and "sequential (anytime-valid)" in check.detail and g.mmlu.decision == "pass"
    # a variant that stopped early (its first 400 of the order) pairs with the same questions of the base
    first = set(sorted(((q.subject, q.index) for q in base), key=lambda k: question_rank(0, *k))[:400])
    stopped = [q for q in same if (q.subject, q.index) in first]
    assert _check(_record("none", "none", base), _record("q", "gguf-q8_0", stopped))[0].outcome in ("pass", "undecided")
    # right answers turned wrong on every 8th question: a 6-point drop against a 3-point margin fails
    worse = {(q.subject, q.index): q for q in _outcomes(1500, flip_every=8)}
    broken = [worse[(q.subject, q.index)] if not worse[(q.subject, q.index)].correct else q for q in base]
    assert _check(_record("none", "none", base), _record("q", "gguf-q4_0", broken))[0].outcome == "fail"


def test_gate_fails_closed_on_a_sequential_sample_it_cannot_pair():
    base = _outcomes(300)
    check, _ = _check(_record("none", "none", base, seed=None), _record("q", "gguf-q8_0", base))
    assert check.outcome == "fail" and "same eval.sample" in check.detail
    check, _ = _check(_record("none", "none", base[:100]), _record("q", "gguf-q8_0", base))
    assert check.outcome == "fail" and "rerun the base" in check.detail
    check, _ = _check(_record("none", "none", base), _record("q", "gguf-q8_0", base, population="?"))
    assert check.outcome == "fail" and M.TAG_MMLU_POPULATION in check.detail


def _lockstep_doc(tmp_path, tiny_model_dir, mmlu_dir) -> dict:
    return {
        "name": "sequential",
        "models": [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}],
        "variants": [
            {"name": "none", "method": "none"},
            {"name": "pruned", "method": "magnitude-prune", "params": {"amount": 0.05}},
        ],
        "eval": {
            "num_fewshot": 0,
            "subjects": SUBJECTS,
            "data_dir": str(mmlu_dir),
            "sample": {"questions": "auto", "max": 160, "step": 20, "delta_points": 30},
        },
        "speed": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "sequential"},
    }


def test_base_and_variant_advance_look_by_look_and_the_base_stops_with_its_variant(tmp_path, tiny_model_dir, mmlu_dir):
    """The process executor runs base and variant in lock-step: the variant stops at the first look its test
    decides, and the base, whose only variant that was, stops there too (6b837af scored the base's whole max)."""
    from pipeline.sweep.driver import run_sweep
    from pipeline.tracking.read import load_sweep

    doc = _lockstep_doc(tmp_path, tiny_model_dir, mmlu_dir)
    stages: list[tuple[str, str]] = []
    outcome = run_sweep(
        parse_recipe(doc), executor="process", progress=lambda label, stage: stages.append((label, stage))
    )
    base, pruned = outcome.children
    assert base.status == pruned.status == "FINISHED"
    assert pruned.accuracy.n_questions < 160 and pruned.accuracy.stopped.startswith("pass vs tiny/none")
    assert base.accuracy.n_questions == pruned.accuracy.n_questions  # not one look further than its variant needed
    assert base.accuracy.stopped.startswith("every variant of tiny was decided by question")
    # one look at a time, the base first in each
    looks = [(label, stage) for label, stage in stages if stage.startswith("scored ")]
    assert looks[0] == ("tiny/none", "scored 20 questions") and looks[1] == ("tiny/pruned", "scored 20 questions")
    sweep = load_sweep(doc["tracking"]["uri"], run_id=outcome.parent_run_id)
    logged = {r.variant: r for r in sweep.children}
    assert logged["pruned"].tags[M.TAG_MMLU_STOPPED] == pruned.accuracy.stopped
    assert logged["pruned"].tags[M.TAG_MMLU_LOOKS] == ",".join(
        str(n) for n in look_sizes(20, 160) if n <= pruned.accuracy.n_questions
    )
    policy = Policy(
        max_mmlu_drop_points=30,
        must_not_be_dominated=False,
        variants=["pruned"],
        register_model=False,
        bootstrap_samples=1000,
    )
    (g,) = evaluate(sweep, policy)
    check = next(c for c in g.checks if c.name == "mmlu_drop")
    assert check.outcome == "pass" and "scoring stopped: pass vs tiny/none" in check.detail
    assert outcome.verdict is not None and [v.label for v in outcome.verdict.variants] == ["tiny/pruned"]


def test_the_inline_executor_refuses_a_sequential_sample_before_the_sweep_starts(tmp_path, tiny_model_dir, mmlu_dir):
    from pipeline.sweep.driver import run_sweep
    from pipeline.sweep.executors import ExecutorError

    doc = _lockstep_doc(tmp_path, tiny_model_dir, mmlu_dir)
    with pytest.raises(ExecutorError, match=r"--executor inline runs each child to its end.*use --executor process"):
        run_sweep(parse_recipe(doc), executor="inline")
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched: no parent left RUNNING


def test_an_interrupted_sequential_sweep_resumes_at_its_last_finished_look(tmp_path, tiny_model_dir, mmlu_dir):
    """Ctrl-C after the base's second look: the runs end KILLED with their finished looks logged; the rerun takes
    those looks over (nothing scored twice) and goes on from there."""
    from pipeline.sweep.driver import run_sweep
    from pipeline.tracking.read import load_sweep

    doc = _lockstep_doc(tmp_path, tiny_model_dir, mmlu_dir)
    doc["eval"]["sample"]["delta_points"] = 0.5  # a margin the tiny model cannot decide quickly: every look is needed

    def interrupt(label: str, stage: str) -> None:
        if (label, stage) == ("tiny/pruned", "scored 40 questions"):
            raise KeyboardInterrupt

    first = run_sweep(parse_recipe(doc), executor="process", progress=interrupt)
    assert first.interrupted and {c.status for c in first.children} == {"KILLED"}
    second = run_sweep(parse_recipe(doc), executor="process")
    assert {c.status for c in second.children} == {"FINISHED"}
    sweep = load_sweep(doc["tracking"]["uri"], run_id=second.parent_run_id)
    for r in sweep.children:
        assert r.tags[M.TAG_MMLU_RESUMED_FROM].startswith(
            f"{ {c.item.label: c.run_id for c in first.children}[r.label] } (40 questions in 2 looks)"
        )
    resumed = {c.item.label: c.accuracy.lm_eval_results["shrinkgate"] for c in second.children}
    assert all(x["resumed_questions"] == 40 for x in resumed.values())
    # the rerun's answers to the first 40 are the ones the interrupted runs gave (taken over, not scored again)
    base = next(c for c in second.children if c.item.label == "tiny/none")
    assert base.accuracy.lm_eval_results["shrinkgate"]["sample"]["looks"][:2] == [20, 40]


def test_llamacpp_restores_each_subjects_prefix_between_looks(mmlu_dir):
    """llama.cpp keeps each 5-shot prefix's KV state (llama_state_seq_get/set_data) between the looks of a
    sequential sample: same answers and log-likelihoods as evaluating the prefixes again, fewer tokens."""
    from lm_recording import recording

    from pipeline.models.bundled import BUNDLED, cache_root
    from pipeline.runtime.llamacpp_lm import LlamaCppLM
    from pipeline.runtime.mmlu import score_mmlu

    class NoKeep(LlamaCppLM):
        keep_prefixes = property(lambda self: False, lambda self, value: None)

    path = BUNDLED["smollm2-135m-instruct"].locate(cache_root())
    spec = EvalSpec(
        num_fewshot=5,
        subjects=SUBJECTS,
        sample={"questions": "auto", "max": 24, "step": 8, "seed": 2},
        data_dir=str(mmlu_dir),
    )
    (kept, kept_lls), (again, again_lls) = (
        recording(LlamaCppLM(path, n_threads=2)),
        recording(NoKeep(path, n_threads=2)),
    )
    try:
        a, b = score_mmlu(kept, spec), score_mmlu(again, spec)
        assert a.lm_eval_results["shrinkgate"]["sample"]["looks"] == [8, 16, 24] and len(kept.prefix_states) == 2
        assert [(q.subject, q.index, q.predicted) for q in a.questions] == [
            (q.subject, q.index, q.predicted) for q in b.questions
        ]
        # not bit-equal: a subject's first question is one ~600-token evaluation there and 500 restored + 100 here,
        # and llama.cpp's Q4_1 matmuls round differently by batch shape (measured: max 0.035 nats with the AVX2
        # build, 0.115 with the AVX-512 one)
        assert max(abs(kept_lls[k] - again_lls[k]) for k in again_lls) < 0.25
        # looks 2 and 3 restore both prefixes (each ~500 tokens) instead of evaluating them again
        assert kept.evaluated_tokens < again.evaluated_tokens - 2 * 400, (kept.evaluated_tokens, again.evaluated_tokens)
    finally:
        kept.close()
        again.close()
