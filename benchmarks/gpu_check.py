"""The prepared GPU check: one run on a lent GPU measures what the project promises of one.

`benchmarks/gpu_check.sh` installs the carried wheels (`benchmarks/gpu_wheels.txt`) and calls this. Each step
runs in its own process with its own time box, most important first, until the deadline; a step that fails
or runs out of time is recorded with its reason and the next one starts. Every speed step is `speed_command`
(what `shrinkgate speed --config` runs): random weights of a published shape, bf16, prompt 128 + 32 new
tokens, batch 1 / 8 / 64, CUDA-event timing, MBU against the measured device bandwidth. Each speed row is
also predicted from the hardware table (`pipeline.predict`), so the roofline's error on the GPU comes out of
the same run. Results: `gpu_check.json` and `gpu_check.md` under --out.

    bash benchmarks/gpu_check.sh                                     # on the GPU machine (install + run)
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc           # any CPU: every step, tiny shapes
    bash benchmarks/gpu_check.sh --only 3b-bf16-compiled,pytest-gpu  # a rerun of what did not fit
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCHES = (1, 64, 8)  # measured in this order: a step cut at its time box still answers batch 1 vs 64
PROMPT_TOKENS, NEW_TOKENS = 128, 32
MBU_TARGET = 0.85  # bf16, batch 1, compiled
DEADLINE_S = 480  # steps stop starting after this; leaves the device's 10-minute command room for the install
# The dry run's stand-ins for the two published shapes: same family (llama), widths that every method's kernel
# accepts (int4 group 128 divides 128 and 256; every output width a multiple of 16), small enough for CPU.
DRY_SHAPES = {
    "llama-3.1-8b": ("dry-run-8b", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False, head_dim=32)),
    "llama-3.2-3b": ("dry-run-3b", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, head_dim=32)),
}


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: int  # time box on the GPU, compile included
    config: str = ""  # a published shape; "" runs the @pytest.mark.gpu tests instead
    method: str = "none"
    params: tuple[tuple[str, Any], ...] = ()
    compile: bool = False

    @property
    def is_speed(self) -> bool:
        return bool(self.config)


# Most important first: the bf16 MBU target, then "does int4/int8 beat bf16 at batch 1 and lose at 64?", then the
# 3B rows, NF4 and the tests. Budgets: compile is most of a compiled step (one graph per batch size).
STEPS: tuple[Step, ...] = (
    Step("8b-bf16-eager", 75, "llama-3.1-8b"),
    Step("8b-bf16-compiled", 180, "llama-3.1-8b", compile=True),
    Step("8b-int4-compiled", 150, "llama-3.1-8b", "int4-weight-only", (("group_size", 128),), compile=True),
    Step("8b-int8-compiled", 150, "llama-3.1-8b", "int8-weight-only", compile=True),
    Step("3b-bf16-eager", 60, "llama-3.2-3b"),
    Step("3b-bf16-compiled", 150, "llama-3.2-3b", compile=True),
    Step("8b-nf4-eager", 90, "llama-3.1-8b", "bnb-nf4", (("compute_dtype", "bfloat16"),)),
    Step("pytest-gpu", 150),
)
PYTEST_FILES = ("tests/test_speed.py", "tests/test_methods.py")


def step_named(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise SystemExit(f"error: --only {name}: no such step; steps: {', '.join(s.name for s in STEPS)}")


def add_dry_shapes() -> None:
    from pipeline.runtime.speed import shapes

    for published, (name, kw) in DRY_SHAPES.items():
        shapes.add_shape(name, shapes.PublishedShape(f"dry-run/{published}", "llama", published_params=0.0, **kw))


# ---------------------------------------------------------------------------------------------
# One step, in its own process
# ---------------------------------------------------------------------------------------------


def run_speed_step(step: Step, dry_run: bool, hardware_name: str, out: Path) -> None:
    """Measure one step, one batch size at a time, rewriting `out` after each (a step cut at its time box keeps
    the batches it finished), with the roofline's prediction of each row."""
    from pipeline.config.recipe import SpeedSpec
    from pipeline.predict.command import Target, model_facts, predict_targets
    from pipeline.runtime.speed.command import build_speed_model, measure_speed_model, print_table

    config, batches, prompt, new, repeats, compile_ = step.config, list(BATCHES), PROMPT_TOKENS, NEW_TOKENS, 3, step.compile
    if dry_run:
        add_dry_shapes()
        config, batches, prompt, new, repeats = DRY_SHAPES[step.config][0], [1, 2], 16, 4, 1
        if compile_:
            # CPU inductor autotunes every GEMM shape (minutes): the dry run compiles the first compiled step's batch 1
            # only; the CUDA compile path is exercised by the @pytest.mark.gpu tests
            first = next(s for s in STEPS if s.compile)
            compile_, batches = step.name == first.name, [1]
    built = build_speed_model(config, "bf16", step.method, "cpu" if dry_run else "cuda", method_params=dict(step.params) or None)
    target = Target(model_facts(config, "bf16"), step.method, variant=step.name)
    predictions = {p.batch: p for p in predict_targets([target], hardware_name, "transformers", batches, prompt, new)}
    results, points = [], []
    for batch in batches:
        spec = SpeedSpec(prompt_tokens=prompt, new_tokens=new, batch_sizes=[batch], warmup=1, repeats=repeats, compile=compile_)
        result = measure_speed_model(built, spec)
        print_table(result)
        results.append(result)
        points.extend(result.points)
        merged = dataclasses.replace(
            results[0], points=tuple(points), skipped=tuple(x for r in results for x in r.skipped),
            warnings=tuple(dict.fromkeys(w for r in results for w in r.warnings)),
        )
        out.write_text(json.dumps({
            "result": dataclasses.asdict(merged),
            "predicted": [
                {"batch": p.batch, "decode_tok_s": p.decode_tok_s, "tpot_ms": p.tpot_ms, "ttft_ms": p.ttft_ms,
                 "bottleneck": p.bottleneck, "hardware": p.hardware, "factors": p.factors.provenance}
                for b, p in predictions.items() if any(x.batch_size == b for x in points)
            ],
            "dry_run_compiled": compile_ if dry_run else None,
        }, default=str))


def run_pytest_step(dry_run: bool, out: Path, timeout_s: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=", *PYTEST_FILES]
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

    from pipeline.runtime.speed.host import cpu_flags, cpu_model, load_average

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
        "packages": {n: ver(n) for n in ("torch", "transformers", "accelerate", "torchao", "bitsandbytes", "pydantic", "safetensors")},
        "cpu": cpu_model(),
        "cpu_flags": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}),
        "load_avg": load_average(),
        "cuda": torch.version.cuda,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "sms": props.multi_processor_count}
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            )
            env["gpu"]["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            env["gpu"]["nvidia_smi"] = f"unavailable: {exc}"
    return env


def run_step_process(step: Step, args: argparse.Namespace, timeout_s: float, step_dir: Path) -> dict[str, Any]:
    """Run one step as a child process group (compile workers included), killed whole at its time box."""
    out = step_dir / f"{step.name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--step-out", str(out), "--hardware", args.hardware]
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
    record: dict[str, Any] = {"name": step.name, "status": status, "seconds": round(seconds, 1), "budget_s": round(timeout_s)}
    errors = [ln for ln in text.splitlines() if ln.strip()]
    why = f"no result within {timeout_s:.0f} s" if status == "timeout" else f"exit {rc}: {errors[-1] if errors else 'no output'}"
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
    for variant, base in (("8b-int4-compiled", bf16), ("8b-int8-compiled", bf16), ("8b-nf4-eager", points("8b-bf16-eager"))):
        rows = points(variant)
        out[f"{variant} / bf16"] = {b: rows[b]["decode_tok_s"] / base[b]["decode_tok_s"] for b in sorted(rows) if b in base and base[b]["decode_tok_s"]}
    return out


def _f(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


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
                f"{_f(None if p['mbu'] is None else p['mbu'] * 100, '.0f')}% | {_f(pred)} | {_f(error, '+.0f')}% | {p['peak_mem_mb']:.0f} |"
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
        lines.append(f"- pytest -m gpu: {', '.join(f'{v} {k}' for k, v in counts.items()) or 'no summary line'} (exit {pytest_step['rc']})")
    a = report["answers"]
    lines += ["", "## Answers", ""]
    mbu = a["mbu_8b_bf16_compiled_b1"]
    lines.append(f"- 8B bf16 compiled, batch 1: MBU {_f(None if mbu is None else mbu * 100, '.0f')}% vs the >= {MBU_TARGET:.0%} target: "
                 + {True: "met", False: "NOT met", None: "not measured"}[a["mbu_target_met"]])
    for key, ratios in a.items():
        if isinstance(ratios, dict):
            text = ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items()) or "not measured"
            lines.append(f"- decode tok/s, {key}: {text}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    ap.add_argument("--dry-run", action="store_true", help="every step on CPU with tiny shapes (no GPU needed)")
    ap.add_argument("--only", default="", help="comma-separated step names (a rerun of what did not fit)")
    ap.add_argument("--deadline-s", type=float, default=DEADLINE_S, help="no step starts after this; each is cut at it")
    ap.add_argument("--hardware", default=None, help="hardware table row for the predictions (default h200; dry run this-host)")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--step-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.hardware = args.hardware or ("this-host" if args.dry_run else "h200")

    if args.step:  # a child: one step
        step = step_named(args.step)
        if step.is_speed:
            run_speed_step(step, args.dry_run, args.hardware, args.step_out)
        else:
            run_pytest_step(args.dry_run, args.step_out, timeout_s=step.budget_s)
        return 0

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    steps = [step_named(n.strip()) for n in args.only.split(",") if n.strip()] or list(STEPS)
    args.out.mkdir(parents=True, exist_ok=True)
    step_dir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    # one bandwidth / matmul probe for all steps (each step is a process of its own); the dry run's quick reading
    # never reaches the user's own host cache
    if args.dry_run:
        from pipeline.runtime.speed.host import bandwidth_probe, default_threads

        os.environ["SHRINKGATE_HOST_CACHE"] = str(step_dir / "host.json")
        bandwidth_probe("cpu", default_threads(), buffer_bytes=32 * 2**20)  # a quick reading, not the DRAM-sized probe
    else:
        os.environ.setdefault("SHRINKGATE_HOST_CACHE", str(step_dir / "host.json"))
    report: dict[str, Any] = {"env": environment(args.dry_run), "steps": []}
    start = time.monotonic()
    for step in steps:
        left = args.deadline_s - (time.monotonic() - start)
        budget = step.budget_s if not args.dry_run else max(step.budget_s, 240)  # CPU compile of a tiny model is slow
        if left < min(budget, 30):
            report["steps"].append({"name": step.name, "status": "not run", "reason": f"deadline: {left:.0f} s left of --deadline-s {args.deadline_s:.0f}; rerun with --only {step.name}"})
            continue
        print(f"== {step.name} (time box {min(budget, left):.0f} s)", flush=True)
        report["steps"].append(run_step_process(step, args, min(budget, left), step_dir))
    report["seconds"] = round(time.monotonic() - start, 1)
    report["answers"] = answers(report["steps"])
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    failed = [s["name"] for s in report["steps"] if s["status"] != "ok" or s.get("rc")]
    print(f"{len(report['steps']) - len(failed)} of {len(report['steps'])} steps gave results in {report['seconds']:.0f} s"
          + (f"; not: {', '.join(failed)}" if failed else ""))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
