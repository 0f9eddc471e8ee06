"""What the verdict side reads back from tracking: one record per child run. No torch, no MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    def is_base(self) -> bool:
        """The unmodified candidate (method `none`), what variants are compared against."""
        return self.role == "candidate" and self.tags.get("method") == "none"

    def metric(self, name: str) -> float | None:
        v = self.metrics.get(name)
        return None if v is None else float(v)


@dataclass(frozen=True)
class SweepRecord:
    """A parent run and its children."""

    parent_run_id: str
    experiment: str
    children: tuple[VariantRecord, ...]
    tags: dict[str, str] = field(default_factory=dict)

    def finished(self) -> list[VariantRecord]:
        return [c for c in self.children if c.status == "FINISHED"]
