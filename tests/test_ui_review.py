"""What a reviewer sees first in the MLflow UI, checked on a real temp store: the sweep report writes the
verdict as the parent run's description and a shared runs view; `shrinkgate ui` prints (and `--open` opens)
the deep link to it. The browser test (test_ui_browser.py) checks the same in Chromium."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from _stores import Child, base_questions, changed, fresh_store, write_sweep
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.records import SweepRecord, VariantRecord
from pipeline.tracking.ui import NOTE_TAG, SHARED_VIEW_PREFIX, review_links
from pipeline.verdict import analyze
from pipeline.verdict.analysis import rows
from pipeline.verdict.render import review_markdown

BASE = base_questions(400, ("abstract_algebra", "anatomy"))


def _speed(tok_s: float, bytes_: float) -> dict[str, float]:
    return {M.DECODE_TOK_S: tok_s, M.WALL_TOK_S: 2 * tok_s, M.WEIGHT_BYTES: bytes_}


SPEC = [
    Child("m", "none", BASE, metrics=_speed(20.0, 8e9)),
    Child("m", "int8", changed(BASE, 60, 0), metrics=_speed(30.0, 4e9)),
    Child("ref", "none", changed(BASE, 2, 2), role="reference", metrics=_speed(90.0, 1.5e9)),
]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    from pipeline.verdict import log_sweep_report

    uri = fresh_store(tmp_path_factory, "ui-review-store")
    parent, ids = write_sweep(uri, "review", SPEC, end_parent=False)
    log_sweep_report(uri, parent)
    from mlflow.tracking import MlflowClient

    return uri, MlflowClient(tracking_uri=uri), parent, ids


def test_parent_description_holds_the_verdict_table_and_pareto_plot(reported):
    uri, client, parent, ids = reported
    note = client.get_run(parent).data.tags[NOTE_TAG]
    # the runs table's Description column shows the first line: the decision in one sentence, then the frontier
    assert note.startswith(
        "**Verdict** under the default policy (policies/default.yaml): 0 of 1 gated variant(s) pass (fail: m/int8)."
    ), note[:200]
    assert "**shrinkgate verdict** · frontier on decode tok/s (batch 1): ref/none" in note
    lines = note.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model/variant |"))
    table = {line.split(" | ")[0].strip("| "): line for line in lines[header + 2 :] if line.startswith("|")}
    assert set(table) == set(ids), table
    assert "| frontier |" in table["ref/none"] and "dominated by ref/none" in table["m/int8"]
    # the plot is a link to the parent's own artifact through the UI server (data: URIs are stripped there)
    plot = "report/pareto_decode_tok_s.png"
    assert f"![pareto_decode_tok_s](get-artifact?path=report%2Fpareto_decode_tok_s.png&run_uuid={parent})" in note
    assert plot in {a.path for a in client.list_artifacts(parent, "report")}


def test_experiment_shares_a_runs_view_with_the_verdict_columns(reported):
    uri, client, parent, ids = reported
    exp = client.get_experiment_by_name("review")
    state = json.loads(exp.tags[SHARED_VIEW_PREFIX + "shrinkgate"])
    for col in (
        "metrics.`mmlu_acc`",
        "metrics.`decode_tok_s`",
        "metrics.`weight_bytes`",
        "tags.`frontier.decode_tok_s`",
        "tags.`frontier.weight_bytes`",
    ):
        assert col in state["selectedColumns"], (col, state["selectedColumns"])
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": M.TAG_KIND}]
    # the view's filter, run by MLflow itself, selects exactly this sweep's runs
    found = client.search_runs([exp.experiment_id], filter_string=state["searchFilter"])
    assert {r.info.run_id for r in found} == {parent, *ids.values()}

    links = {link.name: link for link in review_links(uri, "http://127.0.0.1:5123")}
    assert links["review"].reviewed
    assert links["review"].url == (
        f"http://127.0.0.1:5123/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=shrinkgate"
    )


def test_review_markdown_leaves_rows_that_do_not_fit_to_the_report():
    recs = tuple(
        VariantRecord(
            f"id-{i}",
            "m",
            "none" if i == 0 else f"v{i}",
            "candidate",
            "FINISHED",
            {**_speed(10.0 + i, 1e9), M.MMLU_ACC: 0.5},
            {},
            {},
            None,
        )
        for i in range(60)
    )
    analysis = analyze(SweepRecord("parent", "exp", recs), seed=0)
    full = review_markdown(analysis, rows(analysis))
    short = review_markdown(analysis, rows(analysis), max_chars=2000)
    assert "more row(s) in `report/compare.md`" not in full and "| m/v59 |" in full
    assert (
        len(short) <= 2000
        and "more row(s) in `report/compare.md`" in short
        and short.startswith("**shrinkgate verdict**")
    )


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):  # quiet
        pass


def test_ui_prints_the_deep_link_and_open_opens_it(reported, monkeypatch):
    """`shrinkgate ui --open` with the MLflow server replaced by a stand-in that answers /health."""
    import subprocess
    import webbrowser

    uri, client, parent, ids = reported
    health = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=health.serve_forever, daemon=True).start()
    port = health.server_address[1]
    started, opened = [], []

    class FakeServer:
        pid = -1

        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def poll(self):
            return None

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeServer)
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    try:
        result = CliRunner().invoke(
            __import__("pipeline.cli", fromlist=["app"]).app,
            ["ui", "--tracking-uri", uri, "--port", str(port), "--open"],
        )
    finally:
        health.shutdown()
    assert result.exit_code == 0, result.output
    exp_id = client.get_experiment_by_name("review").experiment_id
    link = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=shrinkgate"
    assert f"review (latest sweep's verdict): {link}" in result.output
    assert started and started[0][1] == "server"
    assert opened == [link]
