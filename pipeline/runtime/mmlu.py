"""MMLU accuracy of an in-memory model, scored by lm-eval with our copy of lm-eval's `mmlu` task.

`pipeline.data.mmlu` resolves and checks the data, `pipeline.data.tasks` materialises the task configs for the
selected subjects; here `lm_eval.simple_evaluate` runs them on the given `LM`. Scoring, aggregation and stderr are
lm-eval's own; this module only reads them back into an `AccuracyResult`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config.recipe import EvalSpec
from pipeline.data.estimates import srs_estimate, stratified_estimate
from pipeline.data.mmlu import GROUP, HUB_DATASET, TASK_PREFIX, MMLUData, MMLUDataError, resolve_data
from pipeline.data.sampling import look_sizes, sample_questions, sequential_order
from pipeline.data.tasks import materialize_tasks
from pipeline.env import MMLU_DIR_ENV
from pipeline.results import AccuracyResult, QuestionOutcome

if TYPE_CHECKING:
    from lm_eval.api.model import LM

# Called after each look of a sequential sample with the outcomes so far, in the seeded order, and the number of
# questions they are drawn from: a reason to stop scoring, or None to go on.
StopRule = Callable[[tuple[QuestionOutcome, ...], int], "str | None"]


@dataclass(frozen=True)
class Looks:
    """How a sweep drives a sequential sample look by look (`pipeline.sweep.looks` builds it): `after_look` is the
    stop rule; `prior` are the outcomes of the looks an earlier, unfinished run of the same content finished (a
    resumed run scores only the looks after them); `stopped`: end before scoring more (already decided)."""

    after_look: StopRule | None = None
    prior: tuple[QuestionOutcome, ...] = ()
    stopped: str | None = None


# Inputs sharing at least this many leading tokens (a subject's few-shot prefix) share its KV cache.
MIN_SHARED_PREFIX = 16


def common_prefix(a, b) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(
    inputs: list[tuple[int, ...]], scored: list[int], min_shared: int = MIN_SHARED_PREFIX
) -> list[tuple[int, list[int]]]:
    """Group inputs that share a leading run of tokens: [(shared length, member indices)].

    Inputs are visited in token order, so a subject's questions (one few-shot prefix) are adjacent. A group's
    shared length stops before the first position any member scores (`scored[i]` = positions at the end of
    input i whose logits are read), so every scored position is computed after the shared part. An input
    that would cut its group's shared run below `min_shared` or to less than half (the next subject, whose
    header may share a few words) starts a new group; a lone input is a group of shared length 0.
    """
    order = sorted(range(len(inputs)), key=lambda i: inputs[i])
    groups: list[tuple[int, list[int]]] = []
    for i in order:
        own_room = len(inputs[i]) - scored[i]
        if groups:
            shared, members = groups[-1]
            lcp = common_prefix(inputs[members[-1]], inputs[i])
            if len(members) == 1:
                candidate = min(lcp, own_room, len(inputs[members[0]]) - scored[members[0]])
            else:
                candidate = min(shared, lcp, own_room)
            if candidate >= min_shared and (len(members) == 1 or candidate * 2 >= shared):
                groups[-1] = (candidate, members + [i])
                continue
        groups.append((0, [i]))
    return groups


def _stderr(value: Any) -> float:
    # lm-eval reports "N/A" when a subject has a single scored question (sample stddev undefined).
    return float(value) if isinstance(value, (int, float)) else math.nan


def _json_safe(results: dict[str, Any]) -> dict[str, Any]:
    from lm_eval.utils import handle_non_serializable

    kept = {k: v for k, v in results.items() if k != "samples"}
    return json.loads(json.dumps(kept, default=handle_non_serializable))


def _outcomes(
    subject: str, samples: list[dict[str, Any]], rows: tuple[int, ...] | None = None
) -> list[QuestionOutcome]:
    """Per-question outcomes; `index` is the question's test row in its subject (lm-eval's doc_id, which stays
    the row when it is given a sample: checked against `rows`, the rows that were asked for)."""
    out = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        index = int(s["doc_id"])
        if rows is not None and index not in rows:
            raise RuntimeError(
                f"lm-eval scored row {index} of {subject}, not one of the sampled rows: its doc_id numbering changed"
            )
        lls = [float(resp[0]) for resp in s["filtered_resps"]]  # one (loglikelihood, is_greedy) per choice
        predicted = max(range(len(lls)), key=lls.__getitem__)  # first max, like lm-eval's np.argmax
        out.append(
            QuestionOutcome(
                subject=subject,
                index=index,
                answer=int(s["target"]),
                predicted=predicted,
                correct=bool(s["acc"]),
            )
        )
    return out


def _evaluate(lm: LM, data: MMLUData, spec: EvalSpec, rows: dict[str, tuple[int, ...]] | None) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on our `shrinkgate_mmlu` group: `rows` (subject -> test rows) as its
    `samples=`, else `limit_per_subject`."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="shrinkgate_mmlu_") as tmp:
        # include_defaults=False: skips indexing lm-eval's ~10k built-in YAMLs (~8 s) and any name clash.
        manager = TaskManager(include_path=str(materialize_tasks(data, Path(tmp))), include_defaults=False)
        try:
            results = simple_evaluate(
                model=lm,
                tasks=[GROUP],
                task_manager=manager,
                num_fewshot=spec.num_fewshot,
                limit=spec.limit_per_subject,
                samples={TASK_PREFIX + s: list(r) for s, r in rows.items()} if rows else None,
                log_samples=True,
                random_seed=spec.seed,
                numpy_random_seed=spec.seed,
                torch_random_seed=spec.seed,
                fewshot_random_seed=spec.seed,
            )
        except ConnectionError as exc:
            if data.source != "hub":
                raise
            # datasets raises this when the hub is unreachable (e.g. HF_DATASETS_OFFLINE=1, nothing cached).
            raise MMLUDataError(
                f"hub dataset {HUB_DATASET}: cannot be loaded ({exc}); the MMLU copy shipped with shrinkgate is "
                f"missing, so reinstall shrinkgate, set eval.data_dir or ${MMLU_DIR_ENV} to a local MMLU JSONL dir, "
                "or allow hub access"
            ) from None
    if results is None:  # only non-zero ranks of a distributed run get None
        raise RuntimeError("lm-eval returned no results (not rank 0 of a distributed run)")
    return results


def score_mmlu(lm: LM, spec: EvalSpec, stop: StopRule | Looks | None = None) -> AccuracyResult:
    """Score MMLU on `lm` (any lm_eval LM, e.g. HFLM on an in-memory model) with lm-eval's own machinery.

    `acc`/`acc_stderr` are lm-eval's `shrinkgate_mmlu` group values (question-weighted mean, pooled
    stderr); `limit_per_subject=N` scores the first N test rows of every selected subject. With `sample`,
    lm-eval scores the seeded stratified sample (its `samples=` argument) and `acc`/`acc_stderr` are the
    stratified estimate of full-MMLU accuracy (`pipeline.data.estimates.stratified_estimate`). With
    `sample.questions: auto`, see `score_sequential`. The result records how the questions were chosen
    (`design`: all, first-n, stratified or sequential), which decides what a bound over them can claim.
    """
    data = resolve_data(spec)
    if spec.sample and spec.sample.sequential:
        return score_sequential(lm, spec, data, stop)
    chosen = sample_questions(data, spec.sample.questions, spec.sample.seed) if spec.sample else None
    start = time.perf_counter()
    results = _evaluate(lm, data, spec, chosen)
    seconds = time.perf_counter() - start

    group = results["results"][GROUP]
    questions = [
        q
        for s in data.subjects
        for q in _outcomes(s, results["samples"][TASK_PREFIX + s], chosen[s] if chosen else None)
    ]
    acc, acc_stderr, stderr_source = (
        float(group["acc,none"]),
        _stderr(group.get("acc_stderr,none")),
        "lm-eval pooled (group)",
    )
    if chosen:
        by_subject: dict[str, list[bool]] = {s: [] for s in data.subjects}
        for q in questions:
            by_subject[q.subject].append(q.correct)
        estimate = stratified_estimate(by_subject, data.test_rows)
        acc, acc_stderr, stderr_source = estimate.acc, estimate.stderr, estimate.stderr_source
    elif math.isnan(acc_stderr) and len(questions) > 1:
        # One question per subject leaves lm-eval's pooled stderr undefined; fall back to treating every
        # scored question as one sample (the binomial standard error of the mean).
        p = sum(q.correct for q in questions) / len(questions)
        acc_stderr = math.sqrt(p * (1 - p) / (len(questions) - 1))
        stderr_source = "sample stderr over all questions (lm-eval's pooled stderr is N/A with 1 question per subject)"
    per_subject = {s: float(results["results"][TASK_PREFIX + s]["acc,none"]) for s in data.subjects}
    safe_results = _json_safe(results)
    safe_results["shrinkgate"] = {"acc_stderr_source": stderr_source}
    if chosen:
        safe_results["shrinkgate"]["sample"] = {"questions": len(questions), "seed": spec.sample.seed, "rows": chosen}
    design = "first-n" if spec.limit_per_subject is not None else "stratified" if chosen else "all"
    return AccuracyResult(
        acc=acc,
        acc_stderr=acc_stderr,
        per_subject=per_subject,
        questions=tuple(questions),
        num_fewshot=spec.num_fewshot,
        limit_per_subject=spec.limit_per_subject,
        lm_eval_results=safe_results,
        seconds=seconds,
        design=design,
        strata={s: data.test_rows[s] for s in data.subjects} if chosen else None,
    )


def score_sequential(lm: LM, spec: EvalSpec, data: MMLUData, stop: StopRule | Looks | None) -> AccuracyResult:
    """`sample.questions: auto`: every selected question in one seeded random order (the same for every run,
    so runs pair question by question), scored in looks of step, 2 step, ... up to `sample.max`; after each
    look `stop` sees the outcomes so far (and the population) and may end the scoring. Without `stop` (a run
    scored alone) all `max` are scored. With `Looks`, the prior looks' outcomes are taken as scored (they must be
    the order's first questions, whole looks) and only later looks are scored. `acc` is the sample mean, its
    stderr finite-population corrected (`srs_estimate`)."""
    sample = spec.sample
    looks = stop if isinstance(stop, Looks) else Looks(after_look=stop)
    if hasattr(lm, "keep_prefixes"):  # our transformers LM: keep each subject's 5-shot prefix cache between looks
        lm.keep_prefixes = True
    order = sequential_order(data, sample.seed)
    pool = order[: sample.max]
    sizes = look_sizes(sample.step, len(pool))
    prior = {(q.subject, q.index): q for q in looks.prior}
    if len(prior) != len(looks.prior) or set(prior) != set(pool[: len(prior)]) or (prior and len(prior) not in sizes):
        raise RuntimeError(
            f"the {len(looks.prior)} resumed outcomes are not the first whole looks of seeded order {sample.seed} "
            f"(looks {sizes}): rerun with --rerun"
        )
    start = time.perf_counter()
    scored: list[QuestionOutcome] = [prior[q] for q in pool[: len(prior)]]
    looks_json: list[dict[str, Any]] = []
    ends = [end for end in sizes if end <= len(scored)]
    reason = looks.stopped or f"scored all {len(pool)} questions (sample.max {sample.max}, population {len(order)})"
    for end in sizes if looks.stopped is None else ():
        if end <= len(scored):
            continue
        rows: dict[str, list[int]] = {}
        for subject, row in pool[len(scored) : end]:
            rows.setdefault(subject, []).append(row)
        chosen = {s: tuple(sorted(r)) for s, r in rows.items()}
        look_data = dataclasses.replace(data, subjects=tuple(s for s in data.subjects if s in chosen))
        results = _evaluate(lm, look_data, spec, chosen)
        got = {
            (q.subject, q.index): q
            for s in look_data.subjects
            for q in _outcomes(s, results["samples"][TASK_PREFIX + s], chosen[s])
        }
        scored.extend(got[q] for q in pool[len(scored) : end])
        looks_json.append(_json_safe(results))
        ends.append(end)
        if looks.after_look is not None and (why := looks.after_look(tuple(scored), len(order))):
            reason = why
            break
    seconds = time.perf_counter() - start
    if not scored:
        raise RuntimeError(f"sequential sample stopped before any question was scored: {reason}")
    estimate = srs_estimate([q.correct for q in scored], len(order))
    by_subject: dict[str, list[bool]] = {}
    for q in scored:
        by_subject.setdefault(q.subject, []).append(q.correct)
    ordered = tuple(sorted(scored, key=lambda q: (data.subjects.index(q.subject), q.index)))
    return AccuracyResult(
        acc=estimate.acc,
        acc_stderr=estimate.stderr,
        per_subject={s: sum(v) / len(v) for s, v in by_subject.items()},
        questions=ordered,
        num_fewshot=spec.num_fewshot,
        limit_per_subject=None,
        lm_eval_results={
            "looks": looks_json,
            "shrinkgate": {
                "acc_stderr_source": estimate.stderr_source,
                "sample": {
                    "questions": len(scored),
                    "seed": sample.seed,
                    "max": sample.max,
                    "population": len(order),
                    "looks": ends,
                },
                "stopped": reason,
                "resumed_questions": len(prior),
            },
        },
        seconds=seconds,
        order_seed=sample.seed,
        population=len(order),
        stopped=reason,
        design="sequential",
        looks=tuple(ends),
    )
