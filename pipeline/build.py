"""variant -> artifact: load the model, apply each method step in order, account what it stores."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.fidelity import StorageSummary, check_nm_pattern
from pipeline.methods import BuildContext, MethodError, get_method
from pipeline.models import ResolvedModel, load_model
from pipeline.recipe import ModelSpec, VariantSpec
from pipeline.results import FidelityRecord, Provenance


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

    @property
    def method_label(self) -> str:
        return "+".join(self.methods)


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


def build_artifact(
    resolved: ResolvedModel, model_spec: ModelSpec, variant: VariantSpec, *, device: str, calibration=None
) -> Artifact:
    steps = [(get_method(s.method), s) for s in variant.pipeline_steps]
    parsed = [(m, m.parse(s.params)) for m, s in steps]
    for i, (m, _) in enumerate(parsed):
        dev_kind = "cuda" if device.startswith("cuda") else device
        if dev_kind not in m.devices:
            raise MethodError(f"method {m.name!r} runs on {', '.join(m.devices)} only; this run is on {device}")
        if i > 0 and m.quantizes_at_load:
            raise MethodError(f"method {m.name!r} quantizes at load time, so it must be the first step of variant {variant.name!r}")
    first, first_params = parsed[0]
    started = time.perf_counter()
    with PeakMemory(device) as peak:
        loaded = load_model(resolved, model_spec, device=device, load_kwargs=first.load_kwargs(first_params, device))
        ctx = BuildContext(tokenizer=loaded.tokenizer, device=device, calibration=calibration)
        model = loaded.model
        for m, p in parsed:
            model = m.apply(model, p, ctx)
        model.eval()
    build_seconds = time.perf_counter() - started
    storage = StorageSummary(model)
    nm = next((m.nm_pattern(p) for m, p in parsed if m.nm_pattern(p)), None)
    last, last_params = parsed[-1]
    fidelity = FidelityRecord(
        weight_bytes=storage.weight_bytes,
        linear_weight_bytes=storage.linear_bytes,
        linear_weight_count=storage.linear_count,
        bits_per_weight=storage.bits_per_weight,
        bytes_read_per_token=storage.bytes_read_per_token,
        sparsity=storage.sparsity,
        kernel=" then ".join(m.kernel(p, device) for m, p in parsed),
        build_seconds=build_seconds,
        build_peak_mem_mb=peak.peak_mb,
        per_layer_sparsity=storage.per_layer_sparsity,
        serializable=all(m.serializable for m, _ in parsed),
        nm_pattern_ok=check_nm_pattern(model, *nm) if nm else None,
        extra={"dense_fallback": any(m.dense_fallback(p, device) for m, p in parsed), **ctx.notes},
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
        methods=tuple(m.name for m, _ in parsed),
    )
