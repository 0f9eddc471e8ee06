"""The process executor's child (the wire protocol it speaks is `pipeline.sweep.executors.wire`).

`python -m pipeline.sweep.executors.process_child PAYLOAD RESULT EVENTS_FD [LOG]`: it reads the work from PAYLOAD
(written by `wire.write_payload`), runs `execute_child`, writes its ChildOutcome to RESULT (read back with
`wire.read_result`) and reports stages on the pipe EVENTS_FD, one line each; its output (file descriptors 1 and 2)
goes to LOG while the child works. In a lock-step sweep (a sequential sample) PAYLOAD names a second pipe on which
the driver's word comes (`PipeLookChannel`): "go" or "stop REASON", one line each; the child reports each
finished look on EVENTS_FD as "look N". Before it unpickles the work it imports plugin modules, so methods
registered outside `pipeline` exist here too:
  - `$SHRINKGATE_PLUGINS="mod1,mod2"`: modules to import (e.g. in-house or test-only methods);
  - the modules that registered this child's methods in the driver (passed in PAYLOAD).
A plugin that fails to import fails the child (its traceback is on stderr).
A segfault leaves a Python traceback on stderr (faulthandler). The child exits when the driver disappears,
ending its run KILLED, so no orphan keeps computing.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from pathlib import Path

from pipeline.sweep.child import execute_child
from pipeline.sweep.executors.wire import PipeLookChannel
from pipeline.sweep.outcome import SweepContext
from pipeline.sweep.plugins import env_plugins, import_plugins
from pipeline.sweep.status import mark_killed

PARENT_POLL_S = 1.0


def _watch_driver(ctx: SweepContext, run_id: str) -> None:
    """Our parent is the driver; when it is gone (killed with SIGKILL, say) nobody waits for this run."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        try:
            from pipeline.tracking import Tracker

            mark_killed(Tracker(ctx.recipe.tracking.uri, ctx.recipe.experiment), run_id, "driver process gone")
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="watch-driver", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import faulthandler

    from pipeline.env import quiet_libraries

    args = argv if argv is not None else sys.argv[1:]
    payload_path, result_path, events_fd = args[:3]
    log_path = args[3] if len(args) > 3 else None
    faulthandler.enable()  # a native crash leaves a Python traceback on stderr, for the FAILED run's artifact
    quiet_libraries()
    boot = pickle.loads(Path(payload_path).read_bytes())
    import_plugins([*env_plugins(), *boot["plugins"]])
    ctx, item, run_id = pickle.loads(boot["work"])
    _watch_driver(ctx, run_id)
    events = os.fdopen(int(events_fd), "w", buffering=1)

    def notify(label: str, stage: str) -> None:  # noqa: ARG001 - the driver knows the label
        try:
            events.write(stage + "\n")
        except OSError:
            pass

    commands_fd = boot.get("commands_fd")
    looks = PipeLookChannel(commands_fd, events) if commands_fd is not None else None
    outcome = execute_child(ctx, item, run_id, notify, log_path=log_path, own_process=log_path is not None, looks=looks)
    tmp = Path(str(result_path) + ".tmp")
    tmp.write_bytes(pickle.dumps(outcome))
    os.replace(tmp, result_path)  # whole or absent: a child killed mid-write leaves no half result
    return 0


if __name__ == "__main__":
    sys.exit(main())
