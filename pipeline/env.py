"""Facts about the environment the pipeline runs in: where data comes from, where runs go, which device,
whether the hub answers, and how loud the libraries are. A leaf: it imports nothing of ours.

Paths given in environment variables are made absolute once, at start (`absolute_env_paths`), so a child
process started in another directory reads the same files.
"""

from __future__ import annotations

import os
import socket
import threading
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
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "mlflow", "alembic", "torchao", "accelerate", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
