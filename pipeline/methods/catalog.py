"""What `shrinkgate methods [--json]` prints: every registered method, its library and installed version,
its params (type, default, description), devices, whether it saves, whether it needs calibration.

Imports no heavy library: versions come from package metadata.
"""

from __future__ import annotations

import importlib.metadata
import json as _json
import typing
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.methods.base import param_names, registry

# library label -> distribution whose version is reported
_DISTRIBUTIONS = {
    "torchao": "torchao",
    "bitsandbytes": "bitsandbytes",
    "optimum-quanto": "optimum-quanto",
    "hqq": "hqq",
    "llm-compressor": "llmcompressor",
    "transformers": "transformers",
    "torch": "torch",
    "llama-cpp-python": "llama_cpp_python",
}


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    default: Any
    description: str


@dataclass(frozen=True)
class MethodInfo:
    name: str
    library: str
    version: str | None  # installed version of the library (None: not installed)
    summary: str
    kind: str  # quantize | prune | none
    params: tuple[ParamInfo, ...]
    devices: tuple[str, ...]
    serializable: bool
    serializable_note: str | None
    needs_calibration: bool
    quantizes_at_load: bool
    weights_and_activations: bool
    maintenance: str | None


def _version(library: str) -> str | None:
    dist = _DISTRIBUTIONS.get(library) or _DISTRIBUTIONS.get(library.split(" ", 1)[0])
    if dist is None:
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def method_catalog() -> list[MethodInfo]:
    out = []
    for name, cls in sorted(registry().items()):
        fields = cls.model_fields
        params = tuple(
            ParamInfo(
                pname, _type_name(fields[pname].annotation), fields[pname].default, fields[pname].description or ""
            )
            for pname in param_names(cls)
        )
        out.append(
            MethodInfo(
                name=name,
                library=cls.library,
                version=_version(cls.library),
                summary=cls.summary,
                kind=cls.kind,
                params=params,
                devices=tuple(cls.devices),
                serializable=cls.not_serializable is None,
                serializable_note=cls.not_serializable,
                needs_calibration=bool(cls.needs_calibration),
                quantizes_at_load=bool(cls.quantizes_at_load),
                weights_and_activations=bool(cls.weights_and_activations),
                maintenance=cls.maintenance,
            )
        )
    return out


def render_catalog(json: bool = False) -> str:
    infos = method_catalog()
    if json:
        return _json.dumps([asdict(i) for i in infos], indent=2, default=str)
    lines: list[str] = []
    for i in infos:
        lib = f"{i.library} {i.version}" if i.version else f"{i.library} (not installed)"
        flags = [i.kind, "/".join(i.devices)]
        if i.needs_calibration:
            flags.append("calibration")
        if i.weights_and_activations:
            flags.append("weights+activations")
        if i.quantizes_at_load:
            flags.append("at load (first step)")
        flags.append("saves" if i.serializable else "does not save")
        lines.append(f"{i.name}  [{lib}]  {' · '.join(flags)}")
        if i.summary:
            lines.append(f"    {i.summary}")
        for p in i.params:
            desc = f"  {p.description}" if p.description else ""
            lines.append(f"    {p.name}: {p.type} = {p.default!r}{desc}")
        if i.serializable_note:
            lines.append(f"    save: {i.serializable_note}")
        if i.maintenance:
            lines.append(f"    note: {i.maintenance}")
    return "\n".join(lines)
