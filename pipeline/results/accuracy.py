"""MMLU results: per-question outcomes, their CSV form, the seeded question order and the accuracy record."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline import metrics as M


@dataclass(frozen=True)
class QuestionOutcome:
    subject: str
    index: int  # row index within the subject's test split
    answer: int  # 0..3
    predicted: int  # argmax of the 4 choice log-likelihoods
    correct: bool


_QUESTION_COLUMNS = ("subject", "index", "answer", "predicted", "correct")


def questions_csv(questions: Iterable[QuestionOutcome]) -> str:
    """Per-question outcomes as the `mmlu_questions.csv` artifact (read back by `parse_questions_csv`)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_QUESTION_COLUMNS)
    for q in questions:
        w.writerow([q.subject, q.index, q.answer, q.predicted, int(q.correct)])
    return buf.getvalue()


def parse_questions_csv(text: str) -> tuple[QuestionOutcome, ...]:
    rows = csv.DictReader(io.StringIO(text))
    return tuple(
        QuestionOutcome(r["subject"], int(r["index"]), int(r["answer"]), int(r["predicted"]), r["correct"] == "1")
        for r in rows
    )


def question_rank(seed: int, subject: str, index: int) -> str:
    """A question's place in the seeded random order: a hash, so the order is the same on every host and
    library version (a PRNG stream is not promised to be)."""
    return hashlib.sha256(f"{seed}:{subject}:{index}".encode()).hexdigest()


# How a run's MMLU questions were chosen (the `mmlu.design` tag); the verdict's bounds depend on it:
#   all         every test question of the selected subjects
#   first-n     the first N test rows of each subject (lm-eval's --limit): not a random sample of anything
#   stratified  a seeded random sample stratified by subject (weights: each subject's share of the test rows)
#   sequential  one seeded random order across subjects, scored in looks; each prefix is a simple random sample
DESIGNS = ("all", "first-n", "stratified", "sequential")


@dataclass(frozen=True)
class AccuracyResult:
    acc: float  # question-weighted mean over every scored question (lm-eval's group); with eval.sample the stratified estimate
    acc_stderr: float
    per_subject: dict[str, float]
    questions: tuple[QuestionOutcome, ...]
    num_fewshot: int
    limit_per_subject: int | None
    lm_eval_results: dict[str, Any]  # lm-eval's own results dict (JSON-serialisable), logged as an artifact
    seconds: float = 0.0
    order_seed: int | None = None  # eval.sample auto: the questions were scored in `question_rank(seed, ...)` order
    population: int | None = None  # eval.sample auto: the questions that order was drawn from
    stopped: str | None = None  # eval.sample auto: why scoring stopped where it did
    design: str = "all"  # one of DESIGNS: how the questions were chosen
    strata: dict[str, int] | None = None  # stratified: test rows per subject (each stratum's population)
    looks: tuple[int, ...] = ()  # sequential: questions scored by the end of each finished look

    @property
    def n_questions(self) -> int:
        return len(self.questions)

    def metrics(self) -> dict[str, float]:
        out = {M.MMLU_ACC: self.acc, M.MMLU_ACC_STDERR: self.acc_stderr, M.MMLU_N_QUESTIONS: float(self.n_questions)}
        out.update({M.subject_metric(s): v for s, v in self.per_subject.items()})
        return out

    def tags(self) -> dict[str, str]:
        tags = {M.TAG_MMLU_DESIGN: self.design}
        if self.strata is not None:
            tags[M.TAG_MMLU_STRATA] = json.dumps(self.strata, separators=(",", ":"))
        if self.order_seed is not None:
            tags.update(
                {
                    M.TAG_MMLU_ORDER_SEED: str(self.order_seed),
                    M.TAG_MMLU_POPULATION: str(self.population),
                    M.TAG_MMLU_STOPPED: (self.stopped or "")[:5000],
                    M.TAG_MMLU_LOOKS: ",".join(map(str, self.looks)),
                }
            )
        return tags
