"""The process executor's wire protocol, both ends: the work a child reads (`write_payload`), the outcome it
writes back (`read_result`), and a lock-step sweep's pipe of the driver's words (`PipeLookChannel`). The child
itself is `pipeline.sweep.executors.process_child`, apart, so `python -m` finds it not yet imported."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from pipeline.sweep.lockstep import LookChannel
from pipeline.sweep.outcome import ChildOutcome, SweepContext, SweepInterrupted
from pipeline.variants.plan import WorkItem


def write_payload(
    path: str | Path, ctx: SweepContext, item: WorkItem, run_id: str, plugins: list[str], commands_fd: int | None = None
) -> None:
    """The work of one child; the work is pickled apart so plugins are imported before it is unpickled.
    `commands_fd`: the pipe the driver's word comes on in a lock-step sweep (None: the child runs on its own)."""
    work = pickle.dumps((ctx, item, run_id))
    Path(path).write_bytes(pickle.dumps({"plugins": list(plugins), "work": work, "commands_fd": commands_fd}))


class PipeLookChannel(LookChannel):
    """The process executor's child end of a lock-step sweep: the driver's word arrives as lines on a pipe ("go",
    "stop REASON"); finished looks go back as "look N" on the events pipe. A driver that is gone (end of file)
    ends the child like an interrupt."""

    def __init__(self, commands_fd: int, events) -> None:
        self._commands = os.fdopen(commands_fd, "r", encoding="utf-8", errors="replace")
        self._events = events

    def wait(self) -> str | None:
        line = self._commands.readline()
        if not line:
            raise SweepInterrupted("the driver closed the lock-step pipe")
        word, _, reason = line.rstrip("\n").partition(" ")
        return None if word == "go" else reason or "stopped by the driver"

    def report(self, scored: int) -> None:
        self._events.write(f"look {scored}\n")
        self._events.flush()


def read_result(path: str | Path) -> ChildOutcome | None:
    """The ChildOutcome a child wrote, or None when it wrote none (it died first)."""
    try:
        return pickle.loads(Path(path).read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
