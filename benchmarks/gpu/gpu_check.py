"""The prepared GPU check: one run on a lent GPU measures what the project promises of one.

`benchmarks/gpu/gpu_check.sh` installs the carried wheels (`benchmarks/gpu/gpu_wheels.txt`) and calls this. Each step
runs in its own process with its own time box, most important first, until the deadline; a step that fails
or runs out of time is recorded with its reason and the next one starts. Every speed step is `speed_command`
(what `shrinkgate speed --config` runs): random weights of a published shape, bf16, prompt 128 + 32 new
tokens, batch 1 / 8 / 64, CUDA-event timing, MBU against the measured device bandwidth. Each speed row is
also predicted from the hardware table (`pipeline.predict`) for the GPU's own row, found by its driver name (an
unrecognised GPU gets no prediction), so the roofline's error on the GPU comes out of the same run.

One device command may run 600 s, the install included. The steps are packed, in order, into calls that fit it
(`plan_calls`): the default run is the first call (the 8B bf16 eager and compiled rows and the 8B int4 row), and
the report ends with the command line of each further call. Results: `gpu_check.json` and `gpu_check.md` under
--out.

    bash benchmarks/gpu/gpu_check.sh                                     # on the GPU machine (install + first call)
    python benchmarks/gpu/gpu_check.py --dry-run --out /tmp/gc           # any CPU: every step, tiny shapes
    bash benchmarks/gpu/gpu_check.sh --only 8b-nf4-eager,pytest-gpu --deadline-s 250  # a later call, as the report says
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # benchmarks/gpu/ -> the repository root
# `pipeline`, and the plan beside this file (also when loaded by path)
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from gpu_plan import (  # noqa: E402 (after the path it needs)
    CALL_S,
    DEADLINE_S,
    INSTALL_S,
    MARGIN_S,
    START_S,
    STEP_SLACK_S,
    STEPS,
    Step,
    call_command,
    call_seconds,
    plan_calls,
    prediction_hardware,
    step_named,
)

BATCHES = (1, 64, 8)  # measured in this order: a step cut at its time box still answers batch 1 vs 64
PROMPT_TOKENS, NEW_TOKENS = 128, 32
MBU_TARGET = 0.85  # bf16, batch 1, compiled
PYTEST_FILES = ("tests/test_speed.py", "tests/test_methods.py")
# The dry run's stand-ins for the two published shapes: same family (llama), widths that every method's kernel
# accepts (int4 group 128 divides 128 and 256; every output width a multiple of 16), small enough for CPU.
DRY_SHAPES = {
    "llama-3.1-8b": (
        "dry-run-8b",
        dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
            tie_word_embeddings=False,
            head_dim=32,
        ),
    ),
    "llama-3.2-3b": (
        "dry-run-3b",
        dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
            tie_word_embeddings=True,
            head_dim=32,
        ),
    ),
}


def add_dry_shapes() -> None:
    from pipeline.models import shapes

    for published, (name, kw) in DRY_SHAPES.items():
        shapes.add_shape(name, shapes.PublishedShape(f"dry-run/{published}", "llama", published_params=0.0, **kw))


# ---------------------------------------------------------------------------------------------
# One step, in its own process
# ---------------------------------------------------------------------------------------------


def predictions_for(
    step: Step, config: str, hardware_name: str | None, batches: Sequence[int], prompt: int, new: int
) -> dict[int, Any]:
    """The roofline's prediction of each batch of `step` on `hardware_name`, by batch; none without a row."""
    from pipeline.predict.targets import Target, model_facts, predict_targets

    if hardware_name is None:
        return {}
    target = Target(model_facts(config, "bf16"), step.method, variant=step.name)
    return {p.batch: p for p in predict_targets([target], hardware_name, "transformers", batches, prompt, new)}


def run_speed_step(step: Step, dry_run: bool, hardware_name: str | None, out: Path) -> None:
    """Measure one step, one batch size at a time, rewriting `out` after each (a step cut at its time box keeps
    the batches it finished), with the roofline's prediction of each row on `hardware_name` (none when None)."""
    from pipeline.config.recipe import SpeedSpec
    from pipeline.runtime.speed.command import build_speed_model, measure_speed_model, print_table

    config, batches, prompt, new, repeats, compile_ = (
        step.config,
        list(BATCHES),
        PROMPT_TOKENS,
        NEW_TOKENS,
        3,
        step.compile,
    )
    if dry_run:
        add_dry_shapes()
        config, batches, prompt, new, repeats = DRY_SHAPES[step.config][0], [1, 2], 16, 4, 1
        if compile_:
            # CPU inductor autotunes every GEMM shape (minutes): the dry run compiles the first compiled step's batch 1
            # only; the CUDA compile path is exercised by the @pytest.mark.gpu tests
            first = next(s for s in STEPS if s.compile)
            compile_, batches = step.name == first.name, [1]
    built = build_speed_model(
        config, "bf16", step.method, "cpu" if dry_run else "cuda", method_params=dict(step.params) or None
    )
    predictions = predictions_for(step, config, hardware_name, batches, prompt, new)
    results, points = [], []
    for batch in batches:
        spec = SpeedSpec(
            prompt_tokens=prompt, new_tokens=new, batch_sizes=[batch], warmup=1, repeats=repeats, compile=compile_
        )
        result = measure_speed_model(built, spec)
        print_table(result)
        results.append(result)
        points.extend(result.points)
        merged = dataclasses.replace(
            results[0],
            points=tuple(points),
            skipped=tuple(x for r in results for x in r.skipped),
            warnings=tuple(dict.fromkeys(w for r in results for w in r.warnings)),
        )
        out.write_text(
            json.dumps(
                {
                    "result": dataclasses.asdict(merged),
                    "predicted": [
                        {
                            "batch": p.batch,
                            "decode_tok_s": p.decode_tok_s,
                            "tpot_ms": p.tpot_ms,
                            "ttft_ms": p.ttft_ms,
                            "bottleneck": p.bottleneck,
                            "hardware": p.hardware,
                            "factors": p.factors.provenance,
                        }
                        for b, p in predictions.items()
                        if any(x.batch_size == b for x in points)
                    ],
                    "dry_run_compiled": compile_ if dry_run else None,
                },
                default=str,
            )
        )


def run_pytest_step(dry_run: bool, out: Path, timeout_s: float) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        *PYTEST_FILES,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    text = proc.stdout + proc.stderr
    print(text)
    summary = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.strip()), "")  # "4 passed, 1 skipped in 9.1s"
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    out.write_text(json.dumps({"rc": proc.returncode, "counts": counts, "tail": text[-3000:]}))


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def environment(dry_run: bool) -> dict[str, Any]:
    """What ran the check: versions, the device, the CPU's flags (figures are only comparable with these)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from pipeline.host import cpu_flags, cpu_model, load_average

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    flags = cpu_flags()
    env: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dry_run": dry_run,
        "python": platform.python_version(),
        "packages": {
            n: ver(n)
            for n in ("torch", "transformers", "accelerate", "torchao", "bitsandbytes", "pydantic", "safetensors")
        },
        "cpu": cpu_model(),
        "cpu_flags": sorted(
            f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
        ),
        "load_avg": load_average(),
        "cuda": torch.version.cuda,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
        }
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            env["gpu"]["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            env["gpu"]["nvidia_smi"] = f"unavailable: {exc}"
    return env


def run_step_process(step: Step, args: argparse.Namespace, timeout_s: float, step_dir: Path) -> dict[str, Any]:
    """Run one step as a child process group (compile workers included), killed whole at its time box."""
    out = step_dir / f"{step.name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--step-out", str(out)]
    if args.row:
        cmd += ["--hardware", args.row]
    if args.dry_run:
        cmd.append("--dry-run")
    log = (step_dir / f"{step.name}.log").open("w")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout_s)
        status = "ok" if rc == 0 and out.is_file() else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc, status = None, "timeout"
    finally:
        log.close()
    seconds = time.monotonic() - start
    text = (step_dir / f"{step.name}.log").read_text(errors="replace")
    print(text, flush=True)
    record: dict[str, Any] = {
        "name": step.name,
        "status": status,
        "seconds": round(seconds, 1),
        "budget_s": round(timeout_s),
    }
    errors = [ln for ln in text.splitlines() if ln.strip()]
    why = (
        f"no result within {timeout_s:.0f} s"
        if status == "timeout"
        else f"exit {rc}: {errors[-1] if errors else 'no output'}"
    )
    if status != "ok" and step.is_speed and out.is_file():
        status = record["status"] = "partial"  # a later batch size ran out of time or failed: keep the finished ones
        why = f"{why}; the batch sizes it finished are kept"
    if status in ("ok", "partial"):
        record.update(json.loads(out.read_text()))
    if status != "ok":
        record["reason"] = why
    return record


def answers(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The questions the check exists for, answered from the rows (None where a step gave no result)."""

    def points(name: str) -> dict[int, dict[str, Any]]:
        for s in steps:
            if s["name"] == name and "result" in s:
                return {p["batch_size"]: p for p in s["result"]["points"]}
        return {}

    out: dict[str, Any] = {}
    bf16 = points("8b-bf16-compiled")
    first = bf16.get(min(bf16)) if bf16 else None
    out["mbu_8b_bf16_compiled_b1"] = None if first is None else first["mbu"]
    out["mbu_target_met"] = None if first is None or first["mbu"] is None else first["mbu"] >= MBU_TARGET
    for variant, base in (
        ("8b-int4-compiled", bf16),
        ("8b-int8-compiled", bf16),
        ("8b-nf4-eager", points("8b-bf16-eager")),
    ):
        rows = points(variant)
        out[f"{variant} / bf16"] = {
            b: rows[b]["decode_tok_s"] / base[b]["decode_tok_s"]
            for b in sorted(rows)
            if b in base and base[b]["decode_tok_s"]
        }
    return out


def _f(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def _s(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:.0f} s"


def markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    gpu = env["gpu"] or {}
    lines = [
        f"# GPU check {'(dry run, CPU, tiny shapes)' if env['dry_run'] else ''}".rstrip(),
        "",
        f"{gpu.get('name', 'no GPU')}; torch {env['packages']['torch']}, transformers {env['packages']['transformers']}, "
        f"torchao {env['packages']['torchao']}, bitsandbytes {env['packages']['bitsandbytes']}; CUDA {env['cuda']}; "
        f"CPU {env['cpu']} ({', '.join(env['cpu_flags']) or 'no AVX flags'}); load {_f(env['load_avg'], '.2f')}; {env['when']}",
        "",
        f"Predicted for: {report['hardware']['said']}.",
        "",
        f"This call: install {_s(report['install_s'])} (assumed <= {INSTALL_S} s), start {_s(report['start_s'])} "
        f"(assumed <= {START_S} s), steps {_s(report['seconds'])} (deadline {_s(report['deadline_s'])}).",
        "",
        "| step | status | batch | TPOT ms | decode tok/s | ceiling tok/s | MBU | predicted tok/s | pred. error | peak MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report["steps"]:
        if "result" not in s:
            continue
        predicted = {p["batch"]: p["decode_tok_s"] for p in s.get("predicted", [])}
        for p in sorted(s["result"]["points"], key=lambda p: p["batch_size"]):
            b, pred = p["batch_size"], predicted.get(p["batch_size"])
            error = None if pred is None or not p["decode_tok_s"] else (pred / p["decode_tok_s"] - 1) * 100
            lines.append(
                f"| {s['name']} | {s['status']} ({s['seconds']:.0f} s) | {b} | {p['tpot_ms']:.2f} | {p['decode_tok_s']:.1f} | {_f(p['wall_tok_s'])} | "
                f"{_f(None if p['mbu'] is None else p['mbu'] * 100, '.0f')}% | {_f(pred)} | {'—' if error is None else f'{error:+.0f}%'} | {p['peak_mem_mb']:.0f} |"
            )
    lines.append("")
    for s in report["steps"]:
        if "result" in s:
            r = s["result"]
            lines.append(
                f"- {s['name']}: {r['device']}, timer {r['timer']}, KV cache {r['kv_cache']}{', compiled' if r['compiled'] else ''}; "
                f"bandwidth {r['bandwidth_gb_s']:.0f} GB/s, matmul {_f(r['matmul_tflops'], '.3g')} TFLOP/s; weights read/token "
                f"{r['weight_bytes_per_token'] / 1e9:.3g} GB; compute-bound from ~{r['compute_bound_batch']}; kernel: {r['kernel_observed'] or r['kernel']}"
                + ("; DENSE FALLBACK" if r["dense_fallback"] else "")
                + ("" if s["status"] == "ok" else f" ({s['status']}: {s['reason']})")
            )
        elif s["status"] != "ok":
            lines.append(f"- {s['name']}: {s['status']} — {s['reason']}")
    pytest_step = next((s for s in report["steps"] if s["name"] == "pytest-gpu"), None)
    if pytest_step is not None and pytest_step["status"] == "ok":
        counts = pytest_step["counts"]
        lines.append(
            f"- pytest -m gpu: {', '.join(f'{v} {k}' for k, v in counts.items()) or 'no summary line'} (exit {pytest_step['rc']})"
        )
    a = report["answers"]
    lines += ["", "## Answers", ""]
    mbu = a["mbu_8b_bf16_compiled_b1"]
    lines.append(
        f"- 8B bf16 compiled, batch 1: MBU {_f(None if mbu is None else mbu * 100, '.0f')}% vs the >= {MBU_TARGET:.0%} target: "
        + {True: "met", False: "NOT met", None: "not measured"}[a["mbu_target_met"]]
    )
    for key, ratios in a.items():
        if isinstance(ratios, dict):
            text = ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items()) or "not measured"
            lines.append(f"- decode tok/s, {key}: {text}")
    lines += ["", "## Next calls", ""]
    if report["next_calls"]:
        lines.append(
            f"Not run in this call: {len(report['next_calls'])} more device call(s), each <= {CALL_S} s with the install "
            f"(install {INSTALL_S} s + start {START_S} s + the time boxes + {STEP_SLACK_S} s a step + {MARGIN_S} s margin):"
        )
        for n, call in enumerate(report["next_calls"], 1):
            lines.append(f"- next call {n}: {', '.join(call['steps'])} ({call['deadline_s']} s): `{call['command']}`")
    else:
        lines.append("None: every step asked for was run or tried in this call.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    called = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    ap.add_argument("--dry-run", action="store_true", help="every step on CPU with tiny shapes (no GPU needed)")
    ap.add_argument("--only", default="", help="comma-separated step names (a later call, as the report lists it)")
    ap.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help=f"a step starts only while its whole time box fits before this (default {DEADLINE_S}, the first call's; the dry run: none)",
    )
    ap.add_argument(
        "--hardware",
        default=None,
        help="hardware.yaml row to predict for (default: the GPU's own row by its name, none for an unrecognised GPU; the dry run: this-host)",
    )
    ap.add_argument(
        "--install-s", type=float, default=None, help="seconds the wheel install took (gpu_check.sh passes it)"
    )
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--step-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.step:  # a child: one step, predicted for the row the driver passed (none without --hardware)
        step = step_named(args.step)
        if step.is_speed:
            run_speed_step(step, args.dry_run, args.hardware, args.step_out)
        else:
            run_pytest_step(args.dry_run, args.step_out, timeout_s=step.budget_s)
        return 0

    if args.hardware:
        from pipeline.predict.hardware import HardwareError, check_name

        try:
            check_name(args.hardware)
        except HardwareError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    # the default GPU run is the first call; the dry run checks the script, so it runs every step
    later: list[Step] = []
    if args.only:
        steps = [step_named(n.strip()) for n in args.only.split(",") if n.strip()]
    elif args.dry_run:
        steps = list(STEPS)
    else:
        steps, *rest = plan_calls(STEPS)
        later = [s for call in rest for s in call]
    deadline = args.deadline_s if args.deadline_s is not None else (None if args.dry_run else DEADLINE_S)
    args.out.mkdir(parents=True, exist_ok=True)
    step_dir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    # one bandwidth / matmul probe for all steps (each step is a process of its own); the dry run's quick reading
    # never reaches the user's own host cache
    if args.dry_run:
        from pipeline.host import bandwidth_probe, default_threads

        os.environ["SHRINKGATE_HOST_CACHE"] = str(step_dir / "host.json")
        bandwidth_probe("cpu", default_threads(), buffer_bytes=32 * 2**20)  # a quick reading, not the DRAM-sized probe
    else:
        os.environ.setdefault("SHRINKGATE_HOST_CACHE", str(step_dir / "host.json"))
    env = environment(args.dry_run)
    args.row, said = prediction_hardware((env["gpu"] or {}).get("name"), args.hardware, args.dry_run)
    report: dict[str, Any] = {
        "env": env,
        "hardware": {"row": args.row, "said": said},
        "install_s": args.install_s,
        "deadline_s": deadline,
        "steps": [],
    }
    print(f"== predicted for: {said}", flush=True)
    if later:  # before any step: a call stopped from outside still has the later commands in its log
        print(
            f"== this call: {', '.join(s.name for s in steps)}; later: "
            + "; ".join(f"`{call_command(c, hardware=args.hardware)}`" for c in plan_calls(later)),
            flush=True,
        )
    start = time.monotonic()
    report["start_s"] = round(start - called, 1)
    for step in steps:
        left = math.inf if deadline is None else deadline - (time.monotonic() - start)
        box = step.budget_s if not args.dry_run else max(step.budget_s, 240)  # CPU compile of a tiny model is slow
        if (
            box > left
        ):  # a step starts with its whole box or not at all (the plan's slack absorbs slow starts and kills)
            report["steps"].append(
                {
                    "name": step.name,
                    "status": "not run",
                    "reason": f"its {box} s time box does not fit the {max(left, 0):.0f} s left of --deadline-s {deadline:.0f}; see Next calls",
                }
            )
            continue
        print(f"== {step.name} (time box {box} s)", flush=True)
        report["steps"].append(run_step_process(step, args, box, step_dir))
    report["seconds"] = round(time.monotonic() - start, 1)
    report["answers"] = answers(report["steps"])
    later = [step_named(s["name"]) for s in report["steps"] if s["status"] == "not run"] + later
    report["next_calls"] = [
        {
            "steps": [s.name for s in call],
            "deadline_s": call_seconds(call),
            "command": call_command(call, dry_run=args.dry_run, hardware=args.hardware),
        }
        for call in plan_calls(later)
    ]
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    failed = [s["name"] for s in report["steps"] if s["status"] != "ok" or s.get("rc")]
    print(
        f"{len(report['steps']) - len(failed)} of {len(report['steps'])} steps gave results in {report['seconds']:.0f} s"
        + (f"; not: {', '.join(failed)}" if failed else "")
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
