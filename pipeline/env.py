"""Facts about the environment the pipeline runs in: where data comes from, where runs go, which device,
whether the hub answers, and how loud the libraries are. A leaf: it imports nothing of ours.

Paths given in environment variables are made absolute once, at start (`absolute_env_paths`), so a child
process started in another directory reads the same files.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MMLU_DIR_ENV = "SHRINKGATE_MMLU_DIR"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
PATH_ENV_VARS = (MMLU_DIR_ENV,)
_HUB_HOST = ("huggingface.co", 443)


class DeviceUnavailable(RuntimeError):
    """A device the recipe asks for is not here; one line naming the fix."""


def absolute_env_paths(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Resolve relative paths in PATH_ENV_VARS against the current directory (once, at start)."""
    for name in PATH_ENV_VARS:
        value = environ.get(name)
        if value and not os.path.isabs(os.path.expanduser(value)):
            environ[name] = str(Path(value).expanduser().resolve())


def mmlu_dir_override() -> str | None:
    """`$SHRINKGATE_MMLU_DIR` as an absolute path, or None when unset."""
    value = os.environ.get(MMLU_DIR_ENV)
    return str(Path(value).expanduser().resolve()) if value else None


def tracking_uri(explicit: str | None = None) -> str:
    """The store to use: an explicit URI, else `$MLFLOW_TRACKING_URI`, else the local sqlite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {requested!r} requested but CUDA is not available here; use `cpu` or `auto`")
    index = requested.partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"device {requested!r} requested but this host has {torch.cuda.device_count()} GPU(s); use `cuda` or an index below that"
        )
    return requested


def compute_threads(requested: int | None = None) -> int:
    """Threads torch computes with: the recipe's `speed.threads`, else torch's default (all cores)."""
    import torch

    return requested or torch.get_num_threads()


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Bounded probe: a DNS lookup alone can hang for tens of seconds offline, so it runs in a thread."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(_HUB_HOST, timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(result and result[0])


def quiet_libraries() -> None:
    """Our progress reports each stage; the libraries' own bars and per-task notices only bury it."""
    import logging
    import warnings

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TORCHAO_LOG_LEVEL", "ERROR")
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")  # else GPTQ/SparseGPT log every layer to stdout
    # Import-time notices (torchao's GPU-only kernels, torch's pytree deprecations) repeat on every run;
    # torch and MLflow reset their loggers on import, so only their own switches reach them.
    os.environ.setdefault("TORCH_LOGS", "-torch")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact the report reads
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in (
        "lm_eval",
        "lm-eval",
        "datasets",
        "transformers",
        "mlflow",
        "alembic",
        "torchao",
        "accelerate",
        "httpx",
        "bitsandbytes",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


# Loggers whose warnings belong in a child's log (quiet_libraries holds them at ERROR elsewhere).
CHATTY_LOGGERS = (
    "lm_eval",
    "lm-eval",
    "datasets",
    "transformers",
    "torch",
    "torchao",
    "accelerate",
    "bitsandbytes",
    "llmcompressor",
    "compressed_tensors",
    "hqq",
    "optimum",
    "huggingface_hub",
)


@contextmanager
def library_output(path: str | Path, *, whole_process: bool = False) -> Iterator[Path]:
    """While the block runs, library chatter goes to the file `path`, not the console: warnings (each once
    per place), logging at WARNING and above, and whatever is written to `sys.stderr` (tqdm bars).

    `whole_process=True` is for a process of its own (the process executor's child): file descriptors 1 and
    2 go there too, so native code and subprocesses (lm-eval runs `git`) land in the file. faulthandler keeps
    the original stderr, so a native crash still leaves its traceback where the driver reads it. Without it
    stdout is left alone: in the driver's process our progress display writes there.
    """
    import faulthandler
    import logging
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115 - closed below
    saved_fds: list[int] = []
    crash = None
    if whole_process:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved_fds = [os.dup(1), os.dup(2)]
        if faulthandler.is_enabled():
            crash = os.fdopen(os.dup(saved_fds[1]), "w")
            faulthandler.enable(file=crash)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    # Libraries' console handlers hold the stream object they were made with; point them at the file.
    handlers = [
        h
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        if type(h) is logging.StreamHandler and h.stream is not log
    ]
    previous = [(h, h.stream) for h in handlers]
    for h in handlers:
        h.stream = log  # not setStream: it flushes the old stream, which may be closed
    # Libraries without a handler of their own reach the root (or logging's last resort, on stderr).
    to_file = logging.StreamHandler(log)
    to_file.setLevel(logging.WARNING)
    to_file.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(to_file)
    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # transformers sets its level from this variable when first imported, which may be inside the block.
    verbosity = os.environ.get("TRANSFORMERS_VERBOSITY")
    if verbosity in (None, "error"):  # unset, or quiet_libraries' console default
        os.environ["TRANSFORMERS_VERBOSITY"] = "warning"
    stderr = sys.stderr
    sys.stderr = log
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # recorded in the log, not dropped (quiet_libraries ignores them)
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
                warnings.formatwarning(message, category, filename, lineno, line)
            )
            yield path
    finally:
        sys.stderr = stderr
        logging.getLogger().removeHandler(to_file)
        if verbosity is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = verbosity
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for h, old in previous:
            h.stream = old
        if whole_process:
            log.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            if crash is not None:
                faulthandler.enable()  # back on the restored stderr
                crash.close()
        log.close()
