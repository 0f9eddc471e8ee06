"""One child run (model x variant): resolve, build, measure, record; the same code in every executor.

`execute_child` ends its run FINISHED or FAILED itself. When a child cannot (its process died, its task was
cancelled), the driver ends the run with `mark_failed` / `mark_killed`, which leave a run alone that the
child already ended.

Library chatter (warnings, library logging, tqdm bars) goes to a log file attached to the run as
`logs/child.log`, so the console keeps one progress display: ours.

`python -m pipeline.sweep.child PAYLOAD RESULT EVENTS_FD [LOG]` is the process executor's child: it reads the
work from PAYLOAD (written by `write_payload`), runs `execute_child`, writes its ChildOutcome to RESULT (read
back with `read_result`) and reports stages on the pipe EVENTS_FD, one line each; its output (file
descriptors 1 and 2) goes to LOG while the child works. In a lock-step sweep (a sequential sample) PAYLOAD
names a second pipe on which the driver's word comes (`PipeLookChannel`): "go" or "stop REASON", one line
each; the child reports each finished look on EVENTS_FD as "look N". Before it unpickles the work it
imports plugin modules, so methods registered outside `pipeline` exist here too:
  - `$SHRINKGATE_PLUGINS="mod1,mod2"`: modules to import (e.g. in-house or test-only methods);
  - the modules that registered this child's methods in the driver (passed in PAYLOAD).
A plugin that fails to import fails the child (its traceback is on stderr).
A segfault leaves a Python traceback on stderr (faulthandler). The child exits when the driver disappears,
ending its run KILLED, so no orphan keeps computing.
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from pipeline import metrics as M
from pipeline.build.plan import WorkItem
from pipeline.sweep.lockstep import LookChannel
from pipeline.sweep.outcome import ChildOutcome, ProgressFn, SweepContext, SweepInterrupted, no_progress

PLUGINS_ENV = "SHRINKGATE_PLUGINS"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
PARENT_POLL_S = 1.0


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
                control = _looks_control(tracker, run_id, looks, first) if looks is not None else None
                _measure(item, resolved, recipe, ctx.device, get_runtime(item.runtime, recipe), tracker, run_id, child, notify, control)
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


def _looks_control(tracker, run_id: str, looks: LookChannel, first: str | None):
    """The sequential sample's `Looks` in a lock-step sweep: the looks this run took over from an unfinished twin
    (copied to it by the driver), the driver's first word, and after each look: log its outcomes (what a rerun
    resumes from), report it, wait for the driver's word."""
    from pipeline.results import parse_questions_csv, questions_csv
    from pipeline.runtime.mmlu import Looks
    from pipeline.tracking import read_run_text

    prior_text = read_run_text(tracker.uri, run_id, M.ART_MMLU_LOOKS)
    prior = parse_questions_csv(prior_text) if prior_text else ()
    done: list[int] = [int(n) for n in tracker.client.get_run(run_id).data.tags.get(M.TAG_MMLU_LOOKS, "").split(",") if n]

    def after_look(scored, population: int) -> str | None:  # noqa: ARG001 - the driver decides, knowing the population
        done.append(len(scored))
        tracker.log_text(run_id, questions_csv(scored), M.ART_MMLU_LOOKS)
        tracker.set_tags(run_id, {M.TAG_MMLU_LOOKS: ",".join(map(str, done))})
        looks.report(len(scored))
        return looks.wait()

    return Looks(after_look=after_look, prior=tuple(prior), stopped=first)


def determinism(item: WorkItem, runtime, device: str) -> dict[str, str]:
    """The `deterministic` tag and its basis: "true" only when every step's method is bit-reproducible AND this
    engine's scoring on this device was measured to be (tests/test_determinism.py); "false" for a method that is
    not; "unknown" where nobody measured it (a server, CUDA). The gate treats anything but "true" as an unknown
    noise floor: a measured repeat of the variant, or the MMLU rule stays undecided."""
    from pipeline.methods import registry

    methods = [s.method for s in item.variant.pipeline_steps]
    known = registry()
    noisy = [m for m in methods if m in known and not known[m].deterministic]
    if noisy:
        return {M.TAG_DETERMINISTIC: "false", M.TAG_DETERMINISTIC_BASIS: f"method {', '.join(noisy)} is not bit-reproducible run to run (tests/test_determinism.py)"}
    why = runtime.unmeasured_reproducibility(device)
    if why:
        return {M.TAG_DETERMINISTIC: "unknown", M.TAG_DETERMINISTIC_BASIS: why}
    return {
        M.TAG_DETERMINISTIC: "true",
        M.TAG_DETERMINISTIC_BASIS: f"{'+'.join(methods)} scored on {runtime.name} ({device}): bit-identical at 1 and 2 threads (tests/test_determinism.py)",
    }


def _measure(item, resolved, recipe, device, runtime, tracker, run_id, child: ChildOutcome, notify, control) -> None:
    from pipeline.build.artifact import base_reference_for, build_artifact

    notify(item.label, "build")
    # KL / top-1 agreement / weight error are measured against the unmodified transformers model (cached per
    # model on disk), whichever engine runs the variant.
    fmt = recipe.format_of(item.runtime)
    if fmt == "gguf":
        from pipeline.build.gguf_artifact import build_gguf_artifact
        from pipeline.runtime.speed.host import default_threads

        base = base_reference_for(resolved, item.model, device="cpu", data_dir=recipe.eval.data_dir)
        artifact = build_gguf_artifact(
            resolved, item.model, item.variant, base=base, data_dir=recipe.eval.data_dir, threads=recipe.speed.threads or default_threads()
        )
    elif fmt == "none":  # a server that serves its own model: nothing to build, nothing to count
        artifact = resolved
    else:
        base = base_reference_for(resolved, item.model, device=device, data_dir=recipe.eval.data_dir)
        artifact = build_artifact(resolved, item.model, item.variant, device=device, base=base, data_dir=recipe.eval.data_dir)
        if item.runtime == "openai":  # a server loads it from disk: save it, and free the in-memory copy
            from pipeline.build.artifact import save_checkpoint

            artifact.checkpoint_dir = save_checkpoint(artifact, Path(tempfile.mkdtemp(prefix="shrinkgate-checkpoint-")))
            artifact.model = None
            gc.collect()
    session = runtime.session(artifact, resolved.dense_dir)
    try:
        fidelity = getattr(artifact, "fidelity", None)
        if fidelity is not None:
            child.fidelity = fidelity
            tracker.log_fidelity(run_id, fidelity)
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
            tracker.set_tags(run_id, log_predictions(recipe, item, resolved, fidelity, tracker, run_id))
    finally:
        for path, text in session.logs().items():
            try:
                tracker.log_text(run_id, text, path)
            except Exception:  # noqa: BLE001 - a log that cannot be stored never hides the run's own error
                pass
        close = getattr(artifact, "close", None)
        if close is not None:
            close()  # a GGUF build's temporary files
        del artifact


def log_predictions(recipe, item: WorkItem, resolved, fidelity, tracker, run_id: str) -> dict[str, str]:
    """Predicted decode tok/s, TPOT and TTFT on `speed.target_hardware` at the recipe's batches, from the model's
    config and the bits per weight this build measured; the tags say on what basis, or why there is none (a
    prediction that cannot be made never fails the run: it measured what it measures)."""
    from pipeline.predict.command import PredictError, Target, model_facts, predict_targets
    from pipeline.predict.formats import UnknownFormat, weight_format
    from pipeline.predict.hardware import hardware

    spec = recipe.speed
    tags = {M.TAG_PREDICTED_HARDWARE: spec.target_hardware}
    try:
        kind = hardware(spec.target_hardware).device_kind
        dtype = "bf16" if kind == "gpu" else {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[item.model.dtype]
        config_dir = Path(resolved.dense_dir) if getattr(resolved, "dense_dir", None) else None
        source = str(config_dir) if config_dir is not None and (config_dir / "config.json").is_file() else item.model.source
        method = next((s.method for s in reversed(item.variant.pipeline_steps) if s.method != "none"), "none")
        # measured bits where they are the stored form (a GGUF file, a quantized format); dense forms run in `dtype`
        stored_form = recipe.format_of(item.runtime) == "gguf" or weight_format(method).bits_per_weight is not None
        bits = fidelity.bits_per_weight if fidelity is not None and stored_form else None
        target = Target(model_facts(source, dtype, item.model.name), method, item.variant.name, bits, "measured: this run's fidelity record" if bits else None)
        predictions = predict_targets([target], spec.target_hardware, item.runtime, spec.batch_sizes, spec.prompt_tokens, spec.new_tokens)
    except (PredictError, UnknownFormat, ValueError) as exc:
        return tags | {M.TAG_PREDICTED_ERROR: exc.args[0] if exc.args else str(exc)}
    metrics = {}
    for p in predictions:
        for name, value in ((M.DECODE_TOK_S, p.decode_tok_s), (M.TPOT_MS, p.tpot_ms), (M.TTFT_MS, p.ttft_ms)):
            metrics[M.PREDICTED + M.batch_metric(name, p.batch)] = value
    tracker.log_metrics(run_id, metrics)
    f = predictions[0].factors
    basis = f"{dtype}, {predictions[0].bits_per_weight:.2f} bits/weight ({predictions[0].bits_source}); {f.engine} factors: {f.provenance}"
    return tags | {M.TAG_PREDICTED_BASIS: basis[:5000]}


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


# -- ending a run the child could not end ----------------------------------------------------------------------
def run_status(tracker, run_id: str) -> str | None:
    try:
        return tracker.client.get_run(run_id).info.status
    except Exception:  # noqa: BLE001 - the store is unreachable: treat as unknown
        return None


def mark_failed(tracker, run_id: str, message: str, detail: str) -> str:
    """End the run FAILED with `message` (error tag) and `detail` (traceback artifact), unless the child got
    as far as ending it itself; returns the run's final status."""
    status = run_status(tracker, run_id)
    if status in TERMINAL:
        return status
    try:
        tracker.set_tags(run_id, {M.TAG_STATUS_ERROR: message[:5000]})
        if detail:
            tracker.log_text(run_id, detail, M.ART_TRACEBACK)
    finally:
        tracker.end(run_id, "FAILED")
    return "FAILED"


def mark_killed(tracker, run_id: str, reason: str) -> str:
    """End the run KILLED with `reason` as its error tag, unless it already ended; returns its final status."""
    status = run_status(tracker, run_id)
    if status in TERMINAL:
        return status
    tracker.set_tags(run_id, {M.TAG_STATUS_ERROR: reason})
    tracker.end(run_id, "KILLED")
    return "KILLED"


# -- the process executor's child -------------------------------------------------------------------------------
def write_payload(path: str | Path, ctx: SweepContext, item: WorkItem, run_id: str, plugins: list[str], commands_fd: int | None = None) -> None:
    """The work of one child; the work is pickled apart so plugins are imported before it is unpickled.
    `commands_fd`: the pipe the driver's word comes on in a lock-step sweep (None: the child runs on its own)."""
    work = pickle.dumps((ctx, item, run_id))
    Path(path).write_bytes(pickle.dumps({"plugins": list(plugins), "work": work, "commands_fd": commands_fd}))


class PipeLookChannel(LookChannel):
    """The process executor's child end of a lock-step sweep: the driver's word arrives as lines on a pipe ("go",
    "stop REASON"); finished looks go back as "look N" on the events pipe. A driver that is gone (end of file)
    ends the child like an interrupt."""

    def __init__(self, commands_fd: int, events) -> None:
        self._commands = os.fdopen(commands_fd, "r", encoding="utf-8", errors="replace")
        self._events = events

    def wait(self) -> str | None:
        line = self._commands.readline()
        if not line:
            raise SweepInterrupted("the driver closed the lock-step pipe")
        word, _, reason = line.rstrip("\n").partition(" ")
        return None if word == "go" else reason or "stopped by the driver"

    def report(self, scored: int) -> None:
        self._events.write(f"look {scored}\n")
        self._events.flush()


def read_result(path: str | Path) -> ChildOutcome | None:
    """The ChildOutcome a child wrote, or None when it wrote none (it died first)."""
    try:
        return pickle.loads(Path(path).read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError):
        return None


def env_plugins() -> list[str]:
    """The modules named in `$SHRINKGATE_PLUGINS` (comma-separated)."""
    return [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]


def import_plugins(names: list[str]) -> None:
    """Import modules that register methods (an ImportError propagates: the child cannot do its work)."""
    for name in names:
        importlib.import_module(name)


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
