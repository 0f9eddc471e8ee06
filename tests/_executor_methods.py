"""Test-only methods that end the process building them, for the executors' tests. Importable by child
processes (the process executor passes the modules that registered methods) and Ray workers
(`setup_hook` is their worker_process_setup_hook, with PYTHONPATH=tests)."""

from __future__ import annotations

import ctypes
import os
import signal

from _methods import register_once

from pipeline.methods import Method


def setup_hook() -> None:
    """Ray's worker_process_setup_hook: importing this module registers the methods in the worker."""


@register_once
class Segfaults(Method):
    """A native kernel that reads address 0: the process dies with SIGSEGV."""

    name = "test-segfault"
    library = "tests"

    def apply(self, model, ctx):
        ctypes.string_at(0)
        return model


@register_once
class KilledBySignal(Method):
    """What the OOM killer does: SIGKILL, no chance to clean up."""

    name = "test-sigkill"
    library = "tests"

    def apply(self, model, ctx):
        os.kill(os.getpid(), signal.SIGKILL)
        return model


@register_once
class ExitsWorker(Method):
    """Ends the process that builds it (a Ray worker) with a plain exit code."""

    name = "test-crash-worker"
    library = "tests"

    def apply(self, model, ctx):
        os._exit(3)


@register_once
class RaisesInWorker(Method):
    """An ordinary failure inside the task; `execute_child` records it and the task returns."""

    name = "test-raises-in-worker"
    library = "tests"

    def apply(self, model, ctx):
        raise RuntimeError("deliberate failure inside the Ray task")
