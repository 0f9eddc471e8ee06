"""Compare report: analysis on hand-made records; table, CSV, Markdown and PNG plots from a real temp store;
`log_sweep_report` on a RUNNING parent with missing metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from _stores import Child, acc_metrics, base_questions, changed, fresh_store, write_sweep
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.records import SweepRecord, VariantRecord
from pipeline.verdict import analyze, run_compare
from pipeline.verdict.analysis import rows, subject_deltas

SUBJECTS = ("abstract_algebra", "anatomy", "astronomy")
PNG = b"\x89PNG\r\n\x1a\n"


def speed(tok_s, wall, bytes_):
    return {
        M.DECODE_TOK_S: tok_s,
        M.WALL_TOK_S: wall,
        "decode_tok_s_bs8": 6 * tok_s,
        "wall_tok_s_bs8": 7 * wall,
        M.WEIGHT_BYTES: bytes_,
        M.MBU: tok_s / wall,
    }


BASE = base_questions(600, SUBJECTS)
SPEC = [
    Child("m", "none", BASE, metrics=speed(20.0, 25.0, 8e9)),
    Child("m", "int8", changed(BASE, 4, 2), metrics={**speed(38.0, 50.0, 4e9), M.KL_VS_BASE: 0.01}),
    Child(
        "m", "int4", changed(BASE, 40, 0, subject="anatomy"), metrics={**speed(60.0, 95.0, 2.2e9), M.KL_VS_BASE: 0.2}
    ),
    Child("m", "nf4", None, status="FAILED"),
    Child("ref", "none", changed(BASE, 120, 10), role="reference", metrics=speed(90.0, 110.0, 1.5e9)),
    Child("tiny", "none", changed(BASE, 200, 30), role="reference", metrics=speed(300.0, 400.0, 3e8)),
]


def record(c: Child) -> VariantRecord:
    metrics = {**(acc_metrics(c.questions) if c.questions else {}), **c.metrics}
    qs = tuple(c.questions) if c.questions else None
    return VariantRecord(
        f"id-{c.model}-{c.variant}", c.model, c.variant, c.role, c.status, metrics, {"method": c.method}, {}, qs
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = fresh_store(tmp_path_factory, "report-store")
    return uri, {
        "full": write_sweep(uri, "full", SPEC),
        # speed disabled (no decode/wall/mbu metrics), parent still RUNNING as when the sweep calls the report
        "nospeed": write_sweep(uri, "nospeed", SPEC, end_parent=False, drop=("decode_tok_s", "wall_tok_s", M.MBU)),
        "bare": write_sweep(
            uri, "bare", [Child(c.model, c.variant, None, role=c.role, status=c.status) for c in SPEC], end_parent=False
        ),
    }


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5_000, (path, len(data))


def test_analysis_pairs_against_base_and_references():
    recs = tuple(record(c) for c in SPEC)
    a = analyze(SweepRecord("parent", "exp", recs), seed=1)
    st = a.stats["id-m-int8"]
    assert st.base.label == "m/none"
    assert (st.vs_base.a_only_right, st.vs_base.b_only_right) == (2, 4)
    assert st.vs_base.diff_points == pytest.approx(-2 / 6)
    assert set(st.vs_refs) == {"ref/none", "tiny/none"}
    assert a.stats["id-m-none"].vs_base is None
    assert a.stats["id-ref-none"].base.label == "m/none"  # references are compared with the candidate base
    assert a.verdicts["decode_tok_s"]["id-m-nf4"].status == "unplaced"
    # int8 (-0.3 pts, faster) is on the frontier; the base is slower and not significantly better
    assert a.verdicts["decode_tok_s"]["id-m-int8"].status == "frontier"
    assert a.verdicts["decode_tok_s"]["id-m-none"].status == "dominated"
    assert [g.label for g in a.ladder] == ["tiny/none", "ref/none"]
    subjects, labels, data = subject_deltas(a, "m")
    assert subjects == list(SUBJECTS) and "m/int4" in labels and "m/none" not in labels
    int4 = labels.index("m/int4")
    assert data[1][int4] == pytest.approx(-100 * 40 / 200)  # anatomy only
    assert data[0][int4] == 0.0
    table = {r["label"]: r for r in rows(a)}
    assert table["m/int8"]["delta_vs_base_pts"] == pytest.approx(-1 / 3)
    assert table["m/nf4"]["mmlu_acc_pct"] is None


def test_run_compare_writes_table_csv_markdown_plots(store, tmp_path):
    from rich.console import Console

    uri, sweeps = store
    parent, _ = sweeps["full"]
    console = Console(record=True, width=250)
    out = tmp_path / "cmp"
    result = run_compare(tracking_uri=uri, experiment="full", out_dir=out, console=console)
    assert result.analysis.sweep.parent_run_id == parent
    names = sorted(p.name for p in result.plots)
    assert names == [
        "pareto_decode_tok_s.png",
        "pareto_decode_tok_s_bs8.png",
        "pareto_weight_bytes.png",
        "subject_delta_m.png",
    ]
    for p in result.plots:
        check_png(p)
    with result.csv_path.open() as fh:
        table = {r["label"]: r for r in csv.DictReader(fh)}
    assert set(table) == {"m/none", "m/int8", "m/int4", "m/nf4", "ref/none", "tiny/none"}
    assert table["m/nf4"]["status"] == "FAILED" and table["m/nf4"]["verdict_decode_tok_s"] == "unplaced (status FAILED)"
    assert float(table["m/int8"]["delta_vs_base_pts"]) == pytest.approx(-1 / 3)
    assert float(table["ref/none"][M.WALL_TOK_S]) == 110.0
    md = result.markdown_path.read_text()
    assert "## Baseline ladder" in md and "tiny/none" in md and "![pareto_decode_tok_s](pareto_decode_tok_s.png)" in md
    text = console.export_text()
    assert "m/int8" in text and "frontier" in text
    assert [r["label"] for r in result.rows][:2] == ["m/none", "m/int4"]  # base first, references last


def test_compare_command_exit_codes(store, tmp_path):
    from pipeline.cli import app

    uri, sweeps = store
    ok = CliRunner().invoke(
        app, ["compare", "--run", sweeps["bare"][0], "--tracking-uri", uri, "--out", str(tmp_path / "again")]
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "again" / "compare.md").is_file() and "wrote " in ok.output
    missing = CliRunner().invoke(
        app, ["compare", "--experiment", "nope", "--tracking-uri", uri, "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2, missing.output
    assert "error:" in missing.output and "experiment 'nope' not found" in missing.output


def test_log_sweep_report_tolerates_missing_speed(store):
    from pipeline.tracking import load_sweep, read_run_text
    from pipeline.verdict import log_sweep_report

    uri, sweeps = store
    parent, ids = sweeps["nospeed"]
    logged = log_sweep_report(uri, parent).artifacts
    assert "report/compare.md" in logged and "report/compare.csv" in logged
    assert "report/pareto_weight_bytes.png" in logged and "report/subject_delta_m.png" in logged
    assert not any("decode_tok_s" in p for p in logged)
    assert "## Baseline ladder" in read_run_text(uri, parent, "report/compare.md")
    sweep = load_sweep(uri, run_id=parent, with_questions=False)
    tags = {c.label: c.tags for c in sweep.children}
    assert tags["m/int8"]["frontier.weight_bytes"] in ("frontier",) or tags["m/int8"][
        "frontier.weight_bytes"
    ].startswith("dominated by")
    assert tags["m/nf4"]["frontier.weight_bytes"] == "unplaced (status FAILED)"
    assert "mmlu_delta_vs_base" in tags["m/int4"]
    assert sweep.tags["frontier.weight_bytes"] != "none"
    assert sweep.tags[M.TAG_KIND] == "sweep"


def test_log_sweep_report_with_no_metrics_at_all(store):
    from pipeline.verdict import log_sweep_report

    uri, sweeps = store
    parent, _ = sweeps["bare"]
    logged = log_sweep_report(uri, parent).artifacts
    assert logged == ["report/compare.csv", "report/compare.md"]
