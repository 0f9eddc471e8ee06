"""One driver, three executors. The process executor (the default) survives a child that a signal kills,
reports each child's own peak memory, predicts exactly as inline does, and ends its child on SIGTERM; a
child whose driver vanished ends itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _executor_methods  # noqa: F401 - registers test-segfault, test-sigkill (and, through _methods, test-sleep)
import psutil
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.cli import app
from pipeline.config.recipe import parse_recipe
from pipeline.sweep.driver import run_sweep
from pipeline.sweep.executors import EXECUTORS, ExecutorError, get_executor

TESTS = Path(__file__).resolve().parent
EXPERIMENT = "executors"


def _doc(tmp: Path, model_dir: Path, variants, *, speed: bool = False) -> dict:
    return {
        "name": "executors",
        "models": [{"name": "tiny", "source": str(model_dir), "role": "candidate"}],
        "variants": variants,
        "eval": {"num_fewshot": 0, "subjects": ["anatomy", "virology"], "limit_per_subject": 3},
        "speed": {
            "enabled": speed,
            "prompt_tokens": 8,
            "new_tokens": 2,
            "batch_sizes": [1],
            "repeats": 1,
            "warmup": 0,
            "threads": 1,
        },
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": EXPERIMENT},
    }


def _write(tmp: Path, doc: dict) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get(M.TAG_KIND) == "sweep"]
    children = {r.data.tags[M.TAG_VARIANT]: r for r in runs if r.data.tags.get(M.TAG_KIND) == "variant"}
    return client, runs, parents, children


def _text(client, run_id: str, name: str, dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, name, str(dest))).read_text()


def test_names():
    assert sorted(EXECUTORS) == ["inline", "process", "ray"]
    assert get_executor().name == "process"  # the default
    with pytest.raises(ExecutorError, match="inline, process, ray"):
        get_executor("threads")


def test_child_imports_the_modules_of_its_methods(tmp_path, monkeypatch):
    from pipeline.methods import Method, register, registry
    from pipeline.sweep.executors.process import plugin_modules
    from pipeline.sweep.plugins import env_plugins
    from pipeline.variants.plan import plan

    if "test-main-only" not in registry():
        register(type("MainOnly", (Method,), {"__module__": "__main__", "name": "test-main-only", "library": "tests"}))
    doc = _doc(
        tmp_path,
        tmp_path,
        [
            {
                "name": "segv",
                "steps": [{"method": "magnitude-prune", "params": {"amount": 0.1}}, {"method": "test-segfault"}],
            },
            {"name": "main", "method": "test-main-only"},
        ],
    )
    segv, main = plan(parse_recipe(doc))
    assert plugin_modules(segv) == (["_executor_methods"], [str(TESTS)])  # pipeline's own methods need nothing
    with pytest.raises(ExecutorError, match="__main__"):
        plugin_modules(main)
    monkeypatch.setenv("SHRINKGATE_PLUGINS", " my.methods, other ,")
    assert env_plugins() == ["my.methods", "other"]


def test_child_killed_by_a_signal_fails_alone_and_the_sweep_goes_on(tmp_path, tiny_model_dir):
    doc = _doc(
        tmp_path,
        tiny_model_dir,
        [
            {"name": "segv", "method": "test-segfault"},
            {"name": "oomkill", "method": "test-sigkill"},
            {"name": "none", "method": "none"},
        ],
    )
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, doc))])  # the default executor
    out = result.output
    assert result.exit_code == 1, out
    assert "failed tiny/segv" in out and "failed tiny/oomkill" in out and "done tiny/none" in out, out
    assert "2 variant(s) failed" in out and "child process killed by SIGSEGV" in out and "SIGKILL" in out, out

    client, runs, parents, kids = _runs(doc["tracking"]["uri"])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = parents
    assert parent.info.status == "FAILED" and parent.data.tags["executor"] == "process"
    assert parent.data.tags["failed_children"] == "tiny/segv,tiny/oomkill"
    segv, killed = kids["segv"], kids["oomkill"]
    assert segv.info.status == "FAILED" and segv.data.tags[M.TAG_STATUS_ERROR].startswith(
        "child process killed by SIGSEGV"
    )
    trace = _text(client, segv.info.run_id, M.ART_TRACEBACK, tmp_path / "segv")
    assert "Segmentation fault" in trace and "_executor_methods.py" in trace  # faulthandler's dump from the child
    assert killed.info.status == "FAILED" and "SIGKILL" in killed.data.tags[M.TAG_STATUS_ERROR]
    assert kids["none"].info.status == "FINISHED" and kids["none"].data.metrics[M.MMLU_N_QUESTIONS] == 6


def test_process_child_reports_its_own_peak_memory(tmp_path, tiny_model_dir):
    ballast = b"\x01" * (1536 * 2**20)  # filled, so resident in the driver
    driver_mb = psutil.Process().memory_info().rss / 2**20
    assert driver_mb > 1536
    recipe = parse_recipe(_doc(tmp_path, tiny_model_dir, [{"name": "none", "method": "none"}], speed=True))
    outcome = run_sweep(recipe, executor="process")
    assert len(ballast) and outcome.children[0].status == "FINISHED"
    _, _, _, kids = _runs(recipe.tracking.uri)
    metrics = kids["none"].data.metrics
    # in the driver's process both would count the ballast (>= driver_mb); the child never held it
    assert 0 < metrics[M.BUILD_PEAK_MEM_MB] < driver_mb - 1024, (metrics[M.BUILD_PEAK_MEM_MB], driver_mb)
    assert 0 < metrics[M.PEAK_MEM_MB] < driver_mb - 1024, (metrics[M.PEAK_MEM_MB], driver_mb)


def test_inline_and_process_give_identical_predictions(tmp_path, tiny_model_dir):
    recipe = parse_recipe(
        _doc(tmp_path, tiny_model_dir, [{"name": "pruned", "method": "magnitude-prune", "params": {"amount": 0.3}}])
    )
    inline = run_sweep(recipe, executor="inline")
    process = run_sweep(recipe, executor="process", rerun=True)
    a, b = inline.children[0], process.children[0]
    assert a.status == b.status == "FINISHED" and a.run_id != b.run_id
    assert len(a.accuracy.questions) == 6
    assert [(q.subject, q.index, q.predicted) for q in a.accuracy.questions] == [
        (q.subject, q.index, q.predicted) for q in b.accuracy.questions
    ]
    client, _, parents, _ = _runs(recipe.tracking.uri)
    assert sorted(p.data.tags["executor"] for p in parents) == ["inline", "process"]
    assert _text(client, a.run_id, M.ART_QUESTIONS, tmp_path / "a") == _text(
        client, b.run_id, M.ART_QUESTIONS, tmp_path / "b"
    )
    ma, mb = client.get_run(a.run_id).data.metrics, client.get_run(b.run_id).data.metrics
    for name in (M.MMLU_ACC, M.SPARSITY, M.KL_VS_BASE, M.WEIGHT_BYTES):
        assert ma[name] == mb[name], name


def _launch(recipe: Path, tmp: Path, flag: Path, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS),
        "SHRINKGATE_TEST_SLEEP_FLAG": str(flag),
        "SHRINKGATE_TEST_STARTED": str(tmp / "started"),
    }
    code = "import _executor_methods; from pipeline.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", str(recipe), *args],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _child_pid(proc: subprocess.Popen, started: Path) -> int:
    deadline = time.monotonic() + 240
    while not (started.exists() and started.read_text().strip()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the slow variant never started"
        time.sleep(0.2)
    return int(started.read_text())


def _gone(pid: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def test_sigterm_ends_the_child_process_marks_killed_and_rerun_resumes(tmp_path, tiny_model_dir):
    doc = _doc(tmp_path, tiny_model_dir, [{"name": "none", "method": "none"}, {"name": "slow", "method": "test-sleep"}])
    path = _write(tmp_path, doc)
    flag = tmp_path / "keep-sleeping"
    flag.write_text("1")
    proc = _launch(path, tmp_path, flag, "--executor", "process")
    pid = _child_pid(proc, tmp_path / "started")
    assert pid != proc.pid and psutil.Process(pid).ppid() == proc.pid  # a child process of the driver
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "killed tiny/slow" in out, out
    assert _gone(pid, timeout_s=1), f"child {pid} outlived the driver"

    _, runs, parents, kids = _runs(doc["tracking"]["uri"])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["executor"] == "process"
    assert kids["none"].info.status == "FINISHED"
    assert kids["slow"].info.status == "KILLED" and kids["slow"].data.tags[M.TAG_STATUS_ERROR].startswith("interrupted")

    flag.unlink()  # the slow method now returns at once
    (tmp_path / "started").unlink()
    second = _launch(path, tmp_path, flag)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert "skipped tiny/none" in out and "done tiny/slow" in out, out
    _, runs, _, _ = _runs(doc["tracking"]["uri"])
    slow = [r for r in runs if r.data.tags.get(M.TAG_VARIANT) == "slow"]
    assert sorted(r.info.status for r in slow) == ["FINISHED", "KILLED"]
    nones = [r for r in runs if r.data.tags.get(M.TAG_VARIANT) == "none"]
    measured = [r for r in nones if M.TAG_COPIED_FROM not in r.data.tags]
    # resumed: copied into the new sweep (its own child, pointing at the run it came from), not re-measured
    assert len(measured) == 1 and [r.data.tags[M.TAG_COPIED_FROM] for r in nones if r not in measured] == [
        measured[0].info.run_id
    ]


def test_child_ends_itself_when_the_driver_is_killed(tmp_path, tiny_model_dir):
    doc = _doc(tmp_path, tiny_model_dir, [{"name": "slow", "method": "test-sleep"}])
    flag = tmp_path / "keep-sleeping"
    flag.write_text("1")
    proc = _launch(_write(tmp_path, doc), tmp_path, flag)
    pid = _child_pid(proc, tmp_path / "started")
    proc.kill()  # SIGKILL: the driver cannot clean up
    proc.communicate(timeout=60)
    assert _gone(pid), f"child {pid} kept running without its driver"
    _, _, _, kids = _runs(doc["tracking"]["uri"])
    assert kids["slow"].info.status == "KILLED" and kids["slow"].data.tags[M.TAG_STATUS_ERROR] == "driver process gone"
