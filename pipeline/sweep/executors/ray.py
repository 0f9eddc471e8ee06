"""`--executor ray`: every model x variant is one Ray task; the driver owns the parent and every child run.

What runs where:
  driver (the `shrinkgate run` process, `pipeline.sweep.driver`): checks (MMLU data, tracking store), the
      parent run, one child run per planned item (resume skips FINISHED twins), submission, progress, the
      FAILED/KILLED marks that a dead worker could not write, and the sweep's report on the parent;
  Ray task (any node with the recipe's `resources`): `pipeline.sweep.child.execute_child` - resolve the model,
      build the variant, score MMLU, time decode, log to the same tracking URI, end the run FINISHED/FAILED.

Every node must reach the tracking store: a shared `mlflow server` (http://...) on a cluster; a sqlite URI
only works when every task runs on the driver's host (a local Ray).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline import metrics as M
from pipeline.config.recipe import Recipe, apply_overrides
from pipeline.sweep.child import execute_child
from pipeline.sweep.executors.base import Done, Executor, ExecutorError
from pipeline.sweep.lockstep import LookChannel
from pipeline.sweep.outcome import ChildOutcome, ProgressFn, SweepContext
from pipeline.variants.plan import WorkItem

log = logging.getLogger("shrinkgate.ray")

# Environment the driver hands to every task (only those set): offline switches, where MMLU lies, tracking
# server credentials, and the quiet-logging switches the CLI sets. Paths must mean the same on every node.
FORWARD_ENV = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "SHRINKGATE_MMLU_DIR",
    "SHRINKGATE_PLUGINS",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "TQDM_DISABLE",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "TRANSFORMERS_VERBOSITY",
    "TORCHAO_LOG_LEVEL",
)
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # tasks return small records; the default (30 % of RAM) only wastes shm
CANCEL_WAIT_S = 5.0


class RayExecutorError(ExecutorError):
    """`--executor ray` cannot run as asked (no `ray`, an infeasible `resources`, a store tasks cannot reach)."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayExecutorError(
            "--executor ray: the `ray` package is not installed; install the extra: pip install -e '.[ray]'"
        ) from None
    return ray


# -- the task (runs in a Ray worker) -------------------------------------------------------------------------
def _quiet_worker() -> None:
    try:
        from pipeline.env import quiet_libraries

        quiet_libraries()
    except Exception:  # noqa: BLE001 - quieter logs are a nicety
        pass


def _import_plugins() -> None:
    """`$SHRINKGATE_PLUGINS` as in the process executor's child (forwarded to cluster workers)."""
    from pipeline.sweep.plugins import env_plugins, import_plugins

    import_plugins(env_plugins())


def _worker_tags(ctx: SweepContext, device: str) -> dict[str, str]:
    """Where the child really ran: the driver's host tags describe the driver, not this node."""
    from pipeline.tracking import host_tags

    tags = {
        k: v
        for k, v in host_tags(ctx.recipe.speed.threads).items()
        if not k.startswith((M.TAG_VERSION_PREFIX, M.TAG_MLFLOW_PREFIX))
    }
    tags["device"] = device
    tags["executor"] = "ray"
    try:
        import ray

        rc = ray.get_runtime_context()
        tags[M.TAG_RAY_NODE_ID] = rc.get_node_id()
        tags[M.TAG_RAY_NODE_IP] = ray.util.get_node_ip_address()
        tags[M.TAG_RAY_TASK_ID] = rc.get_task_id() or ""
    except Exception:  # noqa: BLE001
        pass
    return tags


class LookBoard:
    """The driver's side of a lock-step sweep on Ray, as an async actor: children `wait` for their word (an
    awaitable per run, so a waiting task's `ray.get` frees its CPU for the others) and `report` finished looks;
    the driver `tell`s and `collect`s."""

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self._words: dict[str, Any] = {}
        self._looks: list[tuple[str, int]] = []

    def _queue(self, run_id: str):
        if run_id not in self._words:
            self._words[run_id] = self._asyncio.Queue()
        return self._words[run_id]

    async def wait(self, run_id: str) -> tuple[str | None]:
        return await self._queue(run_id).get()

    async def tell(self, run_id: str, reason: str | None) -> None:
        await self._queue(run_id).put((reason,))

    async def report(self, run_id: str, scored: int) -> None:
        self._looks.append((run_id, scored))

    async def collect(self) -> list[tuple[str, int]]:
        out, self._looks = self._looks, []
        return out


class RayLookChannel(LookChannel):
    """A Ray task's end of a lock-step sweep: the `LookBoard` actor."""

    def __init__(self, board: Any, run_id: str) -> None:
        self.board, self.run_id = board, run_id

    def wait(self) -> str | None:
        import ray

        return ray.get(self.board.wait.remote(self.run_id))[0]

    def report(self, scored: int) -> None:
        import ray

        ray.get(self.board.report.remote(self.run_id, scored))


def _child_task(ctx: SweepContext, item: WorkItem, run_id: str, board: Any = None) -> ChildOutcome:
    """One child in a Ray worker: the device is picked on this node (the driver may have no GPU), host tags
    are rewritten to this node's, then the same `execute_child` as every executor (with the lock-step board's
    channel in a sequential sweep)."""
    _quiet_worker()
    _import_plugins()
    from pipeline.env import pick_device
    from pipeline.tracking import Tracker

    device = pick_device(ctx.recipe.eval.device)
    ctx = dataclasses.replace(ctx, device=device)
    Tracker(ctx.recipe.tracking.uri, ctx.recipe.experiment).set_tags(run_id, _worker_tags(ctx, device))
    return execute_child(ctx, item, run_id, looks=RayLookChannel(board, run_id) if board is not None else None)


# -- checks and options (driver side) ------------------------------------------------------------------------
def task_options(recipe: Recipe, label: str, *, forward_env: bool = True) -> dict[str, Any]:
    """Ray options of one child task from `recipe.resources` (memory in bytes); no retries: a crash is a result.
    `forward_env`: pass the FORWARD_ENV variables set here (a cluster's workers do not inherit our environment)."""
    res = recipe.resources
    opts: dict[str, Any] = {
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus,
        "max_retries": 0,
        "retry_exceptions": False,
    }
    if res.memory_gb:
        opts["memory"] = int(res.memory_gb * 1024**3)
    opts["name"] = f"shrinkgate:{label}"
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)} if forward_env else {}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    return opts


def absolute_store(recipe: Recipe) -> Recipe:
    """A relative sqlite path means the driver's cwd; workers may start elsewhere, so make it absolute."""
    uri = recipe.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri.removeprefix("sqlite:///")).resolve()
        return apply_overrides(recipe, tracking_uri=f"sqlite:///{path}")  # keeps defaults defaults (scenario: server)
    return recipe


def _is_loopback(host: str | None) -> bool:
    return host in ("localhost", "::1") or bool(host and host.startswith("127."))


def check_store_reachable_from_cluster(uri: str, *, client_mode: bool, nodes: int) -> None:
    """Tasks on other hosts must reach the store: an http(s) server at an address that is not loopback."""
    remote = client_mode or nodes > 1
    if not remote:
        return
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        raise RayExecutorError(
            f"tracking.uri {uri}: tasks run on other hosts of the Ray cluster and cannot write a local store; "
            "start a shared server (`mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://...`) "
            "and pass --tracking-uri http://HOST:5000"
        )
    if _is_loopback(parsed.hostname):
        raise RayExecutorError(
            f"tracking.uri {uri}: a loopback address means each Ray node itself; pass the server's address "
            "that every node reaches (--tracking-uri http://HOST:5000)"
        )


def check_feasible(ray, recipe: Recipe, *, strict: bool) -> None:
    """Fail (local Ray) or warn (a cluster may autoscale) when no alive node can ever run one child task."""
    res = recipe.resources
    need = {"CPU": res.num_cpus, "GPU": res.num_gpus, "memory": (res.memory_gb or 0) * 1024**3}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if any(all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items() if v) for n in nodes):
        return
    have = (
        "; ".join(
            f"{n.get('NodeManagerAddress', '?')}: CPU {n['Resources'].get('CPU', 0):g}, GPU {n['Resources'].get('GPU', 0):g}, "
            f"memory {n['Resources'].get('memory', 0) / 1024**3:.1f} GB"
            for n in nodes
        )
        or "no alive node"
    )
    msg = (
        f"resources (num_cpus {res.num_cpus:g}, num_gpus {res.num_gpus:g}, memory_gb {res.memory_gb}) fit no node of the "
        f"Ray cluster ({have}); lower the recipe's `resources` or add nodes"
    )
    if strict:
        raise RayExecutorError(msg)
    log.warning("%s; tasks wait until the cluster grows", msg)


def check_lockstep_fits(ray, recipe: Recipe) -> None:
    """A lock-step sweep keeps every child's task alive while it waits for its turn. A waiting task frees its
    CPUs (it blocks in ray.get) but not its GPUs, so all children must fit the cluster's GPUs at once."""
    from pipeline.variants.plan import plan

    need = recipe.resources.num_gpus * len(plan(recipe))
    have = sum(n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive"))
    if need > have:
        raise RayExecutorError(
            f"resources.num_gpus {recipe.resources.num_gpus:g} x {len(plan(recipe))} runs: a sequential sample keeps every run "
            f"waiting between looks, which needs {need:g} GPUs at once and the cluster has {have:g}; lower resources.num_gpus "
            f"(e.g. {have / len(plan(recipe)):.2g}) or use --executor process"
        )


def _connect(ray, address: str | None) -> bool:
    """Attach to `address`, to an already initialised Ray, or start a local one; True when we started it."""
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, a version mismatch, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RayExecutorError(
                f"--address {address}: cannot join the Ray cluster ({first[:300]}); check the address "
                "(ray://HEAD:10001 for Ray Client, HEAD:6379 or `auto` on a cluster node) and that ray versions match"
            ) from None
        return True
    ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=True)
    return True


def _error_of(exc: BaseException) -> tuple[str, str]:
    """(one-line message, traceback text) of a task error; a RayTaskError carries the worker's exception."""
    cause = getattr(exc, "cause", None)
    shown = cause if isinstance(cause, BaseException) else exc
    text = str(shown).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(shown).__name__}: {first}"[:1000], str(exc) or "".join(traceback.format_exception(exc))


# -- the executor ----------------------------------------------------------------------------------------------
class RayExecutor(Executor):
    """Children as Ray tasks, all submitted at once; Ray schedules them by the recipe's `resources`.

    `address`: a cluster (`ray://head:10001`, `auto`, `host:6379`); None attaches to an initialised Ray or
    starts a local one (shut down at `close` only if started here). `runtime_env` is merged into every
    task's (e.g. `{"pip": [...]}`); with an `address`, the variables in FORWARD_ENV that are set here are
    passed on (a local Ray's workers inherit this environment anyway)."""

    name = "ray"
    slots = None
    lockstep = True  # children wait on a `LookBoard` actor (a task blocked in ray.get frees its CPU)

    def __init__(self, *, address: str | None = None, runtime_env: dict[str, Any] | None = None) -> None:
        self.address, self.runtime_env = address, runtime_env
        self._ray = None
        self._started = False
        self._recipe: Recipe | None = None
        self._remote = None
        self._ctx_ref = None
        self._pending: dict[Any, str] = {}  # object ref -> run id
        self._board = None  # the LookBoard actor of a lock-step sweep

    def prepare(self, recipe: Recipe) -> Recipe:
        ray = self._ray = _import_ray()
        recipe = absolute_store(recipe)
        self._started = _connect(ray, self.address)
        client_mode = bool(self.address and self.address.startswith("ray://"))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        check_store_reachable_from_cluster(recipe.tracking.uri, client_mode=client_mode, nodes=len(nodes))
        check_feasible(ray, recipe, strict=self.address is None and self._started)
        if recipe.eval.sample is not None and recipe.eval.sample.sequential:
            check_lockstep_fits(ray, recipe)
        self._recipe = recipe
        self._remote = ray.remote(_child_task)
        return recipe

    def parent_tags(self) -> dict[str, str]:
        return {
            M.TAG_RAY_ADDRESS: self.address or "local",
            M.TAG_RAY_VERSION: self._ray.__version__ if self._ray else "",
        }

    def submit(
        self, ctx: SweepContext, item: WorkItem, run_id: str, notify: ProgressFn, *, lockstep: bool = False
    ) -> None:  # noqa: ARG002 - no stages from workers
        ray = self._ray
        if self._ctx_ref is None:
            self._ctx_ref = ray.put(ctx)
        if lockstep and self._board is None:
            self._board = ray.remote(num_cpus=0)(LookBoard).remote()
        # A cluster's workers do not share our environment; a Ray started here (or by our caller) does.
        opts = task_options(ctx.recipe, item.label, forward_env=self.address is not None)
        if self.runtime_env:
            env_vars = {**opts.get("runtime_env", {}).get("env_vars", {}), **self.runtime_env.get("env_vars", {})}
            opts["runtime_env"] = {**self.runtime_env, "env_vars": env_vars}
        self._pending[
            self._remote.options(**opts).remote(self._ctx_ref, item, run_id, self._board if lockstep else None)
        ] = run_id

    def tell(self, run_id: str, reason: str | None) -> None:
        self._board.tell.remote(run_id, reason)  # calls from this driver reach the actor in order

    def looks(self) -> list[tuple[str, int]]:
        return self._ray.get(self._board.collect.remote()) if self._board is not None else []

    def wait(self, timeout: float) -> list[Done]:
        if not self._pending:
            return []
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            run_id = self._pending.pop(ref)
            try:
                done.append(Done(run_id, self._ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, OutOfMemoryError, ...
                message, detail = _error_of(exc)
                done.append(Done(run_id, None, message, detail))
        return done

    def cancel(self) -> None:
        pending, self._pending = list(self._pending), {}
        if self._board is not None:
            try:  # waiting children get their last word: stop
                self._ray.kill(self._board)
            except Exception:  # noqa: BLE001
                pass
            self._board = None
        if not pending:
            return
        for ref in pending:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished, or Ray itself is going down
                pass
        try:  # let the cancellations land, so no worker ends its run after the driver marks it
            self._ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
            self._started = False
