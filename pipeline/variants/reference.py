"""How far a built variant moved from the base model, measured against a `BaseReference` computed once per
model from the unmodified (dense) model: its linear weights (spilled to a temp safetensors file, not kept
in RAM) and its next-token log-probs on a fixed batch of held-out MMLU validation text (never test).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.methods.targets import target_linears
from pipeline.variants.storage import dense_weight

if TYPE_CHECKING:
    from torch import nn

# Fidelity forwards run with a fixed thread count: a CPU matmul's reduction order (so its last bits)
# can depend on the thread count, and `none` must score KL exactly 0 against the reference.
FIDELITY_THREADS = 1
HELDOUT_TEXTS = 8
HELDOUT_SEQ_LEN = 128


# -- the base model's reference ------------------------------------------------------------------------
@contextmanager
def fixed_threads(n: int = FIDELITY_THREADS):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _next_token_logprobs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    # no_grad, not inference_mode: optimum-quanto's qint4 weights fail under inference_mode
    # ("Cannot set version_counter for inference tensor").
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device)).logits[0]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


@dataclass
class BaseReference:
    """The unmodified model's dense linear weights and next-token log-probs on a fixed held-out batch.

    Compute once per model with `compute_base_reference` and pass to every `build_artifact` of that model.
    Tensors live in a temp safetensors file (read lazily), so holding a reference costs little RAM.
    """

    model_name: str
    path: Path  # temp safetensors file
    linear_names: tuple[str, ...]
    input_ids: tuple[torch.Tensor, ...]  # one [1, T] tensor per held-out text
    texts_sha256: str
    _dir: Path | None = None
    _finalizer: Any = field(default=None, repr=False)

    def weight(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(f"w.{name}")

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            for name in self.linear_names:
                yield name, f.get_tensor(f"w.{name}")

    def logprobs(self) -> Iterator[torch.Tensor]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            for i in range(len(self.input_ids)):
                yield f.get_tensor(f"lp.{i}")

    def close(self) -> None:
        """Delete the temp file (a cached reference, see `load`, is left in place)."""
        if self._finalizer is not None:
            self._finalizer()

    def __getstate__(self) -> dict[str, Any]:
        # picklable for executors that build in another process: the copy reads the same file, owns nothing
        state = dict(self.__dict__)
        state["_finalizer"] = None
        return state

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseReference:
        """A reference written by `compute_base_reference` (e.g. into the cache): no copy, nothing deleted."""
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n = int(meta["n_texts"])
            ids = tuple(f.get_tensor(f"ids.{i}") for i in range(n))
        return cls(
            model_name=meta.get("model_name", ""),
            path=path,
            linear_names=tuple(json.loads(meta["linear_names"])),
            input_ids=ids,
            texts_sha256=meta["texts_sha256"],
        )


def compute_base_reference(
    model: nn.Module,
    tokenizer: Any,
    *,
    model_name: str = "",
    data_dir: str | os.PathLike | None = None,
    texts: list[str] | None = None,
    n_texts: int = HELDOUT_TEXTS,
    seq_len: int = HELDOUT_SEQ_LEN,
    workdir: str | os.PathLike | None = None,
    out_path: str | os.PathLike | None = None,
) -> BaseReference:
    """Reference from the UNMODIFIED model (method `none`); `texts` default to held-out MMLU validation rows.

    Written to `out_path` (kept; e.g. a cache entry) or to a temp file deleted by `close()`/garbage collection.
    """
    import hashlib

    from safetensors.torch import save_file

    from pipeline.data.calibration import heldout_texts
    from pipeline.methods.batches import tokenized_batches

    if texts is None:
        texts = heldout_texts(n_texts, data_dir=data_dir)
    batches = tokenized_batches(tokenizer, texts, seq_len)
    tensors: dict[str, torch.Tensor] = {}
    names = []
    for name, module in target_linears(model):
        tensors[f"w.{name}"] = dense_weight(module).contiguous().cpu()
        names.append(name)
    with fixed_threads():
        for i, b in enumerate(batches):
            tensors[f"lp.{i}"] = _next_token_logprobs(model, b["input_ids"]).contiguous()
            tensors[f"ids.{i}"] = b["input_ids"].cpu().contiguous()
    texts_sha = hashlib.sha256("\n\n".join(texts).encode("utf-8")).hexdigest()
    metadata = {
        "model_name": model_name,
        "n_texts": str(len(batches)),
        "linear_names": json.dumps(names),
        "texts_sha256": texts_sha,
    }
    if out_path is not None:
        path = Path(out_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)  # atomic: a concurrent writer of the same entry just loses the race
        return BaseReference.load(path)
    tmp = Path(tempfile.mkdtemp(prefix="shrinkgate-baseref-", dir=workdir))
    path = tmp / "reference.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    del tensors
    ref = BaseReference(
        model_name=model_name,
        path=path,
        linear_names=tuple(names),
        input_ids=tuple(b["input_ids"].cpu() for b in batches),
        texts_sha256=texts_sha,
        _dir=tmp,
    )
    ref._finalizer = weakref.finalize(ref, shutil.rmtree, str(tmp), True)
    return ref


@dataclass
class Distance:
    weight_rel_error: float | None
    kl_vs_base: float | None
    top1_agree_vs_base: float | None


def weight_rel_error(model: nn.Module, base: BaseReference) -> float:
    """‖W_q − W‖ / ‖W‖ over all compressed linear weights together (Frobenius, as one vector)."""
    modules = dict(target_linears(model))
    num = den = 0.0
    for name, w0 in base.weights():
        module = modules.get(name)
        if module is None:
            raise KeyError(f"layer {name} of the base model is missing from the variant")
        w = dense_weight(module).cpu()
        num += float((w - w0).double().pow(2).sum())
        den += float(w0.double().pow(2).sum())
    return math.sqrt(num) / math.sqrt(den) if den else 0.0


def kl_and_agreement(model: nn.Module, base: BaseReference) -> tuple[float, float]:
    """Mean per-token KL(base ‖ variant) of the next-token distribution, and top-1 agreement."""
    kl_sum = 0.0
    agree = count = 0
    with fixed_threads():
        for ids, lp_base in zip(base.input_ids, base.logprobs()):
            lp = _next_token_logprobs(model, ids)
            if lp.shape != lp_base.shape:
                raise ValueError(
                    f"variant logits {tuple(lp.shape)} do not match the reference's {tuple(lp_base.shape)}"
                )
            kl = (lp_base.exp() * (lp_base - lp)).sum(dim=-1)
            kl_sum += float(kl.double().sum())
            agree += int((lp.argmax(-1) == lp_base.argmax(-1)).sum())
            count += lp.shape[0]
    return max(kl_sum / max(count, 1), 0.0), agree / max(count, 1)


def distance_to_base(model: nn.Module, base: BaseReference | None) -> Distance:
    if base is None:
        return Distance(None, None, None)
    kl, top1 = kl_and_agreement(model, base)
    return Distance(weight_rel_error(model, base), kl, top1)
