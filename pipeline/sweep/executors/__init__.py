"""Executors: how the sweep's children run (`base.Executor` documents the contract).

    inline   in the driver's process, one after another (tests, debugging; alias: local)
    process  each child in a fresh subprocess (the default): crashes and peak memory stay the child's own
    ray      each child a Ray task, locally or on a cluster
"""

from __future__ import annotations

from pipeline.sweep.executors.base import Done, Executor, ExecutorError
from pipeline.sweep.executors.inline import InlineExecutor
from pipeline.sweep.executors.process import ProcessExecutor
from pipeline.sweep.executors.ray import RayExecutor

EXECUTORS: dict[str, type[Executor]] = {cls.name: cls for cls in (InlineExecutor, ProcessExecutor, RayExecutor)}
ALIASES = {"local": "inline"}  # the name before `process` existed, kept so old scripts run
DEFAULT_EXECUTOR = "process"


def executor_name(name: str) -> str:
    """The canonical name of `name` (an alias resolved); ExecutorError for an unknown one."""
    canonical = ALIASES.get(name, name)
    if canonical not in EXECUTORS:
        raise ExecutorError(f"--executor {name!r}: use one of {', '.join(EXECUTORS)} (default {DEFAULT_EXECUTOR})")
    return canonical


def get_executor(name: str = DEFAULT_EXECUTOR, **options) -> Executor:
    """A new executor by name; `options` go to its constructor (e.g. `address=` for ray)."""
    return EXECUTORS[executor_name(name)](**options)


__all__ = ["ALIASES", "DEFAULT_EXECUTOR", "EXECUTORS", "Done", "Executor", "ExecutorError", "executor_name", "get_executor"]
