"""Runtime `openai` against real servers on loopback: llama-cpp-python's own server on the bundled SmolLM2 GGUF
(launched, measured under load, MMLU from the same endpoint, stopped), and a small fake server for the faults a
real one shows rarely (never healthy, killed mid-run, wrong model name, HTTP 500, timeouts, no echo)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.cli import app

HERE = Path(__file__).parent
SUBJECTS = ["abstract_algebra", "anatomy"]
LLAMA_SERVER = [
    "{python}", "-m", "llama_cpp.server", "--model", "{artifact}", "--model_alias", "{model}", "--host", "{host}",
    "--port", "{port}", "--n_ctx", "2048", "--n_threads", "{threads}", "--logits_all", "true",
    "--interrupt_requests", "false",
]  # fmt: skip


def _fake(*args: str) -> list[str]:
    return ["{python}", str(HERE / "fake_openai_server.py"), "--host", "{host}", "--port", "{port}", *args]


def _write(tmp: Path, name: str, serve: dict, models: list[dict], *, speed: dict | None = None, variants=None) -> Path:
    doc = {
        "name": name,
        "runtime": "openai",
        "models": models,
        "eval": {"num_fewshot": 0, "subjects": SUBJECTS, "limit_per_subject": 2},
        "speed": speed or {"prompt_tokens": 16, "new_tokens": 6, "warmup": 1, "repeats": 2, "threads": 2},
        "serve": serve,
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": name},
    }
    if variants is not None:
        doc["variants"] = variants
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _runs(tmp: Path, name: str) -> dict[str, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return {
        f"{r.data.tags[M.TAG_MODEL]}/{r.data.tags[M.TAG_VARIANT]}": r
        for r in runs
        if r.data.tags.get(M.TAG_KIND) == "variant"
    }


def _port_closed(base_url: str) -> bool:
    parts = urlsplit(base_url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parts.hostname, parts.port)) != 0


def _servers_left(marker: str) -> list[int]:
    time.sleep(0.5)
    return [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


# -- llama-cpp-python's server, launched on the bundled SmolLM2 GGUF ------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-llamacpp")
    serve = {
        "model": "smollm2",
        "launch": LLAMA_SERVER,
        "concurrency": [1, 2],
        "requests_per_level": 4,
        "slo": {"ttft_p90_ms": 60000, "tpot_p90_ms": 0.001},  # nothing meets 1 us per token: goodput must be 0
    }
    models = [{"name": "smollm2", "source": "smollm2-135m-instruct", "role": "candidate"}]
    path = _write(tmp, "serve-llamacpp", serve, models)
    result = CliRunner().invoke(app, ["run", str(path), "--executor", "inline"])
    return tmp, result, _runs(tmp, "serve-llamacpp")


def test_launched_server_is_measured_end_to_end(served):
    tmp, result, runs = served
    assert result.exit_code == 0, result.output
    run = runs["smollm2/none"]
    assert run.info.status == "FINISHED", run.data.tags.get(M.TAG_STATUS_ERROR)
    m, tags = run.data.metrics, run.data.tags
    assert m[M.MMLU_N_QUESTIONS] == 4 and 0 <= m[M.MMLU_ACC] <= 1
    for level in ("_c1", "_c2"):
        assert m[M.DECODE_TOK_S + level] > 0 and m[M.TTFT_P90_MS + level] > 0 and m[M.ITL_P99_MS + level] > 0
        assert (
            m[M.REQUEST_THROUGHPUT + level] > 0 and m[M.OUTPUT_TOK_S + level] > 0 and m[M.REQUESTS_FAILED + level] == 0
        )
        assert m[M.MEAN_OUTPUT_TOKENS + level] == 6  # --interrupt_requests false: no stream is cut short
        assert m[M.GOODPUT + level] == 0 and m[M.SLO_ATTAINMENT + level] == 0
    assert m[M.DECODE_TOK_S] == m[M.DECODE_TOK_S + "_c1"]  # the single-stream figure the verdict compares
    assert 0 < m[M.MBU] < 2 and m[M.WEIGHT_BYTES] > 0  # the GGUF the server loaded, counted
    assert tags[M.TAG_SERVE_LAUNCHED] == "true" and tags[M.TAG_SERVE_MODELS] == "smollm2"
    assert tags[M.TAG_SERVE_BASE_URL].startswith("http://127.0.0.1:")
    assert tags[M.TAG_KERNEL].startswith("llama.cpp Q4_1")


def test_server_log_kept_and_server_gone(served):
    from mlflow.tracking import MlflowClient

    tmp, _, runs = served
    run = runs["smollm2/none"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    log = Path(client.download_artifacts(run.info.run_id, M.ART_SERVER_LOG, str(tmp)))
    assert "Uvicorn running on http://127.0.0.1" in log.read_text()
    assert _port_closed(run.data.tags[M.TAG_SERVE_BASE_URL])
    assert _servers_left(str(tmp)) == [] and _servers_left("llama_cpp.server --model") == []


def test_server_predictions_equal_in_process_llamacpp(served):
    """Same GGUF, same questions: the server's per-question predictions are the in-process runtime's."""
    from mlflow.tracking import MlflowClient

    from pipeline.config.recipe import EvalSpec
    from pipeline.models.bundled import BUNDLED, cache_root
    from pipeline.results import parse_questions_csv
    from pipeline.runtime.llamacpp import LlamaCppRuntime

    tmp, _, runs = served
    run = runs["smollm2/none"]
    csv_path = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db").download_artifacts(
        run.info.run_id, M.ART_QUESTIONS, str(tmp)
    )
    server_q = parse_questions_csv(Path(csv_path).read_text())
    spec = EvalSpec(num_fewshot=0, subjects=SUBJECTS, limit_per_subject=2)
    local = LlamaCppRuntime().score_mmlu(
        SimpleNamespace(gguf_path=BUNDLED["smollm2-135m-instruct"].locate(cache_root())), spec
    )
    assert [(q.subject, q.index, q.predicted) for q in server_q] == [
        (q.subject, q.index, q.predicted) for q in local.questions
    ]


# -- faults, on a fake server (artifact: none, the tiny model's tokenizer) -------------------------------------


def _fault_sweep(tmp: Path, name: str, serve: dict, tiny: Path, *, models: int = 1) -> tuple[object, dict]:
    base = {
        "artifact": "none",
        "model": "fake-model",
        "health_timeout_s": 20,
        "request_timeout_s": 3,
        "concurrency": [1],
        "requests_per_level": 2,
    }
    models_doc = [{"name": f"tiny{i}", "source": str(tiny), "role": "candidate"} for i in range(models)]
    path = _write(tmp, name, base | serve, models_doc)
    result = CliRunner().invoke(app, ["run", str(path)])  # the process executor: every child its own process
    return result, _runs(tmp, name)


def test_fake_server_passes_end_to_end(tmp_path, tiny_model_dir):
    serve = {"launch": _fake(), "request_rates": [20], "slo": {"ttft_p90_ms": 60000}}
    result, runs = _fault_sweep(tmp_path, "fake-ok", serve, tiny_model_dir)
    run = runs["tiny0/none"]
    assert run.info.status == "FINISHED", run.data.tags.get(M.TAG_STATUS_ERROR)
    m = run.data.metrics
    assert m[M.MEAN_OUTPUT_TOKENS + "_c1"] == 6 and run.data.tags[M.TAG_SERVE_VERSION] == "version=fake-1.0"
    # the rate level: Poisson arrivals at 20/s, every request within the SLO, tokens from the server's usage
    assert m[M.REQUEST_THROUGHPUT + "_r20"] > 0 and m[M.SLO_ATTAINMENT + "_r20"] == 1.0 and m[M.GOODPUT + "_r20"] > 0
    assert "streamed chunks" not in run.data.tags.get(M.TAG_SPEED_WARNINGS, "")
    assert (
        M.MBU not in run.data.metrics and M.BANDWIDTH_GB_S not in m
    )  # nothing built or counted here: no bytes, no MBU


@pytest.mark.parametrize(
    ("case", "serve", "message"),
    [
        (
            "never-healthy",
            {"launch": ["{python}", "-c", "import time; time.sleep(60)", "{host}"], "health_timeout_s": 2},
            "server not healthy at http://127.0.0.1:",
        ),
        (
            "exits",
            {"launch": ["{python}", "-c", "raise SystemExit(3)", "{host}"]},
            "server exited with code 3 before it answered",
        ),
        ("wrong-model", {"launch": _fake(), "model": "wrong"}, "serve.model: 'wrong' is not what"),
        ("http500", {"launch": _fake("--mode", "http500")}, "HTTP 500 while scoring MMLU"),
        ("http429", {"launch": _fake("--mode", "http429")}, "HTTP 429 while scoring MMLU"),
        (
            "timeout",
            {"launch": _fake("--mode", "slow"), "request_timeout_s": 1},
            "no answer within 1 s (serve.request_timeout_s)",
        ),
        ("no-echo", {"launch": _fake("--mode", "no-echo")}, "returned no prompt log-probabilities"),
    ],
)
def test_server_faults_fail_the_run_with_one_line(tmp_path, tiny_model_dir, case, serve, message):
    result, runs = _fault_sweep(tmp_path, f"fault-{case}", serve, tiny_model_dir)
    run = runs["tiny0/none"]
    assert run.info.status == "FAILED"
    error = run.data.tags[M.TAG_STATUS_ERROR]
    assert message in error and "\n" not in error, error
    assert result.exit_code != 0
    assert _servers_left(str(HERE / "fake_openai_server.py")) == [] and _servers_left("time.sleep(60)") == []


def test_server_killed_mid_run_fails_that_run_and_the_sweep_goes_on(tmp_path, tiny_model_dir):
    once = tmp_path / "died-once"
    serve = {"launch": _fake("--die-after", "3", "--once", str(once))}
    result, runs = _fault_sweep(tmp_path, "fault-killed", serve, tiny_model_dir, models=2)
    first, second = runs["tiny0/none"], runs["tiny1/none"]
    assert first.info.status == "FAILED"
    assert "the server exited (code 9) during the run" in first.data.tags[M.TAG_STATUS_ERROR]
    assert second.info.status == "FINISHED", second.data.tags.get(M.TAG_STATUS_ERROR)


def test_ctrl_c_leaves_no_server_behind(tmp_path, tiny_model_dir):
    """SIGINT to the driver while the child waits on a server that ignores SIGTERM: runs end KILLED, the server is gone."""
    import os
    import signal
    import subprocess

    from _signals import default_sigint

    models = [{"name": "tiny0", "source": str(tiny_model_dir), "role": "candidate"}]
    serve = {"artifact": "none", "model": "fake-model", "launch": _fake("--mode", "slow"), "request_timeout_s": 120}
    path = _write(tmp_path, "ctrl-c", serve, models)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 120
    while not _servers_left(str(HERE / "fake_openai_server.py")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _servers_left(str(HERE / "fake_openai_server.py")), "the server never started"
    time.sleep(3)  # the child is now inside an MMLU request that the slow server holds for 30 s
    driver.send_signal(signal.SIGINT)
    driver.wait(timeout=60)
    assert _servers_left(str(HERE / "fake_openai_server.py")) == []
    assert _runs(tmp_path, "ctrl-c")["tiny0/none"].info.status == "KILLED"


@pytest.mark.parametrize(
    ("serve", "variants", "message"),
    [
        ({"launch": ["{python}", "-m", "llama_cpp.server"]}, None, "serve.launch: no {artifact} in the command"),
        (
            {"launch": [a for a in LLAMA_SERVER if a not in ("--host", "{host}")]},
            None,
            "serve.launch: no {host} in the command, so the server would bind wherever its default is",
        ),
        (
            {"launch": ["no-such-engine-binary", "{artifact}"]},
            None,
            "serve.launch[0]: 'no-such-engine-binary' is not a program on PATH",
        ),
        (
            {"launch": LLAMA_SERVER, "api_key_env": "SHRINKGATE_TEST_UNSET_KEY"},
            None,
            "serve.api_key_env: $SHRINKGATE_TEST_UNSET_KEY is not set",
        ),
        (
            {"artifact": "none", "base_url": "http://127.0.0.1:9/v1"},
            [{"name": "q", "method": "gguf-q4_0"}],
            "serve.artifact: none",
        ),
        ({"artifact": "gguf"}, None, "serve.artifact: gguf builds something no server is told about"),
    ],
)
def test_validate_refuses_a_serve_section_that_cannot_work(tmp_path, serve, variants, message):
    models = [{"name": "smollm2", "source": "smollm2-135m-instruct", "role": "candidate"}]
    path = _write(tmp_path, "bad-serve", {"model": "m"} | serve, models, variants=variants)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_shipped_serve_recipes_pass_host_to_the_server():
    """Every shipped serve recipe clears `check_serve` (an engine not installed here stops it only at the PATH check)."""
    from pipeline.config.recipe import load_recipe
    from pipeline.runtime.openai import check_serve

    paths = sorted((HERE.parent / "recipes").glob("serve-*.yaml"))
    assert len(paths) == 3
    for path in paths:
        recipe = load_recipe(path)
        problem = check_serve(recipe)
        assert problem is None or "is not a program on PATH" in problem, (path.name, problem)
        assert any("{host}" in a for a in recipe.serve.launch), path.name


def test_runtime_openai_needs_a_serve_section(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump({"name": "x", "runtime": "openai", "models": [{"name": "m", "source": "smollm2-135m-instruct"}]})
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code != 0 and "add a `serve:` section" in result.output


def test_load_levels_name_their_metrics():
    from pipeline.results import LoadLevel

    level = LoadLevel(
        concurrency=4, request_rate=None, requests=8, completed=8, failed=0, duration_s=2.0, request_throughput=4.0,
        output_tok_s=100.0, decode_tok_s=30.0, decode_cv=0.1, ttft_ms={50: 10.0, 90: 20.0, 99: 30.0},
        tpot_ms={50: 5.0, 90: 6.0, 99: 7.0}, itl_ms={50: 5.0}, e2e_ms={50: 100.0}, goodput_req_s=3.0, slo_attainment=0.75,
    )  # fmt: skip
    m = level.metrics()
    assert m["ttft_p90_ms_c4"] == 20.0 and m["goodput_req_s_c4"] == 3.0 and m["decode_tok_s_c4"] == 30.0
    rate = LoadLevel(**{**level.__dict__, "concurrency": None, "request_rate": 2.5})
    assert "output_tok_s_r2.5" in rate.metrics()


# -- what a server loads: checkpoints and `shrinkgate export` -------------------------------------------------


def test_checkpoint_artifact_reaches_the_launched_server(tmp_path, tiny_model_dir):
    """`artifact: checkpoint`: the build is saved as a folder and the launch command gets it as {artifact}
    (the fake server exits 4 unless the folder holds config.json and shrinkgate.json)."""
    models = [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}]
    serve = {
        "model": "fake-model",
        "artifact": "checkpoint",
        "launch": _fake("--checkpoint", "{artifact}"),
        "concurrency": [1],
        "requests_per_level": 2,
    }
    variants = [{"name": "rtn", "method": "rtn", "params": {"bits": 4, "group_size": 64}}]
    path = _write(tmp_path, "ckpt", serve, models, variants=variants)
    result = CliRunner().invoke(app, ["run", str(path), "--executor", "inline"])
    run = _runs(tmp_path, "ckpt")["tiny/rtn"]
    assert run.info.status == "FINISHED", (run.data.tags.get(M.TAG_STATUS_ERROR), result.output)
    assert "--checkpoint /" in run.data.tags["serve.launch"] and run.data.metrics[M.BITS_PER_WEIGHT] < 5


def test_secrets_reach_no_store_log_or_artifact(tmp_path, tiny_model_dir, monkeypatch):
    """A key on the launch line and a key in `serve.api_key_env`'s variable, both printed by the server into its
    log: after the sweep (every child its own process), an export and a gate, neither is in any byte of the
    store or of any file shrinkgate wrote; REDACTED stands where they were."""
    import uuid

    launch_key, env_key = f"sk-launch-{uuid.uuid4().hex}", f"sk-env-{uuid.uuid4().hex}"
    monkeypatch.setenv("SHRINKGATE_TEST_API_KEY", env_key)
    store = tmp_path / "store"
    store.mkdir()
    models = [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}]
    serve = {
        "model": "fake-model",
        "artifact": "checkpoint",
        "api_key_env": "SHRINKGATE_TEST_API_KEY",  # the fake server answers 401 unless this key comes as Bearer
        "launch": _fake("--checkpoint", "{artifact}", "--api-key", launch_key, "--key-env", "SHRINKGATE_TEST_API_KEY"),
        "concurrency": [1],
        "requests_per_level": 2,
    }
    variants = [{"name": "rtn", "method": "rtn", "params": {"bits": 4, "group_size": 64}}]
    recipe = _write(store, "secrets", serve, models, variants=variants)
    recipe = recipe.rename(tmp_path / recipe.name)  # the user's own file holds the key: keep it out of the search
    uri = f"sqlite:///{store}/mlflow.db"
    result = CliRunner().invoke(app, ["run", str(recipe)])
    runs = _runs(store, "secrets")
    run = runs["tiny/rtn"]
    assert run.info.status == "FINISHED", (run.data.tags.get(M.TAG_STATUS_ERROR), result.output)
    assert "--api-key REDACTED" in run.data.tags["serve.launch"]
    exported = CliRunner().invoke(
        app, ["export", run.info.run_id, "--out", str(store / "export"), "--tracking-uri", uri]
    )
    assert exported.exit_code == 0, exported.output
    policy = HERE.parent / "policies" / "default.yaml"
    gate = CliRunner().invoke(
        app,
        [
            "gate",
            "--policy",
            str(policy),
            "--experiment",
            "secrets",
            "--out",
            str(store / "gate"),
            "--tracking-uri",
            uri,
        ],
    )
    assert gate.exit_code in (0, 1), gate.output

    files = [p for p in store.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.name == "server.log" for p in files)
    assert any(p.name == "shrinkgate.json" for p in files) and any(p.name == "recipe.yaml" for p in files)
    for path in files:
        data = path.read_bytes()
        for key in (launch_key, env_key):
            assert key.encode() not in data, f"{key} in {path.relative_to(store)}"
    for out in (result.output, exported.output, gate.output):
        assert launch_key not in out and env_key not in out
    log = next(p for p in files if p.name == "server.log").read_text()
    assert "'api_key': 'REDACTED'" in log and "api key from $SHRINKGATE_TEST_API_KEY: REDACTED" in log


def test_redaction_finds_keys_in_every_form_a_command_line_is_written(monkeypatch):
    """The launch line as argv, as a string, as a JSON param and in recipe.yaml: the key goes, the options that
    only look alike (--max-tokens, --tokenizer, a flag with no value) stay, and the YAML still parses."""
    import json

    from pipeline.redact import REDACTED, protect_env, redact, redact_argv

    argv = ["vllm", "serve", "m", "--api-key", "sk-one-1111", "--hf_token=hf-two-2222", "--max-tokens", "6",
            "--tokenizer", "/tok", "--use-auth-token", "--port", "8000"]  # fmt: skip
    expected = [*argv[:4], REDACTED, f"--hf_token={REDACTED}", *argv[6:]]
    assert redact_argv(argv) == expected
    assert redact(" ".join(argv)) == " ".join(expected)
    assert json.loads(redact(json.dumps(argv))) == expected
    assert yaml.safe_load(redact(yaml.safe_dump({"launch": argv}))) == {"launch": expected}
    header = "Authorization: Bearer sk-three-3333 | https://u:pw-4444@host/v1?token=tok-5555&n=1"
    assert redact(header) == f"Authorization: {REDACTED} | https://u:{REDACTED}@host/v1?token={REDACTED}&n=1"
    monkeypatch.setenv("SHRINKGATE_TEST_REDACT_KEY", "env-six-6666")
    protect_env("SHRINKGATE_TEST_REDACT_KEY")
    assert redact("'api_key': ['env-six-6666']") == f"'api_key': ['{REDACTED}']"
    assert redact("Bearer bonds pay the bearer") == "Bearer bonds pay the bearer"  # an MMLU question, not a header


def test_export_writes_what_was_measured(tmp_path, tiny_model_dir, served):
    """A transformers variant exports as a compressed-tensors checkpoint that loads and computes what a fresh
    build computes; a GGUF variant exports as its file; a sweep's parent run is refused with one line."""
    import hashlib
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.config.recipe import ModelSpec, VariantSpec
    from pipeline.models import resolve_model
    from pipeline.models.bundled import BUNDLED, cache_root
    from pipeline.variants.artifact import build_artifact

    doc = {
        "name": "exp",
        "models": [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}],
        "variants": [{"name": "rtn", "method": "rtn", "params": {"bits": 4, "group_size": 64}}],
        "eval": {"num_fewshot": 0, "subjects": ["abstract_algebra"], "limit_per_subject": 1},
        "speed": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "exp"},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(doc))
    assert CliRunner().invoke(app, ["run", str(tmp_path / "exp.yaml"), "--executor", "inline"]).exit_code == 0
    run = _runs(tmp_path, "exp")["tiny/rtn"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", run.info.run_id, "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"  # compressed-tensors, as vLLM loads it
    assert json.loads((out / "shrinkgate.json").read_text())["run_id"] == run.info.run_id

    spec, variant = (
        ModelSpec(name="tiny", source=str(tiny_model_dir)),
        VariantSpec(name="rtn", method="rtn", params={"bits": 4, "group_size": 64}),
    )
    fresh = build_artifact(resolve_model(spec), spec, variant, device="cpu", measure_serialized=False)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 8, 250, 11]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, fresh.model(ids).logits, atol=1e-4)

    stmp, _, sruns = served
    gguf_out = tmp_path / "gguf"
    result = CliRunner().invoke(
        app,
        [
            "export",
            sruns["smollm2/none"].info.run_id,
            "--out",
            str(gguf_out),
            "--tracking-uri",
            f"sqlite:///{stmp}/mlflow.db",
        ],
    )
    assert result.exit_code == 0, result.output
    published = BUNDLED["smollm2-135m-instruct"].locate(cache_root())
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (gguf_out / "smollm2-none.gguf", published)]
    assert digest[0] == digest[1] == sruns["smollm2/none"].data.tags[M.TAG_STORED_SHA256]

    parent = run.data.tags["mlflow.parentRunId"]
    result = CliRunner().invoke(app, ["export", parent, "--out", str(tmp_path / "x"), "--tracking-uri", uri])
    assert result.exit_code == 2 and "not a variant run" in result.output and "Traceback" not in result.output
