"""`shrinkgate export`: the rebuilt variant must hash to the run's `stored.sha256`, and everything that would make
an export something other than the measured artifact is refused with one line, before anything is written.

One tiny sweep (a magnitude-pruned tiny Llama, no speed) serves every test; each test that changes the run or
the source weights puts them back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.cli import app


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model_dir):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("export")
    source = tmp / "tiny"  # a copy: one test changes its weights
    shutil.copytree(tiny_model_dir, source)
    uri = f"sqlite:///{tmp}/mlflow.db"
    doc = {
        "name": "exp",
        "models": [{"name": "tiny", "source": str(source), "role": "candidate"}],
        "variants": [{"name": "pruned", "method": "magnitude-prune", "params": {"amount": 0.5}}],
        "eval": {"num_fewshot": 0, "subjects": ["abstract_algebra"], "limit_per_subject": 1},
        "speed": {"enabled": False},
        "tracking": {"uri": uri, "experiment": "exp"},
    }
    (tmp / "exp.yaml").write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["run", str(tmp / "exp.yaml"), "--executor", "inline"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(M.TAG_VARIANT) == "pruned")
    return tmp, uri, client, run, source


def _export(uri: str, run_id: str, out: Path):
    return CliRunner().invoke(app, ["export", run_id, "--out", str(out), "--tracking-uri", uri])


def _refused(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())  # the console wraps long lines
    assert message in line and "Traceback" not in result.output, result.output


def test_export_checks_the_hash_the_build_logged(swept, tmp_path):
    _, uri, _, run, _ = swept
    digest = run.data.tags[M.TAG_STORED_SHA256]
    assert len(digest) == 64 and int(digest, 16) >= 0
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    result = _export(uri, run.info.run_id, out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "shrinkgate.json").read_text())["run_id"] == run.info.run_id
    assert (out / "config.json").is_file()


def test_a_changed_tensor_of_the_same_size_is_refused(swept, tmp_path):
    """The source weights change after the sweep: one value of the final norm, so every byte count stays equal
    and only the hash can tell the rebuild is not what was measured."""
    from safetensors.torch import load_file, save_file

    _, uri, _, run, source = swept
    weights = source / "model.safetensors"
    original = weights.read_bytes()
    try:
        tensors = load_file(weights)
        tensors["model.norm.weight"][0] += 1.0
        save_file(tensors, weights, metadata={"format": "pt"})
        assert weights.stat().st_size == len(original)
        result = _export(uri, run.info.run_id, tmp_path / "out")
    finally:
        weights.write_bytes(original)
    _refused(result, f"run {run.info.run_id}: the rebuilt weights hash to")
    assert f"({M.TAG_STORED_SHA256}); the code, a library or the source weights changed since the run" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("failed", "FAILED, not FINISHED, so nothing was measured to export"),
        ("no-hash", f"no {M.TAG_STORED_SHA256} tag (logged by an older shrinkgate)"),
        ("other-device", "built on cuda:99, which this host does not have; export on a host with cuda:99"),
    ],
)
def test_export_refuses_a_run_it_cannot_check(swept, tmp_path, case, message):
    _, uri, client, run, _ = swept
    run_id = run.info.run_id
    if case == "failed":
        client.set_terminated(run_id, "FAILED")
    elif case == "no-hash":
        client.delete_tag(run_id, M.TAG_STORED_SHA256)
    else:
        client.set_tag(run_id, M.TAG_DEVICE, "cuda:99")
    try:
        result = _export(uri, run_id, tmp_path / "out")
    finally:
        client.set_terminated(run_id, "FINISHED")
        client.set_tag(run_id, M.TAG_STORED_SHA256, run.data.tags[M.TAG_STORED_SHA256])
        client.set_tag(run_id, M.TAG_DEVICE, run.data.tags[M.TAG_DEVICE])
    _refused(result, f"run {run_id}: ")
    _refused(result, message)
    assert not (tmp_path / "out").exists()


def test_export_never_writes_into_a_folder_that_holds_files(swept, tmp_path):
    _, uri, _, run, _ = swept
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _export(uri, run.info.run_id, out)
    _refused(result, f"--out {out}: not an empty folder; name a new or empty one")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
