"""What a resumed sweep takes over from earlier runs, so that every child belongs to exactly one sweep.

A FINISHED run with the same content key is copied into the new sweep (`copy_run`): a new child of the new
parent with the earlier run's params, metrics, tags and artifacts and a tag pointing at it; nothing is measured
again, and the new sweep's verdict tags land on its own copy, never on the run another sweep shows. An unfinished
run of a sequential sample leaves its finished looks (`resumable_looks`), which the new run starts from.
"""

from __future__ import annotations

import tempfile
import time

from pipeline import metrics as M
from pipeline.tracking.connect import BATCH, client, log_tags
from pipeline.tracking.read import read_run_text, runs_with_content_key

# Tags that belong to the sweep a run was a child of (its verdicts, its place), not to the measurement.
_SWEEP_OWNED = (
    M.TAG_FRONTIER_PREFIX,
    M.TAG_GATE_PREFIX,
    M.TAG_VERDICT,
    M.TAG_MMLU_DELTA_VS_BASE,
    M.TAG_DESCRIPTION,
    M.TAG_PARENT_RUN_ID,
    M.TAG_COPIED_FROM,
)
_METRIC_BATCH = 500


def copy_run(uri: str, source_id: str, parent_id: str, extra_tags: dict[str, str] | None = None) -> str:
    """A new FINISHED child of `parent_id` holding what run `source_id` measured; returns its id."""
    from mlflow.entities import Metric, Param

    c = client(uri)
    src = c.get_run(source_id)
    tags = {k: v for k, v in src.data.tags.items() if not k.startswith(_SWEEP_OWNED)}
    tags |= {M.TAG_PARENT_RUN_ID: parent_id, M.TAG_COPIED_FROM: source_id, **(extra_tags or {})}
    run = c.create_run(src.info.experiment_id, start_time=src.info.start_time, tags={}, run_name=src.info.run_name)
    new_id = run.info.run_id
    log_tags(c, new_id, tags)
    params = [Param(k, v) for k, v in src.data.params.items()]
    for i in range(0, len(params), BATCH):
        c.log_batch(new_id, params=params[i : i + BATCH])
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in src.data.metrics.items()]
    for i in range(0, len(metrics), _METRIC_BATCH):
        c.log_batch(new_id, metrics=metrics[i : i + _METRIC_BATCH])
    with tempfile.TemporaryDirectory() as d:
        if c.list_artifacts(source_id):
            c.log_artifacts(new_id, c.download_artifacts(source_id, "", d))
    c.set_terminated(new_id, "FINISHED", end_time=src.info.end_time)
    return new_id


def resumable_looks(uri: str, experiment: str, content_key: str) -> tuple[str, str] | None:
    """(run id, its finished looks as the `mmlu_looks.csv` text) of the latest unfinished run with this content
    key that finished at least one look of a sequential sample; None when there is none."""
    for run in runs_with_content_key(uri, experiment, content_key, finished=False, max_results=20):
        if not run.data.tags.get(M.TAG_MMLU_LOOKS):
            continue
        text = read_run_text(uri, run.info.run_id, M.ART_MMLU_LOOKS)
        if text:
            return run.info.run_id, text
    return None
