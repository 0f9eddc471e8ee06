"""What the verdict side reads back from tracking: one record per child run. No torch, no MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline import metrics as M
from pipeline.results import QuestionOutcome


@dataclass(frozen=True)
class VariantRecord:
    """One model x variant as logged (a child run)."""

    run_id: str
    model: str
    variant: str
    role: str  # candidate | reference
    status: str  # FINISHED | FAILED | KILLED | RUNNING
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    questions: tuple[QuestionOutcome, ...] | None = None  # per-question outcomes, when logged

    @property
    def label(self) -> str:
        return f"{self.model}/{self.variant}"

    @property
    def runtime(self) -> str:
        """The runtime it was measured on; verdicts compare records of one runtime only."""
        return self.tags.get(M.TAG_RUNTIME, M.DEFAULT_RUNTIME)

    @property
    def is_base(self) -> bool:
        """The unmodified candidate (method `none`), what variants are compared against."""
        return self.role == "candidate" and self.tags.get(M.TAG_METHOD) == "none"

    def metric(self, name: str) -> float | None:
        v = self.metrics.get(name)
        return None if v is None else float(v)


@dataclass(frozen=True)
class SweepRecord:
    """A parent run and its members: its own children plus the earlier FINISHED runs resume reused."""

    parent_run_id: str
    experiment: str
    children: tuple[VariantRecord, ...]
    tags: dict[str, str] = field(default_factory=dict)
    planned: tuple[str, ...] | None = None  # labels the sweep planned; None: the parent recorded none
    missing: tuple[str, ...] = ()  # planned labels with no run found

    def finished(self) -> list[VariantRecord]:
        return [c for c in self.children if c.status == "FINISHED"]

    def completeness_problem(self) -> str | None:
        """Why this sweep cannot be judged as a whole (a verdict on part of it could pass by accident), or None."""
        if self.planned is None:
            return (
                f"sweep run {self.parent_run_id} does not record its planned children (it was not written by "
                "`shrinkgate run`, or by an older version); re-run the recipe"
            )
        if self.missing:
            return (
                f"sweep run {self.parent_run_id} is incomplete: planned children missing: {', '.join(self.missing)}; "
                "re-run the recipe (FINISHED children are reused)"
            )
        return None
