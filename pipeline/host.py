"""Host facts, read once: CPU flags and model (/proc/cpuinfo), usable threads, load, and the measured peaks
(memory bandwidth, STREAM-like, and matmul FLOP/s), cached per host. A leaf: `predict` and `runtime` both read it.
torch is imported only by the probes and the cache key, so the facts that need no probe load no torch.

Datasheet numbers are never used: MBU is achieved bytes/s over what this host really moved in a
bandwidth probe. Probes take a second or two, so results are cached in
`~/.cache/shrinkgate/host.json` (or `$SHRINKGATE_HOST_CACHE`) keyed by hostname, device model,
thread count and torch version; pass `refresh=True` to measure again.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    import torch

CACHE_ENV = "SHRINKGATE_HOST_CACHE"
_GPU_BUFFER = 1 * 2**30
# CPU probe buffers (three of them: a, b, c). Each wants 8x the last-level cache sysfs reports so
# the stream runs from DRAM, but a VM's sysfs can report a huge LLC (480 MiB seen: 8x that, times
# three buffers, is 11 GiB of RSS on a fresh host), so the plan is bounded whatever the LLC says:
# - floor 256 MiB per buffer: above the L3 a few threads can use on current server parts (per-CCD
#   L3 <= 96 MiB on Genoa-X). A 2-vCPU Xeon VM whose sysfs claims 260 MiB read 52 GB/s at 64 MiB,
#   37 at 128 MiB (partly cached) and a flat ~29 GB/s from 256 MiB to 2 GiB: DRAM from 256 up;
# - cap 1 GiB for all three buffers (341 MiB each): above the floor with margin, below the
#   <= 1.1 GB models the quickstart loads, and within noise of 2 GiB buffers on that VM;
# - at most 1/8 of available memory in all, so the probe never crowds out the model it serves; on
#   a small host this wins over the floor (a cache-inflated figure beats an OOM kill), down to an
#   absolute 16 MiB per buffer. The plan and what bound it are recorded in the probe's result.
_CPU_BUFFERS = 3
_MIN_CPU_BUFFER = 256 * 2**20  # bytes per buffer
_MAX_CPU_PROBE_TOTAL = 1 * 2**30  # bytes, all buffers together
_AVAILABLE_FRACTION = 1 / 8  # of psutil's available memory, all buffers together
_TINY_CPU_BUFFER = 16 * 2**20  # bytes per buffer, last resort on a starved host


def cache_path() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "shrinkgate" / "host.json"


def default_threads() -> int:
    """Cores this process may run on (affinity-aware), the meaning of `threads: null`."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpuinfo(field: str) -> str | None:
    """The first CPU's `field` in /proc/cpuinfo (None where it cannot be read: not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read): hosts here differ in AVX-512 / AMX."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cuda_index(device: str) -> int:
    import torch

    return (torch.device(device).index or 0) if device.startswith("cuda") else 0


def device_model(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(_cuda_index(device))
    return cpu_model()


def host_key(device: str, threads: int) -> str:
    import torch

    kind = "cuda" if device.startswith("cuda") else "cpu"
    return f"{socket.gethostname()}|{kind}:{device_model(device)}|threads={threads}|torch={torch.__version__}"


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _last_level_cache_bytes() -> int:
    """Largest CPU cache from sysfs (0 when unknown)."""
    best = 0
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size_file.read_text().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return best


def _available_memory_bytes() -> int | None:
    try:
        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - an unreadable meminfo leaves only the fixed cap
        return None


def cpu_probe_plan() -> dict[str, Any]:
    """Bytes per CPU probe buffer and which bound set them (see the constants' comment)."""
    llc = _last_level_cache_bytes()
    avail = _available_memory_bytes()
    want, limit = (8 * llc, "llc") if 8 * llc > _MIN_CPU_BUFFER else (_MIN_CPU_BUFFER, "floor")
    if want > _MAX_CPU_PROBE_TOTAL // _CPU_BUFFERS:
        want, limit = _MAX_CPU_PROBE_TOTAL // _CPU_BUFFERS, "cap"
    if avail is not None and want > avail * _AVAILABLE_FRACTION / _CPU_BUFFERS:
        want, limit = int(avail * _AVAILABLE_FRACTION / _CPU_BUFFERS), "available"
    if want < _TINY_CPU_BUFFER:
        want, limit = _TINY_CPU_BUFFER, "tiny"
    return {
        "buffer_bytes": want // 4096 * 4096,  # whole pages of float32
        "buffer_limit": limit,
        "llc_mb": llc / 2**20,
        "available_mb": None if avail is None else avail / 2**20,
    }


# ---------------------------------------------------------------------------------------------
# Cache file
# ---------------------------------------------------------------------------------------------


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)  # atomic: concurrent readers never see half a file


def _cached(
    key: str, field: str, value: str, measure: Callable[[], dict[str, Any]], refresh: bool, path: Path | None
) -> dict[str, Any]:
    """The cached probe `field` of host `key`, measured when missing or on `refresh`.

    A peak is a property of the hardware; a lower reading only means the host was busy. So a
    refresh keeps whichever of the old and new probes has the higher `value`.
    """
    path = path or cache_path()
    old = _read_cache(path).get(key, {}).get(field)
    if old is not None and not refresh:
        return old
    load = load_average()  # before the probe: the probe's own threads would count otherwise
    new = {**measure(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_avg": load}
    best = old if old is not None and old.get(value, 0) >= new[value] else new
    data = _read_cache(path)  # re-read: another process may have written other keys meanwhile
    data.setdefault(key, {})[field] = best
    _write_cache(path, data)
    return best


class _Threads:
    """Fix torch's intra-op threads for a block and restore them after."""

    def __init__(self, n: int) -> None:
        import torch

        self.torch, self.n, self.prev = torch, n, torch.get_num_threads()

    def __enter__(self) -> None:
        self.torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        self.torch.set_num_threads(self.prev)


# ---------------------------------------------------------------------------------------------
# Bandwidth
# ---------------------------------------------------------------------------------------------


def _best_rate(fn: Callable[[], Any], nbytes: int, reps: int, timed: Callable[[Callable[[], Any]], float]) -> float:
    fn()  # first touch / page faults / lazy init are not bandwidth
    return max(nbytes / timed(fn) for _ in range(reps))  # STREAM reports the best repeat


def _host_seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) * 1e-9


def _cuda_seconds(fn: Callable[[], Any]) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


def probe_bandwidth(device: str, threads: int, buffer_bytes: int | None = None, reps: int = 7) -> dict[str, Any]:
    """STREAM-style copy (read + write) and triad (2 reads + 1 write), plus a read-only sum.

    Bytes counted are bytes read + written by the kernel (STREAM's convention). The peak is the best
    of the three: decode mostly reads, so a read-only pass is as fair a ceiling as copy or triad.
    Three buffers of `buffer_bytes` are allocated; on CPU the default size comes from
    `cpu_probe_plan()` (bounded by a fixed cap and by available memory, whatever the LLC reports),
    and the result records it (`buffer_mb`, `buffer_limit`, `llc_mb`, `available_mb`).
    """
    import torch

    is_cuda = device.startswith("cuda")
    plan: dict[str, Any] = {"buffer_limit": "explicit"}
    if buffer_bytes is None and is_cuda:
        buffer_bytes, plan = _GPU_BUFFER, {"buffer_limit": "gpu"}
    elif buffer_bytes is None:
        plan = cpu_probe_plan()
        buffer_bytes = plan.pop("buffer_bytes")
    n = buffer_bytes // 4
    timed = _cuda_seconds if is_cuda else _host_seconds
    with _Threads(threads), torch.inference_mode():
        a = torch.empty(n, dtype=torch.float32, device=device)
        b = torch.rand(n, dtype=torch.float32, device=device)
        c = torch.rand(n, dtype=torch.float32, device=device)
        rates = {
            "copy": _best_rate(lambda: a.copy_(b), 2 * n * 4, reps, timed),
            "triad": _best_rate(lambda: torch.add(b, c, alpha=3.0, out=a), 3 * n * 4, reps, timed),
            "read": _best_rate(lambda: b.sum(), n * 4, reps, timed),
        }
    gb = {k: v / 1e9 for k, v in rates.items()}
    return {
        "bandwidth_gb_s": max(gb.values()),
        "probes_gb_s": gb,
        "buffer_mb": buffer_bytes / 2**20,
        "buffers": _CPU_BUFFERS,  # a, b, c below (on cuda too)
        **plan,
        "method": "cuda events, device-to-device" if is_cuda else "perf_counter_ns, DRAM-sized buffers",
    }


def bandwidth_probe(
    device: str = "cpu",
    threads: int | None = None,
    *,
    refresh: bool = False,
    path: Path | None = None,
    buffer_bytes: int | None = None,
) -> dict[str, Any]:
    """The cached bandwidth probe record (GB/s per kernel, buffer size, when, host load at the time).
    `buffer_bytes` overrides the planned buffer size of a new probe (a dry run's quick, cache-sized reading)."""
    n = threads or default_threads()
    measure = lambda: probe_bandwidth(device, n, buffer_bytes=buffer_bytes)  # noqa: E731
    return _cached(host_key(device, n), "bandwidth", "bandwidth_gb_s", measure, refresh, path)


def host_bandwidth(
    device: str = "cpu", threads: int | None = None, *, refresh: bool = False, path: Path | None = None
) -> float:
    """Measured peak memory bandwidth (GB/s) of `device` at `threads`, cached per host."""
    return float(bandwidth_probe(device, threads, refresh=refresh, path=path)["bandwidth_gb_s"])


# ---------------------------------------------------------------------------------------------
# Matmul peak
# ---------------------------------------------------------------------------------------------


def probe_matmul(
    device: str, threads: int, dtype: torch.dtype, size: int | None = None, reps: int = 5
) -> dict[str, Any]:
    """Best FLOP/s of a square matmul (2 n^3 FLOPs) in `dtype`."""
    import torch

    is_cuda = device.startswith("cuda")
    size = size or (8192 if is_cuda else 1024)
    timed = _cuda_seconds if is_cuda else _host_seconds
    with _Threads(threads), torch.inference_mode():
        x = torch.randn(size, size, device=device).to(dtype)
        y = torch.randn(size, size, device=device).to(dtype)
        rate = _best_rate(lambda: x @ y, 2 * size**3, reps, timed)
    return {"flops": rate, "size": size, "dtype": str(dtype).removeprefix("torch.")}


def host_matmul_flops(
    device: str = "cpu",
    threads: int | None = None,
    dtype: torch.dtype | str = "float32",
    *,
    refresh: bool = False,
    path: Path | None = None,
) -> float:
    """Measured matmul peak (FLOP/s) of `device` in `dtype`, cached per host; the MFU denominator."""
    import torch

    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    n = threads or default_threads()
    field = f"matmul_{str(dt).removeprefix('torch.')}"
    entry = _cached(host_key(device, n), field, "flops", lambda: probe_matmul(device, n, dt), refresh, path)
    return float(entry["flops"])
