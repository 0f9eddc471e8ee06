"""What one call of the prepared GPU check holds: its steps, their time boxes, the calls they are packed into, and
the hardware row their speed is predicted for.

The device tool stops a command at 600 s, the wheel install included, so the steps (most important first) are
cut, in order, into calls that each fit: `plan_calls(STEPS)[0]` is what `bash benchmarks/gpu/gpu_check.sh` runs, and
`call_command` is the command line of each later call, as the report lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# What one device call holds: the device tool stops a command at CALL_S, the wheel install included.
CALL_S = 600
# Assumed, not measured there: gpu_check.sh's `pip install --no-deps --target` of the ~47 MiB of carried wheels
# (152 MB unpacked) took 1.0 s on the 2-core build host; the device's sandboxed file system may be many times
# slower. gpu_check.sh passes the real figure (--install-s) and the report prints it beside this one.
INSTALL_S = 30
START_S = 30  # the driver before its first step: Python, import torch, the device query, nvidia-smi
STEP_SLACK_S = 5  # per step, beside its time box: its process start, the kill at the box, its log
MARGIN_S = 60  # an install or a start slower than assumed


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
# 3B rows, NF4 and the tests. Budgets (guesses until a GPU times them): a step's process imports torch and builds
# 16 GB of random weights; a compiled step then compiles one decode graph per batch size, the first compiled step
# with cold inductor/Triton caches (the later 8B ones share its attention and norm kernels). The first call
# (`plan_calls`) is the first three: 75 + 210 + 180 s of boxes.
STEPS: tuple[Step, ...] = (
    Step("8b-bf16-eager", 75, "llama-3.1-8b"),  # also the first bandwidth and matmul probes
    Step("8b-bf16-compiled", 210, "llama-3.1-8b", compile=True),
    Step("8b-int4-compiled", 180, "llama-3.1-8b", "int4-weight-only", (("group_size", 128),), compile=True),
    Step("8b-int8-compiled", 180, "llama-3.1-8b", "int8-weight-only", compile=True),
    Step("3b-bf16-eager", 60, "llama-3.2-3b"),
    Step("3b-bf16-compiled", 180, "llama-3.2-3b", compile=True),
    Step("8b-nf4-eager", 90, "llama-3.1-8b", "bnb-nf4", (("compute_dtype", "bfloat16"),)),
    Step("pytest-gpu", 150),
)
STEPS_ROOM_S = CALL_S - INSTALL_S - START_S - MARGIN_S  # what one call's steps may take, slack included


def call_seconds(steps: Sequence[Step]) -> int:
    """What `steps` may take in one call, one after another: their time boxes and per-step slack."""
    return sum(s.budget_s + STEP_SLACK_S for s in steps)


def plan_calls(steps: Sequence[Step], room_s: int = STEPS_ROOM_S) -> list[list[Step]]:
    """`steps` in their order, cut into device calls whose `call_seconds` fit `room_s` each (a step bigger than
    the room gets a call of its own)."""
    calls: list[list[Step]] = []
    for step in steps:
        if calls and call_seconds([*calls[-1], step]) <= room_s:
            calls[-1].append(step)
        else:
            calls.append([step])
    return calls


DEADLINE_S = call_seconds(plan_calls(STEPS)[0])  # the default run is the first call


def call_command(steps: Sequence[Step], *, dry_run: bool = False, hardware: str | None = None) -> str:
    """The command line of one device call of `steps`, its deadline their `call_seconds`."""
    return (
        f"bash benchmarks/gpu/gpu_check.sh --only {','.join(s.name for s in steps)} --deadline-s {call_seconds(steps)}"
        + (f" --hardware {hardware}" if hardware else "")
        + (" --dry-run" if dry_run else "")
    )


def step_named(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise SystemExit(f"error: --only {name}: no such step; steps: {', '.join(s.name for s in STEPS)}")


def prediction_hardware(gpu_name: str | None, override: str | None, dry_run: bool) -> tuple[str | None, str]:
    """The hardware row the speed rows are predicted for, and what the report says of it.

    `--hardware` wins; the dry run predicts for this host's probes; otherwise the GPU's own row by the name its
    driver reports. An unrecognised GPU gets None, so no row is predicted at all: a near row's figures would make
    every prediction-error cell wrong (an H100 read as the H200 is off by 4.8 / 3.35 = 1.4x)."""
    from pipeline.predict.hardware import THIS_HOST, row_for_device, table

    if override:
        row, why = override, f"--hardware{f'; the GPU is {gpu_name}' if gpu_name else ''}"
    elif dry_run:
        row, why = THIS_HOST, "the dry run predicts for this host's bandwidth and matmul probes"
    else:
        row = row_for_device(gpu_name or "")
        if row is None:
            return None, (
                f"none: the GPU {gpu_name!r} is not the device name of any row of pipeline/predict/hardware.yaml; "
                "add its row (datasheet figures and device_names) or rerun with --hardware ROW"
            )
        why = f"the row of {gpu_name}"
    if row.lower() in table():
        hw = table()[row.lower()]
        why += f"; {hw.bandwidth_gb_s:g} GB/s, from the {hw.source}"
    return row, f"{row} ({why})"
