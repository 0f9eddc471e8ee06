"""variant -> artifact: load the model, apply each method step in order, account what it stores."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import metrics as M
from pipeline.config.recipe import ModelSpec, VariantSpec
from pipeline.methods import BuildContext, Method, MethodError, NotSerializable, make_method, registry, validate_steps
from pipeline.models import ResolvedModel, load_model
from pipeline.results import FidelityRecord, Provenance
from pipeline.variants.observe import observe_reads
from pipeline.variants.reference import BaseReference, compute_base_reference, distance_to_base
from pipeline.variants.storage import (
    check_nm_pattern,
    dir_bytes,
    pruned_summary,
    sparsity_summary,
    storage_bytes,
    stored_sha256,
    zero_positions,
)


@dataclass
class Artifact:
    """The very object that is scored and timed."""

    model_name: str
    variant_name: str
    role: str
    model: Any
    tokenizer: Any
    provenance: Provenance
    fidelity: FidelityRecord
    device: str
    methods: tuple[str, ...]
    notes: dict[str, Any] = field(default_factory=dict)
    storer: Any = None  # the step whose form the weights end in: it saves them (`save_checkpoint`)
    # `Built`: in memory only, computed on as loaded (a dense or dequantizing kernel may read other bytes)
    path: None = None
    gguf_path: None = None
    runs_stored_form: bool = False

    @property
    def method_label(self) -> str:
        return "+".join(self.methods)

    def close(self) -> None:
        return None

    def export(self, out_dir: Path, about: dict[str, Any]) -> Path:
        return save_checkpoint(self, out_dir, about)


def save_checkpoint(artifact: Artifact, out_dir: Path, about: dict[str, Any] | None = None) -> Path:
    """The variant as a checkpoint a server loads: its storing method's own format (llm-compressor's methods:
    a compressed-tensors checkpoint; others: safetensors via `save_pretrained`), the tokenizer, and
    `shrinkgate.json` (model, variant, methods, provenance, plus `about`). NotSerializable when the method's
    library cannot save this form."""
    import json

    if artifact.storer is None:
        raise NotSerializable(f"variant {artifact.variant_name!r} was built without its storing method")
    if artifact.fidelity.serializable is False:
        raise NotSerializable(f"variant {artifact.variant_name!r}: {artifact.fidelity.serializable_reason}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with artifact.storer.stored_form(artifact.model):
        artifact.storer.serialize(artifact.model, out_dir)
    artifact.tokenizer.save_pretrained(out_dir)
    doc = {
        "model": artifact.model_name,
        "variant": artifact.variant_name,
        "methods": list(artifact.methods),
        "provenance": artifact.provenance.tags(),
        **(about or {}),
    }
    (out_dir / "shrinkgate.json").write_text(json.dumps(doc, indent=1, default=str))
    return out_dir


@dataclass
class GGUFArtifact:
    """A variant as a GGUF file for llama.cpp: the very file that is scored and timed."""

    model_name: str
    variant_name: str
    role: str
    gguf_path: Path
    provenance: Provenance
    fidelity: FidelityRecord
    methods: tuple[str, ...]
    notes: dict[str, Any] = field(default_factory=dict)
    workdir: Path | None = None  # temporary files of this build (deleted by `close`); None: a published file
    runs_stored_form: bool = True  # llama.cpp's kernels read the stored blocks

    @property
    def method_label(self) -> str:
        return "+".join(self.methods)

    @property
    def path(self) -> Path:
        return self.gguf_path

    def close(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def export(self, out_dir: Path, about: dict[str, Any]) -> Path:
        """The file as `<model>-<variant>.gguf` with `shrinkgate.json` (redacted) beside it."""
        import json

        from pipeline.redact import redact

        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{self.model_name}-{self.variant_name}.gguf"
        shutil.copyfile(self.gguf_path, target)
        doc = about | {"methods": list(self.methods), "provenance": self.provenance.tags()}
        (out_dir / "shrinkgate.json").write_text(redact(json.dumps(doc, indent=1, default=str)))
        return target


class PeakMemory:
    """Peak process RSS (CPU) or CUDA allocation while a block runs, in MiB."""

    def __init__(self, device: str, interval_s: float = 0.05) -> None:
        self.device, self.interval_s, self.peak_mb = device, interval_s, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                    self._stop.wait(self.interval_s)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            import torch

            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def needs_model_check(variant: VariantSpec) -> bool:
    """Whether any step of the variant has a `check_model` (so reading the model's config is worth it)."""
    return any(registry()[s.method].check_model is not Method.check_model for s in variant.pipeline_steps)


def check_variant_fits(variant: VariantSpec, config: Any) -> str | None:
    """One-line reason a variant cannot be applied to a model with this config (shapes, group sizes), or None."""
    for step in variant.pipeline_steps:
        problem = make_method(step.method, step.params).check_model(config)
        if problem:
            return problem
    return None


def _check_before_weights(resolved: ResolvedModel, model_spec: ModelSpec, variant: VariantSpec) -> None:
    """Read config.json only and let every step refuse a model it cannot handle (Method.check_model)."""
    if not needs_model_check(variant):
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolved.dense_dir, trust_remote_code=model_spec.trust_remote_code)
    problem = check_variant_fits(variant, config)
    if problem:
        raise MethodError(problem)


def _serialized(method: Method, model, *, measure: bool) -> tuple[int | None, bool | None, str | None]:
    """(bytes, serializable, reason): save to a temp dir with safetensors, measure, delete."""
    if not measure:
        return None, method.not_serializable is None, method.not_serializable
    out = Path(tempfile.mkdtemp(prefix="shrinkgate-save-"))
    try:
        method.serialize(model, out)
        return dir_bytes(out), True, None
    except NotSerializable as exc:
        return None, False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a library that cannot save this form: record its reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, False, f"{method.library}: {type(exc).__name__}: {first}"[:300]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def apply_steps(model, steps: Sequence[Method], ctx: BuildContext):
    """Apply each configured method to a loaded model, in order: the one place methods transform a model
    (`build_artifact`, `shrinkgate speed`). Load-time quantization (`load_kwargs`) has happened already."""
    for method in steps:
        model = method.apply(model, ctx)
        ctx.previous = (*ctx.previous, method.name)
        ctx.pruned = ctx.pruned or method.kind == "prune"
    return model


def build_artifact(
    resolved: ResolvedModel,
    model_spec: ModelSpec,
    variant: VariantSpec,
    *,
    device: str,
    calibration=None,
    base: BaseReference | None = None,
    data_dir: str | None = None,
    measure_serialized: bool = True,
) -> Artifact:
    """Load, apply each step in order, and account what the result stores and how far it moved.

    `base`: the unmodified model's `BaseReference` (compute once per model with
    `pipeline.variants.reference.compute_base_reference`); without it weight_rel_error / KL / top-1 stay None.
    `calibration`: a default calibration source (str) for steps that leave their `calibration` param unset,
    or a legacy `n -> texts` callable. `data_dir`: the MMLU JSONL dir (eval.data_dir).
    Order of checks: params and step order (no I/O), then `check_model` on config.json, then weights.
    """
    steps = [make_method(s.method, s.params) for s in variant.pipeline_steps]
    dev_kind = "cuda" if device.startswith("cuda") else device
    for m in steps:
        if dev_kind not in m.devices:
            raise MethodError(f"method {m.name!r} runs on {', '.join(m.devices)} only; this run is on {device}")
    problem = validate_steps([(s.method, s.params) for s in variant.pipeline_steps])
    if problem:
        raise MethodError(f"variant {variant.name!r}: {problem}")
    _check_before_weights(resolved, model_spec, variant)
    started = time.perf_counter()
    with PeakMemory(device) as peak:
        loaded = load_model(resolved, model_spec, device=device, load_kwargs=steps[0].load_kwargs(device))
        ctx = BuildContext(
            tokenizer=loaded.tokenizer,
            device=device,
            calibration=calibration if callable(calibration) else None,
            default_calibration=calibration if isinstance(calibration, str) else None,
            data_dir=data_dir,
        )
        # `sparsity` is what the pruning steps set to zero: zeros after the last pruning step that were not
        # zeros before the first, counted before a quantizer adds grid zeros (NF4 has a 0) of its own.
        prunes = [i for i, m in enumerate(steps) if m.kind == "prune"]
        model, pruned = loaded.model, None
        if prunes:
            model = apply_steps(model, steps[: prunes[0]], ctx)
            before = zero_positions(model)
            model = apply_steps(model, steps[prunes[0] : prunes[-1] + 1], ctx)
            pruned = pruned_summary(model, before)
            del before
        model = apply_steps(model, steps[prunes[-1] + 1 :] if prunes else steps, ctx)
        model.eval()
    build_seconds = time.perf_counter() - started

    # The step whose form the weights end in decides how they are stored and saved.
    storer = next((m for m in reversed(steps) if m.kind != "none"), steps[0])
    zeros = sparsity_summary(model)
    if pruned is None:
        pruned = type(zeros)(0.0, {name: 0.0 for name in zeros.per_layer})
    # A layer whose matmul ran dense on dequantized weights reads its dense bytes every call.
    reads = observe_reads(model, compressed=any(m.kind != "none" for m in steps))
    observed = reads.observation
    runtime = reads.held
    with storer.stored_form(model):
        stored = storage_bytes(model)
        digest = stored_sha256(model)
        serialized_bytes, serializable, reason = _serialized(storer, model, measure=measure_serialized)
    nm = next((m.nm_pattern() for m in steps if m.nm_pattern()), None)
    distance = distance_to_base(model, base)
    extra = dict(ctx.notes)
    if nm:
        extra["nm_pattern"] = f"{nm[0]}:{nm[1]}"
    if base is not None:
        extra[M.TAG_HELDOUT_SHA256] = base.texts_sha256
        extra[M.NOTE_HELDOUT_TOKENS] = int(sum(ids.shape[-1] for ids in base.input_ids))
    fidelity = FidelityRecord(
        weight_bytes=stored.weight_bytes,
        linear_weight_bytes=stored.linear_bytes,
        linear_weight_count=stored.linear_count,
        bits_per_weight=stored.bits_per_weight,
        bytes_read_per_token=reads.bytes_per_token,
        sparsity=pruned.sparsity,
        kernel=" then ".join(m.kernel(device, model) for m in steps) + f"; observed: {observed.summary()}",
        build_seconds=build_seconds,
        build_peak_mem_mb=peak.peak_mb,
        per_layer_sparsity=pruned.per_layer,
        weight_rel_error=distance.weight_rel_error,
        kl_vs_base=distance.kl_vs_base,
        top1_agree_vs_base=distance.top1_agree_vs_base,
        serialized_bytes=serialized_bytes,
        serializable=serializable,
        serializable_reason=reason,
        nm_pattern_ok=check_nm_pattern(model, *nm) if nm else None,
        dense_fallback=observed.dense_fallback,
        runtime_weight_bytes=runtime.weight_bytes,
        zero_fraction=zeros.sparsity,
        stored_bytes_per_token=reads.stored_bytes_per_token,
        kernel_observed=observed.summary(),
        kernel_observed_ops=observed.ops_tag(),
        kernel_census=observed.census_tag(),
        stored_sha256=digest,
        extra=extra,
    )
    return Artifact(
        model_name=model_spec.name,
        variant_name=variant.name,
        role=model_spec.role,
        model=model,
        tokenizer=loaded.tokenizer,
        provenance=resolved.provenance,
        fidelity=fidelity,
        device=device,
        methods=tuple(m.name for m in steps),
        notes=dict(ctx.notes),
        storer=storer,
    )


def base_reference_for(
    resolved: ResolvedModel,
    model_spec: ModelSpec,
    *,
    device: str,
    data_dir: str | None = None,
    cache: bool = True,
) -> BaseReference:
    """The unmodified model's `BaseReference`, computed once per model and cached on disk.

    The cache entry (under the shrinkgate cache dir, `baseref/`) is keyed by the dense weights' location and
    provenance, dtype, device kind, the held-out text and the library versions, so every process of a sweep
    (local or another executor on this machine) reuses one reference; KL of `none` is then exactly 0.
    """
    import gc
    import hashlib
    import json

    import torch
    import transformers

    from pipeline.data.calibration import heldout_texts
    from pipeline.models.bundled import cache_root
    from pipeline.variants.reference import FIDELITY_THREADS, HELDOUT_SEQ_LEN, HELDOUT_TEXTS

    texts = heldout_texts(HELDOUT_TEXTS, data_dir=data_dir)
    path = None
    if cache:
        key = json.dumps(
            {
                "dense_dir": str(resolved.dense_dir),
                "files": sorted(
                    (p.name, p.stat().st_size, p.stat().st_mtime_ns)
                    for p in Path(resolved.dense_dir).glob("*.safetensors")
                ),
                "provenance": resolved.provenance.__dict__,
                "dtype": model_spec.dtype,
                "device": "cuda" if device.startswith("cuda") else device,
                "texts": hashlib.sha256("\n\n".join(texts).encode()).hexdigest(),
                "seq_len": HELDOUT_SEQ_LEN,
                "threads": FIDELITY_THREADS,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "v": 1,
            },
            sort_keys=True,
            default=str,
        )
        path = cache_root() / "baseref" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
        if path.is_file():
            return BaseReference.load(path)
    loaded = load_model(resolved, model_spec, device=device)
    try:
        return compute_base_reference(
            loaded.model, loaded.tokenizer, model_name=model_spec.name, texts=texts, out_path=path
        )
    finally:
        del loaded
        gc.collect()
