"""What every config section shares: strict, frozen pydantic models and the level lists of a sweep."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


def positive_levels(v: list[int], noun: str) -> list[int]:
    """A sweep's levels, sorted and deduplicated; at least one, each >= 1."""
    if not v or any(x < 1 for x in v):
        raise ValueError(f"list at least one {noun}, each >= 1")
    return sorted(set(v))


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
