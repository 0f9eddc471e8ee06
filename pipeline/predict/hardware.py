"""The devices `predict` knows: vendors' datasheet figures (hardware.yaml) plus `this-host` from the probes."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

TABLE = Path(__file__).with_name("hardware.yaml")
THIS_HOST = "this-host"


class Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    kind: Literal["gpu", "cpu", "apple"]
    memory_gb: float = Field(gt=0)
    bandwidth_gb_s: float = Field(gt=0)
    tflops: dict[str, float]  # dense matrix throughput per dtype (fp32, tf32, bf16, fp16, fp8, int8)
    source: str
    compute_source: str = ""  # where a compute figure is derived, not printed
    device_names: tuple[str, ...] = ()  # what the driver calls this device (`torch.cuda.get_device_name()`)

    @property
    def device_kind(self) -> str:
        """What runtime factors are keyed by: measured on a CPU, or on a GPU-like accelerator."""
        return "cpu" if self.kind == "cpu" else "gpu"

    def peak_flops(self, dtype: str) -> tuple[float, str]:
        """FLOP/s for matmuls in `dtype`, and the dtype actually used (fp8 falls back to bf16 where absent, etc.)."""
        for candidate in (dtype, *_FALLBACK.get(dtype, ())):
            if candidate in self.tflops:
                return self.tflops[candidate] * 1e12, candidate
        raise HardwareError(
            f"{self.name}: no matrix throughput for {dtype} or a fallback; known: {', '.join(self.tflops)}"
        )


# Where a device has no unit for a dtype, the runtime runs it on the next one (fp8 weights dequantized to bf16 ...).
_FALLBACK = {
    "fp8": ("bf16", "fp16", "fp32"),
    "int8": ("bf16", "fp16", "fp32"),
    "bf16": ("fp16", "fp32"),
    "fp16": ("bf16", "fp32"),
    "tf32": ("fp32",),
}


class HardwareError(ValueError):
    """An unknown device name or a table entry that cannot serve; the message names the fix."""


@cache
def table(path: Path = TABLE) -> dict[str, Hardware]:
    raw = yaml.safe_load(path.read_text())
    rows = {name: Hardware(name=name, **entry) for name, entry in raw.items()}
    seen: dict[str, str] = {}
    for name, row in rows.items():
        for device in map(_device_key, row.device_names):
            if device in seen:
                raise HardwareError(
                    f"{path}: device name {device!r} is listed by both {seen[device]} and {name}; keep it in one row"
                )
            seen[device] = name
    return rows


def _device_key(device_name: str) -> str:
    return " ".join(device_name.split()).lower()


def row_for_device(device_name: str) -> str | None:
    """The table row of the device the driver names `device_name` (`torch.cuda.get_device_name()`), or None.

    Matched whole, case and spacing aside, never by a part of the name: "NVIDIA H200 NVL", an H100's MIG slice or
    a 40 GB A100 would otherwise take a row with other figures, and a prediction from the wrong row is worse than
    none.
    """
    key = _device_key(device_name)
    return next((name for name, row in table().items() if key in map(_device_key, row.device_names)), None)


def hardware(name: str, *, threads: int | None = None) -> Hardware:
    """A table entry by name, or `this-host` measured by the bandwidth and matmul probes (cached per host)."""
    if name == THIS_HOST:
        return this_host(threads)
    check_name(name)
    return table()[name.lower()]


def check_name(name: str) -> None:
    """Refuse an unknown device name without probing this host."""
    if name != THIS_HOST and name.lower() not in table():
        raise HardwareError(f"--hardware {name!r}: unknown; known: {', '.join([*sorted(table()), THIS_HOST])}")


def this_host(threads: int | None = None) -> Hardware:
    """This machine as the probes measured it (CPU; the first call measures, later ones read the cache)."""
    import psutil

    from pipeline.host import cpu_model, default_threads, host_bandwidth, host_matmul_flops

    n = threads or default_threads()
    return Hardware(
        name=THIS_HOST,
        kind="cpu",
        memory_gb=psutil.virtual_memory().total / 1e9,
        bandwidth_gb_s=host_bandwidth("cpu", n),
        tflops={"fp32": host_matmul_flops("cpu", n, "float32") / 1e12},
        source=f"measured on this host ({cpu_model()}, {n} threads): bandwidth and fp32 matmul probes",
    )
