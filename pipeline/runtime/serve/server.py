"""A server shrinkgate launches (or only reaches): start it, wait until healthy, ask what it serves, stop it.

A launched server runs in its own process group (its workers are stopped with it) and gets SIGKILL from the
kernel when the process that launched it dies (`PR_SET_PDEATHSIG`), so a child killed by the sweep driver,
by the OOM killer or by Ctrl-C never leaves a server behind (SIGKILL: uvicorn answers SIGTERM by waiting for
the request in flight, which on llama-cpp-python's server can take minutes). Its stdout and stderr go to a log file that
the run keeps as `logs/server.log`.
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.processes import stop_group
from pipeline.redact import redact

STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL
HEALTH_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A server that does not start, answers wrongly or goes away; the message says what and where (one line)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the forked child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the context manager's stop() still ends it
        pass


def http_json(url: str, *, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
    """GET `url` and decode its JSON; ServerError names the URL and what went wrong."""
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - a URL from the recipe
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a URL from the recipe
            return json.loads(resp.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        raise ServerError(f"{url}: HTTP {exc.code} {exc.reason}: {body}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(f"{url}: no answer ({reason})") from None
    except json.JSONDecodeError as exc:
        raise ServerError(f"{url}: the answer is not JSON ({exc})") from None


@dataclass
class Server:
    """One server: `argv` (None: it already runs; shrinkgate only checks it), its URLs and the log file."""

    base_url: str
    health_url: str
    argv: list[str] | None = None
    log_path: Path | None = None
    health_timeout_s: float = 180.0
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0  # how long it took to become healthy

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.monotonic()
        if self.argv is not None:
            log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
            try:
                self.proc = subprocess.Popen(  # noqa: S603 - the recipe's own command
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    process_group=0,  # its own group: stop() ends its workers with it
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, before exec
                )
            except OSError as exc:
                raise ServerError(
                    f"serve.launch: cannot start {self.argv[0]!r} ({exc.strerror}); check the command"
                ) from None
            finally:
                if log is not subprocess.DEVNULL:
                    log.close()
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - t0

    def _wait_healthy(self, t0: float) -> None:
        last = ""
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"server exited with code {self.proc.returncode} before it answered {self.health_url}: "
                    f"{self.log_tail(1) or 'no output'}"
                )
            try:
                req = urllib.request.Request(self.health_url, headers=self.headers)  # noqa: S310 - the recipe's server URL
                with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if time.monotonic() - t0 > self.health_timeout_s:
                raise ServerError(
                    f"server not healthy at {self.health_url} after {self.health_timeout_s:g} s (last: {last}); raise "
                    "serve.health_timeout_s if it loads slowly, else see logs/server.log"
                )
            time.sleep(HEALTH_POLL_S)

    @property
    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after a grace period; a no-op if it was not launched."""
        if self.proc is not None:
            stop_group(self.proc, STOP_GRACE_S)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return redact(" | ".join(line.strip() for line in text[-lines:]))

    def served_models(self) -> list[str]:
        """The model ids `GET {base_url}/models` lists."""
        doc = http_json(f"{self.base_url}/models", headers=self.headers)
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise ServerError(f"{self.base_url}/models: not an OpenAI model list (no `data` array)")
        return [str(m.get("id")) for m in data if isinstance(m, dict)]


def python_executable() -> str:
    return sys.executable
