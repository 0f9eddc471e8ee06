"""Hand-made sweeps in a real temporary MLflow sqlite store, logged as the sweep logs them (no model loading).
Shared by the verdict-side tests (report, gate)."""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline import metrics as M
from pipeline.results import QuestionOutcome, questions_csv


def fresh_store(tmp_path_factory, name: str) -> str:
    """A migrated empty sqlite store: created once per session (migrations take seconds), then copied."""
    template = tmp_path_factory.getbasetemp() / "mlflow-template" / "mlflow.db"
    if not template.exists():
        from pipeline.tracking import Tracker

        template.parent.mkdir(parents=True, exist_ok=True)
        Tracker(f"sqlite:///{template}", "template")
    dest = tmp_path_factory.mktemp(name) / "mlflow.db"
    shutil.copyfile(template, dest)
    return f"sqlite:///{dest}"


def base_questions(n: int, subjects: Sequence[str], acc: float = 0.6, seed: int = 0) -> list[QuestionOutcome]:
    """n questions spread round-robin over `subjects`, about `acc` of them right."""
    rng = random.Random(seed)
    k = len(subjects)
    out = []
    for i in range(n):
        right = rng.random() < acc
        out.append(QuestionOutcome(subjects[i % k], i // k, 0, 0 if right else 1 + i % 3, right))
    return out


def changed(base: list[QuestionOutcome], losses: int, gains: int, subject: str | None = None) -> list[QuestionOutcome]:
    """A variant that gets `losses` of base's right answers wrong and `gains` of its wrong ones right
    (within `subject` only, when given)."""
    out, lost, won = [], 0, 0
    for q in base:
        if subject is not None and q.subject != subject:
            out.append(q)
        elif q.correct and lost < losses:
            out.append(QuestionOutcome(q.subject, q.index, q.answer, 3, False))
            lost += 1
        elif not q.correct and won < gains:
            out.append(QuestionOutcome(q.subject, q.index, q.answer, q.answer, True))
            won += 1
        else:
            out.append(q)
    return out


def acc_metrics(questions: Sequence[QuestionOutcome]) -> dict[str, float]:
    """What the sweep logs for these outcomes: accuracy, its stderr, n, and per-subject accuracy."""
    n = len(questions)
    acc = sum(q.correct for q in questions) / n
    out = {M.MMLU_ACC: acc, M.MMLU_ACC_STDERR: (acc * (1 - acc) / n) ** 0.5, M.MMLU_N_QUESTIONS: float(n)}
    for s in sorted({q.subject for q in questions}):
        qs = [q for q in questions if q.subject == s]
        out[M.subject_metric(s)] = sum(q.correct for q in qs) / len(qs)
    return out


@dataclass
class Child:
    """One child run: accuracy metrics come from `questions` (when given), plus `metrics`."""

    model: str
    variant: str
    questions: list[QuestionOutcome] | None
    role: str = "candidate"
    status: str = "FINISHED"
    metrics: dict[str, float] = field(default_factory=dict)
    log_questions: bool = True
    error: str | None = None  # the `error` tag a failed child carries
    # what every sweep child logs: how its questions were chosen, and whether its answers are reproducible
    tags: dict[str, str] = field(default_factory=lambda: {M.TAG_MMLU_DESIGN: "all", M.TAG_DETERMINISTIC: "true"})

    @property
    def label(self) -> str:
        return f"{self.model}/{self.variant}"

    @property
    def method(self) -> str:
        return "none" if self.variant == "none" else self.variant


def write_sweep(
    uri: str,
    experiment: str,
    children: Sequence[Child],
    *,
    end_parent: bool = True,
    drop: tuple[str, ...] = (),
    members: bool = True,
    also_planned: Sequence[str] = (),
) -> tuple[str, dict[str, str]]:
    """Parent (with its recipe artifact and, as the sweep records it, its planned members: the children plus
    `also_planned` labels that have no run) + children; metrics whose name starts with one of `drop` are left
    out. Returns (parent id, {label: child id})."""
    from pipeline.tracking import Tracker

    tr = Tracker(uri, experiment)
    parent = tr.start_parent(experiment, {"recipe.name": experiment}, {"host": "test-host"})
    tr.log_text(parent, f"name: {experiment}\nmodels: []\n", M.ART_RECIPE)
    ids = {}
    for c in children:
        tags = {
            M.TAG_MODEL: c.model,
            M.TAG_VARIANT: c.variant,
            M.TAG_ROLE: c.role,
            "method": c.method,
            "provenance.source": f"hub:{c.model}",
            **c.tags,
        }
        if c.error:
            tags[M.TAG_STATUS_ERROR] = c.error
        run = tr.start_child(parent, c.label, {"variant.name": c.variant}, tags)
        metrics = {**(acc_metrics(c.questions) if c.questions else {}), **c.metrics}
        tr.log_metrics(run, {k: v for k, v in metrics.items() if not k.startswith(drop)})
        if c.questions and c.log_questions:
            tr.log_text(run, questions_csv(c.questions), M.ART_QUESTIONS)
        tr.end(run, c.status)
        ids[c.label] = run
    if members:
        tr.record_members(parent, [c.label for c in children] + list(also_planned), ids)
    if end_parent:
        tr.end(parent, "FINISHED")
    return parent, ids
