"""The gate on hand-made sweeps in a real temporary MLflow sqlite store (no model loading)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from _stores import Child, base_questions, changed, fresh_store, write_sweep
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.config.policy import load_policy
from pipeline.config.recipe import RecipeError
from pipeline.verdict import GateResult, run_gate

N_QUESTIONS = 1000
SUBJECTS = ("abstract_algebra", "anatomy")


def child(
    model, variant, questions, *, role="candidate", status="FINISHED", log_questions=True, error=None, **metrics
) -> Child:
    return Child(
        model, variant, questions, role=role, status=status, metrics=metrics, log_questions=log_questions, error=error
    )


BASE = base_questions(N_QUESTIONS, SUBJECTS)
SPEEDY = dict(decode_tok_s=90.0, wall_tok_s=120.0, weight_bytes=2e9, kl_vs_base=0.01)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = fresh_store(tmp_path_factory, "gate-store")
    base = child("m", "none", BASE, decode_tok_s=50.0, wall_tok_s=60.0, weight_bytes=4e9, kl_vs_base=0.0)
    ref = child(
        "ref", "none", changed(BASE, 150, 0), role="reference", decode_tok_s=120.0, wall_tok_s=150.0, weight_bytes=1e9
    )
    int8 = child("m", "int8", changed(BASE, 5, 5), **SPEEDY)
    sweeps = {
        "good": write_sweep(uri, "good", [base, int8, ref]),
        "mixed": write_sweep(
            uri,
            "mixed",
            [
                base,
                int8,
                ref,
                child("m", "nf4", None, status="FAILED", error="RuntimeError: CUDA out of memory"),
                child(
                    "m", "prune", changed(BASE, 3, 3), wall_tok_s=100.0, weight_bytes=2e9, kl_vs_base=0.02
                ),  # no decode_tok_s
                child(
                    "m", "slow", changed(BASE, 2, 2), decode_tok_s=30.0, weight_bytes=3e9, kl_vs_base=0.01
                ),  # dominated by the base
                child("m", "noq", changed(BASE, 1, 1), log_questions=False, **SPEEDY),
            ],
        ),
        "small": write_sweep(
            uri,
            "small",
            [
                child("m", "none", BASE[:20], decode_tok_s=50.0),
                child("m", "int8", BASE[:20], decode_tok_s=90.0, kl_vs_base=0.0),
            ],
        ),
        "baseonly": write_sweep(uri, "baseonly", [base, ref]),
    }
    return uri, sweeps


def key_of(policy_path: Path) -> str:
    from pipeline.config.policy import policy_key

    return policy_key(load_policy(policy_path))


def policy(tmp_path: Path, **over) -> Path:
    doc = {
        "max_mmlu_drop_points": 2.0,
        "confidence": 0.95,
        "must_not_be_dominated": True,
        "min_decode_tok_s": 10,
        "max_kl_vs_base": 0.1,
        "registry_name": "{experiment}.{model}.{variant}",
        "bootstrap_samples": 2000,
        **over,
    }
    p = tmp_path / "policy.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def junit(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return {c.get("name"): c for c in root.iter("testcase")}


def tags_of(uri: str, run_id: str) -> dict[str, str]:
    from pipeline.tracking import load_sweep

    for exp in ("good", "mixed", "small"):
        for c in load_sweep(uri, experiment=exp, with_questions=False).children:
            if c.run_id == run_id:
                return c.tags
    raise KeyError(run_id)


def test_gate_passes_registers_and_tags(store, tmp_path):
    from pipeline.tracking import alias_run_id, read_run_text

    uri, sweeps = store
    parent, ids = sweeps["good"]
    out = tmp_path / "out"
    pol = policy(tmp_path)
    result = run_gate(pol, tracking_uri=uri, run_id=parent, out_dir=out)
    assert isinstance(result, GateResult)
    assert result.exit_code == 0 and result.passed, result.error
    [g] = result.variants
    assert g.label == "m/int8" and g.verdict == "pass" and g.mmlu.decision == "pass"
    assert alias_run_id(uri, "good.m.int8", "gate-passed") == ids["m/int8"]
    assert g.registered == "good.m.int8 v1 @gate-passed"
    bundle = read_run_text(uri, ids["m/int8"], "shrinkgate_model/shrinkgate_variant.json")
    assert bundle and '"provenance.source": "hub:m"' in bundle
    assert read_run_text(uri, ids["m/int8"], f"shrinkgate_model/{M.ART_RECIPE}").startswith("name: good")
    key = key_of(pol)
    tags = tags_of(uri, ids["m/int8"])
    assert tags[f"gate.{key}.verdict"] == "pass" and tags[f"gate.{key}.reasons"] == "all checks passed"
    cases = junit(out / "gate_junit.xml")
    assert list(cases) == ["m/int8"] and cases["m/int8"].find("failure") is None
    md = (out / "gate_report.md").read_text()
    assert md.startswith("# shrinkgate gate: PASS") and "m/int8" in md
    assert read_run_text(uri, parent, f"gate/{key}/gate_junit.xml") is not None  # on the parent run too
    parent_tags = load_sweep_tags(uri, parent)
    assert (
        parent_tags[f"gate.{key}.verdict"] == "pass"
        and parent_tags[f"gate.{key}.registered"] == "m/int8 -> good.m.int8 v1 @gate-passed"
    )


def load_sweep_tags(uri: str, parent: str) -> dict[str, str]:
    from pipeline.tracking import load_sweep

    return load_sweep(uri, run_id=parent, with_questions=False).tags


def test_gate_fails_closed(store, tmp_path):
    from pipeline.tracking import alias_run_id

    uri, sweeps = store
    parent, ids = sweeps["mixed"]
    out = tmp_path / "out"
    pol = policy(tmp_path)
    result = run_gate(pol, tracking_uri=uri, experiment="mixed", out_dir=out)
    assert result.exit_code == 1 and result.parent_run_id == parent
    by = {g.label: g for g in result.variants}
    assert {k: g.verdict for k, g in by.items()} == {
        "m/int8": "pass",
        "m/nf4": "fail",
        "m/prune": "fail",
        "m/slow": "fail",
        "m/noq": "fail",
    }
    assert any("status FAILED (RuntimeError: CUDA out of memory)" in r for r in by["m/nf4"].reasons)
    assert any("missing metric decode_tok_s" in r for r in by["m/prune"].reasons)
    [dominated] = [r for r in by["m/slow"].reasons if "dominated by" in r]
    assert "m/none" in dominated and "ref/none" not in dominated  # the reference is 15 points less accurate
    assert any("no per-question outcomes" in r for r in by["m/noq"].reasons)
    # registry: the pass only
    assert alias_run_id(uri, "mixed.m.int8", "gate-passed") == ids["m/int8"]
    for name in ("nf4", "prune", "slow", "noq"):
        assert alias_run_id(uri, f"mixed.m.{name}", "gate-passed") is None
    # tags on every child, reasons included
    key = key_of(pol)
    assert tags_of(uri, ids["m/nf4"])[f"gate.{key}.verdict"] == "fail"
    assert "missing metric decode_tok_s" in tags_of(uri, ids["m/prune"])[f"gate.{key}.reasons"]
    # JUnit: one testcase per gated variant, failure message = reasons
    root = ET.parse(out / "gate_junit.xml").getroot()
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("5", "4")
    cases = junit(out / "gate_junit.xml")
    assert cases["m/int8"].find("failure") is None
    assert "missing metric decode_tok_s" in cases["m/prune"].find("failure").get("message")
    assert cases["m/nf4"].find("failure").get("type") == "fail"
    assert "# shrinkgate gate: FAIL" in (out / "gate_report.md").read_text()


def test_gate_selected_variants_and_missing_one(store, tmp_path):
    uri, sweeps = store
    parent, _ = sweeps["mixed"]
    result = run_gate(
        policy(tmp_path, variants=["int8"], register_model=False), tracking_uri=uri, run_id=parent, out_dir=tmp_path
    )
    assert result.exit_code == 0 and [g.label for g in result.variants] == ["m/int8"]
    assert result.variants[0].registered is None
    result = run_gate(
        policy(tmp_path, variants=["m/int8", "ghost"], register_model=False),
        tracking_uri=uri,
        run_id=parent,
        out_dir=tmp_path,
    )
    assert result.exit_code == 1
    ghost = result.variants[1]
    assert ghost.verdict == "fail" and "no candidate child run named 'ghost'" in ghost.reasons[0]


def test_gate_undecided_is_not_a_pass(store, tmp_path):
    from pipeline.tracking import alias_run_id

    uri, sweeps = store
    parent, ids = sweeps["small"]
    pol = policy(tmp_path)
    result = run_gate(pol, tracking_uri=uri, run_id=parent, out_dir=tmp_path / "o")
    assert result.exit_code == 1
    [g] = result.variants
    assert (
        g.verdict == "undecided"
        and g.mmlu.n == 20
        and f"a decision needs about {g.mmlu.more_questions:,} more questions" in g.reasons[0]
    )
    assert alias_run_id(uri, "small.m.int8", "gate-passed") is None
    assert tags_of(uri, ids["m/int8"])[f"gate.{key_of(pol)}.verdict"] == "undecided"
    assert junit(tmp_path / "o" / "gate_junit.xml")["m/int8"].find("failure").get("type") == "undecided"


def test_gate_errors_exit_2(store, tmp_path):
    uri, sweeps = store
    parent, ids = sweeps["good"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_mmlu_drop_points: 1\nmax_mmlu_drop: 2\n")
    r = run_gate(bad, tracking_uri=uri, run_id=parent, out_dir=tmp_path / "bad")
    assert r.exit_code == 2 and "field `max_mmlu_drop`" in r.error and "\n" not in r.error
    assert junit(tmp_path / "bad" / "gate_junit.xml")["gate"].find("error") is not None
    good = policy(tmp_path)
    assert run_gate(good, tracking_uri=uri, run_id="0" * 32, out_dir=tmp_path).exit_code == 2
    assert "not found" in run_gate(good, tracking_uri=uri, experiment="nope", out_dir=tmp_path).error
    assert "not a sweep parent" in run_gate(good, tracking_uri=uri, run_id=ids["m/int8"], out_dir=tmp_path).error
    assert "nothing to gate" in run_gate(good, tracking_uri=uri, experiment="baseonly", out_dir=tmp_path).error
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    r = run_gate(policy(tmp_path, register_model=False), tracking_uri=uri, run_id=parent, out_dir=blocked)
    assert r.exit_code == 2 and "cannot write the report" in r.error and r.variants[0].verdict == "pass"


def test_gate_command_exit_codes(store, tmp_path):
    """The CLI's exit code is the gate's: 0 all pass, 1 any fail, 2 error (one line, report still written)."""
    from pipeline.cli import app

    uri, sweeps = store

    def gate(policy_path: Path, sweep: str, out: str):
        args = [
            "gate",
            "--policy",
            str(policy_path),
            "--run",
            sweeps[sweep][0],
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / out),
        ]
        return CliRunner().invoke(app, args)

    no_registry = policy(tmp_path, register_model=False)
    passed = gate(no_registry, "good", "pass")
    assert passed.exit_code == 0, passed.output
    assert "exit 0" in passed.output and (tmp_path / "pass" / "gate_junit.xml").is_file()
    failed = gate(no_registry, "mixed", "fail")
    assert failed.exit_code == 1, failed.output
    missing = gate(tmp_path / "missing.yaml", "good", "error")
    assert missing.exit_code == 2, missing.output
    assert "gate error:" in missing.output and "missing.yaml" in missing.output
    assert junit(tmp_path / "error" / "gate_junit.xml")["gate"].find("error") is not None


def test_policy_errors_are_one_line(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("max_mmlu_drop_points: 1\nconfidense: 0.9\n")
    with pytest.raises(RecipeError, match=r"p\.yaml: field `confidense` .*remove it \(unknown key; allowed: "):
        load_policy(p)
    p.write_text("confidence: 0.9\n")
    with pytest.raises(RecipeError, match="field `max_mmlu_drop_points`: add it"):
        load_policy(p)
    p.write_text("max_mmlu_drop_points: 1\ndominance_axes: [speed]\n")
    with pytest.raises(RecipeError, match="unknown axis 'speed' -> use decode_tok_s"):
        load_policy(p)
    p.write_text("max_mmlu_drop_points: [1\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_policy(p)
    assert load_policy(Path(__file__).resolve().parents[1] / "policies" / "default.yaml").max_mmlu_drop_points == 1.0


def test_gates_with_other_policies_keep_their_own_records(store, tmp_path):
    """A verdict belongs to one (sweep, policy): gating the same sweep with a second policy adds its own record
    under its key and rewrites nothing the first one (or the sweep itself) shows (6b837af overwrote `gate.verdict`)."""
    from pipeline.tracking import read_run_text

    uri, sweeps = store
    parent, ids = sweeps["good"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    lenient, strict = (
        policy(tmp_path / "a", register_model=False),
        policy(tmp_path / "b", register_model=False, min_decode_tok_s=1000),
    )
    assert run_gate(lenient, tracking_uri=uri, run_id=parent, out_dir=tmp_path / "ga").exit_code == 0
    first = dict(tags_of(uri, ids["m/int8"]))
    assert run_gate(strict, tracking_uri=uri, run_id=parent, out_dir=tmp_path / "gb").exit_code == 1
    child, sweep = tags_of(uri, ids["m/int8"]), load_sweep_tags(uri, parent)
    ka, kb = key_of(lenient), key_of(strict)
    assert ka != kb and child[f"gate.{ka}.verdict"] == "pass" and child[f"gate.{kb}.verdict"] == "fail"
    assert {k: v for k, v in child.items() if k.startswith(f"gate.{ka}.")} == {
        k: v for k, v in first.items() if k.startswith(f"gate.{ka}.")
    }
    assert sweep[f"gate.{ka}.verdict"] == "pass" and sweep[f"gate.{kb}.verdict"] == "fail"
    assert str(lenient) in sweep[f"gate.{ka}.policy"] and "gate.verdict" not in child and "gate.verdict" not in sweep
    assert "min_decode_tok_s" in read_run_text(uri, parent, f"gate/{kb}/gate_report.md")
    assert read_run_text(uri, parent, f"gate/{ka}/gate_report.md").startswith("# shrinkgate gate: PASS")
