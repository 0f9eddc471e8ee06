"""The runtime seam: what every runtime does with what a build hands it (`pipeline.variants.built.Built`).

A runtime declares the artifact format it takes (`artifact_format`; the child builds that format with
`pipeline.variants.built.BUILDERS`), opens a `Session` on the build for one child, and scores MMLU through lm-eval
and times decode on what the session yields. A runtime is one class registered in `RUNTIMES`
(`@RUNTIMES.register`); `pipeline.runtime` imports the shipped ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pipeline.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config.recipe import EvalSpec, Recipe, SpeedSpec
    from pipeline.results import AccuracyResult, SpeedResult
    from pipeline.runtime.mmlu import StopRule

B = TypeVar("B")  # the `Built` a runtime takes (its artifact format's)
T = TypeVar("T")  # what it scores and times: the build itself in-process, an endpoint for a server


class Session(Generic[T]):
    """What a runtime measures for one child, between `__enter__` and `__exit__`: in-process runtimes measure
    the build itself; a server runtime starts (or connects to) its server here and stops it on exit.
    `tags` (provenance the runtime reports) and `logs` (artifact path -> text, e.g. the server's log) are
    recorded on the run, also when the child fails."""

    def __init__(self, target: T) -> None:
        self.target = target
        self.tags: dict[str, str] = {}

    def __enter__(self) -> T:
        return self.target

    def __exit__(self, *exc: object) -> None:
        return None

    def logs(self) -> dict[str, str]:
        return {}


class Runtime(ABC, Generic[B, T]):
    name: ClassVar[str]
    # what the build hands this runtime: a `pipeline.variants.built.BUILDERS` key ("torch": an in-memory transformers
    # model, "gguf": a GGUF file, ...). An instance attribute, so a runtime configured by its recipe (a server:
    # `serve.artifact`) sets its own in `for_recipe`.
    artifact_format: str = "torch"
    # False: this runtime is measured for speed only (a server that returns no prompt log-probabilities)
    scores_mmlu: bool = True

    @classmethod
    def for_recipe(cls, recipe: Recipe | None) -> Runtime[B, T]:
        """The runtime as `recipe` configures it (a server runtime reads its `serve` section)."""
        return cls()

    @classmethod
    def check(cls, speed: SpeedSpec) -> str | None:
        """One-line problem with this runtime here (not installed) or with what `speed` asks of it (a batch
        size it cannot run), or None; called by `validate` and before a sweep starts, before any model loads."""
        return None

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> str | None:
        """`check` on the recipe's speed section; runtimes configured elsewhere in the recipe check that too."""
        return cls.check(recipe.speed)

    @classmethod
    def check_sections(cls, recipe: Recipe) -> str | None:  # noqa: ARG003 - in-process runtimes need no section
        """One-line problem with the recipe sections this runtime reads (a server's `serve`), whatever the host;
        None when they are there."""
        return None

    @classmethod
    def key_sections(cls, recipe: Recipe) -> dict[str, Any]:  # noqa: ARG003 - in-process runtimes read only eval and speed
        """The recipe sections besides eval and speed that decide this runtime's results (a server: `serve`),
        by name, for the resume key."""
        return {}

    def unmeasured_reproducibility(self, device: str) -> str | None:
        """Why this runtime's MMLU answers on `device` are not known to be bit-reproducible run to run, or None
        where tests/test_determinism.py measured them so (the same artifact gives the same answers at 1 and 2
        threads, in two processes). What is not measured is unknown, never assumed."""
        if device == "cpu":
            return None
        return f"{self.name} scoring on {device} is not measured run to run (tests/test_determinism.py covers CPU only)"

    @abstractmethod
    def session(self, built: B, model_dir: Path | None = None) -> Session[T]:
        """What `score_mmlu` and `decode` run on for one child (see `Session`); `model_dir` is the model's
        dense copy (its tokenizer and config)."""

    @abstractmethod
    def score_mmlu(self, target: T, spec: EvalSpec, stop: StopRule | None = None) -> AccuracyResult:
        """MMLU accuracy of `target` with lm-eval's own scoring; per-question outcomes included. `stop`: a
        sequential sample's stopping rule (`pipeline.runtime.mmlu.score_sequential`)."""

    @abstractmethod
    def decode(self, target: T, spec: SpeedSpec) -> SpeedResult:
        """Decode timing of `target` as `spec` asks (batch sizes, prompt lengths, repeats)."""


class InProcessRuntime(Runtime[B, B]):
    """A runtime that scores and times the build itself, in this process (transformers, llama.cpp)."""

    def session(self, built: B, model_dir: Path | None = None) -> Session[B]:  # noqa: ARG002 - the build holds its tokenizer
        return Session(built)


RUNTIMES: Registry[type[Runtime[Any, Any]]] = Registry("runtime")
