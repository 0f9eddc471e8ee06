"""The engine seam: what every runtime (engine) does with a built artifact.

A runtime scores MMLU through lm-eval on the very object that was built and times its decode loop. New
engines (llama.cpp, OpenAI-compatible servers) subclass `Runtime` and are named in `pipeline.runtime.RUNTIMES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pipeline.build.artifact import Artifact
    from pipeline.config.recipe import EvalSpec, SpeedSpec
    from pipeline.results import AccuracyResult, SpeedResult


class Runtime(ABC):
    name: ClassVar[str]
    # what the build hands this engine: "torch" (an in-memory transformers model, `Artifact`) or "gguf" (a
    # GGUF file, `GGUFArtifact`)
    artifact_format: ClassVar[str] = "torch"

    @classmethod
    def check(cls, speed: SpeedSpec) -> str | None:
        """One-line problem with this engine here (not installed) or with what `speed` asks of it (a batch
        size it cannot run), or None; called by `validate` and before a sweep starts, before any model loads."""
        return None

    @abstractmethod
    def score_mmlu(self, artifact: Artifact, spec: EvalSpec) -> AccuracyResult:
        """MMLU accuracy of `artifact` with lm-eval's own scoring; per-question outcomes included."""

    @abstractmethod
    def decode(self, artifact: Artifact, spec: SpeedSpec) -> SpeedResult:
        """Decode timing of `artifact` as `spec` asks (batch sizes, prompt lengths, repeats)."""
