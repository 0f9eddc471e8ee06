"""Inputs and defaults a user trips on (issue 12, items 8, 10, 11): each is a one-line error before any model
loads or the documented behaviour; `scenario: server` survives the CLI; `run` shows only our progress."""

from __future__ import annotations

import copy
import logging
import re
import sys
import warnings
from pathlib import Path

import _noisy_methods  # noqa: F401 - registers test-noisy
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.cli import app
from pipeline.config.recipe import RecipeError, apply_overrides, parse_recipe


def _doc(model_dir: Path, data_dir: Path, **speed) -> dict:
    return {
        "name": "inputs",
        "models": [{"name": "tiny", "source": str(model_dir), "role": "candidate"}],
        "variants": [{"name": "none", "method": "none"}],
        "eval": {"num_fewshot": 0, "subjects": ["anatomy"], "limit_per_subject": 1, "data_dir": str(data_dir)},
        "speed": {"prompt_tokens": 8, "new_tokens": 2, **speed},
    }


def _write(tmp: Path, doc: dict) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _one_line_error(result) -> str:
    message = result.output.strip()
    assert result.exit_code == 2, result.output
    assert message.startswith("error:") and "\n" not in message, message
    return re.sub(r"\s+", " ", message)


@pytest.fixture()
def no_model_loads(monkeypatch):
    import pipeline.models.loader as loader

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loader, "load_model", boom)


# -- item 8: scenario: server through the CLI; crossover_batch ---------------------------------------------------
class _Stop(RecipeError):
    pass


def test_server_scenario_keeps_its_batch_sizes_through_the_cli(tmp_path, tiny_model_dir, mmlu_dir, monkeypatch):
    import pipeline.sweep.driver as driver
    from pipeline.runtime.speed.plan import SERVER_BATCHES, planned_batches

    seen = []

    def capture(recipe, **kw):
        seen.append(recipe)
        raise _Stop("stopped before the sweep")

    monkeypatch.setattr(driver, "run_sweep", capture)
    for speed, expected in (
        ({"scenario": "server"}, list(SERVER_BATCHES)),
        ({"scenario": "server", "batch_sizes": [2, 8]}, [2, 8]),
    ):
        path = _write(tmp_path, _doc(tiny_model_dir, mmlu_dir, **speed))
        result = CliRunner().invoke(
            app, ["run", str(path), "--limit-per-subject", "1", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
        )
        assert "stopped before the sweep" in result.output, result.output
        assert planned_batches(seen[-1].speed) == expected, speed
    # the override path itself, and every override keeps defaults defaults
    recipe = parse_recipe(_doc(tiny_model_dir, mmlu_dir, scenario="server"))
    narrowed = apply_overrides(recipe, only=["none"], limit_per_subject=2, tracking_uri="sqlite:///x.db")
    assert planned_batches(narrowed.speed) == list(SERVER_BATCHES) and narrowed.eval.limit_per_subject == 2


def test_roofline_crossover_is_where_the_unmodified_model_turns_compute_bound():
    from pipeline.predict import roofline

    # 8B bf16 (16 GFLOP, 16 GB a token) on 3.35 TB/s at 989 TFLOP/s: int4 (4 GB) beats it up to the ridge, ~295
    assert roofline.roofline_crossover_batch(989e12, 3.35e12, 16e9, 4e9, 16e9) == roofline.compute_bound_batch(
        989e12, 3.35e12, 16e9, 16e9
    )
    assert roofline.roofline_crossover_batch(989e12, 3.35e12, 16e9, 4e9, 16e9) == pytest.approx(295, abs=1)
    assert roofline.roofline_crossover_batch(989e12, 3.35e12, 16e9, 16e9, 16e9) == 1  # reads as much: never ahead
    assert roofline.roofline_crossover_batch(989e12, 3.35e12, 16e9, 4e9, 16e9, kv_bytes_per_seq=1e9) is None


def test_speed_result_logs_crossover_batch(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config.recipe import SpeedSpec
    from pipeline.models import shapes
    from pipeline.predict import roofline
    from pipeline.runtime.speed import measure_decode

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = SpeedSpec(prompt_tokens=8, new_tokens=2, batch_sizes=[1], warmup=0, repeats=1, threads=1)
    dense = shapes.linear_params_per_token(model.config) * 4  # fp32
    for read, expect_one in ((dense // 4, False), (dense, True)):
        res = measure_decode(
            model, tok, spec, weight_bytes_per_token=read, device="cpu", bandwidth_gb_s=10.0, matmul_flops=1e11
        )
        metrics = res.metrics()
        assert M.CROSSOVER_BATCH in metrics, sorted(metrics)
        if expect_one:
            assert metrics[M.CROSSOVER_BATCH] == 1.0
        else:
            p = res.points[0]
            kv = shapes.kv_bytes_at_context(model.config, p.context_tokens, 4)
            assert (
                metrics[M.CROSSOVER_BATCH] == roofline.compute_bound_batch(1e11, 10e9, p.flops_per_token, dense, kv) > 1
            )


# -- item 10: inputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "device, ok",
    [("gpu", False), ("cuda0", False), ("CPU", False), ("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True)],
)
def test_eval_device_is_one_of_the_known_names(tmp_path, tiny_model_dir, mmlu_dir, device, ok):
    doc = _doc(tiny_model_dir, mmlu_dir)
    doc["eval"]["device"] = device
    if ok:
        assert parse_recipe(doc).eval.device == device
        return
    result = CliRunner().invoke(app, ["validate", str(_write(tmp_path, doc))])
    message = _one_line_error(result)
    assert f"field `eval.device` (got '{device}'): use one of: auto, cpu, cuda, cuda:N" in message, message


def test_a_gpu_index_this_host_lacks_is_refused(monkeypatch):
    import torch

    from pipeline.env import DeviceUnavailable, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceUnavailable, match=r"'cuda:3' requested but this host has 1 GPU\(s\)"):
        pick_device("cuda:3")


def test_empty_variants_is_an_error(tmp_path, tiny_model_dir, mmlu_dir):
    doc = _doc(tiny_model_dir, mmlu_dir)
    doc["variants"] = []
    message = _one_line_error(CliRunner().invoke(app, ["validate", str(_write(tmp_path, doc))]))
    assert "field `variants`" in message and "list at least one variant" in message, message
    del doc["variants"]  # left out: the models as published
    assert [v.name for v in parse_recipe(doc).variants] == ["none"]


def test_eval_batch_size_is_no_part_of_the_key_on_cpu(tiny_model_dir, mmlu_dir):
    from pipeline.sweep.key import KeyInputs, content_key
    from pipeline.variants.plan import plan

    keys = {}
    for device in ("cpu", "cuda"):
        for batch in (1, 8):
            doc = _doc(tiny_model_dir, mmlu_dir)
            doc["eval"]["batch_size"] = batch
            recipe = parse_recipe(doc)
            inputs = KeyInputs(host={"device": device}, code={}, data={})
            keys[device, batch] = content_key(recipe, plan(recipe)[0], "src", inputs)
    assert keys["cpu", 1] == keys["cpu", 8]  # CPU scores one sequence at a time whatever batch_size says
    assert keys["cuda", 1] != keys["cuda", 8]


@pytest.mark.parametrize("command", ["gate", "compare"])
def test_gate_and_compare_honour_mlflow_tracking_uri(tmp_path, monkeypatch, command):
    import pipeline.verdict.commands as commands
    from pipeline.tracking import TrackingError

    seen = []

    def fake_load_sweep(uri, **kw):
        seen.append(uri)
        raise TrackingError(f"no sweep in {uri}")

    monkeypatch.setattr(commands, "load_sweep", fake_load_sweep)
    monkeypatch.chdir(tmp_path)
    policy = Path(__file__).resolve().parents[1] / "policies" / "default.yaml"
    args = [command, "--experiment", "x"] + (["--policy", str(policy)] if command == "gate" else [])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and seen[-1] == "sqlite:///from-env.db", (seen, result.output)
    CliRunner().invoke(app, [*args, "--tracking-uri", "sqlite:///flag.db"])
    assert seen[-1] == "sqlite:///flag.db"  # the flag wins
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    CliRunner().invoke(app, args)
    assert seen[-1] == "sqlite:///mlruns/mlflow.db"


def test_ui_honours_mlflow_tracking_uri(tmp_path, monkeypatch):
    import subprocess

    started = []

    class FakeServer:
        pid = 0

        def __init__(self, cmd, **kw):
            started.append(cmd)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeServer)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    CliRunner().invoke(app, ["ui"])
    assert started and started[-1][started[-1].index("--backend-store-uri") + 1] == "http://mlflow.example:5000", (
        started
    )


def test_run_honours_mlflow_tracking_uri_unless_the_recipe_or_flag_names_one(tiny_model_dir, mmlu_dir, monkeypatch):
    doc = _doc(tiny_model_dir, mmlu_dir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert apply_overrides(parse_recipe(doc)).tracking.uri == "sqlite:///env.db"
    assert apply_overrides(parse_recipe(doc), tracking_uri="sqlite:///flag.db").tracking.uri == "sqlite:///flag.db"
    pinned = copy.deepcopy(doc) | {"tracking": {"uri": "sqlite:///recipe.db"}}
    assert apply_overrides(parse_recipe(pinned)).tracking.uri == "sqlite:///recipe.db"


def test_unknown_executor_is_rejected_before_any_model_loads(tmp_path, tiny_model_dir, mmlu_dir, no_model_loads):
    path = _write(tmp_path, _doc(tiny_model_dir, mmlu_dir))
    message = _one_line_error(CliRunner().invoke(app, ["run", str(path), "--executor", "threads"]))
    assert "--executor 'threads': use one of inline, process, ray" in message, message


def test_cpu_scorer_falls_back_when_forward_lacks_logits_to_keep(tiny_model_dir):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer, LlamaForCausalLM

    from pipeline.config.recipe import EvalSpec
    from pipeline.runtime.mmlu import score_mmlu
    from pipeline.runtime.transformers import _hflm_class, accepts_logits_to_keep

    class NoKeep(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            if "logits_to_keep" in kwargs:
                raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model = NoKeep.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert not accepts_logits_to_keep(model) and accepts_logits_to_keep(
        LlamaForCausalLM.from_pretrained(tiny_model_dir)
    )
    spec = EvalSpec(num_fewshot=0, subjects=["anatomy"], limit_per_subject=3)
    last = score_mmlu(_hflm_class()(pretrained=model, tokenizer=tok, device="cpu"), spec)
    full = score_mmlu(HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu"), spec)
    assert [q.predicted for q in last.questions] == [q.predicted for q in full.questions] and len(last.questions) == 3


# -- item 11: one progress display; library chatter in the run's log --------------------------------------------
def test_library_output_goes_to_the_file_and_everything_is_restored(tmp_path, capsys):
    from tqdm import tqdm

    from pipeline.env import library_output

    lib = logging.getLogger("transformers.test_capture")
    stderr_before, level_before = sys.stderr, logging.getLogger("transformers").level
    with library_output(tmp_path / "child.log") as log:
        warnings.warn("captured warning", UserWarning, stacklevel=1)
        lib.warning("captured library log")
        for _ in tqdm(range(3), desc="captured bar"):
            pass
    out, err = capsys.readouterr()
    text = log.read_text()
    for needle in ("captured warning", "captured library log", "captured bar"):
        assert needle in text and needle not in out + err, (needle, text, out, err)
    assert sys.stderr is stderr_before and logging.getLogger("transformers").level == level_before


def test_run_console_shows_our_progress_only_and_the_run_keeps_the_log(tmp_path, tiny_model_dir, mmlu_dir):
    from mlflow.tracking import MlflowClient

    doc = _doc(tiny_model_dir, mmlu_dir, enabled=False)
    doc["variants"] = [{"name": "noisy", "method": "test-noisy"}]
    doc["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "noise"}
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, doc))])  # the default executor: a child process
    out = result.output
    assert result.exit_code == 0, out
    assert "done tiny/noisy" in out, out
    for chatter in ("Scoring inputs (shared prefixes)", "it/s]", *_noisy_methods.NOISE, "Warning"):
        assert chatter not in out, (chatter, out)

    client = MlflowClient(tracking_uri=doc["tracking"]["uri"])
    exp = client.get_experiment_by_name("noise")
    (child,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(M.TAG_KIND) == "variant"]
    log = Path(client.download_artifacts(child.info.run_id, M.ART_CHILD_LOG, str(tmp_path / "dl"))).read_text()
    for chatter in ("Scoring inputs (shared prefixes)", *_noisy_methods.NOISE):  # our CPU LM's progress
        assert chatter in log, (chatter, log)


# -- issue 27, item 11: --batch-sizes and an unwritable compare --out --------------------------------------------
@pytest.mark.parametrize("given, bad", [("1,x", "x"), ("-4", "-4"), ("0", "0"), ("2.5", "2.5"), (",", ",")])
@pytest.mark.parametrize("command", ["predict", "speed"])
def test_batch_sizes_that_are_not_whole_numbers_from_one_are_one_line(monkeypatch, command, given, bad):
    import pipeline.runtime.speed.command as speed

    def boom(**kw):
        raise AssertionError("speed ran")

    monkeypatch.setattr(speed, "speed_command", boom)
    args = ["--hardware", "h100-sxm"] if command == "predict" else []
    result = CliRunner().invoke(app, [command, *args, "--config", "llama-3.2-1b", f"--batch-sizes={given}"])
    message = _one_line_error(result)
    assert f"--batch-sizes: {bad!r} is not a whole number >= 1" in message and "e.g. --batch-sizes 1,8,64" in message


def test_predict_still_takes_spaced_batch_sizes():
    """The counterpart of the refusals above: what was valid stays valid (a row per given batch, no default 64)."""
    result = CliRunner().invoke(
        app, ["predict", "--hardware", "h100-sxm", "--config", "llama-3.2-1b", "--batch-sizes", "1, 8"]
    )
    assert result.exit_code == 0, result.output
    batches = [int(line.split("│")[4]) for line in result.output.splitlines() if line.startswith("│ llama-3.2-1b")]
    assert batches == [1, 8], result.output


def test_compare_out_that_cannot_be_written_is_one_line(tmp_path_factory, tmp_path):
    from _stores import Child, fresh_store, write_sweep

    uri = fresh_store(tmp_path_factory, "compare-out")
    parent, _ = write_sweep(
        uri, "cmp", [Child("m", "none", None), Child("ref", "none", None, role="reference")], end_parent=False
    )
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    taken = tmp_path / "taken"
    (taken / "compare.md").mkdir(parents=True)  # the report's own file name is a folder
    for out, where in ((a_file, a_file), (a_file / "sub", a_file / "sub"), (taken, taken / "compare.md")):
        result = CliRunner().invoke(app, ["compare", "--run", parent, "--tracking-uri", uri, "--out", str(out)])
        message = _one_line_error(result)
        assert (
            f"--out {out}: cannot write the report there (" in message
            and f": {where}); give --out a folder you can create" in message
        )
