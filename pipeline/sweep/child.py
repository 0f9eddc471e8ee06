"""One child run (model x variant): resolve, build, measure, record; the same code in every executor.

`execute_child` ends its run FINISHED or FAILED itself. When a child cannot (its process died, its task was
cancelled), the driver ends the run with `pipeline.sweep.status.mark_failed` / `mark_killed`, which leave a run
alone that the child already ended. The process executor runs it in `pipeline.sweep.executors.process_child`.

The build goes through the artifact seam: the runtime says which format it takes (`Runtime.artifact_format`),
`pipeline.variants.built.BUILDERS` builds that format, and the runtime measures what was built (`Built`).

Library chatter (warnings, library logging, tqdm bars) goes to a log file attached to the run as
`logs/child.log`, so the console keeps one progress display: ours.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import traceback
from pathlib import Path

from pipeline import metrics as M
from pipeline.sweep.lockstep import LookChannel
from pipeline.sweep.outcome import ChildOutcome, ProgressFn, SweepContext, SweepInterrupted, no_progress
from pipeline.variants.plan import WorkItem


def execute_child(
    ctx: SweepContext,
    item: WorkItem,
    run_id: str,
    notify: ProgressFn = no_progress,
    *,
    log_path: str | Path | None = None,
    own_process: bool = False,
    looks: LookChannel | None = None,
) -> ChildOutcome:
    """Resolve, build, measure and record one child run, ending it FINISHED or FAILED. Self-contained: it
    opens its own tracking client, so it runs the same in the driver, a subprocess or a Ray task. Reports
    the stages resolve, build, mmlu, speed; the driver reports how the child ended.

    Library chatter goes to `log_path` (a temporary file by default), attached as `logs/child.log` before the
    run ends; `own_process=True` (a process that runs only this child) captures its file descriptors too.
    `looks`: a lock-step sweep's channel (`pipeline.sweep.lockstep`): the child waits for its first turn before
    it does anything, and for the driver's word after each look of its sequential sample."""
    first = looks.wait() if looks is not None else None  # before any work: one child works at a time
    import torch

    from pipeline.env import library_output
    from pipeline.models import resolve_model
    from pipeline.runtime import get_runtime
    from pipeline.sweep.looks import looks_control
    from pipeline.tracking import Tracker

    recipe = ctx.recipe
    tracker = Tracker(recipe.tracking.uri, recipe.experiment)
    child = ChildOutcome(item, run_id, "RUNNING")
    scratch = None if log_path is not None else tempfile.mkdtemp(prefix="shrinkgate-log-")
    log = Path(log_path) if log_path is not None else Path(scratch) / Path(M.ART_CHILD_LOG).name
    failure: BaseException | None = None
    try:
        with library_output(log, whole_process=own_process):
            try:
                if recipe.speed.threads:
                    torch.set_num_threads(recipe.speed.threads)
                notify(item.label, "resolve")
                resolved = resolve_model(item.model)
                tracker.set_tags(run_id, resolved.provenance.tags())
                torch.manual_seed(recipe.eval.seed)
                control = looks_control(tracker, run_id, looks, first) if looks is not None else None
                _measure(
                    item,
                    resolved,
                    recipe,
                    ctx.device,
                    get_runtime(item.runtime, recipe),
                    tracker,
                    run_id,
                    child,
                    notify,
                    control,
                )
            except (KeyboardInterrupt, SweepInterrupted):
                raise
            except BaseException as exc:  # noqa: BLE001 - any failure of one variant (OOM included) is recorded; the sweep goes on
                failure = exc
            finally:
                _free_memory()
        _attach_log(tracker, run_id, log)
        if failure is None:
            try:
                tracker.end(run_id, "FINISHED")
                child.status = "FINISHED"
            except Exception as exc:  # noqa: BLE001 - the store failed at the end: record it like any failure
                failure = exc
        if failure is not None:
            _record_failure(tracker, run_id, child, failure)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return child


def _attach_log(tracker, run_id: str, log: Path) -> None:
    """The child's log as `logs/child.log`; a log that cannot be stored never costs the run its results."""
    if not log.is_file():
        return
    try:
        tracker.log_text(run_id, log.read_text(encoding="utf-8", errors="replace"), M.ART_CHILD_LOG)
    except Exception:  # noqa: BLE001
        pass


def determinism(item: WorkItem, runtime, device: str) -> dict[str, str]:
    """The `deterministic` tag and its basis: "true" only when every step's method is bit-reproducible AND this
    runtime's scoring on this device was measured to be (tests/test_determinism.py); "false" for a method that is
    not; "unknown" where nobody measured it (a server, CUDA). The gate treats anything but "true" as an unknown
    noise floor: a measured repeat of the variant, or the MMLU rule stays undecided."""
    from pipeline.methods import registry

    methods = [s.method for s in item.variant.pipeline_steps]
    known = registry()
    noisy = [m for m in methods if m in known and not known[m].deterministic]
    if noisy:
        return {
            M.TAG_DETERMINISTIC: "false",
            M.TAG_DETERMINISTIC_BASIS: f"method {', '.join(noisy)} is not bit-reproducible run to run (tests/test_determinism.py)",
        }
    why = runtime.unmeasured_reproducibility(device)
    if why:
        return {M.TAG_DETERMINISTIC: "unknown", M.TAG_DETERMINISTIC_BASIS: why}
    return {
        M.TAG_DETERMINISTIC: "true",
        M.TAG_DETERMINISTIC_BASIS: f"{'+'.join(methods)} scored on {runtime.name} ({device}): bit-identical at 1 and 2 threads (tests/test_determinism.py)",
    }


def _measure(item, resolved, recipe, device, runtime, tracker, run_id, child: ChildOutcome, notify, control) -> None:
    from pipeline.host import default_threads
    from pipeline.sweep.predictions import log_predictions
    from pipeline.variants.built import BUILDERS

    notify(item.label, "build")
    # KL / top-1 agreement / weight error are measured against the unmodified transformers model (cached per
    # model on disk), whichever runtime runs the variant.
    builder = BUILDERS.get(runtime.artifact_format)
    built = builder.build(
        resolved,
        item.model,
        item.variant,
        device=builder.build_device or device,
        data_dir=recipe.eval.data_dir,
        threads=recipe.speed.threads or default_threads(),
    )
    try:
        session = runtime.session(built, resolved.dense_dir)
        if built.fidelity is not None:
            child.fidelity = built.fidelity
            tracker.log_fidelity(run_id, built.fidelity)
        try:
            with session as target:
                tracker.set_tags(run_id, session.tags)
                if runtime.scores_mmlu:
                    notify(item.label, "mmlu")
                    child.accuracy = runtime.score_mmlu(target, recipe.eval, control)
                    tracker.log_accuracy(run_id, child.accuracy)
                    tracker.set_tags(run_id, determinism(item, runtime, device))
                if recipe.speed.enabled:
                    notify(item.label, "speed")
                    child.speed = runtime.decode(target, recipe.speed)
                    tracker.log_speed(run_id, child.speed)
            if recipe.speed.target_hardware:
                tags = log_predictions(
                    recipe, item, resolved, built.fidelity, tracker, run_id, runs_stored_form=built.runs_stored_form
                )
                tracker.set_tags(run_id, tags)
        finally:
            for path, text in session.logs().items():
                try:
                    tracker.log_text(run_id, text, path)
                except Exception:  # noqa: BLE001 - a log that cannot be stored never hides the run's own error
                    pass
    finally:
        built.close()  # temporary files (a GGUF build's, a saved checkpoint)
        del built


def _record_failure(tracker, run_id: str, child: ChildOutcome, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    child.status, child.error = "FAILED", message
    try:
        tracker.set_tags(run_id, {M.TAG_STATUS_ERROR: message})
        tracker.log_text(run_id, "".join(traceback.format_exception(exc)), M.ART_TRACEBACK)
    finally:
        tracker.end(run_id, "FAILED")


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
