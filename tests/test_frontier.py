"""Pareto frontier and dominance on hand-made records: ties, equal speed, margins, missing metrics."""

from __future__ import annotations

import random

import pytest

from pipeline import metrics as M
from pipeline.records import VariantRecord
from pipeline.verdict.frontier import (
    SIZE_AXIS,
    axes_for,
    axis_by_name,
    baseline_ladder,
    dominates,
    fixed_margin,
    frontier,
    frontier_verdicts,
    roofline_tok_s,
    speed_axis,
    stderr_margin,
)

SPEED = speed_axis(1)


def rec(name, acc=None, tok_s=None, *, role="candidate", status="FINISHED", method="x", **metrics):
    m = dict(metrics)
    if acc is not None:
        m[M.MMLU_ACC] = acc
    if tok_s is not None:
        m[M.DECODE_TOK_S] = tok_s
    model, _, variant = name.partition("/")
    return VariantRecord(
        run_id=f"id-{name}",
        model=model,
        variant=variant or "none",
        role=role,
        status=status,
        metrics=m,
        tags={"method": method},
    )


def status(records, axis=SPEED, **kw):
    v = frontier_verdicts(records, axis, **kw)
    return {r.label: str(v[r.run_id]) for r in records}


def test_plain_pareto():
    a, b, c = rec("m/a", 0.60, 100), rec("m/b", 0.55, 200), rec("m/c", 0.50, 150)
    assert status([a, b, c]) == {"m/a": "frontier", "m/b": "frontier", "m/c": "dominated by m/b"}
    assert [r.label for r in frontier([a, b, c], SPEED)] == ["m/a", "m/b"]  # slow -> fast


def test_exact_tie_keeps_both_on_frontier():
    a, d = rec("m/a", 0.60, 100), rec("m/d", 0.60, 100)
    assert not dominates(a, d, SPEED) and not dominates(d, a, SPEED)
    assert status([a, d]) == {"m/a": "frontier", "m/d": "frontier"}


def test_equal_speed_higher_accuracy_dominates():
    a, e = rec("m/a", 0.60, 100), rec("m/e", 0.58, 100)
    assert status([a, e]) == {"m/a": "frontier", "m/e": "dominated by m/a"}
    # even within a margin: same speed, the higher estimate wins (never both ways)
    assert dominates(a, e, SPEED, margin=0.05) and not dominates(e, a, SPEED, margin=0.05)


def test_statistical_margin():
    a, f = rec("m/a", 0.60, 100), rec("ref/small", 0.59, 300, role="reference")
    assert status([a, f]) == {"m/a": "frontier", "ref/small": "frontier"}
    # one point less accurate but within a 2-point margin, and faster: it dominates
    assert status([a, f], margin=fixed_margin(2.0))["m/a"] == "dominated by ref/small"
    assert status([a, f], margin=fixed_margin(0.5))["m/a"] == "frontier"
    # float margins are accuracy fractions
    assert dominates(f, a, SPEED, margin=0.02) and not dominates(f, a, SPEED, margin=0.005)


def test_stderr_margin():
    a = rec("m/a", 0.60, 100, **{M.MMLU_ACC_STDERR: 0.01})
    f = rec("m/f", 0.585, 300, **{M.MMLU_ACC_STDERR: 0.01})
    margin = stderr_margin(0.95)
    assert margin(a, f) == pytest.approx(1.6449 * 0.01 * 2**0.5, rel=1e-3)
    assert status([a, f], margin=margin)["m/a"] == "dominated by m/f"
    # stderr from the question count when the stderr metric is missing
    g = rec("m/g", 0.5, 1, **{M.MMLU_N_QUESTIONS: 100})
    assert stderr_margin(0.95)(g, g) == pytest.approx(1.6449 * 0.05 * 2**0.5, rel=1e-3)


def test_speed_tolerance_treats_near_equal_speed_as_equal():
    a, g = rec("m/a", 0.60, 100), rec("m/g", 0.60, 101)
    assert status([a, g])["m/a"] == "dominated by m/g"  # strictly faster, equally accurate
    assert status([a, g], tolerance=0.02) == {"m/a": "frontier", "m/g": "frontier"}
    # within tolerance, accuracy decides
    h = rec("m/h", 0.61, 99)
    assert status([a, h], tolerance=0.02)["m/a"] == "dominated by m/h"


def test_size_axis_lower_is_better_and_no_tolerance():
    small = rec("m/int4", 0.58, **{M.WEIGHT_BYTES: 1e9})
    big = rec("m/none", 0.60, **{M.WEIGHT_BYTES: 4e9}, method="none")
    ref = rec("ref/r", 0.57, role="reference", **{M.WEIGHT_BYTES: 0.999e9})
    s = status([small, big, ref], SIZE_AXIS, tolerance=0.5)
    assert s == {"m/int4": "frontier", "m/none": "frontier", "ref/r": "frontier"}
    s = status([small, big, ref], SIZE_AXIS, margin=fixed_margin(1.5))
    assert s["m/int4"] == "dominated by ref/r" and s["m/none"] == "frontier"


def test_unplaced_records_neither_dominate_nor_are_dominated():
    a = rec("m/a", 0.60, 100)
    failed = rec("m/failed", 0.99, 999, status="FAILED")
    no_speed = rec("m/nospeed", 0.70)
    s = status([a, failed, no_speed])
    assert s == {
        "m/a": "frontier",
        "m/failed": "unplaced (status FAILED)",
        "m/nospeed": "unplaced (missing decode_tok_s)",
    }
    assert not dominates(failed, a, SPEED)


def test_dominators_restricted_to_references():
    base = rec("m/none", 0.62, 200, method="none")
    v = rec("m/int8", 0.60, 150)
    ref = rec("ref/r", 0.50, 400, role="reference")
    assert status([base, v, ref])["m/int8"] == "dominated by m/none"
    only_refs = status([base, v, ref], dominators=lambda r: r.role == "reference")
    assert only_refs["m/int8"] == "frontier"


def test_several_dominators_most_accurate_first():
    v = rec("m/v", 0.50, 100)
    r1, r2 = rec("ref/a", 0.55, 200, role="reference"), rec("ref/b", 0.60, 150, role="reference")
    verdict = frontier_verdicts([v, r1, r2], SPEED)[v.run_id]
    assert verdict.dominated_by == ("ref/b", "ref/a") and str(verdict) == "dominated by ref/b (+1 more)"


def test_never_mutual_dominance():
    rng = random.Random(0)
    records = [
        rec(f"m/v{i}", round(rng.uniform(0.4, 0.6), 2), rng.choice([100, 100, 101, 103, 150, 200])) for i in range(40)
    ]
    for margin in (0.0, 0.02):
        for tol in (0.0, 0.02):
            for a in records:
                for b in records:
                    assert not (
                        dominates(a, b, SPEED, margin=margin, tolerance=tol)
                        and dominates(b, a, SPEED, margin=margin, tolerance=tol)
                    )


def test_axes_discovered_from_metrics():
    a = rec("m/a", 0.6, 100, **{"decode_tok_s_bs8": 500.0, M.WEIGHT_BYTES: 1.0})
    b = rec("m/b", 0.6, 90, **{"decode_tok_s_bs4": 300.0})
    assert [ax.metric for ax in axes_for([a, b])] == [
        "decode_tok_s",
        "decode_tok_s_bs4",
        "decode_tok_s_bs8",
        "weight_bytes",
    ]
    assert axes_for([rec("m/x", 0.5)]) == []
    assert axis_by_name("decode_tok_s_bs16") == speed_axis(16)
    with pytest.raises(ValueError):
        axis_by_name("tok_s")
    # batch-8 verdicts use the batch-8 metric
    c = rec("m/c", 0.6, 200, **{"decode_tok_s_bs8": 400.0})
    assert status([a, c], speed_axis(8))["m/c"] == "dominated by m/a"
    assert status([a, c], SPEED)["m/a"] == "dominated by m/c"


def test_baseline_ladder_and_roofline():
    big = rec("ref/1.7B", 0.50, 40, role="reference", **{M.WEIGHT_BYTES: 3.4e9, M.WALL_TOK_S: 60.0})
    small = rec(
        "ref/360M",
        0.35,
        150,
        role="reference",
        **{M.WEIGHT_BYTES: 7.2e8, M.BANDWIDTH_GB_S: 100.0, M.BYTES_PER_TOKEN: 5e8},
    )
    cand = rec("m/none", 0.6, 20, method="none", **{M.WEIGHT_BYTES: 1.6e10})
    ladder = baseline_ladder([cand, big, small])
    assert [g.label for g in ladder] == ["ref/360M", "ref/1.7B"]
    assert ladder[1].wall_tok_s == 60.0 and ladder[1].roofline_fraction == pytest.approx(40 / 60)
    assert ladder[0].wall_tok_s == pytest.approx(200.0)  # 100 GB/s / 0.5 GB per token
    assert roofline_tok_s(cand) is None
