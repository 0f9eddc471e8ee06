"""Test-only compression methods (importable by subprocesses and Ray workers via PYTHONPATH=tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.methods import Method, register, registry


def register_once(cls):
    """Register a test method unless an earlier import (this module under another name) already did."""
    return cls if cls.name in registry() else register(cls)


@register_once
class AlwaysRaises(Method):
    name = "test-raises"
    library = "tests"

    def apply(self, model, ctx):
        raise RuntimeError("deliberate failure for the test")


@register_once
class OutOfMemory(Method):
    """What a too-large build looks like: torch's OOM error (CPU or CUDA), memory to free afterwards."""

    name = "test-oom"
    library = "tests"

    def apply(self, model, ctx):
        import torch

        ballast = torch.ones(1 << 20)  # something to free when the child fails
        del ballast
        raise torch.OutOfMemoryError("simulated: tried to allocate 80.00 GiB")


@register_once
class SleepWhileFlag(Method):
    """Writes its process id to $SHRINKGATE_TEST_STARTED, then blocks while $SHRINKGATE_TEST_SLEEP_FLAG exists."""

    name = "test-sleep"
    library = "tests"

    def apply(self, model, ctx):
        started = os.environ.get("SHRINKGATE_TEST_STARTED")
        if started:
            Path(started).write_text(str(os.getpid()))
        flag = os.environ.get("SHRINKGATE_TEST_SLEEP_FLAG")
        deadline = time.monotonic() + 120
        while flag and Path(flag).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return model
