"""A long sweep survives failures, OOM and interrupts; the store stays consistent; reruns resume; results repeat.
These run the inline executor (the driver's own semantics); tests/test_executors.py covers the process executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _methods  # noqa: F401 - registers test-raises / test-oom / test-sleep
import pytest
import yaml
from _signals import default_sigint

from pipeline import metrics as M
from pipeline.config.recipe import parse_recipe
from pipeline.sweep.driver import run_sweep

REPO = Path(__file__).resolve().parents[1]


def _doc(tmp: Path, model_dir: Path, variants, *, speed: bool = False) -> dict:
    return {
        "name": "rel",
        "models": [{"name": "tiny", "source": str(model_dir), "role": "candidate"}],
        "variants": variants,
        "eval": {"num_fewshot": 0, "subjects": ["anatomy", "virology"], "limit_per_subject": 3},
        "speed": {"enabled": speed, "prompt_tokens": 8, "new_tokens": 2, "repeats": 1, "warmup": 0},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "rel"},
    }


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rel")
    return client, client.search_runs([exp.experiment_id], max_results=200)


def _questions(client, run_id: str, tmp: Path) -> str:
    return Path(client.download_artifacts(run_id, M.ART_QUESTIONS, str(tmp))).read_text()


def test_same_recipe_twice_gives_identical_predictions(tmp_path, tiny_model_dir):
    recipe = parse_recipe(
        _doc(tmp_path, tiny_model_dir, [{"name": "pruned", "method": "magnitude-prune", "params": {"amount": 0.3}}])
    )
    first = run_sweep(recipe, executor="inline")
    second = run_sweep(recipe, executor="inline", rerun=True)
    client, _ = _runs(recipe.tracking.uri)
    a, b = first.children[0], second.children[0]
    assert a.run_id != b.run_id and a.status == b.status == "FINISHED"
    assert [q.predicted for q in a.accuracy.questions] == [q.predicted for q in b.accuracy.questions]
    assert _questions(client, a.run_id, tmp_path / "a") == _questions(client, b.run_id, tmp_path / "b")
    ma, mb = client.get_run(a.run_id).data, client.get_run(b.run_id).data
    assert ma.metrics[M.MMLU_ACC] == mb.metrics[M.MMLU_ACC]
    assert ma.tags["seed"] == "1234" and ma.tags["threads"]


def test_oom_and_exceptions_fail_one_child_and_the_sweep_goes_on(tmp_path, tiny_model_dir):
    recipe = parse_recipe(
        _doc(
            tmp_path,
            tiny_model_dir,
            [
                {"name": "oom", "method": "test-oom"},
                {"name": "raises", "method": "test-raises"},
                {"name": "none", "method": "none"},
            ],
        )
    )
    outcome = run_sweep(recipe, executor="inline")
    status = {c.item.variant.name: c for c in outcome.children}
    assert status["oom"].status == "FAILED" and "OutOfMemoryError: simulated" in status["oom"].error
    assert status["raises"].status == "FAILED"
    assert status["none"].status == "FINISHED"
    client, runs = _runs(recipe.tracking.uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    oom_run = client.get_run(status["oom"].run_id)
    assert "OutOfMemoryError" in oom_run.data.tags[M.TAG_STATUS_ERROR]
    assert M.ART_TRACEBACK in {a.path for a in client.list_artifacts(oom_run.info.run_id)}


def _launch(recipe_path: Path, tmp: Path, flag: Path, executor: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "tests"),
        "SHRINKGATE_TEST_SLEEP_FLAG": str(flag),
        "SHRINKGATE_TEST_STARTED": str(tmp / "started"),
    }
    code = "import _methods; from pipeline.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", str(recipe_path), "--executor", executor],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )


@pytest.mark.parametrize(
    ("sig", "executor"), [(signal.SIGTERM, "inline"), (signal.SIGINT, "inline")], ids=["SIGTERM", "SIGINT"]
)
def test_interrupt_marks_killed_and_rerun_resumes(tmp_path, tiny_model_dir, sig, executor):
    doc = _doc(tmp_path, tiny_model_dir, [{"name": "none", "method": "none"}, {"name": "slow", "method": "test-sleep"}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    flag = tmp_path / "keep-sleeping"
    flag.write_text("1")
    proc = _launch(path, tmp_path, flag, executor)
    deadline = time.monotonic() + 240
    while not (tmp_path / "started").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the slow variant never started"
        time.sleep(0.2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out

    client, runs = _runs(doc["tracking"]["uri"])
    by_kind = {(r.data.tags.get(M.TAG_KIND), r.data.tags.get(M.TAG_VARIANT)): r for r in runs}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert by_kind[("sweep", None)].info.status == "KILLED"
    assert by_kind[("sweep", None)].data.tags["executor"] == "inline"
    assert by_kind[("variant", "none")].info.status == "FINISHED"
    assert by_kind[("variant", "slow")].info.status == "KILLED"

    flag.unlink()  # the slow method now returns at once
    (tmp_path / "started").unlink()
    second = _launch(path, tmp_path, flag, executor)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert "skipped tiny/none" in out and "done tiny/slow" in out
    _, runs = _runs(doc["tracking"]["uri"])
    slow = [r for r in runs if r.data.tags.get(M.TAG_VARIANT) == "slow"]
    assert sorted(r.info.status for r in slow) == ["FINISHED", "KILLED"]
    nones = [r for r in runs if r.data.tags.get(M.TAG_VARIANT) == "none"]
    measured = [r for r in nones if M.TAG_COPIED_FROM not in r.data.tags]
    # resumed: copied into the new sweep (its own child, pointing at the run it came from), not re-measured
    assert len(measured) == 1 and [r.data.tags[M.TAG_COPIED_FROM] for r in nones if r not in measured] == [
        measured[0].info.run_id
    ]
