"""What users write: recipes (what to build and measure) and gate policies, as frozen pydantic models.

Knows no torch, MLflow or methods; `pipeline.variants.plan` checks a recipe's methods against the registry.
"""

from pipeline.config.loader import RecipeError
from pipeline.config.policy import Policy, load_policy, parse_policy
from pipeline.config.recipe import EvalSpec, ModelSpec, Recipe, SpeedSpec, VariantSpec, apply_overrides

__all__ = [
    "EvalSpec",
    "ModelSpec",
    "Policy",
    "Recipe",
    "RecipeError",
    "SpeedSpec",
    "VariantSpec",
    "apply_overrides",
    "load_policy",
    "parse_policy",
]
