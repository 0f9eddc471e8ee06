"""Decode speed at the memory wall: one harness, one small adapter per runtime, per-token timing.

    harness     `SpeedRun` (the point loop: plan, memory fit, offline step-down, skips, warnings, the one
                `SpeedPoint` construction) and the adapter contract (`DecodeAdapter`, `StepAdapter`)
    plan        which (batch, prompt length) points a spec asks for, and the prompt ids every runtime times
    timing      per-token marks of a decode loop and the statistics over repeats
    torch_adapter / measure   the transformers runtime: `TorchAdapter` and `measure_decode`
    command     `shrinkgate speed`: a published architecture with random weights, timed (imports rich lazily)

The llama.cpp and OpenAI-server adapters live beside their runtimes (`pipeline.runtime.llamacpp`, `.openai`).
"""

from typing import Any

from pipeline.runtime.speed.harness import DecodeAdapter, SpeedRun, StepAdapter
from pipeline.runtime.speed.plan import planned_batches, prompt_ids

__all__ = ["DecodeAdapter", "StepAdapter", "SpeedRun", "measure_decode", "planned_batches", "prompt_ids"]


def __getattr__(name: str) -> Any:
    # measure_decode imports torch: only when asked for, so the llama.cpp and server runtimes load without it
    if name == "measure_decode":
        from pipeline.runtime.speed.measure import measure_decode

        return measure_decode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
