"""A built (dense or pruned) transformers model -> an f32 GGUF llama.cpp can load and quantize.

GGUF-sourced models keep their source file's header (every metadata field, the tokenizer included): the
variant's tensors replace the source's, name for name and shape for shape, after undoing what transformers
did to them on load (`transformers.modeling_gguf_pytorch_utils`: Llama q/k rows reverse-permuted, Gemma
norms minus 1). Safetensors models go through llama.cpp's own converter.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.models import ModelError

if TYPE_CHECKING:
    import numpy as np

# Header fields the writer sets itself (architecture, alignment), the reader's own pseudo-fields, and the
# file type, rewritten as ALL_F32.
_SKIP_FIELDS = ("general.architecture", "general.alignment", "general.file_type")


def export_gguf(
    model: Any,
    tokenizer: Any,
    out_path: Path,
    *,
    source_gguf: Path | None,
    model_name: str,
    workdir: Path,
) -> Path:
    """Write `model` as an f32 GGUF at `out_path` (atomically) and return the path.

    `source_gguf`: the published GGUF the model was loaded from (its header and tensor names are reused);
    None: a safetensors model, converted by llama.cpp's convert_hf_to_gguf.py via `workdir`.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        if source_gguf is None:
            _export_via_converter(model, tokenizer, tmp, Path(workdir))
        else:
            _export_like_source(model, tmp, Path(source_gguf), model_name)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _export_via_converter(model: Any, tokenizer: Any, dst: Path, workdir: Path) -> None:
    from pipeline.models.gguf_convert import convert_hf_dir

    hf_dir = workdir / "hf-export"
    hf_dir.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(hf_dir, safe_serialization=True)
        tokenizer.save_pretrained(hf_dir)
        convert_hf_dir(hf_dir, dst, outtype="f32")
    finally:
        shutil.rmtree(hf_dir, ignore_errors=True)  # a full copy of the weights, only the converter's input


# -- GGUF-sourced: the source's header, the variant's tensors ------------------------------------------


def _permute_qk(arrays: dict[str, Any]) -> Callable[[str, np.ndarray], np.ndarray]:
    """llama.cpp's converter (`LlamaModel.permute`) interleaves rotary halves of q/k rows; transformers
    reverse-permuted them on load (`LlamaTensorProcessor`), so permute forward again."""
    n_head = int(arrays["attention.head_count"])
    n_head_kv = int(arrays.get("attention.head_count_kv") or n_head)

    def undo(name: str, w: np.ndarray) -> np.ndarray:
        if ".attn_q." in name or ".attn_k." in name:
            heads = n_head if ".attn_q." in name else n_head_kv
            return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        return w

    return undo


def _norm_plus_one(arrays: dict[str, Any]) -> Callable[[str, np.ndarray], np.ndarray]:
    """Gemma's RMSNorm scales by (1 + w); llama.cpp's converter stores 1 + w and transformers subtracted 1
    on load (`Gemma2TensorProcessor`), so add it back."""

    def undo(name: str, w: np.ndarray) -> np.ndarray:
        return w + 1 if "norm.weight" in name else w

    return undo


def _identity(arrays: dict[str, Any]) -> Callable[[str, np.ndarray], np.ndarray]:
    """Architectures whose tensors transformers loads unchanged (the base `TensorProcessor`)."""
    return lambda name, w: w


# GGUF architecture -> the inverse of transformers' load-time processing. Tested: llama, gemma3.
_UNDO: dict[str, Callable[[dict[str, Any]], Callable[[str, np.ndarray], np.ndarray]]] = {
    "llama": _permute_qk,
    "gemma2": _norm_plus_one,
    "gemma3": _norm_plus_one,
    "qwen2": _identity,
    "qwen3": _identity,
}


def _export_like_source(model: Any, dst: Path, source: Path, model_name: str) -> None:
    import numpy as np
    import torch
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    reader = GGUFReader(str(source))
    arch_field = reader.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else "unknown"
    if arch not in _UNDO:
        raise ModelError(
            f"models `{model_name}`: cannot export a {arch!r} GGUF source to GGUF (mapped architectures: "
            f"{', '.join(sorted(_UNDO))}); use a safetensors source (llama.cpp's converter) or a GGUF of a mapped architecture"
        )
    prefix = f"{arch}."
    arch_fields = {
        k.removeprefix(prefix): f.contents()
        for k, f in reader.fields.items()
        if k.startswith(prefix) and len(f.data) == 1
    }
    undo = _UNDO[arch](arch_fields)

    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())
    try:
        to_hf = get_gguf_hf_weights_map(model, processor)
    except NotImplementedError as exc:
        raise ModelError(
            f"models `{model_name}`: transformers cannot map {arch!r} tensor names: {str(exc).splitlines()[0]}"
        ) from None
    state = model.state_dict()

    writer = GGUFWriter(str(dst), arch=arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in _SKIP_FIELDS:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(LlamaFileType.ALL_F32)

    used: set[tuple[int, int]] = set()  # storages written (a tied lm_head shares token_embd's)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists ne0 first; numpy rows first
        hf_name = to_hf.get(t.name)
        if hf_name is not None and hf_name in state:
            tensor = state[hf_name]
            used.add((tensor.untyped_storage().data_ptr(), tensor.storage_offset()))
            w = undo(t.name, tensor.detach().to("cpu", torch.float32).numpy())
            if tuple(w.shape) != shape:
                raise ModelError(
                    f"models `{model_name}`: {hf_name} has shape {tuple(w.shape)} but GGUF tensor {t.name} has {shape}; "
                    "a method changed a weight's shape, which a GGUF export of this source cannot hold"
                )
        else:  # not a model parameter (e.g. rope_freqs): the source's, at full precision
            w = dequantize(t.data, t.tensor_type).reshape(shape)
        writer.add_tensor(t.name, np.ascontiguousarray(w, dtype=np.float32))

    missing = [
        name
        for name, tensor in state.items()
        if (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) not in used and tensor.numel()
    ]
    if missing:
        raise ModelError(
            f"models `{model_name}`: {len(missing)} weight(s) of the built model have no tensor in GGUF source "
            f"{source.name} (first: {missing[0]}); export this model from a safetensors source instead"
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
