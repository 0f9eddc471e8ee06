"""What a reviewer sees first in the MLflow UI: the sweep's verdict as the parent run's description, and a
shared runs-table view (columns, filter, grouping) that one link opens.

The formats are the MLflow 3 UI's (read from mlflow 3.17's JS bundle): the `workflowType=machine_learning`
URL parameter picks the "Model training" runs view (the UI ignores the `mlflow.experimentKind` tag and lands
on the GenAI overview otherwise); `viewStateShareKey=K` loads the JSON view state stored in the experiment
tag `mlflow.sharedViewState.K`. The UI drops `runsExpanded` from a shared state, so a parent cannot be
opened expanded: the view groups runs by `shrinkgate.kind` instead, which lists every run flat under an
expanded group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from pipeline import metrics as M
from pipeline.redact import redact
from pipeline.tracking.connect import client

NOTE_TAG = M.TAG_DESCRIPTION
NOTE_MAX = 8000  # MLflow's limit on a run tag value
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
SHARED_VIEW_MAX = 20000  # MLflow's limit on an experiment tag value
SHARE_KEY = "shrinkgate"  # one view per experiment: the latest reported sweep
WORKFLOW = "machine_learning"


@dataclass(frozen=True)
class ReviewView:
    """The runs table a reviewer opens: these runs only, these columns, one group per `shrinkgate.kind`."""

    run_ids: tuple[str, ...]
    metric_columns: tuple[str, ...] = (M.MMLU_ACC, M.MMLU_ACC_STDERR, M.DECODE_TOK_S, M.WEIGHT_BYTES)
    tag_columns: tuple[str, ...] = (M.TAG_ROLE,)
    group_by_tag: str = M.TAG_KIND

    def state(self) -> dict:
        cols = ["attributes.`Description`"]
        cols += [f"metrics.`{m}`" for m in self.metric_columns] + [f"tags.`{t}`" for t in self.tag_columns]
        state = {
            "selectedColumns": cols,
            "orderByKey": "tags.`mlflow.runName`",
            "orderByAsc": True,
            "groupBy": {
                "aggregateFunction": "average",
                "groupByKeys": [{"mode": "tag", "groupByData": self.group_by_tag}],
            },
        }
        ids = ", ".join(f"'{i}'" for i in self.run_ids)
        with_filter = {**state, "searchFilter": f"attributes.run_id IN ({ids})"}
        # A sweep too large for the tag shows every run of the experiment rather than none.
        return with_filter if len(json.dumps(with_filter)) <= SHARED_VIEW_MAX else state


def artifact_url(run_id: str, path: str) -> str:
    """The server's own artifact URL, relative so it works behind any host or --static-prefix (the
    description's Markdown renderer drops data: URIs)."""
    return f"get-artifact?path={quote(path, safe='')}&run_uuid={run_id}"


def runs_link(base_url: str, experiment_id: str, share_key: str | None = SHARE_KEY) -> str:
    """Deep link to an experiment's runs table (in the Model training view, with the shared view if any)."""
    query = {"workflowType": WORKFLOW, **({"viewStateShareKey": share_key} if share_key else {})}
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def publish_review(uri: str, parent_run_id: str, description: str, view: ReviewView) -> str:
    """The parent's description and the experiment's shared view (replacing the previous sweep's);
    returns the experiment id. A description over MLflow's limit is an error: the caller sizes it."""
    description = redact(description)
    if len(description) > NOTE_MAX:
        raise ValueError(f"run description of {len(description)} characters exceeds MLflow's {NOTE_MAX}")
    c = client(uri)
    experiment_id = c.get_run(parent_run_id).info.experiment_id
    c.set_tag(parent_run_id, NOTE_TAG, description)
    c.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + SHARE_KEY, json.dumps(view.state()))
    return experiment_id


@dataclass(frozen=True)
class ExperimentLink:
    name: str
    experiment_id: str
    url: str
    reviewed: bool  # a sweep report set its shared view


def review_links(uri: str, base_url: str) -> list[ExperimentLink]:
    """One link per active experiment of the store, newest first (MLflow's empty `Default` left out)."""
    c = client(uri)
    out = []
    for exp in c.search_experiments(order_by=["creation_time DESC"]):
        reviewed = SHARED_VIEW_PREFIX + SHARE_KEY in exp.tags
        if exp.name == "Default" and not reviewed:
            continue
        out.append(
            ExperimentLink(
                exp.name,
                exp.experiment_id,
                runs_link(base_url, exp.experiment_id, SHARE_KEY if reviewed else None),
                reviewed,
            )
        )
    return out
