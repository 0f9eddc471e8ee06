"""recipe -> plan: the work items a recipe asks for, and every check that can fail before a model loads.

`check_recipe` holds the recipe's method steps against the method registry (config knows no methods);
`preflight` adds the MMLU data, the device and each model source; `check_variants_fit` reads each model's
config (config.json or the GGUF header) and lets every step refuse a shape it cannot handle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.recipe import ModelSpec, Recipe, RecipeError, load_recipe as load_schema, parse_recipe as parse_schema
from pipeline.config.recipe import VariantSpec
from pipeline.methods import Method, make_method, registry, validate_steps, validate_variant

AS_PUBLISHED = VariantSpec(name="none", method="none")


@dataclass(frozen=True)
class WorkItem:
    model: ModelSpec
    variant: VariantSpec

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.variant.name}"


def plan(recipe: Recipe) -> list[WorkItem]:
    """Candidates get every variant; references are evaluated as published."""
    items: list[WorkItem] = []
    for model in recipe.models:
        variants = recipe.variants if model.role == "candidate" else [AS_PUBLISHED]
        items += [WorkItem(model, v) for v in variants]
    return items


def content_key(recipe: Recipe, item: WorkItem, provenance_tags: dict[str, str], versions: dict[str, str]) -> str:
    """What determines a child's results; a FINISHED run with the same key can be reused on resume."""
    doc = {
        "model": item.model.model_dump(),
        "variant": item.variant.model_dump(),
        "eval": recipe.eval.model_dump(),
        "speed": recipe.speed.model_dump(),
        "provenance": provenance_tags,
        "versions": versions,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


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


def parse_recipe(doc: Any, path: str | Path = "<recipe>") -> Recipe:
    """Schema, then methods: the recipe a sweep can run."""
    return check_recipe(parse_schema(doc, path), path)


def load_recipe(path: str | Path) -> Recipe:
    return check_recipe(load_schema(path), path)


def preflight(recipe: Recipe) -> None:
    """What fails before any model loads: the MMLU data, the device, each model source (no download)."""
    from pipeline.data.mmlu import resolve_data
    from pipeline.env import pick_device
    from pipeline.models import preflight as model_preflight

    resolve_data(recipe.eval)
    pick_device(recipe.eval.device)
    for model in recipe.models:
        model_preflight(model)


def needs_model_check(variant: VariantSpec) -> bool:
    """Whether any step of the variant has a `check_model` (so reading the model's config is worth it)."""
    return any(registry()[s.method].check_model is not Method.check_model for s in variant.pipeline_steps)


def check_variant_fits(variant: VariantSpec, config: Any) -> str | None:
    """One-line reason a variant cannot be applied to a model with this config (shapes, group sizes), or None."""
    for step in variant.pipeline_steps:
        problem = make_method(step.method, step.params).check_model(config)
        if problem:
            return problem
    return None


def check_variants_fit(recipe_path: str | Path, recipe: Recipe, items: list[WorkItem]) -> None:
    """Each method's `check_model` against each model's config (read from config.json or the GGUF header)."""
    from pipeline.models.loader import read_config

    configs: dict[str, object] = {}
    for item in items:
        if not needs_model_check(item.variant):
            continue
        if item.model.name not in configs:
            configs[item.model.name] = read_config(item.model)
        problem = check_variant_fits(item.variant, configs[item.model.name])
        if problem:
            index = [v.name for v in recipe.variants].index(item.variant.name)
            raise RecipeError(f"{recipe_path}: field `variants[{index}]` ({item.variant.name}) on model `{item.model.name}`: {problem}")


def source_fingerprint(model: ModelSpec) -> str:
    """Cheap identity of a model source (no download, no conversion), for the resume key."""
    from pipeline.models.bundled import BUNDLED, package_version

    if model.source in BUNDLED:
        pkg = BUNDLED[model.source].package
        return f"bundled:{pkg}=={package_version(pkg)}"
    path = Path(model.source).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        return "local:" + ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return f"hub:{model.source}@{model.revision or 'main'}"


