"""The prepared GPU check (`benchmarks/gpu/gpu_check.sh` / `gpu_check.py`), what one call of it holds and which hardware
row it predicts for (`gpu_plan.py`), and its wheel set (`gpu_wheels.py`).

The device time is 15 minutes with no network, so the script must not discover a typo or a missing package
there: the dry run runs every step end to end on CPU with tiny shapes, with the packages the GPU machine lacks
made unimportable (its package list: /work/.library/device/KINDS.md, read 2026-11-17).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What this project installs that the GPU machine does not have (and the wheels do not bring).
DEVICE_LACKS = (
    "mlflow",
    "lm_eval",
    "gguf",
    "llama_cpp",
    "optimum",
    "hqq",
    "llmcompressor",
    "compressed_tensors",
    "loguru",
    "datasets",
    "evaluate",
    "ray",
    "playwright",
    "importlinter",
    "pydantic_settings",
    "sqlalchemy",
    "alembic",
)
BLOCKER = f'''
import sys
LACKS = {set(DEVICE_LACKS)!r}
class Hidden:
    """Wraps a finder: the packages the GPU machine lacks are not found, exactly as there (find_spec is None)."""
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in LACKS:
            return None
        return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.inner, attr)
sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]
'''


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
gpu_plan = sys.modules["gpu_plan"]  # the module gpu_check imported, not a second copy
gpu_wheels = _load("gpu_wheels")


def _device_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "device-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    env.pop("SHRINKGATE_HOST_CACHE", None)  # the script keeps its own, shared by its steps
    return env


def test_dry_run_runs_every_step_end_to_end_without_the_packages_the_device_lacks(tmp_path):
    env = _device_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "No module named 'mlflow'" in blocked.stderr  # hidden, as on the device

    proc = subprocess.run(
        ["bash", "benchmarks/gpu/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", "gpu_check.md", "gpu_check.log"}
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["env"]["dry_run"] is True and report["env"]["packages"]["torchao"] != "missing"
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == [s.name for s in gpu_check.STEPS] and all(s["status"] == "ok" for s in steps.values())
    for step in gpu_check.STEPS:
        if not step.is_speed:
            continue
        r = steps[step.name]["result"]
        assert r["method"] == step.method and r["device"] == "cpu" and r["points"]
        assert all(p["decode_tok_s"] > 0 and p["mbu"] > 0 for p in r["points"])
        assert {p["batch"] for p in steps[step.name]["predicted"]} == {p["batch_size"] for p in r["points"]}
    # the first compiled step really compiled (static cache); every eager step measured batch 1 and 2
    assert (
        steps["8b-bf16-compiled"]["result"]["kv_cache"] == "static" and steps["8b-bf16-compiled"]["result"]["compiled"]
    )
    assert [p["batch_size"] for p in steps["8b-bf16-eager"]["result"]["points"]] == [1, 2]
    # the methods really ran: int4 stores (and on CPU reads) fewer bytes; NF4 layers are bitsandbytes' own
    bf16, int4 = steps["8b-bf16-eager"]["result"], steps["8b-int4-compiled"]["result"]
    assert int4["weight_bytes_per_token"] < 0.6 * bf16["weight_bytes_per_token"]
    assert "bnb Linear4bit (nf4)" in steps["8b-nf4-eager"]["result"]["kernel"]
    pytest_step = steps["pytest-gpu"]
    assert pytest_step["rc"] == 0 and pytest_step["counts"]["skipped"] == 5  # collected and skipped: no CUDA here
    md = (out / "gpu_check.md").read_text()
    assert "dry run" in md and "## Answers" in md and all(s.name in md for s in gpu_check.STEPS if s.is_speed)
    # predicted for this host's probes; every step ran, so nothing is left for a later call
    assert report["hardware"]["row"] == "this-host" and "Predicted for: this-host" in md
    assert report["next_calls"] == [] and "## Next calls" in md and report["deadline_s"] is None


def test_steps_past_the_deadline_are_named_for_a_rerun(tmp_path):
    env = _device_env(tmp_path)
    cmd = [
        sys.executable,
        "benchmarks/gpu/gpu_check.py",
        "--dry-run",
        "--only",
        "3b-bf16-eager,pytest-gpu",
        "--deadline-s",
        "0",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("3b-bf16-eager", "not run"),
        ("pytest-gpu", "not run"),
    ]
    assert "time box does not fit the 0 s left of --deadline-s 0" in report["steps"][0]["reason"]
    assert "not: 3b-bf16-eager, pytest-gpu" in proc.stdout
    # both fit one later call (65 + 155 s with the slack), named with its command on the console and in the report
    later = "bash benchmarks/gpu/gpu_check.sh --only 3b-bf16-eager,pytest-gpu --deadline-s 220 --dry-run"
    assert [c["command"] for c in report["next_calls"]] == [later] and later in proc.stdout
    bad = subprocess.run([*cmd[:4], "8b-fp64"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--only 8b-fp64: no such step" in bad.stderr
    unknown = subprocess.run(
        [*cmd, "--hardware", "h100"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert (
        unknown.returncode == 2
        and unknown.stderr.startswith("error: --hardware 'h100': unknown; known: ")
        and unknown.stderr.count("\n") == 1
    )


def _point(batch: int, tok_s: float, mbu: float) -> dict:
    return {
        "batch_size": batch,
        "decode_tok_s": tok_s,
        "tpot_ms": 1e3 * batch / tok_s,
        "wall_tok_s": tok_s / mbu,
        "mbu": mbu,
        "peak_mem_mb": 1.0,
    }


def _speed_step(name: str, status: str, points: list[dict]) -> dict:
    result = {
        "points": points,
        "device": "cuda",
        "timer": "cuda events",
        "kv_cache": "static",
        "compiled": True,
        "bandwidth_gb_s": 4300.0,
        "matmul_tflops": 790.0,
        "weight_bytes_per_token": 15e9,
        "compute_bound_batch": 150,
        "kernel_observed": "",
        "kernel": "dense",
        "dense_fallback": False,
    }
    step = {
        "name": name,
        "status": status,
        "seconds": 60.0,
        "result": result,
        "predicted": [{"batch": p["batch_size"], "decode_tok_s": p["decode_tok_s"] * 1.1} for p in points],
    }
    if status != "ok":
        step["reason"] = "cut at 150 s; the batch sizes it finished are kept"
    return step


def test_report_answers_the_questions_from_whatever_steps_finished():
    steps = [
        _speed_step("8b-bf16-compiled", "ok", [_point(1, 270.0, 0.9), _point(64, 9000.0, 0.5), _point(8, 2000.0, 0.8)]),
        _speed_step("8b-int4-compiled", "partial", [_point(1, 540.0, 0.5), _point(64, 4500.0, 0.1)]),  # batch 8 cut
        {"name": "8b-int8-compiled", "status": "timeout", "seconds": 150.0, "reason": "no result within 150 s"},
        {
            "name": "3b-bf16-eager",
            "status": "not run",
            "reason": "deadline: 3 s left of --deadline-s 480; rerun with --only 3b-bf16-eager",
        },
        {"name": "pytest-gpu", "status": "ok", "seconds": 40.0, "rc": 1, "counts": {"passed": 4, "failed": 1}},
    ]
    a = gpu_check.answers(steps)
    assert a["mbu_8b_bf16_compiled_b1"] == 0.9 and a["mbu_target_met"] is True
    assert a["8b-int4-compiled / bf16"] == {1: 2.0, 64: 0.5}  # beats bf16 at batch 1, loses at 64
    assert a["8b-int8-compiled / bf16"] == {} and a["8b-nf4-eager / bf16"] == {}
    later = [gpu_plan.step_named("8b-nf4-eager")]
    md = gpu_check.markdown(
        _report(
            steps,
            "NVIDIA H200",
            a,
            next_calls=[{"steps": ["8b-nf4-eager"], "deadline_s": 95, "command": gpu_plan.call_command(later)}],
        )
    )
    assert "MBU 90% vs the >= 85% target: met" in md and "batch 1: 2.00x, batch 64: 0.50x" in md
    assert "| 8b-int4-compiled | partial (60 s) | 64 |" in md and "+10%" in md  # predicted 1.1x the measured
    assert "8b-int8-compiled: timeout — no result within 150 s" in md and "rerun with --only 3b-bf16-eager" in md
    assert "pytest -m gpu: 4 passed, 1 failed (exit 1)" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| 8b-bf16-compiled")]
    assert [r.split("|")[3].strip() for r in rows] == ["1", "8", "64"]  # measured 1, 64, 8; shown in order
    assert "Predicted for: h200 (the row of NVIDIA H200; 4800 GB/s" in md
    assert "install 12 s (assumed <= 30 s), start 9 s (assumed <= 30 s), steps 430 s (deadline 480 s)" in md
    assert (
        "- next call 1: 8b-nf4-eager (95 s): `bash benchmarks/gpu/gpu_check.sh --only 8b-nf4-eager --deadline-s 95`"
        in md
    )


def _report(steps: list[dict], gpu: str, answers: dict, next_calls: list[dict] = ()) -> dict:
    """A report as `main` writes it, on a GPU named `gpu`, predicted for the row the check picks for that name."""
    env = {
        "dry_run": False,
        "packages": {"torch": "2.11.0", "transformers": "5.17.0", "torchao": "0.18.0", "bitsandbytes": "0.50.2"},
        "cuda": "13.0",
        "cpu": "x",
        "cpu_flags": ["avx2"],
        "load_avg": 1.0,
        "when": "now",
        "gpu": {"name": gpu},
    }
    row, said = gpu_plan.prediction_hardware(gpu, None, dry_run=False)
    return {
        "env": env,
        "hardware": {"row": row, "said": said},
        "install_s": 12.0,
        "start_s": 9.0,
        "seconds": 430.0,
        "deadline_s": 480,
        "steps": steps,
        "answers": answers,
        "next_calls": list(next_calls),
    }


# -- which hardware row the check predicts for ---------------------------------------------------------


@pytest.mark.parametrize(
    "gpu, row",
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),  # the GPU most often lent here
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb"),
        ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("nvidia  h100 80gb hbm3 ", "h100-sxm"),  # case and spacing aside
    ],
)
def test_each_gpu_is_predicted_for_its_own_row(gpu, row):
    from pipeline.predict.hardware import row_for_device

    assert row_for_device(gpu) == row
    picked, said = gpu_plan.prediction_hardware(gpu, None, dry_run=False)
    assert picked == row and said.startswith(f"{row} (the row of {gpu}")
    assert gpu_plan.prediction_hardware(gpu, "h200", dry_run=False)[0] == "h200"  # --hardware still overrides


def test_predictions_follow_the_gpus_bandwidth():
    """Batch 1 decode is memory-bound: the H100 row predicts 3350 / 4800 of the H200's tok/s, not the H200's."""
    step = gpu_plan.step_named("8b-bf16-eager")
    h100, h200 = (gpu_check.predictions_for(step, step.config, row, [1, 64], 128, 32) for row in ("h100-sxm", "h200"))
    assert h100[1].hardware == "h100-sxm" and h200[1].hardware == "h200"
    assert h100[1].decode_tok_s / h200[1].decode_tok_s == pytest.approx(3350 / 4800, rel=0.02)


@pytest.mark.parametrize(
    "gpu", ["NVIDIA H200 NVL", "NVIDIA A100-PCIE-40GB", "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA GeForce RTX 4090"]
)
def test_an_unrecognised_gpu_is_predicted_for_no_row_and_the_report_says_which(gpu):
    from pipeline.predict.hardware import row_for_device

    assert row_for_device(gpu) is None  # never the nearest row: an H200 NVL or a MIG slice has other figures
    row, said = gpu_plan.prediction_hardware(gpu, None, dry_run=False)
    assert row is None and f"the GPU {gpu!r} is not the device name of any row" in said
    step = gpu_plan.step_named("8b-bf16-compiled")
    assert gpu_check.predictions_for(step, step.config, row, [1, 64, 8], 128, 32) == {}
    # a step the child ran with no row: measured columns filled, predicted and error columns empty
    ran = _speed_step("8b-bf16-compiled", "ok", [_point(1, 270.0, 0.9)])
    ran["predicted"] = []
    md = gpu_check.markdown(_report([ran], gpu, gpu_check.answers([ran])))
    assert f"Predicted for: none: the GPU {gpu!r} is not the device name of any row" in md
    row_line = next(ln for ln in md.splitlines() if ln.startswith("| 8b-bf16-compiled"))
    assert [c.strip() for c in row_line.split("|")[8:10]] == ["—", "—"]


@pytest.mark.parametrize("gpu, row", [("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H200 NVL", None)])
def test_the_default_gpu_run_is_the_first_call_predicted_for_the_gpus_row(gpu, row, tmp_path, monkeypatch, capsys):
    """`main` on a GPU, its device and step processes faked: the three first-call steps start, each child is told
    the GPU's row (none for an unrecognised GPU), and the later calls are listed on the console and in the report."""
    import torch

    started = []

    class Child:  # a step process that exits at once without a result
        pid = 0

        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def wait(self, timeout=None):
            return 0

    env = {
        "dry_run": False,
        "packages": {n: "x" for n in ("torch", "transformers", "torchao", "bitsandbytes")},
        "cuda": "13.0",
        "cpu": "x",
        "cpu_flags": [],
        "load_avg": 0.0,
        "when": "now",
        "gpu": {"name": gpu},
    }
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "environment", lambda dry_run: env)
    monkeypatch.setattr(gpu_check.subprocess, "Popen", Child)
    monkeypatch.setenv("SHRINKGATE_HOST_CACHE", str(tmp_path / "host.json"))
    assert gpu_check.main(["--out", str(tmp_path), "--install-s", "12"]) == 1  # the faked steps gave no result
    assert [cmd[cmd.index("--step") + 1] for cmd in started] == [
        "8b-bf16-eager",
        "8b-bf16-compiled",
        "8b-int4-compiled",
    ]
    assert all((cmd[cmd.index("--hardware") + 1] if "--hardware" in cmd else None) == row for cmd in started)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (
        report["hardware"]["row"] == row and report["deadline_s"] == gpu_plan.DEADLINE_S and report["install_s"] == 12
    )
    commands = [gpu_plan.call_command(c) for c in gpu_plan.plan_calls(gpu_plan.STEPS)[1:]]
    assert [c["command"] for c in report["next_calls"]] == commands
    out = capsys.readouterr().out
    assert all(c in out and c in (tmp_path / "gpu_check.md").read_text() for c in commands)
    assert (f"Predicted for: {row} (the row of {gpu}" if row else f"Predicted for: none: the GPU {gpu!r}") in out


def test_a_device_name_in_two_rows_is_refused(tmp_path):
    from pipeline.predict.hardware import HardwareError, table

    rows = {
        name: {
            "kind": "gpu",
            "memory_gb": 80,
            "bandwidth_gb_s": 3350,
            "tflops": {"bf16": 989.5},
            "source": "x",
            "device_names": ["NVIDIA H100 80GB HBM3"],
        }
        for name in ("a", "b")
    }
    (tmp_path / "hw.yaml").write_text(json.dumps(rows))
    with pytest.raises(HardwareError, match="'nvidia h100 80gb hbm3' is listed by both a and b"):
        table(tmp_path / "hw.yaml")


# -- what one device call holds ------------------------------------------------------------------


def test_the_first_call_is_the_three_8b_rows_and_fits_one_device_call_with_the_install():
    first, *later = gpu_plan.plan_calls(gpu_plan.STEPS)
    assert [s.name for s in first] == ["8b-bf16-eager", "8b-bf16-compiled", "8b-int4-compiled"]
    # the arithmetic: the install, the driver's start, each step's box and slack, and a margin fit the device's 600 s
    boxes = sum(s.budget_s + gpu_plan.STEP_SLACK_S for s in first)
    assert gpu_plan.DEADLINE_S == boxes == gpu_plan.call_seconds(first)
    assert gpu_plan.INSTALL_S + gpu_plan.START_S + boxes + gpu_plan.MARGIN_S <= gpu_plan.CALL_S == 600
    assert gpu_plan.MARGIN_S >= 30 and gpu_plan.INSTALL_S >= 30  # 30x the 1 s the install took on the build host
    # every other step is in a later call, in order, each call fitting the same arithmetic, none empty
    assert [s.name for c in later for s in c] == [s.name for s in gpu_plan.STEPS[3:]]
    assert all(
        c and gpu_plan.INSTALL_S + gpu_plan.START_S + gpu_plan.call_seconds(c) + gpu_plan.MARGIN_S <= 600 for c in later
    )
    assert gpu_plan.call_command(later[0]) == (
        "bash benchmarks/gpu/gpu_check.sh --only 8b-int8-compiled,3b-bf16-eager,3b-bf16-compiled --deadline-s 435"
    )
    # a step never shares a call it would overflow; one larger than a call gets its own
    big = gpu_plan.Step("big", 1000, "llama-3.1-8b")
    assert [[s.name for s in c] for c in gpu_plan.plan_calls([big, *first])] == [["big"], [s.name for s in first]]


# -- the wheel set ---------------------------------------------------------------------------------


def test_wheel_list_pins_what_the_cpu_tests_run():
    pins = dict(gpu_wheels.requirements())
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ours = {d.split("==")[0].split("[")[0]: d.split("==")[1] for d in deps if "==" in d}
    assert pins["torchao"] == ours["torchao"] and pins["bitsandbytes"] == ours["bitsandbytes"]
    import pydantic
    import pydantic_core

    assert pins["pydantic"] == pydantic.VERSION and pins["pydantic-core"] == pydantic_core.__version__
    assert not set(pins) & {"torch", "transformers", "mlflow", "lm-eval"}  # the device's own, or not needed there


def test_wheel_budget_and_one_wheel_per_pin(tmp_path):
    small = tmp_path / "torchao-0.18.0-cp310-abi3-manylinux_2_28_x86_64.whl"
    small.write_bytes(b"x" * 1000)
    assert gpu_wheels.wheel_for(tmp_path, "torchao", "0.18.0") == small
    assert gpu_wheels.wheel_for(tmp_path, "torchao", "0.17.0") is None
    big = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    with big.open("wb") as f:  # sparse: 60 MiB on paper, nothing on disk
        f.truncate(60 * 2**20)
    assert gpu_wheels.check_budget([small], repo=3 * 2**20) < gpu_wheels.CARRY_BUDGET
    with pytest.raises(gpu_wheels.WheelError, match=r"passes the 64 MiB carry budget .*heaviest \(bitsandbytes"):
        gpu_wheels.check_budget([small, big], repo=3 * 2**20)
    (tmp_path / "typing_extensions-4.16.0-py3-none-any.whl").write_bytes(b"x")
    assert gpu_wheels.wheel_for(tmp_path, "typing-extensions", "4.16.0").name.startswith(
        "typing_extensions"
    )  # '-' is '_' in a wheel's name
    (tmp_path / "torchao-0.18.0-cp310-abi3-manylinux_2_24_x86_64.whl").write_bytes(b"x")
    with pytest.raises(gpu_wheels.WheelError, match="2 wheels of torchao==0.18.0"):
        gpu_wheels.wheel_for(tmp_path, "torchao", "0.18.0")
    bad = tmp_path / "list.txt"
    bad.write_text("pydantic>=2\n")
    with pytest.raises(gpu_wheels.WheelError, match=r"list.txt:1: 'pydantic>=2' is not `name==version`"):
        gpu_wheels.requirements(bad)


def test_wheel_check_names_what_is_missing_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu/gpu_wheels.py", "--check", "--dest", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().count("\n") == 0
        and "no wheel of pydantic==" in proc.stderr
        and "without --check" in proc.stderr
    )
    assert gpu_wheels.repo_bytes() < 16 * 2**20  # what travels besides the wheels stays small
