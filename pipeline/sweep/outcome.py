"""Plain data the sweep passes around: what a child needs (`SweepContext`), what it reports (`ChildOutcome`),
what the sweep returns (`SweepOutcome`). Picklable, so it crosses into a subprocess or a Ray task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config.recipe import Recipe
from pipeline.results import AccuracyResult, FidelityRecord, SpeedResult
from pipeline.variants.plan import WorkItem

# stage callback: (item label, stage name) -> None. Stages: resolve, build, mmlu, speed (from the child, where
# the executor can relay them); queued, done, failed, killed, skipped (from the driver).
ProgressFn = Callable[[str, str], None]


def no_progress(label: str, stage: str) -> None:  # noqa: ARG001
    """The default ProgressFn."""


class SweepInterrupted(Exception):
    """Raised inside the sweep on SIGTERM so that it unwinds like Ctrl-C."""


@dataclass(frozen=True)
class SweepContext:
    """What every child needs; plain data so it can travel to another process."""

    recipe: Recipe
    parent_id: str
    device: str
    base_tags: dict[str, str]


@dataclass
class ChildOutcome:
    item: WorkItem
    run_id: str | None
    status: str  # RUNNING (in flight) | FINISHED | FAILED | KILLED | SKIPPED (resumed from an earlier FINISHED run)
    fidelity: FidelityRecord | None = None
    accuracy: AccuracyResult | None = None
    speed: SpeedResult | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment: str
    tracking_uri: str
    children: list[ChildOutcome]
    interrupted: bool = False
    seconds: float = 0.0
    executor: str = ""
    verdict: Any = None  # the sweep's verdict under its policy (`pipeline.verdict.commands.SweepVerdict`)
    verdict_error: str | None = None  # why there is none (an incomplete sweep, a store problem)

    @property
    def failures(self) -> list[ChildOutcome]:
        return [c for c in self.children if c.status in ("FAILED", "KILLED")]
