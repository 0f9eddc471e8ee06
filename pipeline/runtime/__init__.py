"""The engine seam: given a built artifact, score MMLU through lm-eval and run the decode loop.

transformers and llama.cpp in-process, OpenAI-compatible servers over HTTP; each engine one module, named here.
"""

from pipeline.config.recipe import Recipe, RecipeError
from pipeline.runtime.base import Runtime
from pipeline.runtime.llamacpp import LlamaCppRuntime
from pipeline.runtime.openai import OpenAIRuntime
from pipeline.runtime.transformers import TransformersRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    TransformersRuntime.name: TransformersRuntime,
    LlamaCppRuntime.name: LlamaCppRuntime,
    OpenAIRuntime.name: OpenAIRuntime,
}


def check_runtimes(recipe: Recipe, path: str = "<recipe>") -> None:
    """Every engine the recipe's variants use, checked before any model loads (RecipeError, one line)."""
    for name in recipe.runtimes:
        problem = RUNTIMES[name].check_recipe(recipe)
        if problem:
            raise RecipeError(f"{path}: runtime {name!r}: {problem}")


def get_runtime(name: str = "transformers", recipe: Recipe | None = None) -> Runtime:
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; available: {', '.join(sorted(RUNTIMES))}") from None
    return cls.for_recipe(recipe)


__all__ = ["RUNTIMES", "Runtime", "check_runtimes", "get_runtime"]
