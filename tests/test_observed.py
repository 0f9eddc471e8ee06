"""Measure what really runs (issue 12, items 5-7): the kernel is observed with torch.profiler over one decode
step, the bytes a step reads follow that observation, and `sparsity` is the pruners' mask, not every zero.

Tiny Llama only; no timing is asserted.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from pipeline.config.recipe import ModelSpec, SpeedSpec, VariantSpec


@pytest.fixture(scope="module")
def zeroed_tiny(tmp_path_factory):
    """The tiny Llama with 10 % of every decoder linear's weights set to exact zeros (as a published
    checkpoint dequantized from a 4-bit grid has), saved as a model dir."""
    from tiny_llama import build_tiny_llama
    from transformers import AutoModelForCausalLM

    from pipeline.methods.targets import target_linears
    from pipeline.models import resolve_model

    src = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")
    out = tmp_path_factory.mktemp("zeroed") / "llama"
    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in target_linears(model):
            m.weight[torch.rand(m.weight.shape, generator=gen) < 0.10] = 0.0
    model.save_pretrained(out, safe_serialization=True)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    spec = ModelSpec(name="tiny-zeroed", source=str(out))
    return resolve_model(spec), spec


@pytest.fixture(scope="module")
def build(zeroed_tiny):
    from pipeline.variants.artifact import build_artifact

    resolved, spec = zeroed_tiny
    cache: dict[str, object] = {}

    def get(name: str, *steps: tuple[str, dict]):
        if name not in cache:
            variant = VariantSpec(name=name, steps=[{"method": m, "params": p} for m, p in steps])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name] = build_artifact(resolved, spec, variant, device="cpu", measure_serialized=False)
        return cache[name]

    return get


# -- item 5: the kernel is observed ----------------------------------------------------------------
def test_unmodified_model_never_falls_back(build):
    f = build("none", ("none", {})).fidelity
    assert f.dense_fallback is False
    assert "14/14 layer matmuls dense" in f.kernel_observed and "aten::mm(float,float)" in f.kernel_observed_ops
    assert f.kernel_census == "Linear[Parameter float32] x14"
    assert f.tags()["kernel.observed_ops"] == f.kernel_observed_ops


def _bnb_gemv(f) -> bool:
    """bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks the 4-bit weights at the first eval forward and runs its
    packed gemv_4bit (for any number of rows: seen at batch 1 to 16 on an AMD EPYC); elsewhere it dequantizes to
    fp32 and runs a dense matmul. The observation must say which one ran."""
    return "bitsandbytes::gemv_4bit" in f.kernel_observed_ops


def test_bnb_nf4_on_cpu_is_seen_running_what_bitsandbytes_runs_on_this_cpu(build):
    f = build("nf4", ("bnb-nf4", {})).fidelity
    assert "Linear4bit[Params4bit uint8]" in f.kernel_census and "observed:" in f.tags()["kernel"]
    if _bnb_gemv(f):
        assert f.dense_fallback is False and "aten::mm" not in f.kernel_observed_ops
        assert "14/14 layer matmuls quantized" in f.kernel_observed and f.tags()["kernel_dense_fallback"] == "false"
        return
    assert f.dense_fallback is True
    assert "bitsandbytes::dequantize_4bit" in f.kernel_observed_ops and "aten::mm(float,float)" in f.kernel_observed_ops
    assert "14/14 layer matmuls dense (fp32)" in f.kernel_observed and "dequantize ran per call" in f.kernel_observed
    assert f.tags()["kernel_dense_fallback"] == "true"


def test_torchao_int4_on_cpu_is_seen_running_its_packed_kernel(build):
    f = build("int4", ("int4-weight-only", {"group_size": 64})).fidelity
    assert f.dense_fallback is False
    assert "aten::_weight_int4pack_mm_for_cpu(float,unsigned char,float)" in f.kernel_observed_ops
    assert "14/14 layer matmuls quantized" in f.kernel_observed


class _Int8Linear(torch.nn.Linear):
    """An int8 weight-only layer written here, so no method table can know what it runs: `fused` calls
    the int8 x float kernel, otherwise it casts the int8 weight to fp32 first (a dense fallback)."""

    def __init__(self, dense: torch.nn.Linear, fused: bool):
        super().__init__(dense.in_features, dense.out_features, bias=False)
        w = dense.weight.detach()
        self.scales = w.abs().amax(dim=1) / 127
        self.weight = torch.nn.Parameter((w / self.scales[:, None]).round().to(torch.int8), requires_grad=False)
        self.fused = fused

    def forward(self, x):
        x2 = x.reshape(-1, x.shape[-1])
        if self.fused:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        else:
            y = x2 @ (self.weight.to(x.dtype) * self.scales[:, None]).t()
        return y.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("fused", [True, False])
def test_observation_follows_the_ops_that_ran_not_the_layer_type(zeroed_tiny, fused):
    from transformers import AutoModelForCausalLM

    from pipeline.variants.observe import observe_kernel

    resolved, _ = zeroed_tiny
    model = _swap_linears(
        AutoModelForCausalLM.from_pretrained(resolved.dense_dir).eval(), lambda m: _Int8Linear(m, fused)
    )
    obs = observe_kernel(model, compressed=True)
    assert obs.census == {"_Int8Linear[Parameter int8]": 14}
    if fused:
        assert obs.dense_fallback is False and set(obs.calls.values()) == {"quantized"}
        assert obs.top_ops[0] == ("aten::_weight_int8pack_mm(float,signed char,float)", 14)
        assert obs.dense_width == {}
    else:
        assert obs.dense_fallback is True and set(obs.calls.values()) == {"dense"} and obs.dequantized
        assert set(obs.dense_width.values()) == {4}


class _RowsInt8Linear(_Int8Linear):
    """Picks its kernel by the number of rows it multiplies, as bitsandbytes' CUDA gemm_4bit does (fp32: its 4-bit
    kernel below 8 rows, dequantize + F.linear from 8): the fused int8 kernel for a few, a dense fp32 matmul for more."""

    def forward(self, x):
        self.fused = x.numel() // x.shape[-1] < 8
        return super().forward(x)


def _swap_linears(model, make):
    from pipeline.methods.targets import target_linears

    for name, module in list(target_linears(model)):
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, make(module))
    return model


def test_a_composite_op_with_low_precision_inputs_is_not_the_kernel_when_a_dense_mm_ran_inside():
    from pipeline.variants.observe import Op, classify_call

    # bitsandbytes' CPU gemm_4bit takes uint8 but dequantizes and calls aten::mm inside
    ops = [
        Op("bitsandbytes::gemm_4bit", ("float", "unsigned char"), has_matmul_child=True),
        Op("bitsandbytes::dequantize_4bit", ("unsigned char", "float")),
        Op("aten::mm", ("float", "float")),
    ]
    assert classify_call(ops) == ("dense", 4)
    assert classify_call([Op("aten::_int_mm", ("signed char", "signed char"))]) == ("quantized", 0)
    assert classify_call([Op("aten::_sparse_semi_structured_linear", ("c10::Half", "c10::Half"))]) == ("sparse", 0)
    assert classify_call([Op("aten::mm", ("c10::BFloat16", "c10::BFloat16"))]) == ("dense", 2)


# -- item 6: bytes read per token follow the observation -------------------------------------------
def _fixed_host(monkeypatch, bw_gb_s: float = 10.0):
    from pipeline.runtime.speed import harness

    monkeypatch.setattr(
        harness, "bandwidth_probe", lambda device, threads: {"bandwidth_gb_s": bw_gb_s, "load_avg": 0.0}
    )
    monkeypatch.setattr(harness, "host_matmul_flops", lambda device, threads, dtype: 1e11)


def _kv(model, point) -> float:
    from pipeline.models import shapes

    return shapes.kv_bytes_at_context(model.config, point.context_tokens, 4)


def test_the_observed_kernel_decides_the_bytes_read_and_mbu_uses_them(build, monkeypatch):
    """A dense fallback (bitsandbytes on an AVX2 CPU) reads the dense bytes; its packed gemv (AVX-512) the stored ones."""
    from pipeline.runtime.transformers import TransformersRuntime

    dense = build("none", ("none", {})).fidelity
    art = build("nf4", ("bnb-nf4", {}))
    f = art.fidelity
    # stored: 4-bit values + absmax scales; read: every decoder linear dequantized to fp32 on each call, unless packed
    assert f.weight_bytes < dense.weight_bytes and f.stored_bytes_per_token < dense.bytes_read_per_token
    weights_read = f.stored_bytes_per_token if _bnb_gemv(f) else dense.bytes_read_per_token
    assert f.dense_fallback is not _bnb_gemv(f)
    assert f.bytes_read_per_token == weights_read
    assert f.metrics()["weight_bytes_read_per_token"] == weights_read
    assert f.metrics()["weight_bytes"] == f.weight_bytes  # stored, as before

    _fixed_host(monkeypatch, bw_gb_s=10.0)
    spec = SpeedSpec(prompt_tokens=8, new_tokens=4, batch_sizes=[1], warmup=1, repeats=1, threads=1)
    res = TransformersRuntime().decode(art, spec)
    p = res.points[0]
    read = weights_read + _kv(art.model, p)
    assert res.dense_fallback is f.dense_fallback and p.bytes_per_token == read
    assert p.mbu == pytest.approx(p.decode_tok_s * read / 10e9)
    assert p.wall_tok_s == pytest.approx(10e9 / read)
    assert res.metrics()["bytes_per_token"] == read


def test_a_compiled_step_that_folded_the_dequantize_reads_dense_bytes(build, monkeypatch):
    """Eager int4 runs its packed kernel (stored bytes); if the compiled step shows only dense matmuls
    (freezing folded the dequantize into fp32 constants), the speed figures switch to dense bytes."""
    from pipeline.methods.targets import target_linears
    from pipeline.runtime.speed import torch_adapter
    from pipeline.runtime.speed.measure import measure_decode
    from pipeline.variants.observe import KernelObservation

    dense = build("none", ("none", {})).fidelity
    art = build("int4", ("int4-weight-only", {"group_size": 64}))
    f = art.fidelity
    assert not f.dense_fallback and f.bytes_read_per_token == f.stored_bytes_per_token < dense.bytes_read_per_token

    _fixed_host(monkeypatch)
    monkeypatch.setattr(torch_adapter, "_decode_call", lambda model, compile_, device: model)  # eager stands in
    widths: list[int] = []

    def folded(step, model, *, compressed, dense_width):
        step()  # the harness hands over a runnable step
        widths.append(dense_width)
        calls = {name: "dense" for name, _ in target_linears(model)}
        ops = (("mkl::_mkl_linear(float,float)", 14),)
        return KernelObservation(calls, {n: dense_width for n in calls}, {}, ops, False, compressed, compiled=True)

    monkeypatch.setattr(torch_adapter, "observe_compiled", folded)
    spec = SpeedSpec(prompt_tokens=8, new_tokens=4, batch_sizes=[1], warmup=1, repeats=1, threads=1, compile=True)
    res = measure_decode(
        art.model,
        art.tokenizer,
        spec,
        weight_bytes_per_token=f.bytes_read_per_token,
        device="cpu",
        kernel=f.kernel,
        dense_fallback=f.dense_fallback,
    )
    p = res.points[0]
    read = dense.bytes_read_per_token + _kv(art.model, p)
    assert widths == [4] and res.dense_fallback and res.weight_bytes_per_token == dense.bytes_read_per_token
    assert p.bytes_per_token == read and p.bytes_per_step == read
    assert p.mbu == pytest.approx(p.decode_tok_s * read / 10e9)
    assert res.tags()["kernel.observed"].endswith("compiled step") and res.tags()["kernel_dense_fallback"] == "true"


def test_each_batch_size_is_observed_and_its_points_read_what_ran_there(zeroed_tiny, monkeypatch):
    """A kernel picked by the number of rows: the build observes one token (the int8 kernel: stored bytes); timed at
    batch 1 and 8, batch 8's step dequantizes and runs a dense fp32 matmul, so its ceiling and MBU count the dense
    bytes (issue 27, item 9: batch 8 used to reuse batch 1's observation). One profiled step per batch size."""
    from transformers import AutoModelForCausalLM

    from pipeline.methods.targets import target_linears
    from pipeline.runtime.speed import torch_adapter
    from pipeline.runtime.speed.measure import measure_decode
    from pipeline.variants.observe import observe_reads
    from pipeline.variants.storage import storage_bytes

    resolved, _ = zeroed_tiny
    model = _swap_linears(
        AutoModelForCausalLM.from_pretrained(resolved.dense_dir).eval(), lambda m: _RowsInt8Linear(m, True)
    )
    built = observe_reads(model, compressed=True)
    assert not built.observation.dense_fallback and built.bytes_per_token == built.stored_bytes_per_token
    dense = storage_bytes(model, dense={name: 4 for name, _ in target_linears(model)}).bytes_read_per_token
    assert dense > 2 * built.bytes_per_token  # int8 values read as fp32

    _fixed_host(monkeypatch, bw_gb_s=10.0)
    profiled: list[int] = []
    observe = torch_adapter.observe_kernel
    monkeypatch.setattr(torch_adapter, "observe_kernel", lambda *a, **k: profiled.append(1) or observe(*a, **k))
    spec = SpeedSpec(prompt_tokens=8, new_tokens=3, batch_sizes=[1, 8], warmup=0, repeats=2, threads=1)
    res = measure_decode(
        model,
        None,
        spec,
        weight_bytes_per_token=built.bytes_per_token,
        device="cpu",
        kernel="int8 by rows",
        dense_fallback=built.observation.dense_fallback,
    )
    one, eight = res.points
    assert len(profiled) == 2  # per batch size, not per repeat
    assert one.dense_fallback is False and one.kernel_observed == "14/14 layer matmuls quantized"
    assert (
        eight.dense_fallback is True
        and eight.kernel_observed == "14/14 layer matmuls dense (fp32), dequantize ran per call"
    )
    assert (
        "aten::_weight_int8pack_mm" in one.kernel_observed_ops and "aten::mm(float,float)" in eight.kernel_observed_ops
    )
    for p, weights in ((one, built.bytes_per_token), (eight, dense)):
        assert p.weight_bytes_read == weights
        assert p.bytes_per_step == pytest.approx(weights + p.batch_size * _kv(model, p))
        assert p.wall_tok_s == pytest.approx(10e9 / p.bytes_per_step * p.batch_size)
        assert p.mbu == pytest.approx(p.decode_tok_s / p.batch_size * p.bytes_per_step / 10e9)
    m, tags = res.metrics(), res.tags()
    assert m["weight_bytes_read_per_step"] == built.bytes_per_token and m["weight_bytes_read_per_step_bs8"] == dense
    assert (
        res.dense_fallback
        and tags["kernel_dense_fallback"] == "true"
        and tags["kernel_dense_fallback.batches"] == "8@8"
    )
    assert res.speed_kind == "dense-fallback speed at batch 8; kernel speed at batch 1"
    assert tags["kernel.observed"] == f"batch 1: {one.kernel_observed} | batch 8: {eight.kernel_observed}"
    assert res.weight_bytes_per_token == built.bytes_per_token
    assert any(w.startswith("kernel falls back to dense at batch 8 (int8 by rows)") for w in res.warnings), res.warnings


def test_bnb_nf4_is_observed_at_each_batch_size_it_is_timed_at(build, monkeypatch):
    """bitsandbytes 0.50 on CPU does not pick its 4-bit kernel by the number of rows (on CUDA it does: the test
    above stands in for that): batch 8 runs what batch 1 runs on this CPU, and each point's bytes follow what it ran."""
    from pipeline.runtime.transformers import TransformersRuntime

    dense = build("none", ("none", {})).fidelity
    art = build("nf4", ("bnb-nf4", {}))
    f = art.fidelity
    _fixed_host(monkeypatch, bw_gb_s=10.0)
    spec = SpeedSpec(prompt_tokens=8, new_tokens=3, batch_sizes=[1, 8], warmup=0, repeats=1, threads=1)
    res = TransformersRuntime().decode(art, spec)
    assert [p.batch_size for p in res.points] == [1, 8] and res.points[0].kernel_observed == f.kernel_observed
    packed = _bnb_gemv(f)
    for p in res.points:
        assert ("bitsandbytes::gemv_4bit" in p.kernel_observed_ops) is packed and p.dense_fallback is not packed
        weights = f.stored_bytes_per_token if packed else dense.bytes_read_per_token
        assert p.weight_bytes_read == weights and p.bytes_per_step == pytest.approx(
            weights + p.batch_size * _kv(art.model, p)
        )
        assert p.mbu == pytest.approx(p.decode_tok_s / p.batch_size * p.bytes_per_step / 10e9)
    assert res.dense_fallback is not packed and res.speed_kind == ("kernel speed" if packed else "dense-fallback speed")
    assert res.tags().get("kernel_dense_fallback.batches") == (None if packed else "1@8,8@8")


# -- item 7: sparsity is the pruners' mask; zero_fraction is every zero ------------------------------
def test_quantize_only_sparsity_is_zero_and_zeros_are_zero_fraction(build):
    none = build("none", ("none", {})).fidelity
    assert none.sparsity == 0.0 and none.zero_fraction == pytest.approx(0.10, abs=0.01)  # the published zeros
    f = build("nf4", ("bnb-nf4", {})).fidelity
    assert f.sparsity == 0.0 and set(f.per_layer_sparsity.values()) == {0.0}
    assert f.zero_fraction > none.zero_fraction  # NF4's grid has a 0: small weights round onto it
    assert f.metrics()["sparsity"] == 0.0 and f.metrics()["zero_fraction"] == f.zero_fraction


def test_magnitude_pruning_sparsity_is_the_share_it_pruned(build):
    """50 % magnitude pruning: every layer ends half zeros; 10 % were zeros already (they are the smallest
    |w|, so inside its mask), so it set 40 % to zero. On weights without zeros that is the 50 % itself
    (tests/test_methods.py::test_sparsity_matches_amount_within_one_weight_per_layer)."""
    f = build("mag50", ("magnitude-prune", {"amount": 0.5})).fidelity
    assert f.zero_fraction == pytest.approx(0.5, abs=1e-3)
    assert f.sparsity == pytest.approx(0.5 - 0.10, abs=0.01)
    assert all(s == pytest.approx(0.4, abs=0.03) for s in f.per_layer_sparsity.values())


def test_sparsity_counts_what_pruning_zeroed_not_published_or_grid_zeros(build):
    """A pruner that ignores magnitude (every 4th input column) on weights with 10 % published zeros,
    then int8: sparsity is the 25 % it zeroed; zero_fraction adds the published zeros it did not touch."""
    f = build("cols+int8", ("test-prune-every-4th-column", {}), ("int8-weight-only", {})).fidelity
    assert f.sparsity == pytest.approx(0.25 * 0.90, abs=0.01)  # its 25 %, less the published zeros among them
    assert f.zero_fraction == pytest.approx(0.25 + 0.75 * 0.10, abs=0.01)


from pipeline.methods import Method, register, registry  # noqa: E402

if "test-prune-every-4th-column" not in registry():

    @register
    class _PruneEvery4thColumn(Method):
        name = "test-prune-every-4th-column"
        library = "tests"
        kind = "prune"

        def apply(self, model, ctx):
            from pipeline.methods.targets import target_linears

            with torch.no_grad():
                for _, m in target_linears(model):
                    m.weight[:, ::4] = 0.0
            return model
