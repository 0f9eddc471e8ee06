"""llama.cpp's own quantizer, in-process: `gguf-q4_k_m` etc. turn the variant's full-precision GGUF export
into the quant type llama.cpp's `llama-quantize` would write (`llama_model_quantize`, same C code).

These steps never see the torch model: the build exports the dense (or pruned) result to an f32 GGUF
and calls `quantize_file`. The type mix inside a file is llama.cpp's choice (Q4_K_M keeps some tensors in
Q6_K; a row width not divisible by a K-quant's 256-weight block falls back to a 32-block type), so the
file's tensor census is recorded in the notes rather than assumed.

No importance matrix: llama.cpp 0.3.36's C API takes one (`llama_model_quantize_params.imatrix`, an array
of {name, float*, size}), but computing it needs every matmul's input activations, which this hook (file in,
file out) does not have.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
from pathlib import Path
from typing import Any, ClassVar

from pipeline import metrics as M
from pipeline.methods.base import Method, MethodError, register

INSTALL_HINT = "llama-cpp-python is not installed (or failed to build); run `bash scripts/install.sh`"

# llama.cpp's warning for each tensor whose row width its target block size does not divide
# (src/llama-quant.cpp `tensor_type_fallback`): "... - ncols 576 not divisible by 256 ... -> falling back to Q5_0".
_FALLBACK_LINE = re.compile(r"falling back to")


class GGUFQuant(Method):
    """One llama.cpp file type; subclasses generated from `GGUF_TYPES` only set the class facts."""

    library = "llama-cpp-python"
    kind = "quantize"
    artifact_format = "gguf"
    deterministic = True  # same file, same bytes: the quantizer is plain per-block arithmetic
    llama_type: ClassVar[str]  # llama.cpp's file type name, as `llama-quantize` spells it ("Q4_K_M")
    ftype_const: ClassVar[str]  # the llama_cpp constant ("LLAMA_FTYPE_MOSTLY_Q4_K_M")

    def apply(self, model: Any, ctx: Any) -> Any:
        raise MethodError(
            f"method {self.name!r} quantizes a GGUF file: the build exports the model and calls quantize_file, never apply"
        )

    def kernel(self, device: str, model: Any = None) -> str:
        return f"llama.cpp {self.llama_type} (GGUF)"

    def quantize_file(self, src: Path, dst: Path, *, threads: int, notes: dict[str, Any]) -> None:
        llama_cpp = _llama_cpp()
        params = llama_cpp.llama_model_quantize_default_params()
        params.nthread = int(threads)
        params.ftype = getattr(llama_cpp, self.ftype_const)
        dst = Path(dst)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        with _LogCapture(llama_cpp) as log:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            tmp.unlink(missing_ok=True)
            errors = " | ".join(log.errors[-2:])
            raise MethodError(
                f"method {self.name!r}: llama.cpp could not quantize {src.name} to {self.llama_type} "
                f"(llama_model_quantize returned {rc}{': ' + errors if errors else ''})"
            )
        os.replace(tmp, dst)
        notes[M.NOTE_GGUF_FTYPE] = self.llama_type
        notes[M.NOTE_GGUF_TENSOR_TYPES] = tensor_types(dst)
        notes[M.NOTE_GGUF_FALLBACK_TENSORS] = log.fallbacks


def tensor_types(path: Path) -> str:
    """Every tensor's ggml type, counted, most first: "Q5_0:180,F32:61,Q6_K:31"."""
    from pipeline.gguf_header import read_gguf_header

    counts = collections.Counter(t.type_name for t in read_gguf_header(path).tensors)
    return ",".join(f"{name}:{n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except Exception:  # noqa: BLE001 - ImportError, or an OSError from a shared library that failed to build
        raise MethodError(INSTALL_HINT) from None
    return llama_cpp


class _LogCapture:
    """Route llama.cpp's log here for one call (counting fallback warnings, keeping errors), forwarding
    each line to whatever callback was installed before, which is restored on exit.

    The logger is process-global in llama.cpp; quantizing is not meant to overlap another llama.cpp call
    that logs (the build quantizes once per variant)."""

    def __init__(self, llama_cpp: Any) -> None:
        self.llama_cpp = llama_cpp
        self.fallbacks = 0
        self.errors: list[str] = []
        self.previous = llama_cpp.llama_log_callback()
        self.previous_data = ctypes.c_void_p()
        self.callback: Any = None

    def __enter__(self) -> _LogCapture:
        lc = self.llama_cpp
        lc.llama_log_get(ctypes.byref(self.previous), ctypes.byref(self.previous_data))
        previous = self.previous if ctypes.cast(self.previous, ctypes.c_void_p).value else None

        @lc.llama_log_callback
        def capture(level: int, text: bytes, user_data: Any) -> None:
            line = text.decode("utf-8", "replace")
            if _FALLBACK_LINE.search(line):
                self.fallbacks += 1
            if level == 4:  # GGML_LOG_LEVEL_ERROR (ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5)
                self.errors.append(line.strip())
            if previous is not None:
                previous(level, text, user_data)

        self.callback = capture  # must outlive the C side's use of it
        lc.llama_log_set(capture, self.previous_data)
        return self

    def __exit__(self, *exc: object) -> None:
        self.llama_cpp.llama_log_set(self.previous, self.previous_data)


# name -> (llama.cpp file type, summary)
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "gguf-f32": ("F32", "llama.cpp GGUF, every tensor float32 (the like-for-like full-precision base)"),
    "gguf-f16": ("F16", "llama.cpp GGUF, 2-D weights float16"),
    "gguf-q8_0": ("Q8_0", "llama.cpp Q8_0: 8-bit, blocks of 32 with an fp16 scale (8.5 bits/weight)"),
    "gguf-q6_k": ("Q6_K", "llama.cpp Q6_K: 6-bit k-quant super-blocks of 256 (6.56 bits/weight)"),
    "gguf-q5_k_m": ("Q5_K_M", "llama.cpp Q5_K_M: 5-bit k-quant, attn_v/ffn_down partly Q6_K"),
    "gguf-q4_k_m": ("Q4_K_M", "llama.cpp Q4_K_M: 4-bit k-quant, attn_v/ffn_down partly Q6_K"),
    "gguf-q4_0": ("Q4_0", "llama.cpp Q4_0: 4-bit, blocks of 32 with an fp16 scale (4.5 bits/weight)"),
    "gguf-iq4_xs": ("IQ4_XS", "llama.cpp IQ4_XS: 4-bit non-linear grid, super-blocks of 256 (4.25 bits/weight)"),
    "gguf-q3_k_m": ("Q3_K_M", "llama.cpp Q3_K_M: 3-bit k-quant, attention/ffn_down partly Q4_K/Q5_K"),
    "gguf-q2_k": ("Q2_K", "llama.cpp Q2_K: 2-bit k-quant, attn_v/ffn_down Q3_K/Q4_K"),
}


def _ftype_const(llama_type: str) -> str:
    return "LLAMA_FTYPE_ALL_F32" if llama_type == "F32" else f"LLAMA_FTYPE_MOSTLY_{llama_type}"


def _class_name(name: str) -> str:
    return "GGUF" + "".join(part.upper() for part in name.removeprefix("gguf-").split("_"))


for _name, (_type, _summary) in GGUF_TYPES.items():
    register(
        type(
            _class_name(_name),
            (GGUFQuant,),
            {
                "__module__": __name__,
                "__annotations__": {},
                "name": _name,
                "summary": _summary,
                "llama_type": _type,
                "ftype_const": _ftype_const(_type),
            },
        )
    )
