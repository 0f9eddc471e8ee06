"""`run --executor ray` on a real local Ray against a real `mlflow server`: the same runs, metrics and MMLU
predictions as the inline executor; a crashed worker and a failing task end FAILED while the rest finish;
Ctrl-C ends outstanding children and the parent KILLED."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

try:
    import ray
except ImportError:  # reported by `ray_installed` below: `--executor ray` is a claimed feature, so fail, never skip
    ray = None

import _executor_methods  # noqa: E402,F401 - test-crash-worker, test-raises-in-worker (in workers via the setup hook)
from typer.testing import CliRunner  # noqa: E402

from pipeline import metrics as M  # noqa: E402
from pipeline.cli import app  # noqa: E402
from pipeline.sweep.driver import run_sweep  # noqa: E402
from pipeline.sweep.executors.ray import RayExecutor  # noqa: E402

TESTS = Path(__file__).resolve().parent
SUBJECTS = ["abstract_algebra", "anatomy"]
EXPERIMENT = "ray-e2e"


@pytest.fixture(scope="module", autouse=True)
def ray_installed():
    if ray is None:
        pytest.fail(
            "ray is not installed: run `bash scripts/install.sh` (installs the `ray` extra, ray[default]==2.60.0)",
            pytrace=False,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server we started in its own session: signal its process group (pgid == its pid)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class _Server:
    """`mlflow server` started in its own session; `url` answers once `wait()` returned."""

    def __init__(self, tmp: Path) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        exe = str(Path(sys.executable).with_name("mlflow"))
        cmd = [
            exe,
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp}/server.db",
            "--artifacts-destination",
            (tmp / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner processes
        self.log = open(tmp / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self) -> str:
        _wait_http(f"{self.url}/health", self.proc)
        return self.url

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server (sqlite backend, proxied artifacts, loopback, one worker), booting while the
    local sweep runs; stopped by its process id."""
    server = _Server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


def _ensure_ray():
    """A real local Ray; workers import `_executor_methods` at start so the test methods exist there too."""
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=128 * 1024**2,
            runtime_env={
                "env_vars": {"PYTHONPATH": str(TESTS)},
                "worker_process_setup_hook": "_executor_methods.setup_hook",
            },
        )
    return ray


@pytest.fixture(scope="module", autouse=True)
def _ray_shutdown(ray_installed):
    if ray.is_initialized():
        ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture
def local_ray():
    return _ensure_ray()


def _recipe(path: Path, tiny_model_dir: Path, uri: str, variants: list[dict], extra_models=()) -> Path:
    doc = {
        "name": "ray-e2e",
        "models": [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}, *extra_models],
        "variants": variants,
        "eval": {"num_fewshot": 0, "subjects": SUBJECTS, "limit_per_subject": 1, "batch_size": 4},
        "speed": {"prompt_tokens": 16, "new_tokens": 4, "batch_sizes": [1], "warmup": 0, "repeats": 1, "threads": 1},
        "tracking": {"uri": uri, "experiment": EXPERIMENT},
        "resources": {"num_cpus": 1, "memory_gb": 0.5},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


SAME = [{"name": "none", "method": "none"}, {"name": "pruned", "method": "magnitude-prune", "params": {"amount": 0.5}}]


def _children(uri: str) -> tuple[object, object, dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=100, order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get(M.TAG_KIND) == "sweep")
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, {f"{r.data.tags[M.TAG_MODEL]}/{r.data.tags[M.TAG_VARIANT]}": r for r in kids}


def _questions(client, run_id: str, dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, M.ART_QUESTIONS, str(dest))).read_text()


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory, tiny_model_dir, mlflow_server):
    tmp = tmp_path_factory.mktemp("ray-e2e")
    local_uri = f"sqlite:///{tmp}/local.db"
    local = CliRunner().invoke(
        app, ["run", str(_recipe(tmp / "local.yaml", tiny_model_dir, local_uri, SAME)), "--executor", "inline"]
    )
    _ensure_ray()
    url = mlflow_server.wait()
    # the crash last: no task is left to wait for a replacement worker
    failing = [{"name": "boom", "method": "test-raises-in-worker"}, {"name": "crash", "method": "test-crash-worker"}]
    ray_recipe = _recipe(tmp / "ray.yaml", tiny_model_dir, "sqlite:///unused.db", [*SAME, *failing])
    started = time.perf_counter()
    remote = CliRunner().invoke(app, ["run", str(ray_recipe), "--executor", "ray", "--tracking-uri", url])
    return tmp, local_uri, local, remote, time.perf_counter() - started


def test_ray_matches_local_and_failures_are_recorded(both_runs, mlflow_server):
    tmp, local_uri, local, remote, seconds = both_runs
    server = mlflow_server.url
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 1, remote.output  # two children failed on purpose
    assert "2 variant(s) failed" in remote.output and "tiny/crash" in remote.output and "tiny/boom" in remote.output
    for line in ("done tiny/none", "done tiny/pruned", "failed tiny/crash", "failed tiny/boom"):
        assert line in remote.output, remote.output

    lclient, lparent, lkids = _children(local_uri)
    rclient, rparent, rkids = _children(server)
    assert rparent.info.status == "FAILED" and rparent.data.tags["executor"] == "ray"
    assert rparent.data.tags["failed_children"] == "tiny/boom,tiny/crash"  # plan order, as the inline executor
    assert sorted(rkids) == ["tiny/boom", "tiny/crash", "tiny/none", "tiny/pruned"]
    assert M.ART_RECIPE in {a.path for a in rclient.list_artifacts(rparent.info.run_id)}

    for label in ("tiny/none", "tiny/pruned"):
        lr, rr = lkids[label], rkids[label]
        assert lr.info.status == rr.info.status == "FINISHED"
        assert set(rr.data.metrics) == set(lr.data.metrics)
        assert set(M.REQUIRED) <= set(rr.data.metrics)
        for name in (M.MMLU_ACC, M.MMLU_ACC_STDERR, M.MMLU_N_QUESTIONS, M.WEIGHT_BYTES, M.BITS_PER_WEIGHT, M.SPARSITY):
            assert rr.data.metrics[name] == lr.data.metrics[name], (label, name)
        for s in SUBJECTS:
            assert rr.data.metrics[M.subject_metric(s)] == lr.data.metrics[M.subject_metric(s)]
        assert rr.data.metrics[M.DECODE_TOK_S] > 0
        # per-question predictions identical to the inline executor's
        assert _questions(rclient, rr.info.run_id, tmp / "r" / label) == _questions(
            lclient, lr.info.run_id, tmp / "l" / label
        )
        # the same parameters and content key; tags that say where it ran
        assert {k: v for k, v in rr.data.params.items()} == {k: v for k, v in lr.data.params.items()}
        assert rr.data.tags[M.TAG_CONTENT_KEY] == lr.data.tags[M.TAG_CONTENT_KEY]
        assert rr.data.tags["executor"] == "ray" and rr.data.tags["ray.node_id"] and rr.data.tags["device"] == "cpu"

    crash, boom = rkids["tiny/crash"], rkids["tiny/boom"]
    assert crash.info.status == "FAILED"
    assert crash.data.tags[M.TAG_STATUS_ERROR].startswith(
        ("WorkerCrashedError", "RayTaskError", "LocalRayletDiedError")
    ), crash.data.tags
    assert M.ART_TRACEBACK in {a.path for a in rclient.list_artifacts(crash.info.run_id)}
    assert (
        boom.info.status == "FAILED" and "deliberate failure inside the Ray task" in boom.data.tags[M.TAG_STATUS_ERROR]
    )
    print(f"ray sweep of 4 children: {seconds:.1f} s")  # shown with -s


def test_interrupt_cancels_outstanding_and_marks_killed(tmp_path, tiny_model_dir, local_ray):
    from pipeline.config.recipe import load_recipe

    uri = f"sqlite:///{tmp_path}/interrupt.db"
    recipe = load_recipe(_recipe(tmp_path / "r.yaml", tiny_model_dir, uri, SAME))
    seen: list[tuple[str, str]] = []

    def progress(label: str, stage: str) -> None:
        seen.append((label, stage))
        if label == "tiny/pruned" and stage == "queued":
            raise KeyboardInterrupt  # Ctrl-C while both tasks are out

    outcome = run_sweep(recipe, executor=RayExecutor(), progress=progress)
    assert outcome.interrupted and ("tiny/none", "queued") in seen
    assert [c.status for c in outcome.children] == ["KILLED", "KILLED"]
    _, parent, kids = _children(uri)
    assert parent.info.status == "KILLED"
    assert {label: r.info.status for label, r in kids.items()} == {"tiny/none": "KILLED", "tiny/pruned": "KILLED"}
    assert all(r.data.tags[M.TAG_STATUS_ERROR].startswith("interrupted") for r in kids.values())
    assert ray.is_initialized()  # not ours to shut down


def test_task_options_and_store_checks(tmp_path, monkeypatch):
    from pipeline.config.recipe import parse_recipe
    from pipeline.sweep.executors.ray import (
        RayExecutorError,
        absolute_store,
        check_store_reachable_from_cluster,
        task_options,
    )

    monkeypatch.setenv("SHRINKGATE_MMLU_DIR", "/data/mmlu")
    recipe = parse_recipe(
        {
            "name": "r",
            "models": [{"name": "m", "source": "x"}],
            "resources": {"num_cpus": 4, "num_gpus": 1, "memory_gb": 1.5},
        }
    )
    opts = task_options(recipe, "m/none")
    assert (opts["num_cpus"], opts["num_gpus"], opts["memory"], opts["max_retries"]) == (4, 1, int(1.5 * 1024**3), 0)
    assert opts["runtime_env"]["env_vars"]["SHRINKGATE_MMLU_DIR"] == "/data/mmlu"
    assert absolute_store(recipe).tracking.uri == f"sqlite:///{Path('mlruns/mlflow.db').resolve()}"
    check_store_reachable_from_cluster("sqlite:///x.db", client_mode=False, nodes=1)  # one host: fine
    with pytest.raises(RayExecutorError, match="shared server"):
        check_store_reachable_from_cluster("sqlite:///x.db", client_mode=True, nodes=1)
    with pytest.raises(RayExecutorError, match="loopback"):
        check_store_reachable_from_cluster("http://127.0.0.1:5000", client_mode=False, nodes=3)
    check_store_reachable_from_cluster("http://mlflow.internal:5000", client_mode=True, nodes=3)


def test_ray_runs_a_sequential_sample_look_by_look(tmp_path, tiny_model_dir, local_ray, mmlu_dir):
    """Ray tasks wait on the lock-step board between looks (6b837af submitted every task at once, so no variant
    could see its base and all scored `max`): the variant stops at its decisive look and the base with it."""
    from pipeline.config.recipe import parse_recipe

    doc = {
        "name": "ray-lockstep",
        "models": [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}],
        "variants": SAME,
        "eval": {
            "num_fewshot": 0,
            "subjects": SUBJECTS,
            "data_dir": str(mmlu_dir),
            "sample": {"questions": "auto", "max": 80, "step": 10, "delta_points": 60},
        },
        "speed": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "ray-lockstep"},
        "resources": {"num_cpus": 1, "memory_gb": 0.5},
    }
    stages: list[tuple[str, str]] = []
    outcome = run_sweep(
        parse_recipe(doc), executor=RayExecutor(), progress=lambda label, stage: stages.append((label, stage))
    )
    base, pruned = outcome.children
    assert base.status == pruned.status == "FINISHED", (base.error, pruned.error)
    assert pruned.accuracy.n_questions < 80 and pruned.accuracy.stopped.startswith(
        ("pass vs tiny/none", "fail vs tiny/none")
    )
    assert base.accuracy.n_questions == pruned.accuracy.n_questions
    looks = [(label, stage) for label, stage in stages if stage.startswith("scored ")]
    assert looks[:2] == [("tiny/none", "scored 10 questions"), ("tiny/pruned", "scored 10 questions")]
