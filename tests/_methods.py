"""Test-only compression methods (importable by subprocesses and Ray workers via PYTHONPATH=tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.methods import Method, register, registry


def _once(cls):
    return cls if cls.name in registry() else register(cls)


@_once
class AlwaysRaises(Method):
    name = "test-raises"
    library = "tests"

    def apply(self, model, ctx):
        raise RuntimeError("deliberate failure for the test")


@_once
class OutOfMemory(Method):
    """What a too-large build looks like: torch's OOM error (CPU or CUDA), memory to free afterwards."""

    name = "test-oom"
    library = "tests"

    def apply(self, model, ctx):
        import torch

        ballast = torch.ones(1 << 20)  # something to free when the child fails
        del ballast
        raise torch.OutOfMemoryError("simulated: tried to allocate 80.00 GiB")


@_once
class SleepWhileFlag(Method):
    """Blocks while $SHRINKGATE_TEST_SLEEP_FLAG exists, after writing $SHRINKGATE_TEST_STARTED."""

    name = "test-sleep"
    library = "tests"

    def apply(self, model, ctx):
        started = os.environ.get("SHRINKGATE_TEST_STARTED")
        if started:
            Path(started).write_text("started")
        flag = os.environ.get("SHRINKGATE_TEST_SLEEP_FLAG")
        deadline = time.monotonic() + 120
        while flag and Path(flag).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return model
