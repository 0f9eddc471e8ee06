"""Decode speed at the memory wall: per-token timing, measured host peaks, roofline arithmetic.

Public API (the sweep and the CLI call these):
    measure_decode(model, tokenizer, spec, *, weight_bytes_per_token, device) -> SpeedResult
    host_bandwidth(device, threads) -> GB/s      host_matmul_flops(device, threads, dtype) -> FLOP/s
    roofline.ceiling_tok_s / mbu / kv_bytes_per_token / compute_bound_batch / crossover_batch
    command.speed_command(...) / command.print_table(results)   (imported lazily: rich, transformers)
"""

from pipeline.runtime.speed import roofline
from pipeline.runtime.speed.host import host_bandwidth, host_matmul_flops
from pipeline.runtime.speed.measure import measure_decode, planned_batches, prompt_ids
from pipeline.runtime.speed.roofline import ceiling_tok_s, compute_bound_batch, crossover_batch, kv_bytes_per_token, mbu

__all__ = [
    "ceiling_tok_s",
    "compute_bound_batch",
    "crossover_batch",
    "host_bandwidth",
    "host_matmul_flops",
    "kv_bytes_per_token",
    "mbu",
    "measure_decode",
    "planned_batches",
    "prompt_ids",
    "roofline",
]
