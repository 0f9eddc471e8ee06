"""The method seam: one small registered class per compression method whose pydantic fields ARE its params
(llm-compressor's `Modifier`, torchao's config objects). A recipe step `{method: gptq, params: {bits: 4}}`
becomes `make_method("gptq", {"bits": 4})`, a frozen `GPTQ(bits=4)`; every hook reads `self.bits`.

Class-level facts are `ClassVar`s (what `shrinkgate methods` lists and the planner checks without building
anything); the hooks below are the whole contract between a method and the build, each documented where
it is declared. Validation errors are one line each (`validate_variant`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline import metrics as M
from pipeline.registry import Registry, RegistryError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class MethodError(RuntimeError):
    """A method that cannot run here (wrong device, missing kernel, bad params); the variant fails with this message."""


class NotSerializable(RuntimeError):
    """Raised by `Method.serialize` when the library cannot save this form; `str()` is the library's reason."""


class Method(BaseModel):
    """A compression method; an instance is one configured step. Subclass, set the class facts, declare
    params as pydantic fields (each with a default and a `description`), implement `apply` (or
    `load_kwargs` for load-time quantizers), and `@register` it.

    Params that depend on each other are checked with a pydantic `model_validator(mode="after")` raising
    `ValueError("method 'x' ...")`: its message is the one-line problem `validate_variant` reports.

    The build calls, in order: `check_model` (config only, before weights), `load_kwargs` (first step
    only), `apply` (every step), then on the step whose form the weights end in `stored_form` +
    `serialize`; `kernel` and `nm_pattern` describe the result (whether the matmul falls back to dense is
    observed by the build, `pipeline.variants.observe`, never declared). How a library's
    tensors are counted and dequantized is its `WeightHandler` (`pipeline.methods.weights`), not a hook.
    Hooks import their heavy library inside the body: validating a recipe imports no torch.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]  # registry key, as written in recipes
    library: ClassVar[str]  # label whose installed version `shrinkgate methods` reports
    summary: ClassVar[str] = ""
    # "quantize": changes how weights are stored, so it must be the last step (a later step would need dense
    # float weights); "prune": zeroes dense weights in place; "none": leaves the model as loaded.
    kind: ClassVar[Literal["none", "quantize", "prune"]] = "quantize"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    needs_calibration: ClassVar[bool] = False  # True for `CalibratedMethod`s
    quantizes_at_load: ClassVar[bool] = False  # works through `load_kwargs`, so it must be the first step
    weights_and_activations: ClassVar[bool] = False  # activations are quantized too (not weight-only)
    # why the library cannot save this form (the catalog; builds that do not measure); None: it saves
    not_serializable: ClassVar[str | None] = None
    maintenance: ClassVar[str | None] = None  # e.g. "library unmaintained", shown in the catalog
    # False where the same variant can score differently run to run on one host (tests/test_determinism.py
    # measures every CPU family); logged as the `deterministic` tag, and the gate then wants a measured
    # flip rate (a repeat of the variant) before an MMLU pass.
    deterministic: ClassVar[bool] = True
    # The artifact format (a runtime's own file) this method writes, e.g. "gguf": llama.cpp's quantizer on an
    # exported file; None: it works on the torch model. Such a step runs only on a runtime taking that format,
    # last, after dense steps (none / prune): the build exports the dense result and calls `quantize_file`.
    artifact_format: ClassVar[str | None] = None

    def quantize_file(self, src: Path, dst: Path, *, threads: int, notes: dict[str, Any]) -> None:
        """Quantize the format's file `src` (full precision) into `dst`; only for `artifact_format` methods.

        Facts worth recording (what the library chose, fallbacks) go into `notes`."""
        raise NotImplementedError(f"method {self.name!r} writes no file of its own format")

    def check_model(self, config: Any) -> str | None:
        """One-line reason this step cannot be applied to a model with this transformers config, or None.

        Called right after config.json is read and BEFORE any weights load, so a shape the method cannot
        handle (2:4 on a width not divisible by 4, a group size that does not divide a layer's input
        width, ...) fails in a second. `targets.linear_shapes(config)` gives every compressed layer's
        (out_features, in_features) without loading weights.
        """
        return None

    def load_kwargs(self, device: str) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained` (e.g. a transformers `quantization_config`).

        Only the first step's are used; a method that needs them sets `quantizes_at_load = True`.
        """
        return {}

    def quantize_loaded(self, model: PreTrainedModel, device: str) -> PreTrainedModel:
        """For a `quantizes_at_load` method whose library has an in-memory path: the same quantized layers built
        on an already-loaded model (no checkpoint: `shrinkgate speed`'s random-weight shapes)."""
        raise NotImplementedError(f"method {self.name!r} quantizes only while loading a checkpoint")

    def apply(self, model: PreTrainedModel, ctx: BuildContext) -> PreTrainedModel:
        """Transform the loaded model in place and return it (or return a replacement).

        `ctx` gives the tokenizer, the device, calibration text (`ctx.calibration_data(self)`) and what
        earlier steps did (`ctx.previous`, `ctx.pruned`); facts worth recording go into `ctx.notes`.
        """
        return model

    def stored_form(self, model: PreTrainedModel) -> AbstractContextManager[Any]:
        """Context in which `model` holds its stored (packed) form, for byte counting and `serialize`.

        Default: the runtime form is the stored form. Methods whose library runs from a dequantized copy
        (compressed-tensors on CPU) pack on entry and unpack on exit.
        """
        return nullcontext()

    def serialize(self, model: PreTrainedModel, out_dir: Path) -> None:
        """Save the model (inside `stored_form`) with safetensors into `out_dir`.

        Raise `NotSerializable(reason)` when the library cannot save this form; the default saves with
        `save_pretrained` unless `not_serializable` gives a reason.
        """
        if self.not_serializable:
            raise NotSerializable(self.not_serializable)
        model.save_pretrained(out_dir, safe_serialization=True)

    def kernel(self, device: str, model: PreTrainedModel | None = None) -> str:
        """A human sentence: what the library runs the matmul with on `device`. The build appends what the
        profiler observed (`kernel.observed`), and `kernel_dense_fallback` comes from that observation.

        `model`, when given, is the built model: its form may refine the answer (e.g. its dtype picks a
        different kernel).
        """
        return "dense matmul"

    def nm_pattern(self) -> tuple[int, int] | None:
        """(N, M) when the method promises at most N non-zeros in every group of M input weights."""
        return None


class CalibratedMethod(Method):
    """A method that looks at activations: these fields select its calibration text (`BuildContext.calibration_data`)."""

    needs_calibration: ClassVar[bool] = True

    calibration: str | None = Field(
        None,
        description="calibration text: 'mmlu-validation' (default: MMLU validation split from the eval data dir), "
        "a local .txt/.jsonl file, or a hub dataset id org/name[:split] (online)",
    )
    calibration_samples: int = Field(64, ge=1, le=4096, description="number of calibration samples")
    calibration_seq_len: int = Field(
        256, ge=8, le=8192, description="tokens per calibration sample (short texts are packed)"
    )

    @field_validator("calibration")
    @classmethod
    def _source_exists(cls, v: str | None) -> str | None:
        if v is not None:
            from pipeline.data.calibration import check_source

            problem = check_source(v)
            if problem:
                raise ValueError(problem)
        return v


@dataclass
class BuildContext:
    """What a method may use while building: the tokenizer, the device, calibration text on demand."""

    tokenizer: PreTrainedTokenizerBase
    device: str
    calibration: Callable[[int], list[str]] | None = None  # n -> n calibration texts (recorded in provenance)
    notes: dict[str, Any] = field(default_factory=dict)  # methods may leave facts here (e.g. calibration sha256)
    data_dir: str | None = None  # MMLU JSONL dir (eval.data_dir); else $SHRINKGATE_MMLU_DIR; else the shipped copy
    default_calibration: str | None = None  # source for steps whose `calibration` param is unset
    previous: tuple[str, ...] = ()  # methods already applied to this model, in order
    pruned: bool = False  # an earlier step zeroed weights (later quantizers must keep those zeros)

    def calibration_data(self, method: CalibratedMethod):
        """Load (and record in `notes`) the calibration texts a step asks for."""
        from pipeline.data.calibration import CalibrationData, CalibrationError, load_calibration

        source = method.calibration or self.default_calibration
        if source is None and self.calibration is not None:  # a caller-supplied text provider
            texts = tuple(self.calibration(method.calibration_samples))
            data = CalibrationData(texts, "caller", "caller", hashlib.sha256("\n\n".join(texts).encode()).hexdigest())
        else:
            try:
                data = load_calibration(
                    source,
                    method.calibration_samples,
                    tokenizer=self.tokenizer,
                    seq_len=method.calibration_seq_len,
                    data_dir=self.data_dir,
                )
            except CalibrationError as exc:
                raise MethodError(str(exc)) from None
        previous = self.notes.get(M.TAG_CALIBRATION_SHA256)
        if previous and previous != data.sha256:
            self.notes[M.NOTE_CALIBRATION_SOURCES] = f"{self.notes.get(M.TAG_CALIBRATION_SOURCE)} | {data.source}"
        self.notes.update(data.notes())
        return data


METHODS: Registry[type[Method]] = Registry("method", hint="see `shrinkgate methods`")


def register(cls: type[Method]) -> type[Method]:
    return METHODS.register(cls)


def registry() -> dict[str, type[Method]]:
    return METHODS.as_dict()


def param_names(cls: type[Method]) -> tuple[str, ...]:
    """A method's params, in declaration order (calibration fields first for `CalibratedMethod`s)."""
    return tuple(cls.model_fields)


def make_method(name: str, params: dict[str, Any] | None = None) -> Method:
    """The configured step for a recipe's `method` + `params`; `MethodError` with a one-line problem.

    Loads no model and imports no heavy library.
    """
    try:
        cls = METHODS.get(name)
    except RegistryError as exc:
        raise MethodError(str(exc)) from None
    try:
        return cls.model_validate(params or {})
    except ValidationError as exc:
        raise MethodError(_one_line(name, cls, exc)) from None


def _one_line(name: str, cls: type[Method], exc: ValidationError) -> str:
    err = exc.errors()[0]
    msg = str(err.get("msg")).removeprefix("Value error, ")
    loc = ".".join(str(p) for p in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        return f"method {name!r} has no param `{loc}`; its params are: {', '.join(param_names(cls)) or 'none'}"
    if not loc:  # a model_validator across params: its message is already the whole sentence
        return msg
    return f"method {name!r} param `{loc}`: {msg}"


def validate_variant(method: str, params: dict[str, Any]) -> str | None:
    """One-line problem with a method name/params, or None. Loads no model."""
    try:
        make_method(method, params)
    except MethodError as exc:
        return str(exc)
    return None


def validate_steps(steps: list[tuple[str, dict[str, Any]]]) -> str | None:
    """One-line problem with the order of a multi-step variant (each step already validated), or None."""
    methods = [METHODS.get(name) for name, _ in steps if name in METHODS]
    for i, m in enumerate(methods):
        if m.artifact_format is not None and i < len(methods) - 1:
            return f"method {m.name!r} writes a {m.artifact_format.upper()} file, so it must be the last step"
        if i > 0 and m.quantizes_at_load:
            return f"method {m.name!r} quantizes at load time, so it must be the first step"
        if m.kind == "quantize" and i < len(methods) - 1:
            later = methods[i + 1]
            if later.kind != "none":
                return (
                    f"step {i + 1} ({m.name}) quantizes the weights, so step {i + 2} ({later.name}) would get no dense weights; "
                    "put pruning steps first and one quantizer last"
                )
    return None


def save_unique_safetensors(
    model: Any, out_dir: Path, state_dict: dict[str, Any] | None = None, metadata: dict[str, str] | None = None
) -> None:
    """Write `state_dict` (default: the model's) as one safetensors file plus config.json; tensors shared by
    several names (tied embeddings) are written once, as safetensors requires."""
    from safetensors.torch import save_file

    sd = model.state_dict() if state_dict is None else state_dict
    seen: set[tuple[int, int]] = set()
    unique: dict[str, Any] = {}
    for name, t in sd.items():
        if type(t).__name__ in ("Tensor", "Parameter"):
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            if t.numel() and key in seen:
                continue
            seen.add(key)
            unique[name] = t.detach().contiguous()
        else:
            unique[name] = t
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(unique, str(out_dir / "model.safetensors"), metadata=metadata)
    model.config.save_pretrained(out_dir)
