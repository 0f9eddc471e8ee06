"""The spine end to end on the tiny Llama: `shrinkgate run` -> MLflow parent/child runs, metrics, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import _methods  # noqa: F401 - registers the test-only methods (test-raises, ...)
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.cli import app

SUBJECTS = ["abstract_algebra", "anatomy"]


def _recipe(tmp_path: Path, tiny_model_dir: Path, variants, extra_models=(), speed=None) -> Path:
    doc = {
        "name": "e2e",
        "models": [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}, *extra_models],
        "variants": variants,
        "eval": {"num_fewshot": 0, "subjects": SUBJECTS, "limit_per_subject": 2, "batch_size": 4},
        "speed": {
            "prompt_tokens": 16,
            "new_tokens": 4,
            "batch_sizes": [1, 2],
            "warmup": 0,
            "repeats": 2,
            "threads": 2,
            **(speed or {}),
        },
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "e2e"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(M.TAG_KIND) == "sweep"]
    children = [r for r in runs if r.data.tags.get(M.TAG_KIND) == "variant"]
    return client, parents, children


def _artifact_names(client, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("e2e")
    path = _recipe(
        tmp,
        tiny_model_dir,
        [
            {"name": "none", "method": "none"},
            {"name": "pruned", "method": "magnitude-prune", "params": {"amount": 0.5}},
        ],
        speed={"target_hardware": "h100-sxm"},
    )
    result = CliRunner().invoke(app, ["run", str(path)])
    return tmp, result


def test_run_logs_parent_children_metrics_and_artifacts(finished_sweep):
    tmp, result = finished_sweep
    assert result.exit_code == 0, result.output
    client, parents, children = _runs(f"sqlite:///{tmp}/mlflow.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags[M.TAG_VARIANT] for c in children) == ["none", "pruned"]
    assert M.ART_RECIPE in _artifact_names(client, parent.info.run_id)
    assert parent.data.params["recipe.eval.limit_per_subject"] == "2"

    for child in children:
        assert child.info.status == "FINISHED"
        m, tags = child.data.metrics, child.data.tags
        expected = set(M.REQUIRED) | {M.subject_metric(s) for s in SUBJECTS}
        expected |= {M.batch_metric(name, 2) for name in M.PER_BATCH}
        assert expected <= set(m), sorted(expected - set(m))
        assert m[M.MMLU_N_QUESTIONS] == 4
        assert 0.0 <= m[M.MMLU_ACC] <= 1.0 and m[M.MMLU_ACC_STDERR] > 0
        assert m[M.DECODE_TOK_S] > 0 and m[M.WALL_TOK_S] > 0 and 0 < m[M.MBU] < 2
        assert m[M.WEIGHT_BYTES] > 0
        assert m[M.RUNTIME_WEIGHT_BYTES] >= m[M.WEIGHT_BYTES] * 0.99
        assert len(tags["heldout.sha256"]) == 64  # the held-out text KL was measured on
        for tag in (
            "host",
            "cpu",
            "threads",
            "version.torch",
            "version.lm_eval",
            M.TAG_ROLE,
            M.TAG_KERNEL,
            "provenance.kind",
            M.TAG_CONTENT_KEY,
        ):
            assert tag in tags, tag
        assert tags["threads"] == "2" and tags["provenance.kind"] == "local"
        assert {M.ART_LM_EVAL, M.ART_QUESTIONS, M.ART_SPEED, M.ART_FIDELITY} <= _artifact_names(
            client, child.info.run_id
        )
        questions = client.download_artifacts(child.info.run_id, M.ART_QUESTIONS, str(tmp / child.info.run_id))
        rows = Path(questions).read_text().strip().splitlines()
        assert rows[0] == "subject,index,answer,predicted,correct" and len(rows) == 5
        assert child.data.params["variant.method"] in ("none", "magnitude-prune")

    by_variant = {c.data.tags[M.TAG_VARIANT]: c.data.metrics for c in children}
    assert by_variant["none"][M.BITS_PER_WEIGHT] == pytest.approx(32.0)  # fp32 dense
    assert by_variant["none"][M.SPARSITY] < 0.001
    assert by_variant["pruned"][M.SPARSITY] == pytest.approx(0.5, abs=0.01)
    assert by_variant["none"][M.KL_VS_BASE] == 0.0 and by_variant["none"][M.TOP1_AGREE_VS_BASE] == 1.0
    assert by_variant["pruned"][M.KL_VS_BASE] > 0.0
    fallback = {c.data.tags[M.TAG_VARIANT]: c.data.tags[M.TAG_DENSE_FALLBACK] for c in children}
    assert fallback == {"none": "false", "pruned": "true"}  # masked weights run as a dense matmul on CPU


def test_runs_log_predictions_for_the_target_hardware_and_compare_shows_them_apart(finished_sweep):
    tmp, result = finished_sweep
    assert result.exit_code == 0, result.output
    _, _, children = _runs(f"sqlite:///{tmp}/mlflow.db")
    by_variant = {c.data.tags[M.TAG_VARIANT]: c.data for c in children}
    for data in by_variant.values():
        assert data.tags[M.TAG_PREDICTED_HARDWARE] == "h100-sxm" and M.TAG_PREDICTED_ERROR not in data.tags
        assert data.tags[M.TAG_PREDICTED_BASIS].startswith("bf16, 16.00 bits/weight")
        for name in (
            "predicted_decode_tok_s",
            "predicted_decode_tok_s_bs2",
            "predicted_tpot_ms",
            "predicted_ttft_ms_bs2",
        ):
            assert data.metrics[name] > 0, name
        # a tiny model on an H100: far faster than measured here, and memory-bound (batch 2 ~ twice batch 1)
        assert data.metrics["predicted_decode_tok_s"] > 10 * data.metrics[M.DECODE_TOK_S]
        assert data.metrics["predicted_decode_tok_s_bs2"] == pytest.approx(
            2 * data.metrics["predicted_decode_tok_s"], rel=0.05
        )
    # pruning stores dense zeros: predicted like the unmodified model
    assert by_variant["pruned"].metrics["predicted_decode_tok_s"] == pytest.approx(
        by_variant["none"].metrics["predicted_decode_tok_s"]
    )
    out = tmp / "compare"
    compared = CliRunner().invoke(
        app, ["compare", "--experiment", "e2e", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--out", str(out)]
    )
    assert compared.exit_code == 0, compared.output
    report = (out / "compare.md").read_text()
    assert "## Predicted on h100-sxm (roofline, not measured)" in report and "PREDICTED tok/s (batch 2)" in report
    assert "ideal roofline" in report  # no GPU measurements fitted: said where the factors come from


def test_measured_children_become_points_to_fit_the_runtime_factors(finished_sweep):
    from pipeline.predict.fit import fit, points_from_record, predicted
    from pipeline.tracking.read import measured_children

    tmp, _ = finished_sweep
    records = measured_children(f"sqlite:///{tmp}/mlflow.db")
    points = [p for r in records for p in points_from_record(r)]
    assert sorted((p.label, p.batch) for p in points) == [
        ("tiny/none", 1),
        ("tiny/none", 2),
        ("tiny/pruned", 1),
        ("tiny/pruned", 2),
    ]
    for p in points:
        assert p.runtime == "transformers" and p.device_kind == "cpu" and p.prompt_tokens == 16
        assert p.bandwidth > 1e9 and p.tpot_s > 0 and p.ttft_s > 0 and p.bytes_per_step >= p.weight_bytes > 0
        assert p.flops_per_token and p.peak_flops  # from the logged MFU and matmul peak
        assert p.layers == 2 and p.head_params > 0  # logged as model_layers / head_params: what the fit charges
    factors = fit(points, "transformers", "cpu", "test")
    for p in points:  # a tiny model's step is mostly fixed overhead: the fit must find it
        assert predicted(p, factors)[0] == pytest.approx(p.tpot_s, rel=0.5)
    assert factors.step_overhead_ms + 2 * factors.layer_overhead_ms > 0


def test_closing_table_printed(finished_sweep):
    _, result = finished_sweep
    for text in ("tiny", "pruned", "MMLU ± stderr", "decode tok/s", "MBU", "bits/w"):
        assert text in result.output


def test_second_run_resumes_finished_children(finished_sweep):
    tmp, _ = finished_sweep
    result = CliRunner().invoke(app, ["run", str(tmp / "recipe.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped") == 2


def test_failed_variant_is_recorded_and_sweep_goes_on(tmp_path, tiny_model_dir):
    import shutil

    broken = tmp_path / "broken-model"  # passes the pre-flight checks, fails when the weights are read
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, broken / f.name)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    path = _recipe(
        tmp_path,
        tiny_model_dir,
        [{"name": "none", "method": "none"}, {"name": "boom", "method": "test-raises"}],
        extra_models=[{"name": "ghost", "source": str(broken), "role": "reference"}],
    )
    path.write_text(path.read_text().replace("batch_sizes:\n  - 1\n  - 2", "batch_sizes:\n  - 1"))
    result = CliRunner().invoke(app, ["run", str(path), "--limit-per-subject", "1"])
    assert result.exit_code == 1
    assert "2 variant(s) failed" in result.output and "tiny/boom" in result.output and "ghost/none" in result.output
    client, parents, children = _runs(f"sqlite:///{tmp_path}/mlflow.db")
    status = {c.data.tags[M.TAG_MODEL] + "/" + c.data.tags[M.TAG_VARIANT]: c for c in children}
    assert status["tiny/none"].info.status == "FINISHED"
    assert status["tiny/boom"].info.status == "FAILED"
    assert "deliberate failure" in status["tiny/boom"].data.tags[M.TAG_STATUS_ERROR]
    assert M.ART_TRACEBACK in _artifact_names(client, status["tiny/boom"].info.run_id)
    assert status["ghost/none"].info.status == "FAILED" and status["ghost/none"].data.tags[M.TAG_STATUS_ERROR]
    assert parents[0].info.status == "FAILED"
    assert json.loads(json.dumps(parents[0].data.tags))["failed_children"] == "tiny/boom,ghost/none"


def test_validate_command(tmp_path, tiny_model_dir):
    path = _recipe(tmp_path, tiny_model_dir, [{"name": "none", "method": "none"}])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and "1 run(s)" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("num_fewshot: 0", "num_fewshot: 2"))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "eval.num_fewshot" in result.output
