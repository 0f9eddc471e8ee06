"""A child's side of a lock-step sweep (a sequential sample): its `Looks` logged, reported and stopped by the driver."""

from __future__ import annotations

from pipeline import metrics as M
from pipeline.runtime.mmlu import Looks
from pipeline.sweep.lockstep import LookChannel


def looks_control(tracker, run_id: str, looks: LookChannel, first: str | None) -> Looks:
    """The sequential sample's `Looks` in a lock-step sweep: the looks this run took over from an unfinished twin
    (copied to it by the driver), the driver's first word, and after each look: log its outcomes (what a rerun
    resumes from), report it, wait for the driver's word."""
    from pipeline.results import parse_questions_csv, questions_csv
    from pipeline.tracking import read_run_text

    prior_text = read_run_text(tracker.uri, run_id, M.ART_MMLU_LOOKS)
    prior = parse_questions_csv(prior_text) if prior_text else ()
    done: list[int] = [
        int(n) for n in tracker.client.get_run(run_id).data.tags.get(M.TAG_MMLU_LOOKS, "").split(",") if n
    ]

    def after_look(scored, population: int) -> str | None:  # noqa: ARG001 - the driver decides, knowing the population
        done.append(len(scored))
        tracker.log_text(run_id, questions_csv(scored), M.ART_MMLU_LOOKS)
        tracker.set_tags(run_id, {M.TAG_MMLU_LOOKS: ",".join(map(str, done))})
        looks.report(len(scored))
        return looks.wait()

    return Looks(after_look=after_look, prior=tuple(prior), stopped=first)
