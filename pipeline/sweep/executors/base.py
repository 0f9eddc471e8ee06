"""The executor seam: how the driver's children run. The driver owns the parent run, the child runs, resume,
failure marks, interrupts and the closing; an executor only starts children and says when they ended.

Lifecycle, as the driver calls it:
    recipe = executor.prepare(recipe)          # before the parent run exists
    ... executor.parent_tags() on the parent
    executor.submit(...)                       # at most `slots` children in flight
    executor.wait(timeout) -> [Done, ...]      # repeatedly, until every submitted child came back
    executor.cancel()                          # on Ctrl-C / SIGTERM only
    executor.close()                           # always, last

A lock-step sweep (a sequential sample, `pipeline.sweep.lockstep`) submits every child at once with
`lockstep=True`; each waits for the driver's word, given with `tell`, and the looks they finish come back
through `looks`. For an executor that cannot keep children waiting (`lockstep = False`) the driver refuses such a
recipe before the sweep starts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from pipeline.config.recipe import Recipe, RecipeError
from pipeline.sweep.outcome import ChildOutcome, ProgressFn, SweepContext
from pipeline.variants.plan import WorkItem


class ExecutorError(RecipeError):
    """An executor cannot run as asked (unknown name, a missing package, an unreachable cluster); one line
    naming the fix. A RecipeError so the CLI prints it and exits 2."""


@dataclass(frozen=True)
class Done:
    """A submitted child came back: with the outcome it reported (its run ended by itself), or without one
    (`error`: one line for the error tag, `detail`: traceback / stderr tail for the traceback artifact) -
    the driver then ends the run FAILED unless the child got as far as ending it."""

    run_id: str
    outcome: ChildOutcome | None = None
    error: str | None = None
    detail: str = ""


class Executor(ABC):
    name: ClassVar[str]
    slots: int | None = 1  # children in flight at once; None: no limit (the executor queues them)
    lockstep: ClassVar[bool] = False  # can run a sequential sample's children look by look together

    def prepare(self, recipe: Recipe) -> Recipe:
        """Connect and check before the parent run is created; raise ExecutorError for a problem the user
        fixes. Returns the recipe every child gets (e.g. with a store path every worker can open)."""
        return recipe

    def parent_tags(self) -> dict[str, str]:
        """Extra tags for the parent run (`executor` is set by the driver)."""
        return {}

    @abstractmethod
    def submit(
        self, ctx: SweepContext, item: WorkItem, run_id: str, notify: ProgressFn, *, lockstep: bool = False
    ) -> None:
        """Start (or queue) one child whose run `run_id` is open. The child calls `execute_child`; stage
        reports reach `notify` where the executor can relay them, always from the driver's thread. `lockstep`:
        the child waits for `tell` before it starts and after each look of its sequential sample."""

    def tell(self, run_id: str, reason: str | None) -> None:
        """The driver's word to a waiting lock-step child: None, score your next look (or start); else stop, why."""
        raise NotImplementedError(f"executor {self.name} cannot run children look by look")

    def looks(self) -> list[tuple[str, int]]:
        """(run id, questions scored) of each look lock-step children finished since the last call."""
        raise NotImplementedError(f"executor {self.name} cannot run children look by look")

    @abstractmethod
    def wait(self, timeout: float) -> list[Done]:
        """Children that ended since the last call, each exactly once; block at most about `timeout` seconds
        when none has. Must return promptly on KeyboardInterrupt / SweepInterrupted (let them propagate)."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop every child still out. On return none of them writes to its run any more; the driver then
        ends those still open KILLED."""

    def close(self) -> None:  # noqa: B027 - a no-op default, overridden where there is something to release
        """Release what `prepare`/`submit` acquired; called once, last, also after errors."""
