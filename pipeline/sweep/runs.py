"""The sweep's MLflow runs, opened and closed by the driver: the parent (`start_sweep`), each child (`open_child`:
a new run, an earlier FINISHED twin copied in, or an unfinished sequential run's looks taken over), the resume key's
inputs (`key_inputs`), and the closing (`finish_sweep`: summary tags, the verdict report, the parent's status)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline import metrics as M
from pipeline.config.recipe import Recipe, VariantSpec
from pipeline.results import parse_questions_csv
from pipeline.sweep.key import KeyInputs, content_key, data_fingerprint
from pipeline.sweep.outcome import SweepContext, SweepOutcome
from pipeline.variants.plan import WorkItem
from pipeline.verdict import log_sweep_report


def method_tag(variant: VariantSpec) -> str:
    return "+".join(s.method for s in variant.pipeline_steps)


def start_sweep(recipe: Recipe, tags: dict[str, str] | None = None) -> tuple[SweepContext, object]:
    """Checks that fail before any model loads (data, tracking store), then the parent run (with `tags`)."""
    from pipeline.data.mmlu import resolve_data
    from pipeline.env import pick_device
    from pipeline.runtime import check_runtimes
    from pipeline.tracking import Tracker, flatten, host_tags

    resolve_data(recipe.eval)  # a broken MMLU dir fails before any model loads
    check_runtimes(recipe, recipe.name)  # so does a runtime that is missing or cannot run the speed spec
    tracker = Tracker(recipe.tracking.uri, recipe.experiment)  # an unreachable server too
    device = pick_device(recipe.eval.device)
    base_tags = host_tags(recipe.speed.threads)
    parent_id = tracker.start_parent(
        recipe.name,
        flatten("recipe", recipe.model_dump(mode="json")),
        {**base_tags, "recipe": recipe.name, "device": device, "seed": str(recipe.eval.seed), **(tags or {})},
    )
    tracker.log_text(parent_id, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), M.ART_RECIPE)
    return SweepContext(recipe, parent_id, device, base_tags), tracker


@dataclass(frozen=True)
class ChildSlot:
    key: str
    run_id: str
    resumed: bool  # True: run_id is this sweep's copy of an earlier FINISHED run with the same content key
    source: str | None = None  # the earlier run it was copied from, or whose finished looks it took over
    prior: int = 0  # a sequential sample's questions taken over from an unfinished earlier run (its finished looks)


def key_inputs(ctx: SweepContext) -> KeyInputs:
    """This sweep's host, code and data identity, for every child's content key."""
    from pipeline.data.mmlu import resolve_data

    tags = ctx.base_tags
    host = {k: tags.get(k, "unknown") for k in ("cpu", "gpu", "threads")} | {"device": ctx.device}
    code_tags = (M.TAG_VERSION, M.TAG_GIT_COMMIT, M.TAG_GIT_DIRTY)
    code = {k: v for k, v in tags.items() if k.startswith(M.TAG_VERSION_PREFIX)} | {
        k: tags.get(k, "unknown") for k in code_tags
    }
    return KeyInputs(host=host, code=code, data=data_fingerprint(resolve_data(ctx.recipe.eval)))


def open_child(
    ctx: SweepContext, tracker, item: WorkItem, *, rerun: bool, inputs: KeyInputs, source: str | None
) -> ChildSlot:
    """The child run of `item` in this sweep: a copy of an earlier FINISHED twin (resume: nothing is measured
    again, and the copy, not the earlier run, carries this sweep's verdict), or a new run, which in a sequential
    sample starts from the finished looks of an unfinished twin. `inputs` is `key_inputs(ctx)` and `source` is
    `source_fingerprint(item.model)`: a hub source whose commit cannot be resolved (None) is never reused."""
    from pipeline.tracking import copy_run, find_finished_child, flatten, resumable_looks

    recipe = ctx.recipe
    key = content_key(recipe, item, source or f"unresolved:{item.model.source}", inputs)
    if not rerun and source is not None:
        earlier = find_finished_child(recipe.tracking.uri, recipe.experiment, key)
        if earlier:
            copy = copy_run(recipe.tracking.uri, earlier, ctx.parent_id)
            sequential = recipe.eval.sample is not None and recipe.eval.sample.sequential
            text = (
                outcomes_text(recipe.tracking.uri, copy) if sequential else None
            )  # how far it scored, for the lock-step
            return ChildSlot(
                key, copy, resumed=True, source=earlier, prior=len(parse_questions_csv(text)) if text else 0
            )
    tags = {
        **ctx.base_tags,
        M.TAG_MODEL: item.model.name,
        M.TAG_VARIANT: item.variant.name,
        M.TAG_ROLE: item.model.role,
        M.TAG_CONTENT_KEY: key,
        "method": method_tag(item.variant),
        M.TAG_RUNTIME: item.runtime,
        "device": ctx.device,
        "seed": str(recipe.eval.seed),
    }
    params = {
        **flatten("model", item.model.model_dump(mode="json")),
        **flatten("variant", item.variant.model_dump(mode="json", exclude_none=True)),
        **flatten("eval", recipe.eval.model_dump(mode="json")),
        **flatten("speed", recipe.speed.model_dump(mode="json")),
    }
    run_id = tracker.start_child(ctx.parent_id, item.label, params, tags)
    sample = recipe.eval.sample
    unfinished = (
        resumable_looks(recipe.tracking.uri, recipe.experiment, key)
        if sample and sample.sequential and not rerun and source
        else None
    )
    if unfinished is None:
        return ChildSlot(key, run_id, resumed=False)
    earlier, text = unfinished
    looks = parse_questions_csv(text)
    done = [
        n
        for n in tracker.client.get_run(earlier).data.tags.get(M.TAG_MMLU_LOOKS, "").split(",")
        if n and int(n) <= len(looks)
    ]
    tracker.log_text(run_id, text, M.ART_MMLU_LOOKS)
    tracker.set_tags(
        run_id,
        {
            M.TAG_MMLU_LOOKS: ",".join(done),
            M.TAG_MMLU_RESUMED_FROM: f"{earlier} ({len(looks)} questions in {len(done)} looks)",
        },
    )
    return ChildSlot(key, run_id, resumed=False, source=earlier, prior=len(looks))


def outcomes_text(uri: str, run_id: str) -> str | None:
    """A reused run's outcomes: its finished looks (a sequential sample), else its per-question table."""
    from pipeline.tracking import read_run_text

    return read_run_text(uri, run_id, M.ART_MMLU_LOOKS) or read_run_text(uri, run_id, M.ART_QUESTIONS)


def finish_sweep(tracker, outcome: SweepOutcome, policy_path: str | Path | None = None) -> None:
    """Summary tags and metrics, the verdict under `policy_path` (None: the default policy) and its report (a
    report problem is tagged and kept in `outcome.verdict_error`, never loses the measurements), then the parent
    FINISHED, or FAILED when any child failed."""
    parent_id = outcome.parent_run_id
    failed = [c.item.label for c in outcome.failures]
    tracker.set_tags(
        parent_id,
        {
            "children": str(len(outcome.children)),
            "failed_children": ",".join(failed) or "none",
            "wall_seconds": f"{outcome.seconds:.1f}",
        },
    )
    tracker.log_metrics(parent_id, {"sweep_wall_seconds": outcome.seconds, "failed_children": float(len(failed))})
    try:
        outcome.verdict = log_sweep_report(outcome.tracking_uri, parent_id, policy_path)
    except Exception as exc:  # noqa: BLE001 - a report problem must not lose the measurements
        outcome.verdict_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        tracker.set_tags(parent_id, {M.TAG_REPORT_ERROR: outcome.verdict_error})
    tracker.end(parent_id, "FAILED" if failed else "FINISHED")
