"""A GGUF file's header without its arrays: metadata scalars and small arrays, and every tensor's name, shape,
type and stored bytes.

gguf-py's `GGUFReader` builds a numpy view per element of every metadata array, which takes 13 s for Gemma's
262k-token vocabulary on a 2-core host (and the build read each file up to four times). This reader walks the
same layout (GGUF v2/v3, little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) and skips
large arrays, keeping their length: 0.1 s for the same file. Sizes per type come from gguf-py's constants.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

# Arrays up to this many elements are read (per-layer head counts, sliding-window patterns); longer ones
# (vocabularies, merges, scores) are skipped and stand as `ArrayInfo`.
_SMALL_ARRAY = 4096

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    """Not a GGUF file this reader understands."""


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to read: its element type and length."""

    element_type: int
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # as stored: innermost dimension first
    type_name: str  # ggml type ("Q4_K", "F32")
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]
    tensors: tuple[TensorInfo, ...]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """The header of the GGUF at `path`; GGUFHeaderError when it is not one."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        magic, version = f.read(4), _unpack(f, "<I")
        if magic != b"GGUF":
            raise GGUFHeaderError(f"{path} is not a GGUF file (magic {magic!r})")
        if version not in (2, 3):
            raise GGUFHeaderError(f"{path}: GGUF version {version} (this reader knows 2 and 3; a big-endian file?)")
        n_tensors, n_kv = _unpack(f, "<Q"), _unpack(f, "<Q")
        fields = {}
        for _ in range(n_kv):
            key = _string(f)
            fields[key] = _value(f, _unpack(f, "<I"))
        tensors = []
        for _ in range(n_tensors):
            name = _string(f)
            shape = tuple(_unpack(f, "<Q") for _ in range(_unpack(f, "<I")))
            ggml_type = GGMLQuantizationType(_unpack(f, "<I"))
            _unpack(f, "<Q")  # offset in the data section
            block, type_size = GGML_QUANT_SIZES[ggml_type]
            n = math.prod(shape)
            tensors.append(TensorInfo(name, shape, ggml_type.name, n, n // block * type_size))
    return GGUFHeader(version, fields, tuple(tensors))


def _unpack(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise GGUFHeaderError(f"{getattr(f, 'name', 'GGUF')}: header ends early (truncated file?)")
    return struct.unpack(fmt, raw)[0]


def _string(f: BinaryIO) -> str:
    return f.read(_unpack(f, "<Q")).decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _unpack(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind != _ARRAY:
        raise GGUFHeaderError(f"{getattr(f, 'name', 'GGUF')}: unknown metadata value type {kind}")
    element, count = _unpack(f, "<I"), _unpack(f, "<Q")
    if count <= _SMALL_ARRAY:
        return [_value(f, element) for _ in range(count)]
    if element in _SCALARS:
        f.seek(count * struct.calcsize(_SCALARS[element]), 1)
    elif element == _STRING:
        for _ in range(count):
            f.seek(_unpack(f, "<Q"), 1)
    else:
        for _ in range(count):
            _value(f, element)
    return ArrayInfo(element, count)
