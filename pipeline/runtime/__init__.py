"""The engine seam: given a built artifact, score MMLU through lm-eval and run the decode loop.

Today transformers in-process; llama.cpp and OpenAI-compatible servers plug in as one file each, named here.
"""

from pipeline.runtime.base import Runtime
from pipeline.runtime.transformers import TransformersRuntime

RUNTIMES: dict[str, type[Runtime]] = {TransformersRuntime.name: TransformersRuntime}


def get_runtime(name: str = "transformers") -> Runtime:
    try:
        return RUNTIMES[name]()
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; available: {', '.join(sorted(RUNTIMES))}") from None


__all__ = ["RUNTIMES", "Runtime", "get_runtime"]
