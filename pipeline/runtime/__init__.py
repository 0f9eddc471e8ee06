"""The engine seam: given a built artifact, score MMLU through lm-eval and run the decode loop.

Today transformers in-process; llama.cpp, vLLM and OpenAI-compatible servers plug in behind `Runtime`.
"""

from pipeline.runtime.base import Runtime, get_runtime

__all__ = ["Runtime", "get_runtime"]
