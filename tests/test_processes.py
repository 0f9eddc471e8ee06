"""`pipeline.processes.stop_group`: the one way a process group we started is ended (UI server, launched
OpenAI-API server, a sweep's child)."""

from __future__ import annotations

import os
import subprocess

import pytest

from pipeline.processes import stop_group


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("ignores_term", [False, True], ids=["exits-on-sigterm", "ignores-sigterm"])
def test_stop_group_ends_the_leader_and_what_it_left(ignores_term: bool) -> None:
    # A leader with a worker in its group; the worker ignores SIGTERM, so only the final SIGKILL ends it.
    trap = "trap '' TERM; " if ignores_term else ""
    script = f"sh -c \"trap '' TERM; exec sleep 60\" & {trap}wait"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        stop_group(proc, grace_s=0.5)
        assert proc.returncode is not None
        for _ in range(50):  # the killed worker is reaped by init, not us
            if not _group_alive(proc.pid):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert not _group_alive(proc.pid), "a worker of the group outlived stop_group"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, 9)


def test_stop_group_on_an_exited_process_is_quiet() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    stop_group(proc, grace_s=0.5)  # no ProcessLookupError
