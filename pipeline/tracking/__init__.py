"""The only package that imports mlflow: write a sweep's runs, read them back as typed records.

    connect   TrackingError, check_reachable, artifact_root_for (the store and its client)
    copy      copy_run, resumable_looks (what a resumed sweep takes over: each child belongs to one sweep)
    write     Tracker (runs, params, tags, metrics, artifacts), flatten, host_tags, set_run_tags, log_run_artifacts
    read      load_sweep -> SweepRecord, run_record -> VariantRecord, find_finished_child, run_metrics, read_run_text
    registry  register_passing, alias_run_id (the Model Registry)
    ui        publish_review, review_links (what the MLflow UI shows first: run description, shared runs view)

mlflow itself is imported inside the functions that use it, so importing this package stays light.
"""

from pipeline.tracking.connect import TrackingError, artifact_root_for, check_reachable
from pipeline.tracking.copy import copy_run, resumable_looks
from pipeline.tracking.read import find_finished_child, load_sweep, read_run_text, run_metrics, run_record
from pipeline.tracking.registry import MODEL_BUNDLE_DIR, alias_run_id, register_passing
from pipeline.tracking.write import Tracker, flatten, host_tags, log_run_artifacts, set_run_tags

__all__ = [
    "MODEL_BUNDLE_DIR",
    "Tracker",
    "TrackingError",
    "alias_run_id",
    "artifact_root_for",
    "check_reachable",
    "copy_run",
    "find_finished_child",
    "flatten",
    "host_tags",
    "load_sweep",
    "log_run_artifacts",
    "read_run_text",
    "run_record",
    "register_passing",
    "resumable_looks",
    "run_metrics",
    "set_run_tags",
]
