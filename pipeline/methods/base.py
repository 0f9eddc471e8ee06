"""The method seam: one small class per compression method, registered by name (torchao's
`quantize_(model, config)` shape: a pydantic `Params` config plus `apply`)."""

from __future__ import annotations

from abc import ABC
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class MethodParams(BaseModel):
    """Base for every method's params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(MethodParams):
    pass


class MethodError(RuntimeError):
    """A method that cannot run here (wrong device, missing kernel); the variant fails with this message."""


class NotSerializable(RuntimeError):
    """Raised by `Method.serialize` when the library cannot save this form; `str()` is the library's reason."""


class CalibrationParams(MethodParams):
    """Params shared by methods that look at activations (see `pipeline.calibration`)."""

    calibration: str | None = Field(
        None,
        description="calibration text: 'mmlu-validation' (default: MMLU validation split from the eval data dir), "
        "a local .txt/.jsonl file, or a hub dataset id org/name[:split] (online)",
    )
    calibration_samples: int = Field(64, ge=1, le=4096, description="number of calibration samples")
    calibration_seq_len: int = Field(256, ge=8, le=8192, description="tokens per calibration sample (short texts are packed)")

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
    data_dir: str | None = None  # MMLU JSONL dir (eval.data_dir); else $SHRINKGATE_MMLU_DIR; else the hub
    default_calibration: str | None = None  # source for steps whose `calibration` param is unset
    previous: tuple[str, ...] = ()  # methods already applied to this model, in order
    pruned: bool = False  # an earlier step zeroed weights (later quantizers must keep those zeros)

    def calibration_data(self, params: CalibrationParams):
        """Load (and record in `notes`) the calibration texts a step asks for."""
        from pipeline.data.calibration import CalibrationData, CalibrationError, _sha256_bytes, load_calibration

        source = params.calibration or self.default_calibration
        if source is None and self.calibration is not None:  # a caller-supplied text provider
            texts = tuple(self.calibration(params.calibration_samples))
            data = CalibrationData(texts, "caller", "caller", _sha256_bytes("\n\n".join(texts).encode()))
        else:
            try:
                data = load_calibration(
                    source,
                    params.calibration_samples,
                    tokenizer=self.tokenizer,
                    seq_len=params.calibration_seq_len,
                    data_dir=self.data_dir,
                )
            except CalibrationError as exc:
                raise MethodError(str(exc)) from None
        previous = self.notes.get("calibration.sha256")
        if previous and previous != data.sha256:
            self.notes["calibration.sources"] = f"{self.notes.get('calibration.source')} | {data.source}"
        self.notes.update(data.notes())
        return data


class Method(ABC):
    """Subclass, set the class attributes, implement `apply` (or `load_kwargs` for load-time quantizers)."""

    name: ClassVar[str]
    library: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = NoParams
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    serializable: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = False
    quantizes_at_load: ClassVar[bool] = False  # True: works through `load_kwargs`, so it must be the first step
    maintenance: ClassVar[str | None] = None
    summary: ClassVar[str] = ""
    # "quantize": changes how weights are stored, so it must be the last step (a later step would need dense
    # float weights); "prune": zeroes dense weights in place; "none": leaves the model as loaded.
    kind: ClassVar[Literal["none", "quantize", "prune"]] = "quantize"
    serializable_reason: ClassVar[str | None] = None  # the library's reason when `serializable` is False
    weights_and_activations: ClassVar[bool] = False

    def check(self, params: MethodParams) -> str | None:
        """Extra pre-load validation (beyond the pydantic schema); return a one-line problem or None."""
        return None

    def check_model(self, params: MethodParams, config: Any) -> str | None:
        """Pre-weights validation against the model's transformers config; one-line problem or None.

        `build_artifact` calls it right after reading config.json and BEFORE loading any weights, so a
        shape a method cannot handle (2:4 on a width not divisible by 4, a group size that does not divide
        a layer's input width, ...) fails in a second instead of after a load. `targets.linear_shapes(config)`
        gives every compressed layer's (out_features, in_features) without loading weights.
        """
        return None

    def stored_form(self, model: PreTrainedModel, params: MethodParams) -> AbstractContextManager[Any]:
        """Context in which `model` holds its stored (packed) form, for byte counting and saving.

        Default: the runtime form is the stored form. Methods whose library runs from a dequantized copy
        (compressed-tensors on CPU) pack inside the context and unpack on exit.
        """
        return nullcontext()

    def serialize(self, model: PreTrainedModel, params: MethodParams, out_dir: Path) -> None:
        """Save the model with safetensors into `out_dir`; raise `NotSerializable(reason)` when it cannot be."""
        if not self.serializable:
            raise NotSerializable(self.serializable_reason or f"{self.library} cannot save this form")
        model.save_pretrained(out_dir, safe_serialization=True)

    def load_kwargs(self, params: MethodParams, device: str) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained` (e.g. a transformers quantization_config)."""
        return {}

    def apply(self, model: PreTrainedModel, params: MethodParams, ctx: BuildContext) -> PreTrainedModel:
        """Transform the loaded model in place (or return a new one)."""
        return model

    def kernel(self, params: MethodParams, device: str) -> str:
        """What really runs the matmul; name dense fallbacks as such."""
        return "dense matmul"

    def kernel_for(self, model: PreTrainedModel, params: MethodParams, device: str) -> str:
        """`kernel` refined by the built model (e.g. its dtype picks a different kernel); build calls this."""
        return self.kernel(params, device)

    def dense_fallback(self, params: MethodParams, device: str) -> bool:
        """True when the compressed form does not make the matmul read fewer bytes on this device."""
        return False

    def nm_pattern(self, params: MethodParams) -> tuple[int, int] | None:
        """(N, M) when the method promises N non-zeros in every group of M weights."""
        return None

    def parse(self, params: dict[str, Any]) -> MethodParams:
        return self.Params.model_validate(params)


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Method]]:
    return dict(_REGISTRY)


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def validate_variant(method: str, params: dict[str, Any]) -> str | None:
    """One-line problem with a method name/params, or None. Loads no model."""
    if method not in _REGISTRY:
        return f"unknown method {method!r}; use one of: {', '.join(sorted(_REGISTRY))} (see `shrinkgate methods`)"
    m = _REGISTRY[method]()
    try:
        parsed = m.parse(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ())) or "params"
        if err.get("type") == "extra_forbidden":
            fields = ", ".join(m.Params.model_fields) or "none"
            return f"method {method!r} has no param `{key}`; its params are: {fields}"
        return f"method {method!r} param `{key}`: {str(err.get('msg')).removeprefix('Value error, ')}"
    return m.check(parsed)


def validate_steps(steps: list[tuple[str, dict[str, Any]]]) -> str | None:
    """One-line problem with the order of a multi-step variant (each step already validated), or None."""
    methods = [_REGISTRY[name] for name, _ in steps if name in _REGISTRY]
    for i, m in enumerate(methods):
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
