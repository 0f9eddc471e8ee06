"""What a method stores per weight, by its format's definition: the bytes `predict` assumes a kernel reads when
nothing was built. A measured variant's fidelity record (`bits_per_weight`) overrides these.

Bits per weight count the decoder's linear layers (values + their scales / zero points); the output head and
the embedding stay in the model's dtype unless the format says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFormat:
    method: str
    bits_per_weight: float | None  # None: the model's dtype (the method stores dense weights)
    compute: str  # dtype the matmul runs in once weights are read: "dense" (the model's dtype), int8, fp8
    definition: str  # where the bits come from
    head_bits: float | None = None  # output head (lm_head); None: the model's dtype
    needs_kernel: str = ""  # the kernel that must read the stored form for the bytes to be saved


def _gguf(method: str, bits: float, head: float, what: str) -> WeightFormat:
    return WeightFormat(method, bits, "dense", what, head_bits=head, needs_kernel="llama.cpp")


FORMATS: dict[str, WeightFormat] = {
    "none": WeightFormat("none", None, "dense", "the published weights in the model's dtype"),
    # torchao
    "int8-weight-only": WeightFormat(
        "int8-weight-only",
        8.0,
        "dense",
        "int8 per output channel + a bf16 scale per row (~8.0 bits)",
        needs_kernel="torchao int8 weight-only (compiled)",
    ),
    "int4-weight-only": WeightFormat(
        "int4-weight-only",
        4.25,
        "dense",
        "int4, bf16 scale and zero per group of 128 (4 + 32/128)",
        needs_kernel="torchao int4 (tinygemm / opaque CPU)",
    ),
    "w8a8-dynamic": WeightFormat(
        "w8a8-dynamic",
        8.0,
        "int8",
        "int8 weights per channel, activations quantized per token",
        needs_kernel="torchao int8 dynamic",
    ),
    # bitsandbytes
    "bnb-nf4": WeightFormat(
        "bnb-nf4", 4.5, "dense", "NF4, an fp32 absmax per block of 64 (4 + 32/64)", needs_kernel="bitsandbytes 4-bit"
    ),
    "bnb-fp4": WeightFormat(
        "bnb-fp4", 4.5, "dense", "FP4, an fp32 absmax per block of 64 (4 + 32/64)", needs_kernel="bitsandbytes 4-bit"
    ),
    "bnb-int8": WeightFormat(
        "bnb-int8",
        8.0,
        "int8",
        "LLM.int8(): int8 rows + fp32 row scales, fp16 outliers",
        needs_kernel="bitsandbytes int8",
    ),
    # optimum-quanto, hqq
    "quanto-int8": WeightFormat("quanto-int8", 8.0, "dense", "int8 per channel + scale", needs_kernel="quanto int8"),
    "quanto-int4": WeightFormat(
        "quanto-int4", 4.25, "dense", "int4, scale and shift per group of 128", needs_kernel="quanto int4"
    ),
    "quanto-float8": WeightFormat(
        "quanto-float8", 8.0, "fp8", "float8 e4m3 per channel + scale", needs_kernel="quanto fp8 (Marlin)"
    ),
    "hqq": WeightFormat(
        "hqq",
        4.5,
        "dense",
        "4-bit, scale and zero per group of 64 (4 + 32/64)",
        needs_kernel="hqq (torchao / bitblas backend)",
    ),
    # llm-compressor (compressed-tensors)
    "gptq": WeightFormat(
        "gptq",
        4.125,
        "dense",
        "W4A16: int4, a bf16 scale per group of 128 (4 + 16/128)",
        needs_kernel="Marlin / machete W4A16",
    ),
    "awq": WeightFormat(
        "awq",
        4.25,
        "dense",
        "W4A16 asymmetric: int4, scale + zero per group of 128",
        needs_kernel="Marlin / machete W4A16",
    ),
    "rtn": WeightFormat(
        "rtn",
        4.125,
        "dense",
        "W4A16 round-to-nearest, bf16 scale per group of 128",
        needs_kernel="Marlin / machete W4A16",
    ),
    "w8a8": WeightFormat(
        "w8a8",
        8.0,
        "int8",
        "W8A8 int8: per-channel weight scales, per-token activation scales",
        needs_kernel="cutlass int8 GEMM",
    ),
    # pruning: zeros stored in dense tensors read as many bytes as before
    "magnitude-prune": WeightFormat(
        "magnitude-prune", None, "dense", "unstructured zeros in dense tensors (no bytes saved)"
    ),
    "wanda": WeightFormat("wanda", None, "dense", "unstructured zeros in dense tensors (no bytes saved)"),
    "sparsegpt": WeightFormat("sparsegpt", None, "dense", "zeros in dense tensors (no bytes saved)"),
    "magnitude-2of4": WeightFormat(
        "magnitude-2of4",
        None,
        "dense",
        "2:4 zeros in dense tensors; a 2:4 sparse kernel (cuSPARSELt) would read half the values + 2-bit indices",
        needs_kernel="2:4 semi-structured sparse",
    ),
    # llama.cpp file types: block formats, k-quant mixtures as llama.cpp's quantize tool sizes them on Llama-3-8B
    "gguf-f32": _gguf("gguf-f32", 32.0, 32.0, "GGUF F32"),
    "gguf-f16": _gguf("gguf-f16", 16.0, 16.0, "GGUF F16"),
    "gguf-q8_0": _gguf("gguf-q8_0", 8.5, 8.5, "Q8_0: 8-bit blocks of 32 + an fp16 scale (8.5 bits)"),
    "gguf-q6_k": _gguf("gguf-q6_k", 6.5625, 6.5625, "Q6_K: 6-bit super-blocks of 256 (6.5625 bits)"),
    "gguf-q5_k_m": _gguf("gguf-q5_k_m", 5.70, 6.5625, "Q5_K_M mixture (5.70 bits/weight on Llama-3-8B), output Q6_K"),
    "gguf-q4_k_m": _gguf("gguf-q4_k_m", 4.89, 6.5625, "Q4_K_M mixture (4.89 bits/weight on Llama-3-8B), output Q6_K"),
    "gguf-q4_0": _gguf("gguf-q4_0", 4.5, 6.5625, "Q4_0: 4-bit blocks of 32 + an fp16 scale (4.5 bits), output Q6_K"),
    "gguf-iq4_xs": _gguf("gguf-iq4_xs", 4.25, 6.5625, "IQ4_XS: 4.25 bits, output Q6_K"),
    "gguf-q3_k_m": _gguf("gguf-q3_k_m", 3.91, 6.5625, "Q3_K_M mixture (3.91 bits/weight on Llama-3-8B), output Q6_K"),
    "gguf-q2_k": _gguf("gguf-q2_k", 3.35, 6.5625, "Q2_K mixture (3.35 bits/weight on Llama-3-8B), output Q6_K"),
}


class UnknownFormat(KeyError):
    pass


def weight_format(method: str) -> WeightFormat:
    try:
        return FORMATS[method]
    except KeyError:
        raise UnknownFormat(f"--method {method!r}: no format definition; known: {', '.join(sorted(FORMATS))}") from None
