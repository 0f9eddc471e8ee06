"""recipe -> plan: the work items a recipe asks for, and the checks that can fail before a model loads.

`check_recipe` holds the recipe's method steps against the method registry (config knows no methods; the
runtimes a recipe names are `pipeline.runtime.check_runtimes`'); `preflight` adds the MMLU data, the device and
each model source; `check_variants_fit` reads each model's config (config.json or the GGUF header) and lets every
step, and the artifact format it is built into, refuse a shape it cannot handle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.recipe import ModelSpec, Recipe, RecipeError, VariantSpec
from pipeline.methods import validate_steps, validate_variant

AS_PUBLISHED = VariantSpec(name="none", method="none")


@dataclass(frozen=True)
class WorkItem:
    model: ModelSpec
    variant: VariantSpec
    runtime: str = "transformers"  # the runtime it is measured on

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.variant.name}"


def as_published(runtime: str, recipe: Recipe) -> VariantSpec:
    """The model as published, measured on `runtime`; named `none@<runtime>` off the recipe's own runtime."""
    if runtime == recipe.runtime:
        return AS_PUBLISHED
    return VariantSpec(name=f"none@{runtime}", method="none", runtime=runtime)


def plan(recipe: Recipe) -> list[WorkItem]:
    """Candidates get every variant; references are evaluated as published, on every runtime a variant uses,
    so each comparison is like with like (same runtime, same host). Off the recipe's own runtime a candidate
    also gets its as-published base (`none@<runtime>`) unless a variant already measures it there."""
    items: list[WorkItem] = []
    for model in recipe.models:
        if model.role == "candidate":
            items += [WorkItem(model, v, recipe.runtime_of(v)) for v in recipe.variants]
            for rt in recipe.runtimes:
                has_base = any(recipe.runtime_of(v) == rt and v.unmodified for v in recipe.variants)
                if rt != recipe.runtime and not has_base:
                    items.append(WorkItem(model, as_published(rt, recipe), rt))
        else:
            items += [WorkItem(model, as_published(rt, recipe), rt) for rt in recipe.runtimes]
    return items


def check_recipe(recipe: Recipe, path: str | Path = "<recipe>") -> Recipe:
    """Every variant's method names, params and step order against the registry; RecipeError names the field."""
    for i, variant in enumerate(recipe.variants):
        for j, step in enumerate(variant.pipeline_steps):
            field = f"variants[{i}]" + (f".steps[{j}]" if variant.steps is not None else "")
            problem = validate_variant(step.method, step.params)
            if problem:
                raise RecipeError(f"{path}: field `{field}` ({variant.name}): {problem}")
        problem = validate_steps([(s.method, s.params) for s in variant.pipeline_steps])
        if problem:
            raise RecipeError(f"{path}: field `variants[{i}].steps` ({variant.name}): {problem}")
    return recipe


def preflight(recipe: Recipe) -> None:
    """What fails before any model loads: the MMLU data, the device, each model source (no download)."""
    from pipeline.data.mmlu import resolve_data
    from pipeline.data.sampling import sample_questions, sequential_order
    from pipeline.env import pick_device
    from pipeline.models import preflight as model_preflight

    data = resolve_data(recipe.eval)
    if recipe.eval.sample and recipe.eval.sample.sequential:
        sequential_order(data, recipe.eval.sample.seed)
    elif recipe.eval.sample:
        sample_questions(data, recipe.eval.sample.questions, recipe.eval.sample.seed)
    pick_device(recipe.eval.device)
    for model in recipe.models:
        model_preflight(model)


def check_variants_fit(
    recipe_path: str | Path, recipe: Recipe, items: list[WorkItem], formats: Mapping[str, str]
) -> None:
    """Each method's `check_model`, and the artifact format's, against each model's config (read from config.json
    or the GGUF header). `formats`: each runtime's artifact format (`pipeline.runtime.artifact_formats`)."""
    from pipeline.models.loader import read_config
    from pipeline.variants.artifact import check_variant_fits, needs_model_check
    from pipeline.variants.built import BUILDERS

    configs: dict[str, object] = {}
    for item in items:
        builder = BUILDERS.get(formats[item.runtime])
        if not needs_model_check(item.variant) and not builder.needs_config(item.model):
            continue
        if item.model.name not in configs:
            configs[item.model.name] = read_config(item.model)
        problem = check_variant_fits(item.variant, configs[item.model.name]) or builder.check_model(
            item.model, configs[item.model.name]
        )
        if problem:
            names = [v.name for v in recipe.variants]
            if item.variant.name in names:
                where = (
                    f"`variants[{names.index(item.variant.name)}]` ({item.variant.name}) on model `{item.model.name}`"
                )
            else:  # a model measured as published on a runtime the plan added (a reference, or `none@<runtime>`)
                where = (
                    f"`models[{recipe.models.index(item.model)}]` ({item.model.name}, as published on {item.runtime})"
                )
            raise RecipeError(f"{recipe_path}: field {where}: {problem}")
