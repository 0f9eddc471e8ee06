from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.build.artifact import Artifact
    from pipeline.config.recipe import EvalSpec, SpeedSpec
    from pipeline.results import AccuracyResult, SpeedResult


class Runtime(ABC):
    name: str

    @abstractmethod
    def score_mmlu(self, artifact: Artifact, spec: EvalSpec) -> AccuracyResult: ...

    @abstractmethod
    def decode(self, artifact: Artifact, spec: SpeedSpec) -> SpeedResult: ...


def get_runtime(name: str = "transformers") -> Runtime:
    if name == "transformers":
        from pipeline.runtime.transformers import TransformersRuntime

        return TransformersRuntime()
    raise ValueError(f"unknown runtime {name!r}; available: transformers")
