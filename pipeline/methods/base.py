"""The method seam: one small class per compression method, registered by name (torchao's
`quantize_(model, config)` shape: a pydantic `Params` config plus `apply`)."""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

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


@dataclass
class BuildContext:
    """What a method may use while building: the tokenizer, the device, calibration text on demand."""

    tokenizer: PreTrainedTokenizerBase
    device: str
    calibration: Callable[[int], list[str]] | None = None  # n -> n calibration texts (recorded in provenance)
    notes: dict[str, Any] = field(default_factory=dict)  # methods may leave facts here (e.g. calibration sha256)


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

    def check(self, params: MethodParams) -> str | None:
        """Extra pre-load validation (beyond the pydantic schema); return a one-line problem or None."""
        return None

    def load_kwargs(self, params: MethodParams, device: str) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained` (e.g. a transformers quantization_config)."""
        return {}

    def apply(self, model: PreTrainedModel, params: MethodParams, ctx: BuildContext) -> PreTrainedModel:
        """Transform the loaded model in place (or return a new one)."""
        return model

    def kernel(self, params: MethodParams, device: str) -> str:
        """What really runs the matmul; name dense fallbacks as such."""
        return "dense matmul"

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
