"""`run --executor ray`: every model x variant is one Ray task; the driver owns the parent and every child run.

What runs where:
  driver (the `shrinkgate run` process): checks (MMLU data, tracking store), the parent run, one child run
      per planned item (resume skips FINISHED twins), submission, progress, the failure/KILLED marks that a
      dead worker could not write, and the sweep's report on the parent;
  Ray task (any node with the recipe's `resources`): `pipeline.sweep.driver.execute_child` - resolve the model,
      build the variant, score MMLU, time decode, log to the same tracking URI, end the run FINISHED/FAILED.

Every node must reach the tracking store: a shared `mlflow server` (http://...) on a cluster; a sqlite URI
only works when every task runs on the driver's host (a local Ray).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline import metrics as M
from pipeline.config.recipe import Recipe, RecipeError
from pipeline.sweep.driver import (
    ChildOutcome,
    ProgressFn,
    SweepContext,
    SweepInterrupted,
    SweepOutcome,
    _sigterm_as_interrupt,
    execute_child,
    finish_sweep,
    mark_killed,
    open_child,
    start_sweep,
)
from pipeline.build.plan import WorkItem, plan

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
POLL_SECONDS = 1.0  # how often the driver wakes while waiting, so Ctrl-C / SIGTERM act promptly
_TERMINAL = ("FINISHED", "FAILED", "KILLED")


class RayExecutorError(RecipeError):
    """`--executor ray` cannot run as asked (no `ray`, an infeasible `resources`, a store tasks cannot reach);
    one line naming the fix. A RecipeError so the CLI prints it and exits 2."""


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


def _worker_tags(ctx: SweepContext, device: str) -> dict[str, str]:
    """Where the child really ran: the driver's host tags describe the driver, not this node."""
    from pipeline.tracking import host_tags

    tags = {k: v for k, v in host_tags(ctx.recipe.speed.threads).items() if not k.startswith(("version.", "mlflow."))}
    tags["device"] = device
    tags["executor"] = "ray"
    try:
        import ray

        rc = ray.get_runtime_context()
        tags["ray.node_id"] = rc.get_node_id()
        tags["ray.node_ip"] = ray.util.get_node_ip_address()
        tags["ray.task_id"] = rc.get_task_id() or ""
    except Exception:  # noqa: BLE001
        pass
    return tags


def _child_task(ctx: SweepContext, item: WorkItem, run_id: str) -> ChildOutcome:
    """One child in a Ray worker: the device is picked on this node (the driver may have no GPU), host tags
    are rewritten to this node's, then the same `execute_child` as the local executor."""
    _quiet_worker()
    from pipeline.env import pick_device
    from pipeline.tracking import Tracker

    device = pick_device(ctx.recipe.eval.device)
    ctx = dataclasses.replace(ctx, device=device)
    Tracker(ctx.recipe.tracking.uri, ctx.recipe.experiment).set_tags(run_id, _worker_tags(ctx, device))
    return execute_child(ctx, item, run_id)


# -- the driver ----------------------------------------------------------------------------------------------
def task_options(recipe: Recipe, label: str, *, forward_env: bool = True) -> dict[str, Any]:
    """Ray options of one child task from `recipe.resources` (memory in bytes); no retries: a crash is a result.
    `forward_env`: pass the FORWARD_ENV variables set here (a cluster's workers do not inherit our environment)."""
    res = recipe.resources
    opts: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_retries": 0, "retry_exceptions": False}
    if res.memory_gb:
        opts["memory"] = int(res.memory_gb * 1024**3)
    opts["name"] = f"shrinkgate:{label}"
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)} if forward_env else {}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    return opts


def _absolute_store(recipe: Recipe) -> Recipe:
    """A relative sqlite path means the driver's cwd; workers may start elsewhere, so make it absolute."""
    uri = recipe.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri.removeprefix("sqlite:///")).resolve()
        data = recipe.model_dump()
        data["tracking"]["uri"] = f"sqlite:///{path}"
        return Recipe.model_validate(data)
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
    have = "; ".join(
        f"{n.get('NodeManagerAddress', '?')}: CPU {n['Resources'].get('CPU', 0):g}, GPU {n['Resources'].get('GPU', 0):g}, "
        f"memory {n['Resources'].get('memory', 0) / 1024**3:.1f} GB"
        for n in nodes
    ) or "no alive node"
    msg = (
        f"resources (num_cpus {res.num_cpus:g}, num_gpus {res.num_gpus:g}, memory_gb {res.memory_gb}) fit no node of the "
        f"Ray cluster ({have}); lower the recipe's `resources` or add nodes"
    )
    if strict:
        raise RayExecutorError(msg)
    log.warning("%s; tasks wait until the cluster grows", msg)


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


def _run_status(tracker, run_id: str) -> str | None:
    try:
        return tracker.client.get_run(run_id).info.status
    except Exception:  # noqa: BLE001
        return None


def _mark_failed(tracker, child: ChildOutcome, exc: BaseException) -> ChildOutcome:
    """The worker died or its task raised past `execute_child`: the driver ends the run FAILED with the error
    (unless the worker got as far as ending it itself)."""
    message, text = _error_of(exc)
    status = _run_status(tracker, child.run_id)
    if status in _TERMINAL:  # e.g. the worker died after ending its run
        child.status = status
        child.error = None if status == "FINISHED" else message
        return child
    child.status, child.error = "FAILED", message
    try:
        tracker.set_tags(child.run_id, {M.TAG_STATUS_ERROR: message})
        tracker.log_text(child.run_id, text, M.ART_TRACEBACK)
    finally:
        tracker.end(child.run_id, "FAILED")
    return child


def run_sweep_ray(
    recipe: Recipe,
    *,
    address: str | None = None,
    progress: ProgressFn | None = None,
    rerun: bool = False,
    runtime_name: str = "transformers",
    runtime_env: dict[str, Any] | None = None,
) -> SweepOutcome:
    """The Ray executor: the same sweep as `pipeline.sweep.driver.run_sweep`, children as Ray tasks.

    `address`: a cluster (`ray://head:10001`, `auto`, `host:6379`); None attaches to an initialised Ray or
    starts a local one (shut down at the end only if started here). `runtime_env` is merged into every
    task's (e.g. `{"pip": [...]}`); with an `address`, the variables in FORWARD_ENV that are set here are
    passed on (a local Ray's workers inherit this environment anyway)."""
    ray = _import_ray()
    notify = progress or (lambda label, stage: None)
    recipe = _absolute_store(recipe)
    started_ray = _connect(ray, address)
    try:
        client_mode = bool(address and address.startswith("ray://"))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        check_store_reachable_from_cluster(recipe.tracking.uri, client_mode=client_mode, nodes=len(nodes))
        check_feasible(ray, recipe, strict=address is None and started_ray)
        return _drive(ray, recipe, address=address, notify=notify, rerun=rerun, runtime_name=runtime_name, runtime_env=runtime_env)
    finally:
        if started_ray:
            ray.shutdown()


def _drive(ray, recipe: Recipe, *, address, notify: ProgressFn, rerun: bool, runtime_name: str, runtime_env) -> SweepOutcome:
    ctx, tracker = start_sweep(recipe, runtime_name)
    tracker.set_tags(ctx.parent_id, {"executor": "ray", "ray.address": address or "local", "ray.version": ray.__version__})
    outcome = SweepOutcome(ctx.parent_id, recipe.experiment, recipe.tracking.uri, [])
    started = time.perf_counter()
    remote = ray.remote(_child_task)
    pending: dict[Any, int] = {}  # object ref -> index in outcome.children
    try:
        with _sigterm_as_interrupt():
            ctx_ref = ray.put(ctx)
            for item in plan(recipe):
                slot = open_child(ctx, tracker, item, rerun=rerun)
                if slot.resumed:
                    notify(item.label, "skipped")
                    outcome.children.append(ChildOutcome(item, slot.run_id, "SKIPPED"))
                    continue
                outcome.children.append(ChildOutcome(item, slot.run_id, "RUNNING"))
                # A cluster's workers do not share our environment; a Ray started here (or by our caller) does.
                opts = task_options(recipe, item.label, forward_env=address is not None)
                if runtime_env:
                    env = {**runtime_env, "env_vars": {**opts.get("runtime_env", {}).get("env_vars", {}), **runtime_env.get("env_vars", {})}}
                    opts["runtime_env"] = env
                pending[remote.options(**opts).remote(ctx_ref, item, slot.run_id)] = len(outcome.children) - 1
                notify(item.label, "queued")
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    _collect(ray, tracker, outcome, pending.pop(ref), ref, notify)
    except (KeyboardInterrupt, SweepInterrupted) as exc:
        outcome.interrupted = True
        _kill_outstanding(ray, tracker, recipe, outcome, pending, f"interrupted ({type(exc).__name__})")
        tracker.end(ctx.parent_id, "KILLED")
        outcome.seconds = time.perf_counter() - started
        return outcome
    outcome.seconds = time.perf_counter() - started
    finish_sweep(tracker, outcome)
    return outcome


def _collect(ray, tracker, outcome: SweepOutcome, index: int, ref, notify: ProgressFn) -> None:
    child = outcome.children[index]
    try:
        done = ray.get(ref)
    except (KeyboardInterrupt, SweepInterrupted):
        raise
    except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, OutOfMemoryError, ...
        done = _mark_failed(tracker, child, exc)
    outcome.children[index] = done
    notify(child.item.label, "done" if done.status == "FINISHED" else "failed")


def _kill_outstanding(ray, tracker, recipe: Recipe, outcome: SweepOutcome, pending: dict, reason: str) -> None:
    """Cancel every task still out; a child whose task already ended keeps its status, the rest end KILLED."""
    for ref in pending:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - already finished, or Ray itself is going down
            pass
    try:  # let the cancellations land, so no worker ends its run after we mark it
        ray.wait(list(pending), num_returns=len(pending), timeout=5)
    except Exception:  # noqa: BLE001
        pass
    for ref, index in pending.items():
        child = outcome.children[index]
        status = _run_status(tracker, child.run_id)
        if status in _TERMINAL:
            child.status = status
            continue
        try:
            mark_killed(recipe.tracking.uri, recipe.experiment, child.run_id, reason)
        except Exception:  # noqa: BLE001 - the store is gone too; nothing more to do
            pass
        child.status, child.error = "KILLED", "interrupted"
