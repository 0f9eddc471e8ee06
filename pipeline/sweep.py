"""Orchestration: for each model x variant, build -> measure -> record. Knows no method internals.

A failing variant is recorded as FAILED (error tag + traceback artifact) and the sweep goes on; Ctrl-C or
SIGTERM ends the active child and the parent as KILLED so the store never keeps RUNNING runs.
"""

from __future__ import annotations

import gc
import hashlib
import json
import signal
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import yaml

from pipeline import metrics as M
from pipeline.recipe import ModelSpec, Recipe, VariantSpec
from pipeline.results import AccuracyResult, FidelityRecord, SpeedResult

AS_PUBLISHED = VariantSpec(name="none", method="none")

# stage callback: (item label, stage name) -> None; stages: resolve, build, mmlu, speed, done, failed, skipped
ProgressFn = Callable[[str, str], None]


class SweepInterrupted(Exception):
    """Raised inside the sweep on SIGTERM so that it unwinds like Ctrl-C."""


@dataclass(frozen=True)
class WorkItem:
    model: ModelSpec
    variant: VariantSpec

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.variant.name}"


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


def plan(recipe: Recipe) -> list[WorkItem]:
    """Candidates get every variant; references are evaluated as published."""
    items: list[WorkItem] = []
    for model in recipe.models:
        variants = recipe.variants if model.role == "candidate" else [AS_PUBLISHED]
        items += [WorkItem(model, v) for v in variants]
    return items


def content_key(recipe: Recipe, item: WorkItem, provenance_tags: dict[str, str], versions: dict[str, str]) -> str:
    """What determines a child's results; a FINISHED run with the same key can be reused on resume."""
    doc = {
        "model": item.model.model_dump(),
        "variant": item.variant.model_dump(),
        "eval": recipe.eval.model_dump(),
        "speed": recipe.speed.model_dump(),
        "provenance": provenance_tags,
        "versions": versions,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


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


def run_sweep(recipe: Recipe, *, progress: ProgressFn | None = None, rerun: bool = False, runtime_name: str = "transformers") -> SweepOutcome:
    import torch

    from pipeline.accuracy import resolve_data
    from pipeline.models import ModelError, resolve_model
    from pipeline.models.loader import pick_device
    from pipeline.runtime import get_runtime
    from pipeline.tracking import Tracker, find_finished_child, flatten, host_tags

    notify = progress or (lambda label, stage: None)
    resolve_data(recipe.eval)  # a broken MMLU dir fails before any model loads
    tracker = Tracker(recipe.tracking.uri, recipe.experiment)  # an unreachable server too
    device = pick_device(recipe.eval.device)
    if recipe.speed.threads:
        torch.set_num_threads(recipe.speed.threads)
    runtime = get_runtime(runtime_name)
    base_tags = host_tags(recipe.speed.threads)
    versions = {k: v for k, v in base_tags.items() if k.startswith("version.")}
    parent_id = tracker.start_parent(
        recipe.name,
        flatten("recipe", recipe.model_dump(mode="json")),
        {**base_tags, "recipe": recipe.name, "device": device, "seed": str(recipe.eval.seed)},
    )
    tracker.log_text(parent_id, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), M.ART_RECIPE)
    outcome = SweepOutcome(parent_id, recipe.experiment, recipe.tracking.uri, [])
    started = time.perf_counter()
    resolved_cache: dict[str, object] = {}
    active: str | None = None
    try:
        with _sigterm_as_interrupt():
            for item in plan(recipe):
                notify(item.label, "resolve")
                child_tags = {
                    **base_tags,
                    M.TAG_MODEL: item.model.name,
                    M.TAG_VARIANT: item.variant.name,
                    M.TAG_ROLE: item.model.role,
                    "method": _method_tag(item.variant),
                    "runtime": runtime.name,
                    "device": device,
                    "seed": str(recipe.eval.seed),
                }
                params = {
                    **flatten("model", item.model.model_dump(mode="json")),
                    **flatten("variant", item.variant.model_dump(mode="json", exclude_none=True)),
                    **flatten("eval", recipe.eval.model_dump(mode="json")),
                    **flatten("speed", recipe.speed.model_dump(mode="json")),
                }
                resolved = resolved_cache.get(item.model.name)
                resolve_error = None
                if resolved is None:
                    try:
                        resolved = resolve_model(item.model)
                        resolved_cache[item.model.name] = resolved
                    except ModelError as exc:
                        resolve_error = str(exc)
                prov_tags = resolved.provenance.tags() if resolved is not None else {}
                key = content_key(recipe, item, prov_tags, versions)
                child_tags.update(prov_tags)
                child_tags[M.TAG_CONTENT_KEY] = key
                if resolve_error is None and not rerun:
                    earlier = find_finished_child(recipe.tracking.uri, recipe.experiment, key)
                    if earlier:
                        notify(item.label, "skipped")
                        outcome.children.append(ChildOutcome(item, earlier, "SKIPPED"))
                        continue
                run_id = tracker.start_child(parent_id, item.label, params, child_tags)
                active = run_id
                child = ChildOutcome(item, run_id, "RUNNING")
                outcome.children.append(child)
                try:
                    if resolve_error is not None:
                        raise RuntimeError(resolve_error)
                    torch.manual_seed(recipe.eval.seed)
                    _measure(item, resolved, recipe, device, runtime, tracker, run_id, child, notify)
                    tracker.end(run_id, "FINISHED")
                    child.status, active = "FINISHED", None
                    notify(item.label, "done")
                except (KeyboardInterrupt, SweepInterrupted):
                    raise
                except BaseException as exc:  # noqa: BLE001 - any failure of one variant is recorded, the sweep goes on
                    _record_failure(tracker, run_id, child, exc)
                    active = None
                    notify(item.label, "failed")
                finally:
                    _free_memory()
    except (KeyboardInterrupt, SweepInterrupted) as exc:
        outcome.interrupted = True
        if active is not None:
            tracker.set_tags(active, {M.TAG_STATUS_ERROR: f"interrupted ({type(exc).__name__})"})
            tracker.end(active, "KILLED")
            for c in outcome.children:
                if c.run_id == active:
                    c.status, c.error = "KILLED", "interrupted"
        tracker.end(parent_id, "KILLED")
        outcome.seconds = time.perf_counter() - started
        return outcome
    outcome.seconds = time.perf_counter() - started
    _finish_parent(tracker, parent_id, outcome)
    return outcome


def _measure(item, resolved, recipe, device, runtime, tracker, run_id, child: ChildOutcome, notify) -> None:
    from pipeline.build import build_artifact

    notify(item.label, "build")
    artifact = build_artifact(resolved, item.model, item.variant, device=device)
    child.fidelity = artifact.fidelity
    tracker.log_fidelity(run_id, artifact.fidelity)
    tracker.set_tags(run_id, {f"build.{k}": str(v) for k, v in artifact.fidelity.extra.items()})
    notify(item.label, "mmlu")
    child.accuracy = runtime.score_mmlu(artifact, recipe.eval)
    tracker.log_accuracy(run_id, child.accuracy)
    if recipe.speed.enabled:
        notify(item.label, "speed")
        child.speed = runtime.decode(artifact, recipe.speed)
        tracker.log_speed(run_id, child.speed)
        if artifact.fidelity.extra.get("dense_fallback"):
            tracker.set_tags(run_id, {M.TAG_DENSE_FALLBACK: "true"})
    del artifact


def _record_failure(tracker, run_id: str, child: ChildOutcome, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    child.status, child.error = "FAILED", message
    try:
        tracker.set_tags(run_id, {M.TAG_STATUS_ERROR: message})
        tracker.log_text(run_id, "".join(traceback.format_exception(exc)), M.ART_TRACEBACK)
    finally:
        tracker.end(run_id, "FAILED")


def _finish_parent(tracker, parent_id: str, outcome: SweepOutcome) -> None:
    failed = [c.item.label for c in outcome.failures]
    tracker.set_tags(
        parent_id,
        {"children": str(len(outcome.children)), "failed_children": ",".join(failed) or "none", "wall_seconds": f"{outcome.seconds:.1f}"},
    )
    tracker.log_metrics(parent_id, {"sweep_wall_seconds": outcome.seconds, "failed_children": float(len(failed))})
    try:  # the verdict side's plots/tables on the parent run (absent until that module exists)
        from pipeline.report import log_sweep_report
    except ImportError:
        log_sweep_report = None
    if log_sweep_report is not None:
        try:
            log_sweep_report(outcome.tracking_uri, parent_id)
        except Exception as exc:  # noqa: BLE001 - a report problem must not lose the measurements
            tracker.set_tags(parent_id, {"report_error": f"{type(exc).__name__}: {exc}"[:500]})
    tracker.end(parent_id, "FAILED" if failed else "FINISHED")
