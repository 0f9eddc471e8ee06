"""`--executor process` (the default): each child (model x variant) runs in a fresh
`python -m pipeline.sweep.executors.process_child` process, one at a time.

Why: a native crash (a segfaulting kernel) or the OOM killer ends that child only - its run ends FAILED with
the signal in the error tag ("child process killed by SIGSEGV") and the child's stderr tail (with
faulthandler's Python traceback) as the traceback artifact - and the sweep goes on. Each child's
`build_peak_mem_mb` / `peak_mem_mb` are its own process's figures, not the driver's history.

The child gets this process's environment with `$SHRINKGATE_MMLU_DIR` made absolute, a PYTHONPATH that
finds this `pipeline` and the modules that registered the child's methods here (imported by the child;
a method defined in `__main__` cannot be, so such a child fails to start), and `$SHRINKGATE_PLUGINS`
honoured (see `pipeline.sweep.executors.process_child`). It runs in its own session, so a terminal's Ctrl-C reaches only the
driver, which ends the child's whole process group (SIGTERM, then SIGKILL after a grace period) and marks
the run KILLED.
While it works, the child writes library chatter to its log file (attached to its run as `logs/child.log`);
what it writes to stdout/stderr outside that (a plugin that fails to import, faulthandler's dump of a native
crash) is relayed (the first lines of each; the stderr tail is kept for the failure). A child that dies
leaves the tail of its log in the traceback artifact too.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pipeline
from pipeline.env import absolute_env_paths
from pipeline.processes import signal_group, stop_group
from pipeline.sweep.executors.base import Done, Executor, ExecutorError
from pipeline.sweep.executors.wire import read_result, write_payload
from pipeline.sweep.outcome import ProgressFn, SweepContext
from pipeline.variants.plan import WorkItem

GRACE_S = 10.0  # SIGTERM -> SIGKILL
FORWARD_LINES = 50  # per stream and child; more only floods the console (the tail is kept)
LINE_CHARS = 500  # a relayed line longer than this is cut (faulthandler lists every extension module)
TAIL_LINES = 200  # of stderr, for the traceback artifact of a child that died
LOG_TAIL_LINES = 100  # of the child's log, ditto
POLL_S = 0.1


@dataclass
class _Child:
    proc: subprocess.Popen
    label: str
    run_id: str
    notify: ProgressFn
    workdir: Path
    lines: queue.Queue = field(default_factory=queue.Queue)  # (stream, text): stream is out | err | stage
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    shown: dict = field(default_factory=lambda: {"out": 0, "err": 0})
    readers: list = field(default_factory=list)
    commands: IO[str] | None = None  # lock-step: where the driver's word goes ("go" / "stop REASON")

    @property
    def result_path(self) -> Path:
        return self.workdir / "outcome.pkl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "child.log"


def plugin_modules(item: WorkItem) -> tuple[list[str], list[str]]:
    """Modules outside `pipeline` that registered the methods and the runtime of `item`, and the import roots
    they came from, so the child can import them too. One defined in `__main__` cannot be imported elsewhere."""
    from pipeline.methods import registry
    from pipeline.runtime import RUNTIMES

    known = registry()
    registered = [(f"method {s.method!r}", known.get(s.method)) for s in item.variant.pipeline_steps]
    registered.append((f"runtime {item.runtime!r}", RUNTIMES.get(item.runtime) if item.runtime in RUNTIMES else None))
    modules: list[str] = []
    for what, cls in registered:
        module = getattr(cls, "__module__", "pipeline")  # an unknown name: the child reports it
        if module == "pipeline" or module.startswith("pipeline.") or module in modules:
            continue
        if module == "__main__":
            raise ExecutorError(
                f"{what} is defined in __main__, which a child process cannot import; "
                "move it to a module, or use --executor inline"
            )
        modules.append(module)
    roots: list[str] = []
    for name in modules:
        top = sys.modules.get(name.split(".")[0])
        path = getattr(top, "__path__", None)
        if path:  # a package: its parent directory is the root
            roots.append(str(Path(list(path)[0]).parent))
        elif getattr(top, "__file__", None):
            roots.append(str(Path(top.__file__).parent))
    return modules, roots


def child_environment(extra_roots: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    absolute_env_paths(env)  # the child resolves paths as the driver did, whatever its cwd
    roots = [str(Path(pipeline.__file__).resolve().parents[1]), *extra_roots]  # this very `pipeline` first
    roots += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots))
    env["PYTHONUNBUFFERED"] = "1"  # relayed output arrives as it is written
    return env


def _read_lines(stream: IO[str], kind: str, sink: queue.Queue) -> None:
    try:
        for line in stream:
            sink.put((kind, line.rstrip("\n")))
    except (OSError, ValueError):
        pass
    finally:
        stream.close()


def describe_exit(returncode: int) -> str:
    """'child process killed by SIGSEGV' / 'child process exited with code 3'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory? the OOM killer sends SIGKILL)" if -returncode == signal.SIGKILL else ""
        return f"child process killed by {name}{hint}"
    return f"child process exited with code {returncode}"


class ProcessExecutor(Executor):
    name = "process"
    slots = 1  # one child at a time: timings and peak memory are not shared with a sibling
    lockstep = True  # children wait on a pipe for the driver's word; only the one told "go" works

    def __init__(self, *, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self._running: list[_Child] = []
        self._looks: list[tuple[str, int]] = []

    # -- submit -------------------------------------------------------------------------------------------
    def submit(
        self, ctx: SweepContext, item: WorkItem, run_id: str, notify: ProgressFn, *, lockstep: bool = False
    ) -> None:
        plugins, roots = plugin_modules(item)
        workdir = Path(tempfile.mkdtemp(prefix="shrinkgate-child-"))
        events_r, events_w = os.pipe()
        commands_r, commands_w = os.pipe() if lockstep else (None, None)
        write_payload(workdir / "work.pkl", ctx, item, run_id, plugins, commands_fd=commands_r)
        passed = (events_w,) if commands_r is None else (events_w, commands_r)
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.sweep.executors.process_child",
                    str(workdir / "work.pkl"),
                    str(workdir / "outcome.pkl"),
                    str(events_w),
                    str(workdir / "child.log"),
                ],
                env=child_environment(roots),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                pass_fds=passed,
                start_new_session=True,  # its own process group: we end it whole; Ctrl-C reaches only us
            )
        except BaseException:
            os.close(events_r)
            if commands_w is not None:
                os.close(commands_w)
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            for fd in passed:
                os.close(fd)  # the child holds its copies; EOF comes when it exits
        child = _Child(proc, item.label, run_id, notify, workdir)
        if commands_w is not None:
            child.commands = os.fdopen(commands_w, "w", encoding="utf-8", buffering=1)
        streams = ((proc.stdout, "out"), (proc.stderr, "err"), (os.fdopen(events_r, "r", errors="replace"), "stage"))
        for stream, kind in streams:
            t = threading.Thread(
                target=_read_lines, args=(stream, kind, child.lines), name=f"child-{kind}", daemon=True
            )
            t.start()
            child.readers.append(t)
        self._running.append(child)

    # -- wait ---------------------------------------------------------------------------------------------
    def wait(self, timeout: float) -> list[Done]:
        deadline = time.monotonic() + timeout
        while True:
            for child in self._running:
                self._relay(child)
            ended = [c for c in self._running if c.proc.poll() is not None]
            if ended or not self._running or time.monotonic() >= deadline:
                return [self._collect(c) for c in ended]
            time.sleep(POLL_S)

    def _relay(self, child: _Child) -> None:
        """Hand stage reports to `notify` and the child's output to ours (first lines only), in this thread."""
        while True:
            try:
                kind, text = child.lines.get_nowait()
            except queue.Empty:
                return
            if kind == "stage":
                if text.startswith("look "):  # a lock-step child finished a look
                    self._looks.append((child.run_id, int(text.split()[1])))
                else:
                    child.notify(child.label, text)
                continue
            if kind == "err":
                child.tail.append(text)
            out = sys.stdout if kind == "out" else sys.stderr
            child.shown[kind] += 1
            if child.shown[kind] <= FORWARD_LINES:
                print(text if len(text) <= LINE_CHARS else text[:LINE_CHARS] + " …", file=out, flush=True)
            elif child.shown[kind] == FORWARD_LINES + 1:
                print(
                    f"[{child.label}: further output not shown; a failure keeps the stderr tail]", file=out, flush=True
                )

    def _collect(self, child: _Child) -> Done:
        code = child.proc.wait()
        self._reap(child)
        outcome = read_result(child.result_path)
        log_tail = _tail(child.log_path, LOG_TAIL_LINES) if outcome is None else []
        shutil.rmtree(child.workdir, ignore_errors=True)
        if outcome is not None:
            return Done(child.run_id, outcome)
        message = describe_exit(code)
        last = next((line.strip() for line in reversed(child.tail) if line.strip()), "")
        if code > 0 and last:
            message += f": {last[:300]}"
        detail = f"{message}\n\n--- stderr, last {len(child.tail)} lines ---\n" + "\n".join(child.tail)
        if log_tail:
            detail += f"\n\n--- child.log, last {len(log_tail)} lines ---\n" + "\n".join(log_tail)
        return Done(child.run_id, None, message, detail)

    # -- lock-step ------------------------------------------------------------------------------------------
    def tell(self, run_id: str, reason: str | None) -> None:
        child = next((c for c in self._running if c.run_id == run_id), None)
        if child is None or child.commands is None:
            return  # it already ended: wait() reports it
        try:
            child.commands.write("go\n" if reason is None else "stop " + " ".join(reason.split()) + "\n")
        except (BrokenPipeError, ValueError):
            pass  # it died meanwhile: wait() reports it

    def looks(self) -> list[tuple[str, int]]:
        for child in self._running:
            self._relay(child)
        out, self._looks = self._looks, []
        return out

    def _reap(self, child: _Child) -> None:
        """After the child's exit: end what it left in its group, drain its pipes, forget it."""
        if child.commands is not None:
            try:
                child.commands.close()
            except OSError:
                pass
        signal_group(child.proc.pid, signal.SIGKILL)
        for t in child.readers:
            t.join(timeout=5)
        self._relay(child)
        if child in self._running:
            self._running.remove(child)

    # -- cancel / close ---------------------------------------------------------------------------------------
    def cancel(self) -> None:
        for child in list(self._running):
            stop_group(child.proc, self.grace_s)
            self._reap(child)
            shutil.rmtree(child.workdir, ignore_errors=True)

    def close(self) -> None:
        self.cancel()  # nothing is left on a normal end; after an error nothing may outlive the sweep


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [ln[:LINE_CHARS] for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-lines:]
