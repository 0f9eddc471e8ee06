"""A sequential sample run look by look, base and variants together (`eval.sample.questions: auto`).

Every run of the sweep scores the same seeded order of questions in looks of step, 2 step, 4 step, ... up to
`max`. The driver lets one run work at a time (builds, looks and speed never overlap), in this order within each
look: each model's unmodified base, then its variants, then the references. When every run still needed has
finished the look, each undecided variant is tested against its base on the look's questions with the
anytime-valid paired test (`pipeline.verdict.sequential`, at `sample.delta_points` and `sample.confidence`): a
decided variant stops and finishes (speed, its run ended). A base scores only as far as its last undecided
variant needs (all `max` when it has no variant at all); references score as far as the furthest base. So the
base is never scored far past its variants and no variant stops against a base that is not there yet.

`LockStep` is that controller, pure (no processes, no MLflow): the driver (`pipeline.sweep.driver`) and the
simulation test feed it finished looks and ask what to do next. `LookChannel` is a child's end of the wire:
each executor supplies one (a pipe for the process executor, an actor for Ray).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pipeline.verdict.sequential import sequential_non_inferiority

Key = tuple[str, int]  # (subject, test row)
Role = Literal["base", "variant", "reference"]


class LookChannel(ABC):
    """A child's end of a lock-step sweep. The child calls `wait` before it starts (its first turn) and after each
    look it finished and `report`ed; the driver answers with None (go on: score the next look) or a reason to stop
    (then the child ends its scoring, measures speed and ends its run)."""

    @abstractmethod
    def wait(self) -> str | None:
        """Block until the driver gives this child its turn: None to score the next look, or why to stop."""

    @abstractmethod
    def report(self, scored: int) -> None:
        """This child finished a look: `scored` questions in all, their outcomes already logged to its run."""


@dataclass
class Member:
    """One run of the sweep as the controller sees it."""

    run_id: str
    label: str
    model: str
    runtime: str
    role: Role
    scored: int = 0  # questions scored in finished looks (a resumed run starts with its earlier looks)
    done: bool = False  # scores no more: told to stop, ended, or reused whole
    failed: bool = False  # ended without being told to stop (a crash, an error)
    stopped: str | None = None  # why it stopped


@dataclass
class LockStep:
    """What to do next in a lock-step sequential sweep.

    `order`: the seeded order's first `max` questions; `sizes`: questions scored by the end of each look
    (`pipeline.data.sampling.look_sizes`); `correct(run_id, keys)`: whether the run answered each of `keys` right (an
    array aligned with them; the run has scored every one). `next_action`
    says whom to let score its next look ("go") or whom to stop ("stop", with the reason); the driver reports back
    `scored` (a look finished) and `ended` (a child came back)."""

    members: list[Member]
    order: Sequence[Key]
    sizes: Sequence[int]
    delta_points: float
    confidence: float
    population: int
    correct: Callable[[str, Sequence[Key]], np.ndarray]
    look: int = 0  # index into sizes of the look in progress
    _stops: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._by_id = {m.run_id: m for m in self.members}

    # -- what the driver reports ------------------------------------------------------------------------------
    def scored(self, run_id: str, questions: int) -> None:
        self._by_id[run_id].scored = questions

    def ended(self, run_id: str, *, told: bool) -> None:
        """A child came back: after it was told to stop (`told`), or on its own (it failed)."""
        m = self._by_id[run_id]
        if not m.done:
            m.done, m.failed = True, not told
            m.stopped = m.stopped or "ended before it was told to stop"

    # -- who is needed ----------------------------------------------------------------------------------------
    def base_of(self, v: Member) -> Member | None:
        return next(
            (m for m in self.members if m.role == "base" and m.model == v.model and m.runtime == v.runtime), None
        )

    def _variants(self, base: Member) -> list[Member]:
        return [m for m in self.members if m.role == "variant" and m.model == base.model and m.runtime == base.runtime]

    def _needed(self, m: Member) -> bool:
        if m.done:
            return False
        if m.role == "variant":
            return True
        if m.role == "base":
            variants = self._variants(m)
            return not variants or any(not v.done for v in variants)
        bases = [b for b in self.members if b.role == "base" and b.runtime == m.runtime]
        return not bases or any(not b.done for b in bases)

    def _turn_order(self) -> list[Member]:
        rank = {"base": 0, "variant": 1, "reference": 2}
        return sorted(self.members, key=lambda m: rank[m.role])

    # -- the decisions ----------------------------------------------------------------------------------------
    def _stop(self, m: Member, reason: str) -> None:
        m.done, m.stopped = True, reason
        self._stops.append(("stop", m.run_id, reason))

    def _decide_variant(self, v: Member, size: int, last: bool) -> str | None:
        base = self.base_of(v)
        if base is None:
            return "no unmodified base of this model on this runtime to pair with"
        if base.failed:
            return f"its base {base.label} failed ({base.stopped}): nothing to pair with"
        if base.scored < size:
            return f"its base {base.label} scored only {base.scored} questions (reused whole): rerun with --rerun to score further"
        keys = self.order[:size]
        d = self.correct(v.run_id, keys).astype(int) - self.correct(base.run_id, keys).astype(int)
        result = sequential_non_inferiority(d, self.delta_points, self.confidence, population=self.population)
        if result.decision != "undecided":
            return f"{result.decision} vs {base.label}: {result.reason}"
        if last:
            return f"undecided vs {base.label}: {result.reason}"
        return None

    def _close_look(self, size: int, last: bool) -> None:
        """Every needed run reached `size`: stop the decided variants, then the bases and references no one needs."""
        for v in [m for m in self.members if m.role == "variant" and not m.done]:
            reason = self._decide_variant(v, size, last)
            if reason is not None:
                self._stop(v, reason)
        for b in [m for m in self.members if m.role == "base" and not m.done]:
            if last:
                self._stop(b, f"scored all {b.scored} questions of the sample's max")
            elif not self._needed(b):
                self._stop(b, f"every variant of {b.model} was decided by question {size}: the base scores no further")
        for r in [m for m in self.members if m.role == "reference" and not m.done]:
            if last:
                self._stop(r, f"scored all {r.scored} questions of the sample's max")
            elif not self._needed(r):
                self._stop(r, f"every base stopped by question {size}: the reference scores no further")

    def next_action(self) -> tuple[str, str, str | None] | None:
        """("go", run id, None): let it score its next look; ("stop", run id, reason): stop it; None: all done."""
        while True:
            if self._stops:
                return self._stops.popleft()
            if all(m.done for m in self.members):
                return None
            size, last = self.sizes[self.look], self.look == len(self.sizes) - 1
            for v in [m for m in self.members if m.role == "variant" and not m.done]:
                base = self.base_of(v)
                if base is None or base.failed:  # nothing to pair with: do not score on
                    self._stop(v, self._decide_variant(v, size, last) or "no base")
            if self._stops:
                continue
            for m in self._turn_order():
                if self._needed(m) and m.scored < size:
                    return ("go", m.run_id, None)
            self._close_look(size, last)
            if not last:
                self.look += 1
