"""Ending a process we started in its own process group (`start_new_session=True` or `process_group=0`), with
everything it started: the MLflow UI server, a launched OpenAI-API server, a sweep's child process."""

from __future__ import annotations

import os
import signal
import subprocess


def signal_group(pgid: int, sig: int) -> None:
    """`sig` to process group `pgid`; nothing when the group is gone (or no longer ours)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """End the process group `proc` leads: SIGTERM, up to `grace_s` for `proc` to exit, then SIGKILL (and up to
    `grace_s` more); then SIGKILL to whatever of its group outlived it (a worker). `proc` may have exited already."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass  # unkillable for now (uninterruptible sleep): the caller's own end reaps it
    signal_group(proc.pid, signal.SIGKILL)
