"""What really runs: a census of the built model's compressed layers and the ops `torch.profiler` records
over one decode step, attributed to those layers.

A method's `kernel` sentence says what its library is designed to run; this module says what ran. Each
compressed (target) linear layer's call is wrapped in a `record_function` marker, and the innermost matmul
ops recorded under it (with `record_shapes`, so their input dtypes) classify that call:

- `quantized`: a matmul op took low-precision inputs (`_weight_int8pack_mm`, `_int_mm`, int4 pack mm, a
  fused 4-bit gemv, `_scaled_mm`, ...): the kernel reads the compressed bytes;
- `sparse`: a sparse matmul ran (`_sparse_semi_structured_linear`, cuSPARSELt);
- `dense`: only floating-point matmuls ran (on dequantized or masked weights): a dense fallback.

Composite ops do not count as the kernel when a matmul ran inside them: bitsandbytes' `gemm_4bit` on CPU
takes uint8 inputs but calls `dequantize_4bit` and then a dense `aten::mm`.

What runs can depend on the number of rows a step multiplies: bitsandbytes' CUDA `gemm_4bit` runs its 4-bit
kernel for a few rows and dequantizes + `F.linear` past a per-GPU threshold (fp32: from 8 rows). The build
observes one token (batch 1); the speed harness observes each batch size it times (`reads_of` its bytes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from pipeline.methods.targets import target_linears

if TYPE_CHECKING:
    from torch import nn

    from pipeline.variants.storage import StorageBytes

_MARK = "shrinkgate.layer::"
# dtype names as the profiler records them (c10 spellings)
_FLOAT = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2}
_NOT_TENSOR = {"", "Scalar", "ScalarList", "TensorList", "GenericList", "long int", "bool"}
_MATMUL_WORDS = ("mm", "gemm", "gemv", "linear", "matmul")
Call = Literal["quantized", "sparse", "dense", "none"]


def _base(name: str) -> str:
    return name.rsplit("::", 1)[-1].lower()


def is_matmul(name: str) -> bool:
    return any(w in _base(name) for w in _MATMUL_WORDS)


def is_low_precision(dtypes: Iterable[str]) -> bool:
    """Some tensor input is neither floating point nor an index/flag (int8, uint8, int32 packs, fp8, ...)."""
    return any(d not in _FLOAT and d not in _NOT_TENSOR for d in dtypes)


def is_dequantize(name: str, dtypes: Iterable[str]) -> bool:
    """A dequantize op, or a cast of a low-precision tensor (eager torchao int8: `weight.to(x.dtype)`)."""
    base, dtypes = _base(name), list(dtypes)
    if "dequant" in base or "unpack" in base:
        return True
    if base == "copy_":  # copy_(dst, src): a dequantize reads a low-precision src into a float dst
        return dtypes[:1] != [] and dtypes[0] in _FLOAT and is_low_precision(dtypes[1:2])
    return base in ("_to_copy", "to") and is_low_precision(dtypes[:1])


@dataclass(frozen=True)
class Op:
    """One recorded op: name, input dtypes, and whether a matmul ran inside it."""

    name: str
    dtypes: tuple[str, ...]
    has_matmul_child: bool = False

    @property
    def label(self) -> str:
        kinds = ",".join(d for d in self.dtypes if d not in ("", "Scalar"))
        return f"{self.name}({kinds})"


def classify_call(ops: Iterable[Op]) -> tuple[Call, int]:
    """One layer call's kind from the ops under it, and the byte width of its dense matmul (0: none)."""
    kernels = [o for o in ops if is_matmul(o.name) and not o.has_matmul_child]
    if any("sparse" in _base(o.name) or "cslt" in _base(o.name) for o in kernels):
        return "sparse", 0
    if any(is_low_precision(o.dtypes) for o in kernels):
        return "quantized", 0
    widths = [_FLOAT[d] for o in kernels for d in o.dtypes if d in _FLOAT]
    return ("dense", max(widths)) if widths else ("none", 0)


@dataclass(frozen=True)
class KernelObservation:
    """What ran in the compressed layers during one profiled decode step."""

    calls: dict[str, Call]  # layer name -> kind of its (last) call
    dense_width: dict[str, int]  # layer -> element bytes of the dense matmul it ran (dense calls only)
    census: dict[str, int]  # "Module[weight type dtype]" -> number of target layers
    top_ops: tuple[tuple[str, int], ...]  # kernel and dequantize ops under the layers, most frequent first
    dequantized: bool  # a dequantize (or low-precision cast) ran inside a layer
    compressed: bool  # the variant changed the weights (some step is not `none`)
    compiled: bool = False  # observed on a compiled step: ops were not attributable to layers
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dense_layers(self) -> list[str]:
        return [n for n, c in self.calls.items() if c == "dense"]

    @property
    def dense_fallback(self) -> bool:
        """The variant is compressed, yet some compressed layer's matmul ran dense (on dequantized or
        masked weights): its speed is dense speed. Unmodified models never fall back."""
        return self.compressed and bool(self.dense_layers)

    def summary(self) -> str:
        counts = Counter(self.calls.values())
        parts = [
            f"{counts[k]}/{len(self.calls)} layer matmuls {k}" for k in ("quantized", "sparse", "dense") if counts[k]
        ]
        if self.dense_layers:
            widths = sorted({w for w in self.dense_width.values() if w})
            parts[-1] += f" ({'/'.join(_WIDTH_NAME.get(w, str(w)) for w in widths)})"
        if self.dequantized:
            parts.append("dequantize ran per call")
        if self.compiled:
            parts.append("compiled step")
        return ", ".join(parts) or "no layer matmul recorded"

    def ops_tag(self, top: int = 8) -> str:
        return "; ".join(f"{name} x{n}" for name, n in self.top_ops[:top])

    def census_tag(self) -> str:
        return "; ".join(f"{k} x{n}" for k, n in sorted(self.census.items(), key=lambda kv: -kv[1]))


_WIDTH_NAME = {4: "fp32", 2: "16-bit", 8: "fp64"}


def census(model: nn.Module) -> dict[str, int]:
    """Target layers by module class and weight tensor type/dtype (Linear[Int8Tensor int8], Linear4bit[Params4bit uint8])."""
    out: Counter[str] = Counter()
    for _, module in target_linears(model):
        w = getattr(module, "weight", None)
        if w is None:
            w = getattr(module, "W_q", None)  # hqq keeps its packed weight here
        what = (
            f"{type(w).__name__} {str(getattr(w, 'dtype', '?')).removeprefix('torch.')}"
            if w is not None
            else "no weight"
        )
        out[f"{type(module).__name__}[{what}]"] += 1
    return dict(out)


def holds_compressed_layers(model: nn.Module) -> bool:
    """Some target layer holds its weight in another form than a plain floating-point tensor."""
    for _, module in target_linears(model):
        w = getattr(module, "weight", None)
        if (
            type(module) is not torch.nn.Linear
            or type(w) not in (torch.Tensor, torch.nn.Parameter)
            or not w.is_floating_point()
        ):
            return True
    return False


def _ops_under(event: Any) -> list[Op]:
    ops: list[Op] = []
    stack = list(event.cpu_children)
    while stack:
        e = stack.pop()
        children = list(e.cpu_children)
        has_mm = _any_matmul_below(children)
        ops.append(Op(e.name, tuple(str(d) for d in (getattr(e, "input_dtypes", None) or ())), has_mm))
        stack.extend(children)
    return ops


def _any_matmul_below(children: list[Any]) -> bool:
    stack = list(children)
    while stack:
        e = stack.pop()
        if is_matmul(e.name):
            return True
        stack.extend(e.cpu_children)
    return False


def _summarize_ops(all_ops: Iterable[Op]) -> tuple[tuple[tuple[str, int], ...], bool]:
    seen: Counter[str] = Counter()
    dequant = False
    for o in all_ops:
        if is_dequantize(o.name, o.dtypes):
            dequant = True
            seen[o.label] += 1
        elif is_matmul(o.name) and not o.has_matmul_child:
            seen[o.label] += 1
    return tuple(seen.most_common()), dequant


def _profile(step) -> list[Any]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    with profile(activities=activities, record_shapes=True) as prof:
        step()
    return list(prof.events())


def _decode_step_fn(model: nn.Module, vocab: int):
    """Prefill 8 tokens with a KV cache, return a callable running one decode step over that cache."""
    from transformers import DynamicCache

    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    ids = (torch.arange(8, dtype=torch.long) * 37 + 3).remainder(vocab).unsqueeze(0).to(device)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():  # not inference_mode: optimum-quanto qint4 weights fail under it
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)

    def step() -> None:
        with torch.no_grad():
            model(input_ids=nxt, past_key_values=cache, use_cache=True)

    return step


def _vocab(model: nn.Module) -> int:
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.vocab_size)


def observe_kernel(model: nn.Module, *, compressed: bool, step=None) -> KernelObservation:
    """Profile one decode step of `model` (eager) and classify each compressed layer's matmul.

    `step`: a callable running one decode step (default: prefill 8 tokens, then one token over the cache).
    """
    layers = dict(target_linears(model))
    handles = []
    open_marks: list[Any] = []

    def pre(name):
        def hook(mod, args):
            rf = torch.autograd.profiler.record_function(_MARK + name)
            rf.__enter__()
            open_marks.append(rf)

        return hook

    def post(mod, args, out):
        if open_marks:
            open_marks.pop().__exit__(None, None, None)

    step = step or _decode_step_fn(model, _vocab(model))
    try:
        for name, module in layers.items():
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post))
        events = _profile(step)
    finally:
        for h in handles:
            h.remove()
        while open_marks:  # a layer that raised: close its marker
            open_marks.pop().__exit__(None, None, None)
    calls: dict[str, Call] = {}
    widths: dict[str, int] = {}
    all_ops: list[Op] = []
    for e in events:
        if not e.name.startswith(_MARK):
            continue
        name = e.name.removeprefix(_MARK)
        ops = _ops_under(e)
        all_ops.extend(ops)
        calls[name], w = classify_call(ops)
        if w:
            widths[name] = w
    top, dequant = _summarize_ops(all_ops)
    return KernelObservation(calls, widths, census(model), top, dequant, compressed)


def observe_compiled(step, model: nn.Module, *, compressed: bool, dense_width: int) -> KernelObservation:
    """Profile one compiled decode step. Inductor's generated kernels carry no layer markers, so the whole
    step is classified: if no low-precision or sparse matmul op ran anywhere, the compressed layers ran on
    dense weights (freezing folds a dequantize into fp32 constants), else their kernel survived compile."""
    events = _profile(step)
    ops = [
        Op(
            e.name,
            tuple(str(d) for d in (getattr(e, "input_dtypes", None) or ())),
            _any_matmul_below(list(e.cpu_children)),
        )
        for e in events
    ]
    kind, _ = classify_call(ops)
    top, dequant = _summarize_ops(ops)
    layer_kind: Call = kind if kind in ("quantized", "sparse") else "dense"
    calls = {name: layer_kind for name, _ in target_linears(model)}
    widths = {name: dense_width for name in calls} if layer_kind == "dense" else {}
    return KernelObservation(calls, widths, census(model), top, dequant, compressed, compiled=True)


@dataclass(frozen=True)
class ObservedReads:
    observation: KernelObservation
    held: StorageBytes  # the model's bytes as it is held now (every layer read in its own form)
    bytes_per_token: int  # what a step reads as observed: dense bytes for layers that ran dense on dequantized weights

    @property
    def stored_bytes_per_token(self) -> int:
        """Weights a decode step would read were every layer read as it is held."""
        return self.held.bytes_read_per_token


def observe_reads(model: nn.Module, *, compressed: bool) -> ObservedReads:
    """One profiled decode step (one token), and the weight bytes a step reads given what ran."""
    return reads_of(model, observe_kernel(model, compressed=compressed))


def reads_of(model: nn.Module, observation: KernelObservation) -> ObservedReads:
    """The weight bytes a step of `model` reads given what `observation` saw run: each layer that ran a dense
    matmul on dequantized weights reads its dense bytes at that matmul's width, the others their held bytes."""
    from pipeline.variants.storage import storage_bytes

    held = storage_bytes(model)
    read = storage_bytes(model, dense=observation.dense_width) if observation.dense_width else held
    return ObservedReads(observation, held, read.bytes_read_per_token)
