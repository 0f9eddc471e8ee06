"""The engine seam: what every runtime (engine) does with a built artifact.

A runtime scores MMLU through lm-eval on the very object that was built and times its decode loop. New
engines (llama.cpp, OpenAI-compatible servers) subclass `Runtime` and are named in `pipeline.runtime.RUNTIMES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.build.artifact import Artifact
    from pipeline.config.recipe import EvalSpec, Recipe, SpeedSpec
    from pipeline.results import AccuracyResult, SpeedResult
    from pipeline.runtime.mmlu import StopRule


class Session:
    """What a runtime measures for one child, between `__enter__` and `__exit__`: in-process engines measure
    the artifact itself; a server runtime starts (or connects to) its server here and stops it on exit.
    `tags` (provenance the engine reports) and `logs` (artifact path -> text, e.g. the server's log) are
    recorded on the run, also when the child fails."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.tags: dict[str, str] = {}

    def __enter__(self) -> Any:
        return self.target

    def __exit__(self, *exc: object) -> None:
        return None

    def logs(self) -> dict[str, str]:
        return {}


class Runtime(ABC):
    name: ClassVar[str]
    # what the build hands this engine: "torch" (an in-memory transformers model, `Artifact`) or "gguf" (a
    # GGUF file, `GGUFArtifact`)
    artifact_format: ClassVar[str] = "torch"
    # False: this engine is measured for speed only (a server that returns no prompt log-probabilities)
    scores_mmlu: ClassVar[bool] = True

    @classmethod
    def for_recipe(cls, recipe: Recipe | None) -> Runtime:
        """The runtime as `recipe` configures it (a server runtime reads its `serve` section)."""
        return cls()

    @classmethod
    def check(cls, speed: SpeedSpec) -> str | None:
        """One-line problem with this engine here (not installed) or with what `speed` asks of it (a batch
        size it cannot run), or None; called by `validate` and before a sweep starts, before any model loads."""
        return None

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> str | None:
        """`check` on the recipe's speed section; runtimes configured elsewhere in the recipe check that too."""
        return cls.check(recipe.speed)

    def unmeasured_reproducibility(self, device: str) -> str | None:
        """Why this engine's MMLU answers on `device` are not known to be bit-reproducible run to run, or None
        where tests/test_determinism.py measured them so (the same artifact gives the same answers at 1 and 2
        threads, in two processes). What is not measured is unknown, never assumed."""
        if device == "cpu":
            return None
        return f"{self.name} scoring on {device} is not measured run to run (tests/test_determinism.py covers CPU only)"

    def session(self, artifact: Any, model_dir: Path | None = None) -> Session:
        """What `score_mmlu` and `decode` run on for one child (see `Session`); `model_dir` is the model's
        dense copy (its tokenizer and config)."""
        return Session(artifact)

    @abstractmethod
    def score_mmlu(self, artifact: Artifact, spec: EvalSpec, stop: StopRule | None = None) -> AccuracyResult:
        """MMLU accuracy of `artifact` with lm-eval's own scoring; per-question outcomes included. `stop`: a
        sequential sample's stopping rule (`pipeline.runtime.mmlu.score_sequential`)."""

    @abstractmethod
    def decode(self, artifact: Artifact, spec: SpeedSpec) -> SpeedResult:
        """Decode timing of `artifact` as `spec` asks (batch sizes, prompt lengths, repeats)."""
