"""recipe -> plan: the work items a recipe asks for, and every check that can fail before a model loads.

`check_recipe` holds the recipe's method steps against the method registry (config knows no methods);
`preflight` adds the MMLU data, the device and each model source; `check_variants_fit` reads each model's
config (config.json or the GGUF header) and lets every step refuse a shape it cannot handle.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.recipe import ModelSpec, Recipe, RecipeError, load_recipe as load_schema, parse_recipe as parse_schema
from pipeline.config.recipe import RUNTIME_FORMATS, VariantSpec
from pipeline.data.mmlu import MMLUData, read_split, sha256_hex
from pipeline.methods import Method, make_method, registry, validate_steps, validate_variant

AS_PUBLISHED = VariantSpec(name="none", method="none")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class WorkItem:
    model: ModelSpec
    variant: VariantSpec
    runtime: str = "transformers"  # the engine it is measured on

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.variant.name}"


def as_published(runtime: str, recipe: Recipe) -> VariantSpec:
    """The model as published, measured on `runtime`; named `none@<runtime>` off the recipe's own runtime."""
    if runtime == recipe.runtime:
        return AS_PUBLISHED
    return VariantSpec(name=f"none@{runtime}", method="none", runtime=runtime)


def plan(recipe: Recipe) -> list[WorkItem]:
    """Candidates get every variant; references are evaluated as published, on every engine a variant uses,
    so each comparison is like with like (same engine, same host). Off the recipe's own runtime a candidate
    also gets its as-published base (`none@<runtime>`) unless a variant already measures it there."""
    items: list[WorkItem] = []
    for model in recipe.models:
        if model.role == "candidate":
            items += [WorkItem(model, v, recipe.runtime_of(v)) for v in recipe.variants]
            for rt in recipe.runtimes:
                has_base = any(recipe.runtime_of(v) == rt and is_unmodified(v) for v in recipe.variants)
                if rt != recipe.runtime and not has_base:
                    items.append(WorkItem(model, as_published(rt, recipe), rt))
        else:
            items += [WorkItem(model, as_published(rt, recipe), rt) for rt in recipe.runtimes]
    return items


def is_unmodified(variant: VariantSpec) -> bool:
    return all(s.method == "none" for s in variant.pipeline_steps)


@dataclass(frozen=True)
class KeyInputs:
    """What decides a child's results besides its recipe sections and model source. One key covers all of
    it: speed is only comparable on the same host, accuracy only from the same code and data, so a FINISHED
    run is reused only when every field matches."""

    host: dict[str, str]  # CPU model, GPU name, compute threads, device
    code: dict[str, str]  # shrinkgate version, git commit and uncommitted changes, library versions, runtime
    data: dict[str, str]  # MMLU origin, directory and sha256 of each split file (`data_fingerprint`)


def content_key(recipe: Recipe, item: WorkItem, source: str, inputs: KeyInputs) -> str:
    """What determines a child's results; a FINISHED run with the same key can be reused on resume.
    `source` is `source_fingerprint(item.model)`."""
    doc = {
        "model": item.model.model_dump(),
        "variant": item.variant.model_dump(),
        "runtime": item.runtime,
        "eval": recipe.eval.key_fields(inputs.host.get("device")),
        "speed": recipe.speed.model_dump(),
        "source": source,
        **({"serve": recipe.serve.model_dump()} if item.runtime == "openai" and recipe.serve is not None else {}),
        "host": inputs.host,
        "code": inputs.code,
        "data": inputs.data,
    }
    if recipe.eval.sample is not None and recipe.eval.sample.sequential:
        # look by look, how far a base scores depends on its variants and where a variant stops on its base (and
        # the references follow the bases): a run is the same result only within the same set of runs
        doc["lockstep"] = sorted(f"{i.label}@{i.runtime}={json.dumps(i.variant.model_dump(), sort_keys=True, default=str)}" for i in plan(recipe))
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def data_fingerprint(data: MMLUData) -> dict[str, str]:
    """Where the MMLU rows come from and the sha256 of each split file's uncompressed bytes."""
    if data.source == "hub":
        return {"origin": data.origin, "source": data.description}
    out = {"origin": data.origin, "dir": str(data.data_dir)}
    for split, path in sorted(data.files.items()):
        out[split] = sha256_hex(read_split(path))
    return out


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
        runtime = recipe.runtime_of(variant)
        problem = runtime_problem(variant, runtime, recipe.format_of(runtime))
        if problem:
            raise RecipeError(f"{path}: field `variants[{i}]` ({variant.name}): {problem}")
    return recipe


def runtime_problem(variant: VariantSpec, runtime: str, fmt: str | None = None) -> str | None:
    """Why `variant` cannot be built for `runtime`'s artifact format `fmt` (default: the runtime's own), or
    None. An engine-format method (a GGUF quantizer) needs that engine; off the torch format only dense steps
    (none, prune) can come before the export; a server that serves its own model takes only `none`."""
    fmt = fmt or RUNTIME_FORMATS[runtime]
    engines = {"torch": "transformers", "gguf": "llama.cpp"}
    if fmt == "none":
        if not is_unmodified(variant):
            return (
                f"runtime {runtime!r} with `serve.artifact: none` measures the model the server already serves, so only "
                "method `none`; set `serve.artifact: gguf` or `checkpoint` to serve what shrinkgate builds"
            )
        return None
    for step in variant.pipeline_steps:
        cls = registry()[step.method]
        if cls.engine_format is not None and cls.engine_format != fmt:
            return (
                f"method {step.method!r} writes a {cls.engine_format.upper()} file that runtime {runtime!r} cannot run; "
                f"set `runtime: {engines[cls.engine_format]}` on this variant (or at the top of the recipe)"
            )
        if fmt != "torch" and cls.engine_format is None and cls.kind == "quantize":
            return (
                f"method {step.method!r} quantizes inside transformers, which runtime {runtime!r} cannot load; "
                f"measure it on `runtime: transformers`, or use a {fmt.upper()} method (see `shrinkgate methods`)"
            )
    return None


def parse_recipe(doc: Any, path: str | Path = "<recipe>") -> Recipe:
    """Schema, then methods: the recipe a sweep can run."""
    return check_recipe(parse_schema(doc, path), path)


def load_recipe(path: str | Path) -> Recipe:
    return check_recipe(load_schema(path), path)


def preflight(recipe: Recipe) -> None:
    """What fails before any model loads: the MMLU data, the device, each model source (no download)."""
    from pipeline.data.mmlu import resolve_data, sample_questions, sequential_order
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
    from pipeline.models.loader import is_gguf_source, read_config

    configs: dict[str, object] = {}
    for item in items:
        converts = recipe.format_of(item.runtime) == "gguf" and not is_gguf_source(item.model)
        if not needs_model_check(item.variant) and not converts:
            continue
        if item.model.name not in configs:
            configs[item.model.name] = read_config(item.model)
        problem = check_variant_fits(item.variant, configs[item.model.name])
        if problem is None and converts:
            from pipeline.models.gguf_convert import unsupported_architecture

            problem = unsupported_architecture(configs[item.model.name])
        if problem:
            names = [v.name for v in recipe.variants]
            if item.variant.name in names:
                where = f"`variants[{names.index(item.variant.name)}]` ({item.variant.name}) on model `{item.model.name}`"
            else:  # a model measured as published on an engine the plan added (a reference, or `none@<runtime>`)
                where = f"`models[{recipe.models.index(item.model)}]` ({item.model.name}, as published on {item.runtime})"
            raise RecipeError(f"{recipe_path}: field {where}: {problem}")


def source_fingerprint(model: ModelSpec) -> str | None:
    """Cheap identity of a model source (no download, no conversion), for the resume key; None when a hub
    source's commit cannot be resolved (then nothing may be reused for it)."""
    from pipeline.models.bundled import BUNDLED, package_version

    if model.source in BUNDLED:
        pkg = BUNDLED[model.source].package
        return f"bundled:{pkg}=={package_version(pkg)}"
    path = Path(model.source).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        return "local:" + ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    commit = hub_commit(model.source, model.revision)
    return f"hub:{model.source}@{commit}" if commit else None


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision (a branch or tag moves) points at: asked of the hub when it answers, else
    the snapshot the local Hugging Face cache holds for it; None when neither knows."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    from pipeline.env import hub_reachable

    if hub_reachable():
        from huggingface_hub import HfApi

        try:
            sha = HfApi().model_info(repo_id, revision=revision, timeout=10).sha
            if sha:
                return sha
        except Exception:  # noqa: BLE001 - fall back to the cache; the load reports a real problem
            pass
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    # `.../snapshots/<commit>/config.json`: snapshot folders are named by commit
    return Path(cached).parent.name if isinstance(cached, str) else None


