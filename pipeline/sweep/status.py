"""Ending a child run the child could not end itself (its process died, its task was cancelled, the driver went
away): `mark_failed` / `mark_killed` leave alone a run the child already ended."""

from __future__ import annotations

from pipeline import metrics as M

TERMINAL = ("FINISHED", "FAILED", "KILLED")


def run_status(tracker, run_id: str) -> str | None:
    try:
        return tracker.client.get_run(run_id).info.status
    except Exception:  # noqa: BLE001 - the store is unreachable: treat as unknown
        return None


def mark_failed(tracker, run_id: str, message: str, detail: str) -> str:
    """End the run FAILED with `message` (error tag) and `detail` (traceback artifact), unless the child got
    as far as ending it itself; returns the run's final status."""
    status = run_status(tracker, run_id)
    if status in TERMINAL:
        return status
    try:
        tracker.set_tags(run_id, {M.TAG_STATUS_ERROR: message[:5000]})
        if detail:
            tracker.log_text(run_id, detail, M.ART_TRACEBACK)
    finally:
        tracker.end(run_id, "FAILED")
    return "FAILED"


def mark_killed(tracker, run_id: str, reason: str) -> str:
    """End the run KILLED with `reason` as its error tag, unless it already ended; returns its final status."""
    status = run_status(tracker, run_id)
    if status in TERMINAL:
        return status
    tracker.set_tags(run_id, {M.TAG_STATUS_ERROR: reason})
    tracker.end(run_id, "KILLED")
    return "KILLED"
