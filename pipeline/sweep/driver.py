"""The one sweep driver: for each model x variant, open a child run and hand it to an executor; knows no
method internals.

The driver alone owns: pre-flight checks and the parent run (`start_sweep`), resume (an earlier FINISHED run
with the same content key - recipe sections, source, host, code, data: `key_inputs` - is reused, `open_child`,
and recorded on the parent as a member of this sweep), failure isolation (a child that fails or dies ends its
run FAILED - error tag + traceback artifact - and the sweep goes on), interrupts (Ctrl-C or SIGTERM end the
children still out and the parent KILLED, so the store never keeps RUNNING runs) and the closing
(`finish_sweep`: summary tags, the verdict report, the parent's status). Executors only run children; the runs
themselves are opened and closed in `pipeline.sweep.runs`.
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.config.recipe import Recipe
from pipeline.results import parse_questions_csv
from pipeline.sweep.executors import DEFAULT_EXECUTOR, Done, Executor, ExecutorError, get_executor
from pipeline.sweep.key import source_fingerprint
from pipeline.sweep.lockstep import LockStep, Member
from pipeline.sweep.outcome import ChildOutcome, ProgressFn, SweepContext, SweepInterrupted, SweepOutcome, no_progress
from pipeline.sweep.runs import finish_sweep, key_inputs, open_child, outcomes_text, start_sweep
from pipeline.sweep.status import mark_failed, mark_killed
from pipeline.variants.plan import WorkItem, plan

POLL_S = 1.0  # how long the driver waits for a child at a time, so Ctrl-C / SIGTERM act promptly


def run_sweep(
    recipe: Recipe,
    *,
    executor: str | Executor = DEFAULT_EXECUTOR,
    progress: ProgressFn | None = None,
    rerun: bool = False,
    policy_path: str | Path | None = None,
) -> SweepOutcome:
    """Run every planned model x variant of `recipe` through `executor` (a name - inline, process, ray, or
    the alias local - or an Executor instance, e.g. `RayExecutor(address=...)`) and close the sweep with its
    verdict under `policy_path` (None: the default policy) in `outcome.verdict`.

    `rerun`: measure again even when a FINISHED run with the same content key exists. Returns the outcome
    with children in plan order; `interrupted` when Ctrl-C / SIGTERM ended it (parent KILLED, no report)."""
    notify = progress or no_progress
    ex = get_executor(executor) if isinstance(executor, str) else executor
    try:
        recipe = ex.prepare(recipe)
        sample = recipe.eval.sample
        if sample is not None and sample.sequential and not ex.lockstep:
            raise ExecutorError(
                f"--executor {ex.name} runs each child to its end, and a sequential sample (eval.sample.questions: auto) runs "
                "base and variants look by look together: use --executor process (the default) or ray"
            )
        if policy_path is not None:
            from pipeline.config.policy import load_policy

            load_policy(policy_path)  # a bad policy fails before any model loads
        ctx, tracker = start_sweep(recipe, {"executor": ex.name, **ex.parent_tags()})
        outcome = SweepOutcome(ctx.parent_id, recipe.experiment, recipe.tracking.uri, [], executor=ex.name)
        started = time.perf_counter()
        try:
            with _sigterm_as_interrupt():
                drive = _drive_lockstep if sample is not None and sample.sequential else _drive
                drive(ex, ctx, tracker, outcome, notify, rerun=rerun)
        except (KeyboardInterrupt, SweepInterrupted) as exc:
            with _shielded():
                _interrupt(ex, tracker, outcome, notify, f"interrupted ({type(exc).__name__})")
            outcome.seconds = time.perf_counter() - started
            return outcome
        outcome.seconds = time.perf_counter() - started
        finish_sweep(tracker, outcome, policy_path)
        return outcome
    finally:
        ex.close()


def _drive(ex: Executor, ctx: SweepContext, tracker, outcome: SweepOutcome, notify: ProgressFn, *, rerun: bool) -> None:
    out: dict[str, int] = {}  # run id -> index in outcome.children, for children submitted and not back

    def collect(done: list[Done]) -> None:
        for d in done:
            _settle(tracker, outcome, out.pop(d.run_id), d, notify)

    items = plan(ctx.recipe)
    planned = [item.label for item in items]
    members: dict[str, str] = {}  # label -> run id, resumed ones included: the sweep reads back whole
    tracker.record_members(ctx.parent_id, planned, members)
    inputs = key_inputs(ctx)
    sources: dict[str, str | None] = {}
    for item in items:
        if item.model.name not in sources:
            sources[item.model.name] = source_fingerprint(item.model)
        slot = open_child(ctx, tracker, item, rerun=rerun, inputs=inputs, source=sources[item.model.name])
        members[item.label] = slot.run_id
        if slot.resumed:
            notify(item.label, "skipped")
            outcome.children.append(ChildOutcome(item, slot.run_id, "SKIPPED"))
            continue
        while ex.slots is not None and len(out) >= ex.slots:
            collect(ex.wait(POLL_S))
        _submit(ex, ctx, tracker, outcome, out, item, slot.run_id, notify, lockstep=False)
    tracker.record_members(ctx.parent_id, planned, members)
    while out:
        collect(ex.wait(POLL_S))


def _drive_lockstep(
    ex: Executor, ctx: SweepContext, tracker, outcome: SweepOutcome, notify: ProgressFn, *, rerun: bool
) -> None:
    """A sequential sample: every child submitted at once, waiting for its word; `LockStep` says who scores its
    next look and who stops, one child working at a time (see `pipeline.sweep.lockstep`)."""
    from pipeline.data.mmlu import resolve_data
    from pipeline.data.sampling import look_sizes, sequential_order

    recipe, sample = ctx.recipe, ctx.recipe.eval.sample
    items = plan(recipe)
    planned, members = [item.label for item in items], {}
    tracker.record_members(ctx.parent_id, planned, members)
    inputs, sources = key_inputs(ctx), {}
    out: dict[str, int] = {}  # run id -> index in outcome.children, for children submitted and not back
    lock: list[Member] = []
    for item in items:
        if item.model.name not in sources:
            sources[item.model.name] = source_fingerprint(item.model)
        slot = open_child(ctx, tracker, item, rerun=rerun, inputs=inputs, source=sources[item.model.name])
        members[item.label] = slot.run_id
        role = "reference" if item.model.role == "reference" else "base" if item.variant.unmodified else "variant"
        member = Member(slot.run_id, item.label, item.model.name, item.runtime, role, scored=slot.prior)
        lock.append(member)
        if slot.resumed:
            notify(item.label, "skipped")
            outcome.children.append(ChildOutcome(item, slot.run_id, "SKIPPED"))
            member.done, member.stopped = True, f"reused from run {slot.source}"
            continue
        if not _submit(ex, ctx, tracker, outcome, out, item, slot.run_id, notify, lockstep=True):
            member.done, member.failed, member.stopped = True, True, "could not start"
    tracker.record_members(ctx.parent_id, planned, members)
    order = sequential_order(resolve_data(recipe.eval), sample.seed)
    cache: dict[tuple[str, int], dict] = {}

    def correct(run_id: str, keys) -> np.ndarray:
        """What the run answered right, as its looks so far logged it (read once per finished look)."""
        m = next(x for x in lock if x.run_id == run_id)
        if (run_id, m.scored) not in cache:
            text = outcomes_text(tracker.uri, run_id) or ""
            cache[(run_id, m.scored)] = {(q.subject, q.index): q.correct for q in parse_questions_csv(text)}
        right = cache[(run_id, m.scored)]
        return np.array([right[k] for k in keys], dtype=bool)

    pool = order[: sample.max]
    step = LockStep(
        lock, pool, look_sizes(sample.step, len(pool)), sample.delta_points, sample.confidence, len(order), correct
    )
    told_stop: set[str] = set()
    labels = {m.run_id: m.label for m in lock}

    def collect(done: list[Done]) -> None:
        for d in done:
            _settle(tracker, outcome, out.pop(d.run_id), d, notify)
            step.ended(d.run_id, told=d.run_id in told_stop)

    while (action := step.next_action()) is not None:
        kind, run_id, reason = action
        if run_id not in out:  # it ended on its own meanwhile
            step.ended(run_id, told=False)
            continue
        if kind == "stop":
            told_stop.add(run_id)
            notify(labels[run_id], f"stop: {reason}"[:200])
        ex.tell(run_id, reason)
        looked = False
        while run_id in out and not looked:
            collect(ex.wait(POLL_S))
            for rid, scored in ex.looks():
                step.scored(rid, scored)
                notify(labels[rid], f"scored {scored} questions")
                looked = looked or (rid == run_id and kind == "go")
    while out:
        collect(ex.wait(POLL_S))


def _submit(
    ex: Executor,
    ctx: SweepContext,
    tracker,
    outcome: SweepOutcome,
    out: dict[str, int],
    item: WorkItem,
    run_id: str,
    notify: ProgressFn,
    *,
    lockstep: bool,
) -> bool:
    """Hand one child to the executor (its outcome RUNNING, its index in `out`); False when it could not even
    start: then its run is FAILED with why, alone, and the sweep goes on."""
    outcome.children.append(ChildOutcome(item, run_id, "RUNNING"))
    out[run_id] = len(outcome.children) - 1
    try:
        ex.submit(ctx, item, run_id, notify, lockstep=lockstep)
    except Exception as exc:  # noqa: BLE001 - a child that cannot even start fails alone
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
        _settle(
            tracker,
            outcome,
            out.pop(run_id),
            Done(run_id, None, f"could not start: {message}", "".join(traceback.format_exception(exc))),
            notify,
        )
        return False
    notify(item.label, "queued")
    return True


def _settle(tracker, outcome: SweepOutcome, index: int, done: Done, notify: ProgressFn) -> None:
    """Put a child that came back into the outcome; end its run FAILED if it could not end it itself."""
    child = outcome.children[index]
    if done.outcome is not None:
        child = outcome.children[index] = done.outcome
    else:
        child.status = mark_failed(tracker, child.run_id, done.error or "child ended without a result", done.detail)
        child.error = None if child.status == "FINISHED" else done.error
    notify(child.item.label, "done" if child.status == "FINISHED" else "failed")


def _interrupt(ex: Executor, tracker, outcome: SweepOutcome, notify: ProgressFn, reason: str) -> None:
    """Stop every child still out, end their runs KILLED (those the child already ended keep their status),
    then the parent KILLED."""
    outcome.interrupted = True
    try:
        ex.cancel()
    finally:
        for child in outcome.children:
            if child.status != "RUNNING":
                continue
            try:
                child.status = mark_killed(tracker, child.run_id, reason)
            except Exception:  # noqa: BLE001 - the store is gone too; nothing more to do
                child.status = "KILLED"
            child.error = None if child.status == "FINISHED" else "interrupted"
            notify(child.item.label, "killed")
        tracker.end(outcome.parent_run_id, "KILLED")


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


@contextmanager
def _shielded() -> Iterator[None]:
    """A second Ctrl-C / SIGTERM while children are being ended would leave runs RUNNING: hold them off."""
    try:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
