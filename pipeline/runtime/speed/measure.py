"""`measure_decode`: the transformers runtime's decode speed, the speed harness driving `TorchAdapter`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pipeline.host import default_threads
from pipeline.models import shapes
from pipeline.runtime.speed.harness import SpeedRun
from pipeline.runtime.speed.torch_adapter import TorchAdapter, compile_mode, kv_dtype
from pipeline.variants.observe import holds_compressed_layers

if TYPE_CHECKING:
    from pipeline.config.recipe import SpeedSpec
    from pipeline.results import SpeedPoint, SpeedResult
    from pipeline.runtime.speed.timing import Clock


def measure_decode(
    model: Any,
    tokenizer: Any,
    spec: SpeedSpec,
    *,
    weight_bytes_per_token: int,
    device: str,
    kernel: str = "",
    dense_fallback: bool = False,
    model_name: str = "",
    method: str = "",
    clock: Clock | None = None,
    bandwidth_gb_s: float | None = None,
    matmul_flops: float | None = None,
    seed: int = 0,
) -> SpeedResult:
    """Time greedy decode of `model` itself at every (prompt length, batch size) `spec` asks for.

    `weight_bytes_per_token` is what one decode step reads of the weights as the build observed them (the dense
    bytes where a compressed layer runs a dense matmul). Where the variant may run other than it is stored (a
    dense fallback, or compressed layers), one more timed step is profiled at every batch size, eager or
    compiled: that batch's observation replaces both for its points (a kernel may be picked by the number of
    rows; freezing may fold a dequantize into dense constants), and the result falls back if any batch did.
    `clock`, `bandwidth_gb_s` and `matmul_flops` are injectable (tests); by default the host's measured, cached
    peaks are used. A point that does not fit in memory is reported in `skipped`, not raised.
    """
    threads = spec.threads or default_threads()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # fixed for the whole measurement and reported
    try:
        model.eval()
        speed_run = SpeedRun(spec)
        dtype = kv_dtype(model)
        speed_run.probe_bandwidth(device, threads, bandwidth_gb_s)
        speed_run.probe_matmul(device, threads, dtype, matmul_flops)
        observe = dense_fallback or holds_compressed_layers(model)
        adapter = TorchAdapter(
            model, tokenizer, spec, device, weight_bytes_per_token, observe=observe, clock=clock, seed=seed
        )
        with adapter:
            speed_run.run(adapter)
        points = speed_run.points
        observed = [p for p in points if p.dense_fallback is not None]
        if observed:  # the timed steps themselves were profiled: they decide fallback and bytes read
            dense_fallback = any(p.dense_fallback for p in observed)
            weight_bytes_per_token = int(points[0].weight_bytes_read)
        fell = sorted({p.batch_size for p in observed if p.dense_fallback})
        if fell and len(fell) < len({p.batch_size for p in observed}):
            speed_run.warnings.append(
                f"kernel falls back to dense at batch {', '.join(map(str, fell))} ({kernel or 'dense matmul'}): those points are "
                "dense speeds, not compressed-kernel speeds"
            )
        elif dense_fallback:
            speed_run.warnings.append(
                f"kernel falls back to dense ({kernel or 'dense matmul'}): these are dense speeds, not compressed-kernel speeds"
            )
        cfg, nbytes = model.config, adapter.dtype_bytes
        dense_params = shapes.linear_params_per_token(cfg)
        compute_bound, crossover = speed_run.roofline_batches(
            lambda context: shapes.kv_bytes_at_context(cfg, context, nbytes),
            dense_params * nbytes if dense_params is not None else None,  # the unmodified model, dense in this dtype
        )
        return speed_run.result(
            device=device,
            threads=threads,
            timer=adapter.timer.name,
            kernel=kernel,
            dense_fallback=dense_fallback,
            compiled=spec.compile,
            compile_mode=compile_mode(spec.compile, device),
            kv_cache=adapter.kv_cache,
            compute_bound_batch=compute_bound,
            crossover_batch=crossover,
            weight_bytes_per_token=int(weight_bytes_per_token),
            dtype=str(dtype).removeprefix("torch."),
            model=model_name,
            method=method,
            kernel_observed=_by_batch(observed, "kernel_observed"),
            kernel_observed_ops=_by_batch(observed, "kernel_observed_ops"),
            layers=shapes.layer_count(cfg),
            head_params=shapes.head_params(cfg),
        )
    finally:
        torch.set_num_threads(prev_threads)


def _by_batch(points: list[SpeedPoint], attr: str) -> str:
    """One text when every observed batch size saw the same, else each text after the batch sizes that saw it."""
    groups: dict[str, list[int]] = {}
    for p in points:
        sizes = groups.setdefault(getattr(p, attr), [])
        if p.batch_size not in sizes:
            sizes.append(p.batch_size)
    if len(groups) <= 1:
        return next(iter(groups), "")
    return " | ".join(f"batch {', '.join(map(str, sizes))}: {text}" for text, sizes in groups.items())
