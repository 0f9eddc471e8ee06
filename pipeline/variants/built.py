"""What a build hands a runtime (`Built`), and the builders that make one, registered by artifact format.

A runtime declares the format it takes (`Runtime.artifact_format`: "torch", "gguf", "checkpoint" or "none");
the sweep's child builds with `BUILDERS.get(format)` and hands the runtime what came out. So a new runtime on an
existing format is one class and one registration, and a new format is one `Builder` (and its `Built`) here.

  torch       an in-memory transformers model (`Artifact`), on the run's device
  gguf        a GGUF file for llama.cpp (`GGUFArtifact`), built on the CPU
  checkpoint  the torch build saved as a folder a server loads (`Checkpoint`); the in-memory copy is freed
  none        nothing: a server serves its own model (`ServedModel`); variant `none` only
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pipeline.config.recipe import ModelSpec, VariantSpec
from pipeline.methods import registry as method_registry
from pipeline.registry import Registry
from pipeline.results import FidelityRecord

if TYPE_CHECKING:  # the builds import torch: only when one runs
    from pipeline.models import ResolvedModel
    from pipeline.variants.artifact import Artifact
    from pipeline.variants.gguf_artifact import GGUFArtifact


class Built(Protocol):
    """What one build hands its runtime; every format's result has all of it."""

    @property
    def fidelity(self) -> FidelityRecord | None:
        """What the build stores and how far it moved from the base; None: nothing was built."""

    @property
    def path(self) -> Path | None:
        """The file or folder a server loads (`{artifact}` in `serve.launch`); None: nothing on disk."""

    @property
    def gguf_path(self) -> Path | None:
        """A GGUF file whose tensor census counts what a decode step reads; None: not a GGUF."""

    @property
    def runs_stored_form(self) -> bool:
        """True where the runtime computes on the weights as stored (a GGUF file's blocks), so the measured
        bits per weight are what it reads whatever the method."""

    def close(self) -> None:
        """Remove the build's temporary files (idempotent)."""

    def export(self, out_dir: Path, about: dict[str, Any]) -> Path:
        """Write the build where a server loads it from, with `shrinkgate.json` (`about` added); returns the
        file or folder. NotExportable where nothing was built."""


class NotExportable(RuntimeError):
    """Nothing shrinkgate built to write out (a server that serves its own model)."""


@dataclass
class Checkpoint:
    """A torch build saved as a checkpoint folder (`save_checkpoint`) for a server to load; deleted by `close`."""

    checkpoint_dir: Path | None
    fidelity: FidelityRecord
    gguf_path: None = None
    runs_stored_form: bool = False

    @property
    def path(self) -> Path | None:
        return self.checkpoint_dir

    def close(self) -> None:
        if self.checkpoint_dir is not None:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            self.checkpoint_dir = None

    def export(self, out_dir: Path, about: dict[str, Any]) -> Path:
        if self.checkpoint_dir is None:
            raise NotExportable("the checkpoint was closed")
        shutil.copytree(self.checkpoint_dir, out_dir, dirs_exist_ok=True)
        doc = json.loads((out_dir / "shrinkgate.json").read_text())
        (out_dir / "shrinkgate.json").write_text(json.dumps(doc | about, indent=1, default=str))
        return out_dir


@dataclass
class ServedModel:
    """Nothing built: the server serves its own model. A GGUF source's published file is still named as
    `{artifact}` (and counted for a local server's bytes per token)."""

    source_gguf: Path | None = None
    fidelity: None = None
    runs_stored_form: bool = False

    @property
    def path(self) -> Path | None:
        return self.source_gguf

    @property
    def gguf_path(self) -> Path | None:
        return self.source_gguf

    def close(self) -> None:
        return None

    def export(self, out_dir: Path, about: dict[str, Any]) -> Path:  # noqa: ARG002 - nothing to write
        raise NotExportable(
            "measured the model a server serves (serve.artifact: none); shrinkgate built nothing to export"
        )


class Builder(ABC):
    """Builds a variant into one artifact format, and says before any model loads what it cannot build."""

    format: ClassVar[str]
    # the `Method.artifact_format` whose steps this format takes (None: methods that work on the torch model)
    method_format: ClassVar[str | None] = None
    # the in-process runtime a user is pointed at for this format's methods (a hint in messages only)
    runs_on: ClassVar[str | None] = None
    # where this format is always built (llama.cpp's quantizer and KL: the CPU); None: the run's device
    build_device: ClassVar[str | None] = None
    # False: nothing is built (a server serves its own model), so there is nothing to export either
    builds: ClassVar[bool] = True

    def problem(self, variant: VariantSpec, runtime: str) -> str | None:
        """Why `variant` cannot be built in this format for `runtime`, or None: a method writing another file
        format needs that format's runtime; off the torch format only dense steps (none, prune) come before the
        export. Unknown methods are `check_recipe`'s to report."""
        known = method_registry()
        for step in variant.pipeline_steps:
            cls = known.get(step.method)
            if cls is None:
                continue
            if cls.artifact_format is not None and cls.artifact_format != self.method_format:
                return (
                    f"method {step.method!r} writes a {cls.artifact_format.upper()} file that runtime {runtime!r} cannot run; "
                    f"set `runtime: {BUILDERS.get(cls.artifact_format).runs_on}` on this variant (or at the top of the recipe)"
                )
            if self.method_format is not None and cls.artifact_format is None and cls.kind == "quantize":
                return (
                    f"method {step.method!r} quantizes inside transformers, which runtime {runtime!r} cannot load; "
                    f"measure it on `runtime: {BUILDERS.get('torch').runs_on}`, or use a {self.format.upper()} method (see `shrinkgate methods`)"
                )
        return None

    def check_model(self, model: ModelSpec, config: Any) -> str | None:  # noqa: ARG002 - most formats take any model
        """One-line reason this format cannot hold `model` (its config.json read), or None."""
        return None

    def needs_config(self, model: ModelSpec) -> bool:  # noqa: ARG002
        """Whether `check_model` needs the model's config read."""
        return False

    @abstractmethod
    def build(
        self,
        resolved: ResolvedModel,
        model: ModelSpec,
        variant: VariantSpec,
        *,
        device: str,
        data_dir: str | None,
        threads: int,
        measure: bool = True,
    ) -> Built:
        """The variant in this format. `measure=False` is an export's rebuild: no base reference (KL, flips)
        and no serialized-size measurement, only what the stored hash needs."""


# one builder instance per format, registered below its class
BUILDERS: Registry[Builder] = Registry("artifact format", key_attr="format")


class TorchBuilder(Builder):
    format = "torch"
    runs_on = "transformers"

    def build(self, resolved, model, variant, *, device, data_dir, threads, measure=True) -> Artifact:  # noqa: ARG002 - torch picks its own threads
        from pipeline.variants.artifact import base_reference_for, build_artifact

        # KL / top-1 agreement / weight error are against the unmodified transformers model (cached per model)
        base = base_reference_for(resolved, model, device=device, data_dir=data_dir) if measure else None
        return build_artifact(
            resolved, model, variant, device=device, base=base, data_dir=data_dir, measure_serialized=measure
        )


class CheckpointBuilder(TorchBuilder):
    format = "checkpoint"
    runs_on = None

    def build(self, resolved, model, variant, *, device, data_dir, threads, measure=True) -> Checkpoint:
        from pipeline.variants.artifact import save_checkpoint

        artifact = super().build(
            resolved, model, variant, device=device, data_dir=data_dir, threads=threads, measure=measure
        )
        # a server loads it from disk: save it, and free the in-memory copy
        folder = save_checkpoint(artifact, Path(tempfile.mkdtemp(prefix="shrinkgate-checkpoint-")))
        fidelity = artifact.fidelity
        del artifact
        gc.collect()
        return Checkpoint(folder, fidelity)


class GGUFBuilder(Builder):
    format = "gguf"
    method_format = "gguf"
    runs_on = "llama.cpp"
    build_device = "cpu"

    def needs_config(self, model: ModelSpec) -> bool:
        from pipeline.models.loader import is_gguf_source

        return not is_gguf_source(model)  # a safetensors model is converted: its architecture must convert

    def check_model(self, model: ModelSpec, config: Any) -> str | None:
        if not self.needs_config(model):
            return None
        from pipeline.models.gguf_convert import unsupported_architecture

        return unsupported_architecture(config)

    def build(self, resolved, model, variant, *, device, data_dir, threads, measure=True) -> GGUFArtifact:  # noqa: ARG002 - always the CPU
        from pipeline.variants.artifact import base_reference_for
        from pipeline.variants.gguf_artifact import build_gguf_artifact

        base = base_reference_for(resolved, model, device="cpu", data_dir=data_dir) if measure else None
        return build_gguf_artifact(resolved, model, variant, base=base, data_dir=data_dir, threads=threads)


class NothingBuilder(Builder):
    format = "none"
    builds = False

    def problem(self, variant: VariantSpec, runtime: str) -> str | None:
        if not variant.unmodified:
            return (
                f"runtime {runtime!r} with `serve.artifact: none` measures the model the server already serves, so only "
                "method `none`; set `serve.artifact: gguf` or `checkpoint` to serve what shrinkgate builds"
            )
        return None

    def build(self, resolved, model, variant, *, device, data_dir, threads, measure=True) -> ServedModel:  # noqa: ARG002
        return ServedModel(resolved.gguf_path)


for _builder in (TorchBuilder(), CheckpointBuilder(), GGUFBuilder(), NothingBuilder()):
    BUILDERS.register(_builder)
