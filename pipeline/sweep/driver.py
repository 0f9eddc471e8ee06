"""Orchestration: for each model x variant, build -> measure -> record. Knows no method internals.

A failing variant is recorded as FAILED (error tag + traceback artifact) and the sweep goes on; Ctrl-C or
SIGTERM ends the active child and the parent as KILLED so the store never keeps RUNNING runs.
"""

from __future__ import annotations

import gc
import signal
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import yaml

from pipeline import metrics as M
from pipeline.build.plan import WorkItem, content_key, plan, source_fingerprint
from pipeline.config.recipe import Recipe, VariantSpec
from pipeline.results import AccuracyResult, FidelityRecord, SpeedResult

# stage callback: (item label, stage name) -> None; stages: resolve, build, mmlu, speed, done, failed, skipped
ProgressFn = Callable[[str, str], None]


class SweepInterrupted(Exception):
    """Raised inside the sweep on SIGTERM so that it unwinds like Ctrl-C."""


@dataclass
class ChildOutcome:
    item: WorkItem
    run_id: str | None
    status: str  # FINISHED | FAILED | KILLED | SKIPPED (resumed from an earlier FINISHED run)
    fidelity: FidelityRecord | None = None
    accuracy: AccuracyResult | None = None
    speed: SpeedResult | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment: str
    tracking_uri: str
    children: list[ChildOutcome]
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def failures(self) -> list[ChildOutcome]:
        return [c for c in self.children if c.status in ("FAILED", "KILLED")]


def _method_tag(variant: VariantSpec) -> str:
    return "+".join(s.method for s in variant.pipeline_steps)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):  # noqa: ARG001
        raise SweepInterrupted(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a Ray worker)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


@dataclass(frozen=True)
class SweepContext:
    """What every child needs; plain data so it can travel to another process (e.g. a Ray task)."""

    recipe: Recipe
    parent_id: str
    device: str
    runtime_name: str
    base_tags: dict[str, str]


def start_sweep(recipe: Recipe, runtime_name: str = "transformers") -> tuple[SweepContext, object]:
    """Checks that fail before any model loads (data, tracking store), then the parent run."""
    from pipeline.data.mmlu import resolve_data
    from pipeline.env import pick_device
    from pipeline.tracking import Tracker, flatten, host_tags

    resolve_data(recipe.eval)  # a broken MMLU dir fails before any model loads
    tracker = Tracker(recipe.tracking.uri, recipe.experiment)  # an unreachable server too
    device = pick_device(recipe.eval.device)
    base_tags = host_tags(recipe.speed.threads)
    parent_id = tracker.start_parent(
        recipe.name,
        flatten("recipe", recipe.model_dump(mode="json")),
        {**base_tags, "recipe": recipe.name, "device": device, "seed": str(recipe.eval.seed)},
    )
    tracker.log_text(parent_id, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), M.ART_RECIPE)
    return SweepContext(recipe, parent_id, device, runtime_name, base_tags), tracker


@dataclass(frozen=True)
class ChildSlot:
    key: str
    run_id: str
    resumed: bool  # True: run_id is an earlier FINISHED run with the same content key


def open_child(ctx: SweepContext, tracker, item: WorkItem, *, rerun: bool) -> ChildSlot:
    """Reuse an earlier FINISHED twin (resume), or create the child run."""
    from pipeline.tracking import find_finished_child, flatten

    recipe = ctx.recipe
    versions = {k: v for k, v in ctx.base_tags.items() if k.startswith("version.")}
    key = content_key(recipe, item, {"source": source_fingerprint(item.model)}, versions)
    if not rerun:
        earlier = find_finished_child(recipe.tracking.uri, recipe.experiment, key)
        if earlier:
            return ChildSlot(key, earlier, resumed=True)
    tags = {
        **ctx.base_tags,
        M.TAG_MODEL: item.model.name,
        M.TAG_VARIANT: item.variant.name,
        M.TAG_ROLE: item.model.role,
        M.TAG_CONTENT_KEY: key,
        "method": _method_tag(item.variant),
        "runtime": ctx.runtime_name,
        "device": ctx.device,
        "seed": str(recipe.eval.seed),
    }
    params = {
        **flatten("model", item.model.model_dump(mode="json")),
        **flatten("variant", item.variant.model_dump(mode="json", exclude_none=True)),
        **flatten("eval", recipe.eval.model_dump(mode="json")),
        **flatten("speed", recipe.speed.model_dump(mode="json")),
    }
    return ChildSlot(key, tracker.start_child(ctx.parent_id, item.label, params, tags), resumed=False)


def execute_child(ctx: SweepContext, item: WorkItem, run_id: str, notify: ProgressFn | None = None) -> ChildOutcome:
    """Resolve, build, measure and record one child run, ending it FINISHED or FAILED. Self-contained:
    it opens its own tracking client, so it runs the same in this process or in a Ray task."""
    import torch

    from pipeline.models import resolve_model
    from pipeline.runtime import get_runtime
    from pipeline.tracking import Tracker

    notify = notify or (lambda label, stage: None)
    recipe = ctx.recipe
    tracker = Tracker(recipe.tracking.uri, recipe.experiment)
    child = ChildOutcome(item, run_id, "RUNNING")
    if recipe.speed.threads:
        torch.set_num_threads(recipe.speed.threads)
    try:
        notify(item.label, "resolve")
        resolved = resolve_model(item.model)
        tracker.set_tags(run_id, resolved.provenance.tags())
        torch.manual_seed(recipe.eval.seed)
        _measure(item, resolved, recipe, ctx.device, get_runtime(ctx.runtime_name), tracker, run_id, child, notify)
        tracker.end(run_id, "FINISHED")
        child.status = "FINISHED"
        notify(item.label, "done")
    except (KeyboardInterrupt, SweepInterrupted):
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of one variant (OOM included) is recorded; the sweep goes on
        _record_failure(tracker, run_id, child, exc)
        notify(item.label, "failed")
    finally:
        _free_memory()
    return child


def mark_killed(uri: str, experiment: str, run_id: str, reason: str) -> None:
    from pipeline.tracking import Tracker

    tracker = Tracker(uri, experiment)
    tracker.set_tags(run_id, {M.TAG_STATUS_ERROR: reason})
    tracker.end(run_id, "KILLED")


def run_sweep(recipe: Recipe, *, progress: ProgressFn | None = None, rerun: bool = False, runtime_name: str = "transformers") -> SweepOutcome:
    """The local executor: children one after another in this process."""
    notify = progress or (lambda label, stage: None)
    ctx, tracker = start_sweep(recipe, runtime_name)
    outcome = SweepOutcome(ctx.parent_id, recipe.experiment, recipe.tracking.uri, [])
    started = time.perf_counter()
    active: ChildOutcome | None = None
    try:
        with _sigterm_as_interrupt():
            for item in plan(recipe):
                slot = open_child(ctx, tracker, item, rerun=rerun)
                if slot.resumed:
                    notify(item.label, "skipped")
                    outcome.children.append(ChildOutcome(item, slot.run_id, "SKIPPED"))
                    continue
                active = ChildOutcome(item, slot.run_id, "RUNNING")
                outcome.children.append(active)
                done = execute_child(ctx, item, active.run_id, notify)
                outcome.children[-1] = done
                active = None
    except (KeyboardInterrupt, SweepInterrupted) as exc:
        outcome.interrupted = True
        if active is not None:
            mark_killed(recipe.tracking.uri, recipe.experiment, active.run_id, f"interrupted ({type(exc).__name__})")
            active.status, active.error = "KILLED", "interrupted"
        tracker.end(ctx.parent_id, "KILLED")
        outcome.seconds = time.perf_counter() - started
        return outcome
    outcome.seconds = time.perf_counter() - started
    finish_sweep(tracker, outcome)
    return outcome


def _measure(item, resolved, recipe, device, runtime, tracker, run_id, child: ChildOutcome, notify) -> None:
    from pipeline.build.artifact import base_reference_for, build_artifact

    notify(item.label, "build")
    # KL / top-1 agreement / weight error are measured against the unmodified model (cached per model on disk).
    base = base_reference_for(resolved, item.model, device=device, data_dir=recipe.eval.data_dir)
    artifact = build_artifact(resolved, item.model, item.variant, device=device, base=base, data_dir=recipe.eval.data_dir)
    child.fidelity = artifact.fidelity
    tracker.log_fidelity(run_id, artifact.fidelity)
    notify(item.label, "mmlu")
    child.accuracy = runtime.score_mmlu(artifact, recipe.eval)
    tracker.log_accuracy(run_id, child.accuracy)
    if recipe.speed.enabled:
        notify(item.label, "speed")
        child.speed = runtime.decode(artifact, recipe.speed)
        tracker.log_speed(run_id, child.speed)
    del artifact


def _record_failure(tracker, run_id: str, child: ChildOutcome, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    child.status, child.error = "FAILED", message
    try:
        tracker.set_tags(run_id, {M.TAG_STATUS_ERROR: message})
        tracker.log_text(run_id, "".join(traceback.format_exception(exc)), M.ART_TRACEBACK)
    finally:
        tracker.end(run_id, "FAILED")


def finish_sweep(tracker, outcome: SweepOutcome) -> None:
    parent_id = outcome.parent_run_id
    failed = [c.item.label for c in outcome.failures]
    tracker.set_tags(
        parent_id,
        {"children": str(len(outcome.children)), "failed_children": ",".join(failed) or "none", "wall_seconds": f"{outcome.seconds:.1f}"},
    )
    tracker.log_metrics(parent_id, {"sweep_wall_seconds": outcome.seconds, "failed_children": float(len(failed))})
    try:  # the verdict side's plots/tables on the parent run (absent until that module exists)
        from pipeline.verdict import log_sweep_report
    except ImportError:
        log_sweep_report = None
    if log_sweep_report is not None:
        try:
            log_sweep_report(outcome.tracking_uri, parent_id)
        except Exception as exc:  # noqa: BLE001 - a report problem must not lose the measurements
            tracker.set_tags(parent_id, {"report_error": f"{type(exc).__name__}: {exc}"[:500]})
    tracker.end(parent_id, "FAILED" if failed else "FINISHED")
