"""Recipe schema: what to build and how to measure it. Knows nothing of torch, MLflow, the methods or the
runtimes (`pipeline.variants.plan.check_recipe` checks method names and params against their registry,
`pipeline.runtime.check_runtime_names` runtime names and what each runtime's artifact format can build).

Every error a user can fix is raised as `RecipeError` with a one-line message naming the file, the
field and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config.loader import RecipeError, format_validation_error, read_yaml
from pipeline.config.schema import StrictModel, positive_levels
from pipeline.config.serve import ServeSpec
from pipeline.env import DEFAULT_TRACKING_URI, MMLU_DIR_ENV
from pipeline.env import tracking_uri as resolve_tracking_uri


class ModelSpec(StrictModel):
    name: str = Field(description="label used in tables and MLflow run names")
    source: str = Field(description="hub id, local dir, path to a .gguf, or a bundled model name")
    role: Literal["candidate", "reference"] = "candidate"
    revision: str | None = Field(None, description="hub revision (commit or tag) to pin")
    trust_remote_code: bool = False
    allow_pickle: bool = Field(False, description="allow .bin (pickle) checkpoints; safetensors only by default")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dense compute dtype (fp32 on CPU: bf16 prefill is ~7x slower there)"
    )

    @model_validator(mode="after")
    def _remote_code_needs_revision(self) -> ModelSpec:
        if self.trust_remote_code and not self.revision:
            raise ValueError(
                "trust_remote_code: true needs a pinned `revision` (a commit hash) so the code cannot change"
            )
        return self


class MethodStep(StrictModel):
    method: str
    params: dict[str, Any] = Field(default_factory=dict)


class VariantSpec(StrictModel):
    """One compression variant: a single `method` + `params`, or an ordered list of `steps`."""

    name: str
    method: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    steps: list[MethodStep] | None = None
    runtime: str | None = Field(None, description="runtime this variant is measured on; null = the recipe's `runtime`")

    @model_validator(mode="after")
    def _one_form(self) -> VariantSpec:
        if (self.method is None) == (self.steps is None):
            raise ValueError("give either `method` (+ `params`) or `steps: [{method, params}, ...]`, not both")
        if self.steps is not None and not self.steps:
            raise ValueError("`steps` is empty: list at least one {method, params}")
        return self

    @property
    def pipeline_steps(self) -> list[MethodStep]:
        if self.steps is not None:
            return list(self.steps)
        return [MethodStep(method=self.method or "none", params=self.params)]

    @property
    def unmodified(self) -> bool:
        """Every step is `none`: the model as published."""
        return all(s.method == "none" for s in self.pipeline_steps)

    @property
    def last_method(self) -> str:
        """The last step that changes the model, "none" for an unmodified variant (what decides its stored form)."""
        return next((s.method for s in reversed(self.pipeline_steps) if s.method != "none"), "none")


class SampleSpec(StrictModel):
    """A seeded random sample of MMLU's test questions: a fixed number stratified by subject
    (`pipeline.data.sampling.sample_questions`), or `auto`: the questions in one seeded random order, scored in
    looks of `step`, 2 x `step`, ... up to `max`, stopping when the anytime-valid paired test against the
    unmodified base decides (`pipeline.verdict.sequential`)."""

    questions: int | Literal["auto"] = Field(
        description="questions in all (every selected subject gets >= 1, the rest in proportion to its size), or auto"
    )
    seed: int = Field(
        0, description="the same seed picks the same questions for every variant (paired comparisons stay paired)"
    )
    max: int | None = Field(
        None, ge=1, description="auto: the most questions a run scores (the base and references score this many)"
    )
    step: int = Field(100, ge=1, description="auto: questions in the first look; each look doubles it")
    delta_points: float = Field(
        1.0,
        ge=0,
        lt=100,
        description="auto: the drop vs the base to decide on (the gate policy's max_mmlu_drop_points)",
    )
    confidence: float = Field(
        0.95, ge=0.5, lt=1.0, description="auto: the test's confidence (the gate policy's confidence)"
    )

    @property
    def sequential(self) -> bool:
        return self.questions == "auto"

    @model_validator(mode="after")
    def _auto_fields(self) -> SampleSpec:
        if not self.sequential and self.questions < 1:
            raise ValueError("questions: must be >= 1 (questions in all), or auto")
        if self.sequential and self.max is None:
            raise ValueError("questions: auto needs `max` (the most questions a run may score), e.g. max: 2000")
        if not self.sequential and self.max is not None:
            raise ValueError("`max` is for questions: auto; a fixed sample scores exactly `questions`")
        return self

    def key_fields(self) -> dict[str, Any]:
        """The resume key: a fixed sample is its size and seed (runs keyed before `auto` existed stay valid)."""
        return self.model_dump() if self.sequential else {"questions": self.questions, "seed": self.seed}


class EvalSpec(StrictModel):
    num_fewshot: Literal[0, 5] = 5
    subjects: list[str] | Literal["all"] = "all"
    limit_per_subject: int | None = Field(None, description="first N test rows of each subject; null = all")
    sample: SampleSpec | None = Field(
        None, description="a random sample stratified by subject instead of the first N per subject"
    )
    batch_size: int = Field(8, ge=1, description="CUDA only: CPU scores one sequence at a time (last positions only)")
    data_dir: str | None = Field(
        None, description=f"MMLU JSONL dir; else ${MMLU_DIR_ENV}; else the copy shipped in the package"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    seed: int = 1234

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        # Caught here, not in every child: `gpu` would validate and then fail each run.
        if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v):
            return v
        raise ValueError("use one of: auto, cpu, cuda, cuda:N (N = a GPU index)")

    def key_fields(self, device: str | None) -> dict[str, Any]:
        """What of this section decides the scores on the resolved `device`: CPU scoring ignores `batch_size`
        (one sequence at a time, `pipeline.runtime.transformers`), so it is no part of the resume key there."""
        fields = self.model_dump()
        if device == "cpu":
            fields.pop("batch_size")
        if self.sample is None:
            fields.pop("sample")  # keys of runs from before `sample` existed stay valid
        else:
            fields["sample"] = self.sample.key_fields()
        return fields

    @model_validator(mode="after")
    def _one_subset(self) -> EvalSpec:
        if self.sample is not None and self.limit_per_subject is not None:
            raise ValueError("give `limit_per_subject` (first N per subject) or `sample` (a random sample), not both")
        return self

    @field_validator("limit_per_subject")
    @classmethod
    def _positive_limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1 (or null for every question)")
        return v


class SpeedSpec(StrictModel):
    enabled: bool = True
    prompt_tokens: int = Field(128, ge=1)
    new_tokens: int = Field(32, ge=2)
    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    warmup: int = Field(1, ge=0)
    repeats: int = Field(3, ge=1)
    threads: int | None = Field(None, ge=1, description="torch threads; null = all cores")
    scenario: Literal["single-stream", "server", "offline"] | None = Field(
        None,
        description="MLPerf scenario: single-stream = batch 1; server = batch sweep (batch_sizes, default 1,4,16,64 "
        "where memory allows); offline = the largest batch that fits (<= max_batch); null = batch_sizes as listed",
    )
    prompt_lengths: list[int] | None = Field(None, description="sweep of prompt lengths; null = [prompt_tokens]")
    max_batch: int = Field(256, ge=1, description="largest batch the offline scenario tries")
    compile: bool = Field(False, description="torch.compile the decode step (CUDA: reduce-overhead, CUDA graphs)")
    static_cache: bool | None = Field(None, description="static KV cache; null = only when compile is on")
    target_hardware: str | None = Field(
        None,
        description="a device of `shrinkgate predict` (h100-sxm, l4, ...): each run also logs its predicted decode tok/s, "
        "TPOT and TTFT there (predicted_* metrics; compare shows them apart, marked predicted)",
    )

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        return positive_levels(v, "batch size")

    @field_validator("prompt_lengths")
    @classmethod
    def _prompt_lengths(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(n < 1 for n in v)):
            raise ValueError("list at least one prompt length, each >= 1 (or null for prompt_tokens)")
        return sorted(set(v)) if v is not None else None


class TrackingSpec(StrictModel):
    uri: str = DEFAULT_TRACKING_URI
    experiment: str | None = Field(None, description="MLflow experiment; default: the recipe name")


class ResourcesSpec(StrictModel):
    """What one model x variant task asks of a Ray cluster (`run --executor ray`)."""

    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    memory_gb: float | None = Field(None, gt=0)


class Recipe(StrictModel):
    name: str
    runtime: str = Field(
        "transformers",
        description="runtime every variant is measured on unless it names its own `runtime` (transformers, llama.cpp, openai)",
    )
    models: list[ModelSpec]
    variants: list[VariantSpec] = Field(default_factory=lambda: [VariantSpec(name="none", method="none")])
    eval: EvalSpec = Field(default_factory=EvalSpec)
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    serve: ServeSpec | None = Field(None, description="the server `runtime: openai` measures")

    @field_validator("variants")
    @classmethod
    def _some_variants(cls, v: list[VariantSpec]) -> list[VariantSpec]:
        if not v:
            raise ValueError("list at least one variant, or leave `variants` out to evaluate each model as published")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        for kind, names in (("models", [m.name for m in self.models]), ("variants", [v.name for v in self.variants])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique; repeated: {', '.join(dupes)}")
        if not self.models:
            raise ValueError("list at least one model")
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def runtime_of(self, variant: VariantSpec) -> str:
        return variant.runtime or self.runtime

    @property
    def runtimes(self) -> list[str]:
        """Every runtime some variant is measured on, the recipe's own first."""
        names = [self.runtime_of(v) for v in self.variants]
        return sorted(set(names), key=lambda n: (n != self.runtime, names.index(n)))


_UNKNOWN_RECIPE_KEY = "remove it (unknown key; check the spelling against the recipe reference in docs/recipes.md)"


def parse_recipe(doc: Any, path: str | Path = "<recipe>") -> Recipe:
    if not isinstance(doc, dict):
        raise RecipeError(
            f"{path}: the recipe must be a YAML mapping -> give the keys name, models, variants, eval, speed, tracking"
        )
    try:
        recipe = Recipe.model_validate(doc)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(path, exc, _UNKNOWN_RECIPE_KEY)) from None
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(read_yaml(path, "recipe", "recipes/"), path)


def apply_overrides(
    recipe: Recipe,
    *,
    limit_per_subject: int | None = None,
    sample_questions: int | None = None,
    only: list[str] | None = None,
    tracking_uri: str | None = None,
) -> Recipe:
    """CLI overrides produce a new validated recipe (recipes are frozen).

    Only what the file set is re-validated (`exclude_unset`): a default must stay a default, e.g.
    `scenario: server` sweeps its own batch sizes only while `speed.batch_sizes` is not given. The store is
    `tracking_uri`, else the recipe's `tracking.uri`, else `$MLFLOW_TRACKING_URI`, else the local sqlite store.
    """
    data = recipe.model_dump(exclude_unset=True)
    if limit_per_subject is not None:
        if limit_per_subject < 1:
            raise RecipeError("--limit-per-subject: must be >= 1")
        if sample_questions is not None:
            raise RecipeError(
                "--limit-per-subject and --sample: give one (first N per subject, or a random sample of N)"
            )
        data.setdefault("eval", {})["limit_per_subject"] = limit_per_subject
        data["eval"].pop("sample", None)
    if sample_questions is not None:
        if sample_questions < 1:
            raise RecipeError("--sample: must be >= 1 (questions in all)")
        seed = recipe.eval.sample.seed if recipe.eval.sample else 0
        data.setdefault("eval", {})["sample"] = {"questions": sample_questions, "seed": seed}
        data["eval"].pop("limit_per_subject", None)
    if only:
        known = [v.name for v in recipe.variants]
        unknown = [o for o in only if o not in known]
        if unknown:
            raise RecipeError(f"--only: unknown variant(s) {', '.join(unknown)}; the recipe has: {', '.join(known)}")
        data["variants"] = [v.model_dump(exclude_unset=True) for v in recipe.variants if v.name in only]
    tracking = data.setdefault("tracking", {})
    tracking["uri"] = resolve_tracking_uri(tracking_uri or tracking.get("uri"))
    return Recipe.model_validate(data)
