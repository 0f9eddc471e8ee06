"""What a built variant really stores and how far it moved from the base model. No MLflow here.

Bytes are counted from the tensors themselves (packed values + scales + zero-points + masks):
`get_memory_footprint()` counts a torchao or quanto tensor subclass at its logical dtype, and misses
hqq's scales (kept in a plain dict), so it is wrong for most methods. `tensor_storage_bytes` looks inside:

- torchao / optimum-quanto tensor subclasses: the inner tensors named by `__tensor_flatten__` (recursively,
  e.g. quanto's PackedTensor inside a WeightQBitsTensor);
- bitsandbytes: `Params4bit` packed bytes + its `quant_state` (absmax, code, nested double-quant state),
  `Int8Params` + its row scales `SCB`;
- hqq `HQQLinear`: packed `W_q` + the `meta` dict's scale/zero tensors;
- compressed-tensors: the packed `weight_packed`/`weight_scale`/`weight_zero_point` parameters of the
  model in its stored form (see `Method.stored_form`).

Distance from the base model is measured against a `BaseReference`, computed once per model from the
unmodified (dense) model: its linear weights (spilled to a temp safetensors file, not kept in RAM) and
its next-token log-probs on a fixed batch of held-out MMLU validation text (never test).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch

from pipeline.methods.targets import target_linears

if TYPE_CHECKING:
    from torch import nn

# Fidelity forwards run with a fixed thread count: a CPU matmul's reduction order (so its last bits)
# can depend on the thread count, and `none` must score KL exactly 0 against the reference.
FIDELITY_THREADS = 1
HELDOUT_TEXTS = 8
HELDOUT_SEQ_LEN = 128


# -- bytes ------------------------------------------------------------------------------------------
def _is_plain(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def tensor_storage_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really occupies, looking inside quantized tensor subclasses and bnb quant states."""
    if not _is_plain(t) and hasattr(t, "__tensor_flatten__"):
        inner_names, _ = t.__tensor_flatten__()
        total = 0
        for n in inner_names:
            inner = getattr(t, n, None)
            if isinstance(inner, torch.Tensor):
                total += tensor_storage_bytes(inner)
        return total
    total = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit
    if state is not None:
        total += _quant_state_bytes(state)
    scb = getattr(t, "SCB", None)  # bitsandbytes Int8Params row scales
    if isinstance(scb, torch.Tensor):
        total += scb.numel() * scb.element_size()
    return total


def _quant_state_bytes(state) -> int:
    total = 0
    for attr in ("absmax", "code", "offset"):
        v = getattr(state, attr, None)
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
    nested = getattr(state, "state2", None)
    if nested is not None:
        total += _quant_state_bytes(nested)
    return total


def _tensor_key(t: torch.Tensor) -> Any:
    if _is_plain(t):
        try:
            return ("p", t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        except (RuntimeError, NotImplementedError):
            return ("i", id(t))
    return ("i", id(t))


def _dict_tensors(d: dict) -> Iterator[torch.Tensor]:
    for v in d.values():
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, dict):
            yield from _dict_tensors(v)


def module_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """Every tensor a module itself stores (not its children's): parameters, buffers and hqq's meta."""
    yield from module.parameters(recurse=False)
    yield from module.buffers(recurse=False)
    meta = getattr(module, "meta", None)  # hqq HQQLinear keeps scale/zero in a plain dict
    if isinstance(meta, dict):
        yield from _dict_tensors(meta)
    scb = _bnb_int8_row_scales(module)  # bnb Linear8bitLt moves SCB from the weight to `state` on first call
    if scb is not None and getattr(getattr(module, "weight", None), "SCB", None) is None:
        yield scb


def _bnb_int8_row_scales(module: nn.Module) -> torch.Tensor | None:
    w = getattr(module, "weight", None)
    scb = getattr(w, "SCB", None)
    if not isinstance(scb, torch.Tensor):
        scb = getattr(getattr(module, "state", None), "SCB", None)
    return scb if isinstance(scb, torch.Tensor) else None


def _module_bytes(module: nn.Module, seen: set) -> int:
    total = 0
    for t in module_tensors(module):
        key = _tensor_key(t)
        if key in seen:
            continue
        seen.add(key)
        total += tensor_storage_bytes(t)
    return total


def logical_numel(module: nn.Module) -> int:
    """Number of weights the layer represents (packed formats store fewer elements)."""
    in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if in_f and out_f:
        return int(in_f) * int(out_f)
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict) and "shape" in meta:
        return int(math.prod(meta["shape"]))
    w = getattr(module, "weight", None)
    return int(math.prod(w.shape)) if w is not None else 0


def _input_embedding_bytes(model: nn.Module) -> int:
    """Bytes of the input-embedding table when it is not tied to lm_head (a decode step gathers one row)."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if get_in is None:
        return 0
    emb = get_in()
    out = get_out() if get_out is not None else None
    if emb is None or getattr(emb, "weight", None) is None:
        return 0
    if out is not None and getattr(out, "weight", None) is not None and _tensor_key(out.weight) == _tensor_key(emb.weight):
        return 0
    return tensor_storage_bytes(emb.weight)


@dataclass
class StorageBytes:
    weight_bytes: int  # every unique tensor of the model (packed + scales + zeros + masks)
    linear_bytes: int  # the compressed (target) linear layers only
    linear_count: int  # logical weights in those layers
    bytes_read_per_token: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.linear_bytes / max(self.linear_count, 1)


def storage_bytes(model: nn.Module) -> StorageBytes:
    seen: set = set()
    linear_bytes = linear_count = 0
    for _, module in target_linears(model):
        linear_bytes += _module_bytes(module, seen)
        linear_count += logical_numel(module)
    rest = sum(_module_bytes(m, seen) for m in model.modules())
    weight_bytes = linear_bytes + rest
    return StorageBytes(weight_bytes, linear_bytes, linear_count, weight_bytes - _input_embedding_bytes(model))


# -- dense views of compressed layers -----------------------------------------------------------------
def _identity_probe(module: nn.Module) -> torch.Tensor:
    """W recovered by running the layer on the identity (for kernels that expose no dequantize)."""
    in_f = int(module.in_features)
    w = getattr(module, "weight", None)
    dtype = getattr(module, "compute_dtype", None) or (w.dtype if w is not None and w.is_floating_point() else torch.float32)
    device = w.device if w is not None else torch.device("cpu")
    with torch.no_grad():
        eye = torch.eye(in_f, dtype=dtype, device=device)
        y = module(eye)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            y = y - bias
    return y.t().float()


_INT4PACK_POSITIONS: dict[tuple[int, int], torch.Tensor] = {}


def _int4pack_cpu_positions(n: int, k: int) -> torch.Tensor:
    """For each nibble of `_convert_weight_to_int4pack_for_cpu`'s output (low nibble first), the flat index
    n*K+k it came from. The packed layout depends on the CPU's ISA, so it is measured, not assumed: the
    op is run on the 4-bit digits of every position's index and the digits are read back."""
    key = (n, k)
    if key in _INT4PACK_POSITIONS:
        return _INT4PACK_POSITIONS[key]
    idx = torch.arange(n * k, dtype=torch.int64).reshape(n, k)
    pos = None
    for j in range(max(1, math.ceil(math.log(n * k, 16)))):
        digit = ((idx >> (4 * j)) & 15).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digit, 1)
        nib = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.int64)
        pos = nib << (4 * j) if pos is None else pos | (nib << (4 * j))
    _INT4PACK_POSITIONS[key] = pos
    return pos


def _int4_opaque_dequantize(w: torch.Tensor) -> torch.Tensor:
    """torchao Int4OpaqueTensor (CPU tinygemm layout; no dequantize op): unpack the nibbles, then
    tinygemm's affine form w = (q - 8) * scale + zero per group. The kernel itself is far too slow for an
    identity probe (one scalar pass per input row without AVX-512)."""
    n, k = w.shape
    group = int(w.block_size[-1])
    packed = w.qdata
    nib = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.float32)
    q = torch.empty(n * k, dtype=torch.float32)
    q[_int4pack_cpu_positions(n, k)] = nib
    scale, zero = w.scale_and_zero.float().unbind(-1)  # each (K/group, N)
    q = q.reshape(n, k // group, group)
    return ((q - 8.0) * scale.t().unsqueeze(-1) + zero.t().unsqueeze(-1)).reshape(n, k)


def _ct_effective_weight(module: nn.Module) -> torch.Tensor | None:
    """compressed-tensors layers that fake-quantize their float weight on every call: the weight they use."""
    scheme = getattr(module, "quantization_scheme", None)
    status = getattr(module, "quantization_status", None)
    if scheme is None or status is None or getattr(scheme, "weights", None) is None:
        return None
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    if status >= QuantizationStatus.COMPRESSED or not hasattr(module, "weight_scale"):
        return None
    with torch.no_grad():
        return forward_quantize(module, module.weight.data, "weight", scheme.weights).float()


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a dense float tensor (dequantized where needed), for sparsity and error."""
    if type(module).__name__.startswith("HQQLinear"):
        return module.dequantize().float().reshape(module.meta["shape"])
    w = module.weight
    quant_state = getattr(w, "quant_state", None)
    if quant_state is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(w.data, quant_state).float()
    scb = _bnb_int8_row_scales(module)
    if scb is not None and w.dtype == torch.int8:
        return w.data.float() * scb.float().unsqueeze(1) / 127.0
    if type(w).__name__ == "Int4OpaqueTensor" and getattr(w, "act_mapping_type", None) is None:
        return _int4_opaque_dequantize(w)
    if not _is_plain(w):
        try:
            return w.dequantize().float()
        except (NotImplementedError, AttributeError, RuntimeError):
            return _identity_probe(module)
    ct = _ct_effective_weight(module)
    if ct is not None:
        return ct
    return w.detach().float()


@dataclass
class SparsitySummary:
    sparsity: float
    per_layer: dict[str, float]


def sparsity_summary(model: nn.Module) -> SparsitySummary:
    zeros = total = 0
    per_layer: dict[str, float] = {}
    for name, module in target_linears(model):
        n = logical_numel(module)
        z = int((dense_weight(module) == 0).sum())
        per_layer[name] = z / max(n, 1)
        zeros += z
        total += n
    return SparsitySummary(zeros / max(total, 1), per_layer)


class StorageSummary:
    """Bytes and sparsity of a model as it is (kept for callers of the spine's API)."""

    def __init__(self, model: nn.Module) -> None:
        b = storage_bytes(model)
        s = sparsity_summary(model)
        self.weight_bytes, self.linear_bytes, self.linear_count = b.weight_bytes, b.linear_bytes, b.linear_count
        self.bits_per_weight, self.bytes_read_per_token = b.bits_per_weight, b.bytes_read_per_token
        self.sparsity, self.per_layer_sparsity = s.sparsity, s.per_layer


def check_nm_pattern(model: nn.Module, n: int, m: int) -> bool:
    """True when every group of `m` consecutive input weights of every target layer has <= n non-zeros."""
    for _, module in target_linears(model):
        w = dense_weight(module)
        if w.shape[-1] % m:
            return False
        groups = (w.reshape(-1, m) != 0).sum(dim=1)
        if bool((groups > n).any()):
            return False
    return True


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

    from pipeline.data.calibration import heldout_texts, tokenized_batches

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
    metadata = {"model_name": model_name, "n_texts": str(len(batches)), "linear_names": json.dumps(names), "texts_sha256": texts_sha}
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
                raise ValueError(f"variant logits {tuple(lp.shape)} do not match the reference's {tuple(lp_base.shape)}")
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


# -- layer-wise reconstruction error (what GPTQ / SparseGPT minimise) ---------------------------------
def capture_layer_inputs(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], max_rows: int = 4096) -> dict[str, torch.Tensor]:
    """Inputs X (rows = tokens) reaching every compressed linear layer of `model` on `batches`."""
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, module in target_linears(model):
        def hook(_m, args, _out, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()
            captured.setdefault(name, []).append(x)

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                model(**b)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v)[:max_rows] for k, v in captured.items()}


def reconstruction_error(
    inputs: dict[str, torch.Tensor], base: BaseReference | dict[str, torch.Tensor], model: nn.Module
) -> float:
    """sqrt(Σ_l ‖X_l (W_l − Ŵ_l)ᵀ‖²) / sqrt(Σ_l ‖X_l W_lᵀ‖²): output error of every layer on the same inputs."""
    weights = dict(base.weights()) if isinstance(base, BaseReference) else base
    modules = dict(target_linears(model))
    num = den = 0.0
    for name, x in inputs.items():
        w0 = weights[name].float()
        w = dense_weight(modules[name]).cpu()
        num += float((x @ (w - w0).t()).double().pow(2).sum())
        den += float((x @ w0.t()).double().pow(2).sum())
    return math.sqrt(num / den) if den else 0.0


def dir_bytes(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
