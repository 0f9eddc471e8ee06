"""variant -> GGUF file for llama.cpp: dense steps (none, prune) on the transformers model, export to an f32
GGUF, then the GGUF quantizer step; account what the file stores and how far its logits moved from the base.

A variant with no step that changes weights is the model as published: a GGUF source's own file (what you
would deploy), or the f32 export of a safetensors model.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from pathlib import Path

from pipeline import metrics as M
from pipeline.config.recipe import ModelSpec, VariantSpec
from pipeline.methods import MethodError, make_method, validate_steps
from pipeline.models import ResolvedModel
from pipeline.results import FidelityRecord
from pipeline.variants.artifact import GGUFArtifact, PeakMemory, build_artifact
from pipeline.variants.reference import BaseReference


def gguf_kl_and_agreement(path: Path, base: BaseReference, *, threads: int) -> tuple[float, float]:
    """Mean per-token KL(base ‖ GGUF) of the next-token distribution on the base's held-out token ids, and
    top-1 agreement: llama.cpp's logits against the transformers base model's."""
    import numpy as np

    from pipeline.bindings.llamacpp import LlamaCppModel

    n_ctx = max(int(ids.shape[-1]) for ids in base.input_ids) + 8
    kl_sum, agree, count = 0.0, 0, 0
    with LlamaCppModel.open(path, n_ctx=n_ctx, n_threads=threads, logits_all=True) as llama:
        for ids, lp_base in zip(base.input_ids, base.logprobs()):
            lp = llama.logprobs([int(t) for t in ids[0].tolist()])
            ref = lp_base.double().numpy()
            if lp.shape != ref.shape:
                raise ValueError(
                    f"llama.cpp log-probs {lp.shape} do not match the base reference's {ref.shape} (different vocabulary?)"
                )
            kl_sum += float((np.exp(ref) * (ref - lp)).sum())
            agree += int((lp.argmax(-1) == ref.argmax(-1)).sum())
            count += lp.shape[0]
    return max(kl_sum / max(count, 1), 0.0), agree / max(count, 1)


def build_gguf_artifact(
    resolved: ResolvedModel,
    model_spec: ModelSpec,
    variant: VariantSpec,
    *,
    base: BaseReference | None = None,
    data_dir: str | None = None,
    threads: int = 1,
    workdir: Path | None = None,
) -> GGUFArtifact:
    """The GGUF file llama.cpp will score and time, with its FidelityRecord. Temporary files live in a
    fresh directory under `workdir` (the system temp dir by default); `GGUFArtifact.close()` removes them."""
    from pipeline.bindings.llamacpp import cpu_features, system_info
    from pipeline.methods.llamacpp_methods import tensor_types
    from pipeline.models.gguf_facts import tensor_census
    from pipeline.variants.gguf_export import export_gguf

    steps = [make_method(s.method, s.params) for s in variant.pipeline_steps]
    problem = validate_steps([(s.method, s.params) for s in variant.pipeline_steps])
    if problem:
        raise MethodError(f"variant {variant.name!r}: {problem}")
    quantizer = steps[-1] if steps[-1].artifact_format == "gguf" else None
    dense_steps = [s for s in variant.pipeline_steps if make_method(s.method, s.params).artifact_format is None]
    for m in steps:
        if m.artifact_format is None and m.kind == "quantize":
            raise MethodError(
                f"method {m.name!r} quantizes inside transformers; runtime llama.cpp takes dense or pruned weights only"
            )
    changes_weights = quantizer is not None or any(m.kind != "none" for m in steps)
    tmp = Path(tempfile.mkdtemp(prefix="shrinkgate-gguf-", dir=workdir))
    started = time.perf_counter()
    notes: dict[str, object] = {}
    sparsity, per_layer, zero_fraction = 0.0, {}, None
    with PeakMemory("cpu") as peak:
        if not changes_weights and resolved.gguf_path is not None:
            path, published = Path(resolved.gguf_path), True  # as published: the very file people download
        else:
            published = False
            dense = (
                VariantSpec(name=variant.name, steps=dense_steps)
                if dense_steps
                else VariantSpec(name=variant.name, method="none")
            )
            # Dense steps on the transformers model (prune), then its weights go to an f32 GGUF.
            built = build_artifact(
                resolved, model_spec, dense, device="cpu", data_dir=data_dir, measure_serialized=False
            )
            sparsity, per_layer, zero_fraction = (
                built.fidelity.sparsity,
                built.fidelity.per_layer_sparsity,
                built.fidelity.zero_fraction,
            )
            notes.update(built.notes)
            f32 = export_gguf(
                built.model,
                built.tokenizer,
                tmp / "f32.gguf",
                source_gguf=resolved.gguf_path,
                model_name=model_spec.name,
                workdir=tmp,
            )
            del built
            path = f32
            if quantizer is not None:
                path = tmp / f"{quantizer.name}.gguf"
                quantizer.quantize_file(f32, path, threads=threads, notes=notes)
                f32.unlink()
    build_seconds = time.perf_counter() - started
    census = tensor_census(path)
    with open(path, "rb") as f:  # the whole file: tensors and the header a server reads them with
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    features = " ".join(cpu_features())
    kl = top1 = None
    if base is not None:
        kl, top1 = gguf_kl_and_agreement(path, base, threads=threads)
        notes[M.TAG_HELDOUT_SHA256] = base.texts_sha256
    notes[M.TAG_RUNTIME_CPU_FEATURES] = features
    notes[M.NOTE_RUNTIME_SYSTEM_INFO] = system_info()
    notes[M.NOTE_GGUF_FILE_TYPE] = census.file_type
    notes[M.NOTE_GGUF_TENSOR_TYPES] = tensor_types(path)
    notes[M.NOTE_GGUF_PUBLISHED_FILE] = str(published).lower()
    loaded = f"llama.cpp {census.summary()}"
    fidelity = FidelityRecord(
        weight_bytes=census.weight_bytes,
        linear_weight_bytes=census.linear_weight_bytes,
        linear_weight_count=census.linear_weight_count,
        bits_per_weight=census.bits_per_weight,
        bytes_read_per_token=census.bytes_read_per_token,
        sparsity=sparsity,
        kernel=f"{loaded}, {features}" if features else loaded,
        build_seconds=build_seconds,
        build_peak_mem_mb=peak.peak_mb,
        per_layer_sparsity=per_layer,
        kl_vs_base=kl if kl is None or math.isfinite(kl) else None,
        top1_agree_vs_base=top1,
        serialized_bytes=census.file_bytes,
        serializable=True,
        dense_fallback=False,  # llama.cpp's kernels read the stored blocks (the tensor types loaded)
        runtime_weight_bytes=census.weight_bytes,
        zero_fraction=zero_fraction,
        stored_bytes_per_token=census.bytes_read_per_token,
        kernel_observed=f"{loaded} ({features})",
        kernel_census=census.summary(),
        stored_sha256=digest,
        extra=notes,
    )
    return GGUFArtifact(
        model_name=model_spec.name,
        variant_name=variant.name,
        role=model_spec.role,
        gguf_path=path,
        provenance=resolved.provenance,
        fidelity=fidelity,
        methods=tuple(m.name for m in steps),
        notes=notes,
        workdir=tmp,
    )
