"""`--executor inline`: children one after another in the driver's own process - for tests and
debugging (breakpoints work). A native crash takes the whole sweep down, and peak-memory figures include
what the driver holds; `process` is the default for that reason."""

from __future__ import annotations

from collections import deque

from pipeline.sweep.child import execute_child
from pipeline.sweep.executors.base import Done, Executor
from pipeline.sweep.outcome import ProgressFn, SweepContext
from pipeline.variants.plan import WorkItem


class InlineExecutor(Executor):
    name = "inline"
    slots = 1

    def __init__(self) -> None:
        self._queue: deque[tuple[SweepContext, WorkItem, str, ProgressFn]] = deque()

    def submit(
        self, ctx: SweepContext, item: WorkItem, run_id: str, notify: ProgressFn, *, lockstep: bool = False
    ) -> None:  # noqa: ARG002 - not lock-step: the driver refuses a sequential sample
        self._queue.append((ctx, item, run_id, notify))

    def wait(self, timeout: float) -> list[Done]:  # noqa: ARG002 - a child runs to its end here
        if not self._queue:
            return []
        ctx, item, run_id, notify = self._queue.popleft()
        return [Done(run_id, execute_child(ctx, item, run_id, notify))]

    def cancel(self) -> None:
        # An interrupt unwound the running child already; nothing else is out.
        self._queue.clear()
