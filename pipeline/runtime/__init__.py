"""The runtime seam: given what a build made, score MMLU through lm-eval and run the decode loop.

transformers and llama.cpp in-process, OpenAI-compatible servers over HTTP; each runtime one module, registered
in `RUNTIMES` (imported here so they exist). A recipe's runtime names and what each variant's artifact format
can build are checked here, above config and build, which know no runtimes.
"""

from typing import Any

from pipeline.config.recipe import Recipe, RecipeError
from pipeline.registry import RegistryError
from pipeline.runtime import llamacpp as _llamacpp  # noqa: F401 - registers llama.cpp
from pipeline.runtime import openai as _openai  # noqa: F401 - registers openai
from pipeline.runtime import transformers as _transformers  # noqa: F401 - registers transformers
from pipeline.runtime.base import RUNTIMES, Runtime
from pipeline.variants.built import BUILDERS


def runtime_class(name: str) -> type[Runtime[Any, Any]]:
    """The registered runtime `name` (RegistryError, one line naming the registered ones)."""
    return RUNTIMES.get(name)


def get_runtime(name: str = "transformers", recipe: Recipe | None = None) -> Runtime[Any, Any]:
    return runtime_class(name).for_recipe(recipe)


def artifact_formats(recipe: Recipe) -> dict[str, str]:
    """The artifact format each runtime of the recipe takes, by runtime name (names checked by `check_runtime_names`)."""
    return {name: get_runtime(name, recipe).artifact_format for name in recipe.runtimes}


def check_runtime_names(recipe: Recipe, path: str = "<recipe>") -> Recipe:
    """Whatever the host: every runtime the recipe names is registered, its own recipe sections are there, and each
    variant can be built in the format its runtime takes (RecipeError, one line naming the field)."""
    fields = [("runtime", recipe.runtime)] + [
        (f"variants[{i}].runtime", v.runtime) for i, v in enumerate(recipe.variants) if v.runtime
    ]
    for field, name in fields:
        try:
            runtime_class(name)
        except RegistryError as exc:
            raise RecipeError(f"{path}: field `{field}` (got {name!r}): {exc}") from None
    for name in recipe.runtimes:
        problem = runtime_class(name).check_sections(recipe)
        if problem:
            raise RecipeError(f"{path}: runtime {name!r}: {problem}")
    formats = artifact_formats(recipe)
    for i, variant in enumerate(recipe.variants):
        runtime = recipe.runtime_of(variant)
        problem = BUILDERS.get(formats[runtime]).problem(variant, runtime)
        if problem:
            raise RecipeError(f"{path}: field `variants[{i}]` ({variant.name}): {problem}")
    return recipe


def check_runtimes(recipe: Recipe, path: str = "<recipe>") -> None:
    """`check_runtime_names`, then each runtime here: installed, able to run the speed spec, its server section
    sound (RecipeError, one line). Before any model loads."""
    check_runtime_names(recipe, path)
    for name in recipe.runtimes:
        problem = runtime_class(name).check_recipe(recipe)
        if problem:
            raise RecipeError(f"{path}: runtime {name!r}: {problem}")


__all__ = [
    "RUNTIMES",
    "Runtime",
    "artifact_formats",
    "check_runtime_names",
    "check_runtimes",
    "get_runtime",
    "runtime_class",
]
