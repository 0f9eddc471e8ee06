"""Gate policy schema (YAML). Errors are one line: `FILE: field X: problem -> fix` (as `RecipeError`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import metrics as M
from pipeline.config.loader import RecipeError, format_validation_error, read_yaml

ALIAS = "gate-passed"


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_mmlu_drop_points: float = Field(
        ge=0,
        description="largest MMLU drop vs the unmodified candidate, in points, that passes (upper confidence bound)",
    )
    confidence: float = Field(0.95, ge=0.5, lt=1.0, description="one-sided confidence of the bounds")
    must_not_be_dominated: bool = Field(
        True, description="fail a variant that another record dominates on any `dominance_axes`"
    )
    dominance_axes: list[str] = Field(
        default_factory=lambda: [M.DECODE_TOK_S],
        description="decode_tok_s, decode_tok_s_bs<N>, weight_bytes, predicted_decode_tok_s[_bs<N>]",
    )
    use_predicted_axes: bool = Field(
        False, description="allow predicted_* axes (a roofline prediction for speed.target_hardware, not a measurement)"
    )
    dominated_by: Literal["any", "references"] = Field("any", description="which records may dominate a gated variant")
    speed_tolerance: float = Field(
        0.03, ge=0, lt=1, description="relative: speeds within this ratio count as equal (timer noise)"
    )
    min_decode_tok_s: float | None = Field(None, gt=0, description="batch-1 decode tok/s floor")
    max_weight_bytes: float | None = Field(None, gt=0)
    max_kl_vs_base: float | None = Field(None, ge=0)
    variants: list[str] | None = Field(
        None, description="gate only these (variant name or model/variant); default every candidate variant"
    )
    bootstrap_samples: int = Field(10_000, ge=1000)
    seed: int = 0
    register_model: bool = Field(True, description="register passing variants in the MLflow Model Registry")
    registry_name: str = Field(
        "shrinkgate.{model}.{variant}", description="registered model name; {experiment} {model} {variant}"
    )
    alias: str = ALIAS

    @field_validator("dominance_axes")
    @classmethod
    def _axes(cls, v: list[str]) -> list[str]:
        for name in v:
            if name != M.WEIGHT_BYTES and M.speed_axis_batch(name) is None and M.predicted_axis_batch(name) is None:
                raise ValueError(
                    f"unknown axis {name!r} -> use decode_tok_s, decode_tok_s_bs<N>, weight_bytes or predicted_decode_tok_s[_bs<N>]"
                )
        return v

    @model_validator(mode="after")
    def _predicted_axes_need_consent(self) -> Policy:
        predicted = [a for a in self.dominance_axes if M.predicted_axis_batch(a) is not None]
        if predicted and not self.use_predicted_axes:
            raise ValueError(
                f"dominance_axes: {', '.join(predicted)} is a prediction, not a measurement -> set use_predicted_axes: true to gate on it"
            )
        return self

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError(
                "empty list -> list at least one variant, or remove the key to gate every candidate variant"
            )
        return v

    @field_validator("registry_name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            v.format(experiment="e", model="m", variant="v")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad template ({exc}) -> use only {{experiment}}, {{model}}, {{variant}}") from None
        return v


_FIELDS = ", ".join(Policy.model_fields)


def parse_policy(doc: Any, path: str | Path = "<policy>") -> Policy:
    if not isinstance(doc, dict):
        raise RecipeError(f"{path}: the policy must be a YAML mapping (keys: {_FIELDS}) -> see policies/default.yaml")
    try:
        return Policy.model_validate(doc)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(path, exc, f"remove it (unknown key; allowed: {_FIELDS})")) from None


def load_policy(path: str | Path) -> Policy:
    return parse_policy(read_yaml(path, "policy", "policies/default.yaml"), path)


# The policy `compare` and the sweep's `frontier.*` tags use when none is given: the field defaults, with the
# MMLU drop of policies/default.yaml (tests check that file equals it), so every verdict shown uses one rule.
DEFAULT_POLICY = Policy(max_mmlu_drop_points=1.0)


def policy_key(policy: Policy) -> str:
    """A short hash of everything a policy decides with: a gate writes its verdict under `gate.<key>.*`, so gates
    with other policies never overwrite one another (policies/default.yaml and DEFAULT_POLICY share one key)."""
    doc = json.dumps(policy.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:8]


def dominance_rule(policy: Policy) -> str:
    """The dominance definition a report used, in one line."""
    return (
        f"speed_tolerance={policy.speed_tolerance:g}, confidence={policy.confidence:g}, dominated_by={policy.dominated_by}, "
        f"bootstrap_samples={policy.bootstrap_samples}, seed={policy.seed}"
    )
