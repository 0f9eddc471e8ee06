"""Executors: how the sweep's children run (`base.Executor` documents the contract).

inline   in the driver's process, one after another (tests, debugging)
process  each child in a fresh subprocess (the default): crashes and peak memory stay the child's own
ray      each child a Ray task, locally or on a cluster
"""

from __future__ import annotations

from pipeline.registry import Registry
from pipeline.sweep.executors.base import Done, Executor, ExecutorError
from pipeline.sweep.executors.inline import InlineExecutor
from pipeline.sweep.executors.process import ProcessExecutor
from pipeline.sweep.executors.ray import RayExecutor

EXECUTORS: Registry[type[Executor]] = Registry("executor")
for _cls in (InlineExecutor, ProcessExecutor, RayExecutor):
    EXECUTORS.register(_cls)
DEFAULT_EXECUTOR = "process"


def executor_name(name: str) -> str:
    """`name` when an executor has it; ExecutorError for an unknown one."""
    if name not in EXECUTORS:
        raise ExecutorError(f"--executor {name!r}: use one of {', '.join(EXECUTORS)} (default {DEFAULT_EXECUTOR})")
    return name


def get_executor(name: str = DEFAULT_EXECUTOR, **options) -> Executor:
    """A new executor by name; `options` go to its constructor (e.g. `address=` for ray)."""
    return EXECUTORS.get(executor_name(name))(**options)


__all__ = ["DEFAULT_EXECUTOR", "EXECUTORS", "Done", "Executor", "ExecutorError", "executor_name", "get_executor"]
