"""The gate never passes by accident (issue 12, items 1-4): resumed children stay members of the new sweep and
an incomplete sweep is refused; a failed, killed or speed-less reference or a missing/failed base makes the
dependent verdicts fail or undecided; the resume key covers host, code, data and the hub commit; compare, the
frontier tags and the gate share one dominance rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from _stores import Child, acc_metrics, base_questions, changed, fresh_store, write_sweep
from pydantic import Field
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.config.policy import DEFAULT_POLICY, load_policy, parse_policy
from pipeline.config.recipe import parse_recipe
from pipeline.methods import Method, register, registry
from pipeline.records import SweepRecord, VariantRecord
from pipeline.sweep.driver import run_sweep
from pipeline.sweep.key import content_key, source_fingerprint
from pipeline.sweep.outcome import SweepContext
from pipeline.sweep.runs import key_inputs
from pipeline.tracking import TrackingError, load_sweep
from pipeline.variants.plan import plan
from pipeline.verdict import analyze, evaluate, log_sweep_report, run_compare, run_gate
from pipeline.verdict.frontier import SIZE_AXIS, frontier_verdicts, speed_axis

REPO = Path(__file__).resolve().parents[1]


class Ballast(Method):
    """Adds an unused buffer: the same predictions as the model it was applied to, more bytes stored."""

    name: ClassVar[str] = "test-ballast"
    library: ClassVar[str] = "tests"
    size: int = Field(1024, ge=1, description="extra float32 values")

    def apply(self, model, ctx):
        import torch

        model.register_buffer("ballast", torch.ones(self.size))
        return model


if Ballast.name not in registry():
    register(Ballast)


def _policy_file(tmp: Path, **over) -> Path:
    doc = {"max_mmlu_drop_points": 1.0, "bootstrap_samples": 1000, "register_model": False, **over}
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- 1. resume: reused children are members of the new sweep ------------------------------------------------


def _recipe(tmp: Path, model_dir: Path, ballast: int, *, candidate: bool = True) -> dict:
    models = [{"name": "ref", "source": str(model_dir), "role": "reference"}]
    if candidate:
        models.insert(0, {"name": "tiny", "source": str(model_dir), "role": "candidate"})
    return {
        "name": "trust",
        "models": models,
        "variants": [
            {"name": "none", "method": "none"},
            {"name": "heavy", "method": "test-ballast", "params": {"size": ballast}},
        ],
        "eval": {"num_fewshot": 0, "subjects": ["anatomy", "virology"], "limit_per_subject": 3},
        "speed": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "trust"},
    }


def test_rerun_keeps_reused_children_in_the_sweep_and_the_gate_sees_them(tmp_path, tiny_model_dir, monkeypatch):
    first = run_sweep(parse_recipe(_recipe(tmp_path, tiny_model_dir, 1024)), executor="inline")
    assert [c.status for c in first.children] == ["FINISHED"] * 3
    ids = {c.item.label: c.run_id for c in first.children}

    # change one variant: only it is measured again; the base and the reference are reused
    second = run_sweep(parse_recipe(_recipe(tmp_path, tiny_model_dir, 4096)), executor="inline")
    status = {c.item.label: c.status for c in second.children}
    assert status == {"tiny/none": "SKIPPED", "tiny/heavy": "FINISHED", "ref/none": "SKIPPED"}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = load_sweep(uri, run_id=second.parent_run_id)
    members = {r.label: r for r in sweep.children}
    # reused runs are copied into the new sweep: its own children, pointing at the runs they came from
    for label in ("ref/none", "tiny/none"):
        assert members[label].run_id != ids[label] and members[label].tags[M.TAG_COPIED_FROM] == ids[label]
        assert members[label].tags["mlflow.parentRunId"] == second.parent_run_id
        assert members[label].metric(M.MMLU_ACC) is not None and members[label].questions
    assert (
        set(members) == {"tiny/none", "tiny/heavy", "ref/none"}
        and sweep.missing == ()
        and sweep.completeness_problem() is None
    )

    # the gate holds the new variant against the reused reference: same predictions, fewer bytes -> dominated
    policy = _policy_file(tmp_path, dominance_axes=["weight_bytes"])
    result = run_gate(policy, tracking_uri=uri, run_id=second.parent_run_id, out_dir=tmp_path / "gate")
    assert result.exit_code == 1, result.error
    [g] = result.variants
    [dominance] = [c for c in g.checks if c.name == "not_dominated[weight_bytes]"]
    assert dominance.outcome == "fail" and "ref/none" in dominance.detail and "tiny/none" in dominance.detail
    # the sweep's own frontier tags saw the reused runs too
    heavy = [r for r in sweep.children if r.label == "tiny/heavy"][0]
    assert heavy.tags["frontier.weight_bytes"].startswith("dominated by")

    # a host that differs (here its GPU) never reuses a measurement
    monkeypatch.setattr("pipeline.tracking.write.gpu_name", lambda: "Fake GPU 80GB")
    third = run_sweep(parse_recipe(_recipe(tmp_path, tiny_model_dir, 4096, candidate=False)), executor="inline")
    [ref] = third.children
    assert ref.status == "FINISHED" and ref.run_id != ids["ref/none"]

    # a member that is gone makes the sweep incomplete: gate exit 2, compare refuses
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).delete_run(members["ref/none"].run_id)
    assert load_sweep(uri, run_id=second.parent_run_id).missing == ("ref/none",)
    refused = run_gate(policy, tracking_uri=uri, run_id=second.parent_run_id, out_dir=tmp_path / "gate2")
    assert (
        refused.exit_code == 2 and "planned children missing: ref/none" in refused.error and "\n" not in refused.error
    )
    with pytest.raises(TrackingError, match="planned children missing: ref/none"):
        run_compare(tracking_uri=uri, run_id=second.parent_run_id, out_dir=tmp_path / "cmp")


def test_a_later_sweep_never_rewrites_what_an_earlier_one_shows(tmp_path, tiny_model_dir):
    """The base is reused by a second sweep in which a smaller variant dominates it: the second sweep's verdict
    lands on its own copy of the base; the first sweep's run keeps what the first sweep showed."""
    from pipeline.tracking import load_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = run_sweep(parse_recipe(_recipe(tmp_path, tiny_model_dir, 1024, candidate=True)), executor="inline")
    base_id = next(c.run_id for c in first.children if c.item.label == "tiny/none")
    before = next(
        r.tags
        for r in load_sweep(uri, run_id=first.parent_run_id, with_questions=False).children
        if r.run_id == base_id
    )
    doc = _recipe(tmp_path, tiny_model_dir, 1024)
    doc["variants"] = [{"name": "none", "method": "none"}, {"name": "int8", "method": "int8-weight-only"}]
    second = run_sweep(parse_recipe(doc), executor="inline")
    after = {r.run_id: r.tags for r in load_sweep(uri, run_id=first.parent_run_id, with_questions=False).children}
    assert after[base_id] == before  # 6b837af rewrote the reused base's frontier.* tags with the second sweep's
    copy = next(
        r for r in load_sweep(uri, run_id=second.parent_run_id, with_questions=False).children if r.label == "tiny/none"
    )
    assert copy.tags[M.TAG_COPIED_FROM] == base_id and copy.tags["frontier.weight_bytes"].startswith(
        "dominated by tiny/int8"
    )
    assert before["frontier.weight_bytes"] == "frontier"


N = 400
SUBJECTS = ("anatomy", "virology")
BASE = base_questions(N, SUBJECTS)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = fresh_store(tmp_path_factory, "trust-store")
    base = Child("m", "none", BASE, metrics={M.DECODE_TOK_S: 102.0, M.WEIGHT_BYTES: 4e9})
    int8 = Child("m", "int8", list(BASE), metrics={M.DECODE_TOK_S: 100.0, M.WEIGHT_BYTES: 2e9})
    return uri, {
        "near": write_sweep(uri, "near", [base, int8]),
        "partial": write_sweep(uri, "partial", [base, int8], also_planned=["ref/none"]),
        "unrecorded": write_sweep(uri, "unrecorded", [base, int8], members=False),
    }


def test_gate_and_compare_refuse_a_sweep_missing_planned_children(store, tmp_path):
    uri, sweeps = store
    policy = _policy_file(tmp_path)
    for name, message in (
        ("partial", "planned children missing: ref/none"),
        ("unrecorded", "does not record its planned children"),
    ):
        parent, _ = sweeps[name]
        result = run_gate(policy, tracking_uri=uri, run_id=parent, out_dir=tmp_path / name)
        assert result.exit_code == 2 and message in result.error and not result.variants
        with pytest.raises(TrackingError, match=message):
            run_compare(tracking_uri=uri, run_id=parent, out_dir=tmp_path / f"cmp-{name}")
    from pipeline.cli import app

    cli = CliRunner().invoke(
        app, ["compare", "--run", sweeps["partial"][0], "--tracking-uri", uri, "--out", str(tmp_path / "c")]
    )
    assert cli.exit_code == 2 and "ref/none" in cli.output


# -- 2. a failed/missing reference or base never leaves a variant "not dominated" ----------------------------


def rec(model, variant, questions, *, role="candidate", status="FINISHED", **metrics) -> VariantRecord:
    m = {**(acc_metrics(questions) if questions and status == "FINISHED" else {}), **metrics}
    tags = {"method": variant if variant != "none" else "none", M.TAG_MODEL: model, M.TAG_VARIANT: variant}
    qs = tuple(questions) if questions and status == "FINISHED" else None
    return VariantRecord(f"id-{model}-{variant}", model, variant, role, status, m, tags, {}, qs)


def _sweep(*records: VariantRecord) -> SweepRecord:
    return SweepRecord("parent", "exp", tuple(records), planned=tuple(r.label for r in records))


GOOD_BASE = rec("m", "none", BASE, decode_tok_s=50.0, weight_bytes=4e9)
GOOD_INT8 = rec("m", "int8", changed(BASE, 1, 1), decode_tok_s=90.0, weight_bytes=2e9)


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        (rec("ref", "none", None, role="reference", status="FAILED"), "ref/none status FAILED"),
        (rec("ref", "none", None, role="reference", status="KILLED"), "ref/none status KILLED"),
        (rec("ref", "none", BASE, role="reference", weight_bytes=1e9), "ref/none missing decode_tok_s"),  # speed-less
    ],
    ids=["failed", "killed", "speedless"],
)
def test_unusable_reference_makes_dependent_verdicts_undecided(ref, why):
    sweep = _sweep(GOOD_BASE, GOOD_INT8, ref)
    [g] = evaluate(sweep, DEFAULT_POLICY)
    [dom] = [c for c in g.checks if c.name == "not_dominated[decode_tok_s]"]
    assert dom.outcome == "undecided" and why in dom.detail
    assert g.verdict in ("undecided", "fail") and any(why in r for r in g.reasons)
    # compare and the frontier tags say the same; only dominators count (references-only still needs the ref)
    assert analyze(sweep).verdicts[M.DECODE_TOK_S][GOOD_INT8.run_id].status == "undecided"
    v = frontier_verdicts(list(sweep.children), speed_axis(1), dominators=lambda r: r.role == "reference")
    assert v[GOOD_INT8.run_id].status == "undecided"
    # the same sweep with a usable reference passes: the reference alone made the difference
    ok = rec("ref", "none", changed(BASE, 150, 0), role="reference", decode_tok_s=120.0, weight_bytes=1e9)
    [g_ok] = evaluate(_sweep(GOOD_BASE, GOOD_INT8, ok), DEFAULT_POLICY)
    assert [c.outcome for c in g_ok.checks if c.name == "not_dominated[decode_tok_s]"] == ["pass"]


def test_failed_or_missing_base_fails_with_the_reason_named():
    failed_base = rec("m", "none", None, status="FAILED")
    failed_base.tags[M.TAG_STATUS_ERROR] = "RuntimeError: boom"
    ref = rec("ref", "none", changed(BASE, 150, 0), role="reference", decode_tok_s=120.0, weight_bytes=1e9)
    [g] = evaluate(_sweep(failed_base, GOOD_INT8, ref), DEFAULT_POLICY)
    assert g.verdict == "fail"
    assert any("m/none is FAILED (RuntimeError: boom)" in r for r in g.reasons)
    assert any(r.startswith("not_dominated[decode_tok_s]: cannot compare with m/none status FAILED") for r in g.reasons)
    assert analyze(_sweep(failed_base, GOOD_INT8, ref)).verdicts[M.DECODE_TOK_S][GOOD_INT8.run_id].status == "undecided"
    [g] = evaluate(_sweep(GOOD_INT8, ref), DEFAULT_POLICY)
    assert g.verdict == "fail" and any("none in the sweep" in r for r in g.reasons)
    # another model's failed base is no yardstick for this model's variants
    other = rec("o", "none", None, status="FAILED")
    v = frontier_verdicts([GOOD_BASE, GOOD_INT8, other, ref], SIZE_AXIS)
    assert v[GOOD_INT8.run_id].status == "frontier"


# -- 3. the resume key covers host, code, data and the hub commit -------------------------------------------

TAGS = {
    "cpu": "AMD EPYC 7B13",
    "gpu": "none",
    "threads": "2",
    "version.torch": "2.13.0",
    M.TAG_VERSION: "0.1.0",
    "mlflow.source.git.commit": "a" * 40,
    M.TAG_GIT_DIRTY: "false",
}


def _key(recipe, tags=TAGS, device="cpu", source="local:x") -> str:
    ctx = SweepContext(recipe, "parent", device, dict(tags))
    return content_key(recipe, plan(recipe)[0], source, key_inputs(ctx))


def test_resume_key_changes_with_every_ingredient(tmp_path, mmlu_dir, tiny_model_dir):
    data = tmp_path / "mmlu"
    data.mkdir()
    for split in ("test", "dev", "validation"):
        (data / f"{split}.jsonl").write_bytes((mmlu_dir / f"{split}.jsonl").read_bytes())
    doc = _recipe(tmp_path, tiny_model_dir, 1024)
    doc["eval"]["data_dir"] = str(data)
    recipe = parse_recipe(doc)
    key = _key(recipe)
    assert _key(recipe) == key  # stable
    changed_keys = {
        f"tag {name}": _key(recipe, {**TAGS, name: value})
        for name, value in [
            ("cpu", "Intel Xeon 8480"),
            ("gpu", "NVIDIA H200"),
            ("threads", "16"),
            (M.TAG_VERSION, "0.2.0"),
            ("mlflow.source.git.commit", "b" * 40),
            (M.TAG_GIT_DIRTY, "0123456789abcdef"),
            ("version.torch", "2.14.0"),
        ]
    }
    changed_keys["device"] = _key(recipe, device="cuda")
    changed_keys["source"] = _key(recipe, source="local:y")
    # the same data in another directory, then other data in the same directory
    other = tmp_path / "mmlu2"
    other.mkdir()
    for f in data.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    changed_keys["data dir"] = _key(parse_recipe({**doc, "eval": {**doc["eval"], "data_dir": str(other)}}))
    lines = (data / "test.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["question"] += " (edited)"
    (data / "test.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    changed_keys["data sha256"] = _key(recipe)
    assert all(k != key for k in changed_keys.values()), [n for n, k in changed_keys.items() if k == key]
    assert len(set(changed_keys.values())) == len(changed_keys)


def test_hub_source_is_keyed_by_its_resolved_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from pipeline.config.recipe import ModelSpec

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # offline (conftest): cache only
    repo = tmp_path / "models--org--tiny"

    def cache(commit: str) -> None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")

    model = ModelSpec(name="t", source="org/tiny")
    assert source_fingerprint(model) is None  # not resolvable: never reused
    cache("1" * 40)
    assert source_fingerprint(model) == f"hub:org/tiny@{'1' * 40}"
    cache("2" * 40)  # `main` moved
    assert source_fingerprint(model) == f"hub:org/tiny@{'2' * 40}"
    pinned = ModelSpec(name="t", source="org/tiny", revision="3" * 40)
    assert source_fingerprint(pinned) == f"hub:org/tiny@{'3' * 40}"


# -- 4. one dominance rule: compare, the frontier tags and the gate -----------------------------------------


def test_two_percent_apart_is_equal_speed_everywhere(store, tmp_path):
    from pipeline.cli import app

    uri, sweeps = store
    parent, ids = sweeps["near"]
    int8 = ids["m/int8"]
    assert (
        run_compare(tracking_uri=uri, run_id=parent, out_dir=tmp_path / "cmp").verdicts[M.DECODE_TOK_S][int8].status
        == "frontier"
    )
    log_sweep_report(uri, parent)
    sweep = load_sweep(uri, run_id=parent, with_questions=False)
    tags = {r.label: r.tags for r in sweep.children}
    assert (
        tags["m/int8"]["frontier.decode_tok_s"] == "frontier" and tags["m/none"]["frontier.decode_tok_s"] == "frontier"
    )
    assert "speed_tolerance=0.03" in sweep.tags[M.TAG_FRONTIER_POLICY]
    result = run_gate(REPO / "policies" / "default.yaml", tracking_uri=uri, run_id=parent, out_dir=tmp_path / "gate")
    [g] = result.variants
    [dom] = [c for c in g.checks if c.name == "not_dominated[decode_tok_s]"]
    assert dom.outcome == "pass"
    # `compare --policy` follows the given rule: with no tolerance the base's 2 % decides
    strict = _policy_file(tmp_path, speed_tolerance=0.0)
    out = CliRunner().invoke(
        app, ["compare", "--run", parent, "--tracking-uri", uri, "--out", str(tmp_path / "c"), "--policy", str(strict)]
    )
    assert out.exit_code == 0, out.output
    assert "dominated by m/none" in (tmp_path / "c" / "compare.csv").read_text()


def test_default_policy_file_is_the_default_policy():
    assert load_policy(REPO / "policies" / "default.yaml") == DEFAULT_POLICY
    assert parse_policy({"max_mmlu_drop_points": 1.0}).speed_tolerance == DEFAULT_POLICY.speed_tolerance == 0.03
