"""Every CPU compression method on the tiny Llama: fidelity record complete and consistent, N:M and
sparsity exact, the calibrated methods beat their baselines, bad params fail as exact one-liners.

Run: .venv/bin/pytest tests/test_methods.py tests/test_fidelity.py (conftest: offline, MMLU dir default ../shared/data/mmlu)
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from pipeline.config.recipe import ModelSpec, VariantSpec
from pipeline.methods import MethodError, registry, validate_steps, validate_variant

# Small calibration so the whole file stays fast on a shared 2-core CPU.
CAL = {"calibration_samples": 8, "calibration_seq_len": 64}
G = 64  # group size dividing the tiny model's widths (64, 128)

# name -> (method, params) or list of steps
VARIANTS: dict[str, object] = {
    "none": ("none", {}),
    "int8-weight-only": ("int8-weight-only", {}),
    "int4-weight-only": ("int4-weight-only", {"group_size": G}),
    "w8a8-dynamic": ("w8a8-dynamic", {}),
    "bnb-int8": ("bnb-int8", {}),
    "bnb-nf4": ("bnb-nf4", {}),
    "bnb-fp4": ("bnb-fp4", {"double_quant": True}),
    "quanto-int8": ("quanto-int8", {}),
    "quanto-int4": ("quanto-int4", {}),
    "quanto-float8": ("quanto-float8", {}),
    "hqq-8": ("hqq", {"nbits": 8, "group_size": G}),
    "hqq-4": ("hqq", {"nbits": 4, "group_size": G}),
    "hqq-3": ("hqq", {"nbits": 3, "group_size": G}),
    "hqq-2": ("hqq", {"nbits": 2, "group_size": G}),
    "rtn-4": ("rtn", {"bits": 4, "group_size": G}),
    "rtn-8": ("rtn", {"bits": 8, "group_size": G}),
    "gptq-4": ("gptq", {"bits": 4, "group_size": G, **CAL}),
    "awq-4": ("awq", {"group_size": G, "n_grid": 3, **CAL}),
    "w8a8": ("w8a8", {}),
    "magnitude-30": ("magnitude-prune", {"amount": 0.3}),
    "magnitude-50": ("magnitude-prune", {"amount": 0.5}),
    "magnitude-global-30": ("magnitude-prune", {"amount": 0.3, "scope": "global"}),
    "magnitude-2of4": ("magnitude-2of4", {}),
    "wanda-30": ("wanda", {"amount": 0.3, **CAL}),
    "wanda-2of4": ("wanda", {"pattern": "2:4", **CAL}),
    "sparsegpt-50": ("sparsegpt", {"sparsity": 0.5, **CAL}),
    "sparsegpt-2of4": ("sparsegpt", {"pattern": "2:4", **CAL}),
    "sparsegpt-2of4+gptq-4": [("sparsegpt", {"pattern": "2:4", **CAL}), ("gptq", {"bits": 4, "group_size": G, **CAL})],
}

# expected bits/weight of the compressed linears (values + scales + zero-points), from the tensors
BITS = {
    "none": (32.0, 32.0),
    "int8-weight-only": (8.0, 9.0),
    "w8a8-dynamic": (8.0, 9.0),
    "bnb-int8": (8.0, 9.0),
    "quanto-int8": (8.0, 9.0),
    "quanto-float8": (8.0, 9.0),
    "hqq-8": (8.0, 9.1),
    "rtn-8": (8.0, 9.1),
    "w8a8": (8.0, 9.0),
    "int4-weight-only": (4.0, 5.1),
    "bnb-nf4": (4.0, 5.1),
    "quanto-int4": (4.0, 5.1),
    "hqq-4": (4.0, 5.1),
    "rtn-4": (4.0, 5.1),
    "gptq-4": (4.0, 5.1),
    "awq-4": (4.0, 5.1),
    "sparsegpt-2of4+gptq-4": (4.0, 5.1),
    "hqq-3": (3.0, 4.5),  # hqq packs 10 3-bit values per int32 (3.2 bits) + fp32 scale/zero per group
    "hqq-2": (2.0, 3.1),
    "bnb-fp4": (4.0, 6.0),  # double quant's 256-entry code table is per layer: large on tiny layers
}
PRUNED = {
    "magnitude-30",
    "magnitude-50",
    "magnitude-global-30",
    "magnitude-2of4",
    "wanda-30",
    "wanda-2of4",
    "sparsegpt-50",
    "sparsegpt-2of4",
}


def _variant(name: str) -> VariantSpec:
    spec = VARIANTS[name]
    if isinstance(spec, list):
        return VariantSpec(name=name, steps=[{"method": m, "params": p} for m, p in spec])
    method, params = spec
    return VariantSpec(name=name, method=method, params=params)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_llama import build_tiny_llama

    from pipeline.models import resolve_model

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")
    spec = ModelSpec(name="tiny", source=str(path))
    return resolve_model(spec), spec


@pytest.fixture(scope="module")
def base(tiny):
    from pipeline.variants.artifact import base_reference_for

    resolved, spec = tiny
    ref = base_reference_for(resolved, spec, device="cpu", cache=False)
    yield ref
    ref.close()


@pytest.fixture(scope="module")
def build(tiny, base):
    from pipeline.variants.artifact import build_artifact

    resolved, spec = tiny
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name] = build_artifact(resolved, spec, _variant(name), device="cpu", base=base)
        return cache[name]

    return get


# -- validation: exact one-liners, before any model loads ------------------------------------------
@pytest.mark.parametrize(
    "method,params,expected",
    [
        ("nope", {}, None),  # the list of known methods is read at test time (tests register their own)
        ("gptq", {"bits": 3}, "method 'gptq' param `bits`: Input should be 4 or 8"),
        ("rtn", {"bits": 2}, "method 'rtn' param `bits`: Input should be 4 or 8"),
        ("awq", {"bits": 8}, "method 'awq' param `bits`: Input should be 4"),
        ("hqq", {"nbits": 5}, "method 'hqq' param `nbits`: Input should be 8, 4, 3 or 2"),
        ("hqq", {"group_size": 12}, "method 'hqq' param `group_size`: must be a positive multiple of 8 (got 12)"),
        (
            "int4-weight-only",
            {"group_size": 48},
            "method 'int4-weight-only' param `group_size`: Input should be 32, 64, 128 or 256",
        ),
        (
            "gptq",
            {"calibration": "/no/such/calib.jsonl"},
            "method 'gptq' param `calibration`: calibration file /no/such/calib.jsonl does not exist; "
            "give a .txt/.jsonl file, a hub dataset id or 'mmlu-validation'",
        ),
        (
            "wanda",
            {"calibration": "not a dataset"},
            "method 'wanda' param `calibration`: calibration 'not a dataset' is neither 'mmlu-validation', "
            "a local .txt/.jsonl file nor a hub dataset id (org/name[:split])",
        ),
        (
            "wanda",
            {"pattern": "2:4", "amount": 0.6},
            "method 'wanda' pattern 2:4 prunes exactly half; drop `amount` or set it to 0.5 (got 0.6)",
        ),
        (
            "sparsegpt",
            {"pattern": "4:8"},
            "method 'sparsegpt' param `pattern`: Input should be 'unstructured' or '2:4'",
        ),
        ("magnitude-prune", {"amount": 1.5}, "method 'magnitude-prune' param `amount`: Input should be less than 1"),
        ("bnb-nf4", {"bits": 4}, "method 'bnb-nf4' has no param `bits`; its params are: double_quant, compute_dtype"),
    ],
)
def test_validation_errors_are_exact_one_liners(method, params, expected):
    problem = validate_variant(method, params)
    if expected is None:
        expected = "unknown method 'nope'; use one of: " + ", ".join(sorted(registry())) + " (see `shrinkgate methods`)"
    assert problem == expected
    assert "\n" not in problem


def test_validation_loads_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import sys; from pipeline.methods import validate_variant; "
        "validate_variant('gptq', {'bits': 4}); validate_variant('hqq', {}); "
        "print(','.join(m for m in ('torch', 'transformers', 'llmcompressor', 'hqq', 'torchao') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_step_order_is_validated():
    assert validate_steps([("gptq", {}), ("magnitude-prune", {})]) == (
        "step 1 (gptq) quantizes the weights, so step 2 (magnitude-prune) would get no dense weights; "
        "put pruning steps first and one quantizer last"
    )
    assert (
        validate_steps([("magnitude-prune", {}), ("bnb-nf4", {})])
        == "method 'bnb-nf4' quantizes at load time, so it must be the first step"
    )
    assert validate_steps([("sparsegpt", {}), ("gptq", {})]) is None


def _write_model_dir(tmp_path: Path, **config_kw) -> Path:
    """config.json + tokenizer + a corrupt weights file: any attempt to load weights fails loudly."""
    from transformers import LlamaConfig

    d = tmp_path / "model"
    d.mkdir()
    LlamaConfig(vocab_size=512, num_hidden_layers=1, **config_kw).save_pretrained(d)
    (d / "model.safetensors").write_bytes(b"not safetensors")
    return d


@pytest.mark.parametrize(
    "method,params,config_kw,expected",
    [
        (
            "magnitude-2of4",
            {},
            dict(hidden_size=66, intermediate_size=128, num_attention_heads=3, num_key_value_heads=3),
            "method 'magnitude-2of4' 2:4 needs every linear layer's input width to be a multiple of 4; model.layers.0.self_attn.q_proj has 66",
        ),
        (
            "wanda",
            {"pattern": "2:4"},
            dict(hidden_size=64, intermediate_size=130, num_attention_heads=4, num_key_value_heads=4),
            "method 'wanda' 2:4 needs every linear layer's input width to be a multiple of 4; model.layers.0.mlp.down_proj has 130",
        ),
        (
            "sparsegpt",
            {"pattern": "2:4"},
            dict(hidden_size=66, intermediate_size=128, num_attention_heads=3, num_key_value_heads=3),
            "method 'sparsegpt' 2:4 needs every linear layer's input width to be a multiple of 4; model.layers.0.self_attn.q_proj has 66",
        ),
        (
            "gptq",
            {"group_size": 128},
            dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4),
            "method 'gptq' group_size 128 does not divide model.layers.0.self_attn.q_proj's input width 64; use a group_size that divides it",
        ),
        (
            "int4-weight-only",
            {"group_size": 32},
            dict(hidden_size=64, intermediate_size=136, num_attention_heads=4, num_key_value_heads=4),
            "int4-weight-only needs every layer's output width divisible by 16 (the int4 kernel's N); model.layers.0.mlp.gate_proj has 136",
        ),
        (
            "hqq",
            {"group_size": 128},
            dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4),
            "hqq group_size 128 does not divide model.layers.0.self_attn.q_proj's input width 64; use a group_size that divides it",
        ),
    ],
)
def test_check_model_refuses_before_loading_weights(tmp_path, method, params, config_kw, expected):
    from pipeline.models.loader import ResolvedModel
    from pipeline.results import Provenance
    from pipeline.variants.artifact import build_artifact

    d = _write_model_dir(tmp_path, **config_kw)
    spec = ModelSpec(name="shape", source=str(d))
    resolved = ResolvedModel("shape", d, Provenance(source=str(d), kind="local"))
    with pytest.raises(MethodError) as exc:
        build_artifact(resolved, spec, VariantSpec(name="v", method=method, params=params), device="cpu")
    assert str(exc.value) == expected  # the corrupt weights file was never opened


def test_method_not_on_this_device_is_a_clear_error(tiny):
    from pipeline.methods.base import METHODS, Method, register
    from pipeline.variants.artifact import build_artifact

    class CudaOnly(Method):
        name = "test-cuda-only"
        library = "test"
        devices = ("cuda",)

    register(CudaOnly)
    try:
        resolved, spec = tiny
        with pytest.raises(MethodError, match=r"^method 'test-cuda-only' runs on cuda only; this run is on cpu$"):
            build_artifact(resolved, spec, VariantSpec(name="v", method="test-cuda-only"), device="cpu")
    finally:
        METHODS.unregister("test-cuda-only")


def test_quantizer_then_pruning_fails_before_loading(tiny):
    from pipeline.variants.artifact import build_artifact

    resolved, spec = tiny
    v = VariantSpec(name="bad", steps=[{"method": "int8-weight-only"}, {"method": "magnitude-prune"}])
    with pytest.raises(MethodError, match=r"^variant 'bad': step 1 \(int8-weight-only\) quantizes the weights"):
        build_artifact(resolved, spec, v, device="cpu")


# -- the fidelity record of every CPU method -----------------------------------------------------
@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
@pytest.mark.parametrize("name", list(VARIANTS))
def test_fidelity_record_complete_and_consistent(build, name, mmlu_dir):
    f = build(name).fidelity
    lo, hi = BITS.get(name, (32.0, 32.0))
    assert lo <= f.bits_per_weight <= hi, f"{name}: {f.bits_per_weight:.3f} bits/weight"
    assert f.linear_weight_count == 2 * (
        64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3
    )  # 2 layers of q,o + k,v + gate,up,down
    assert f.linear_weight_bytes == pytest.approx(f.bits_per_weight * f.linear_weight_count / 8)
    assert 0 < f.linear_weight_bytes < f.weight_bytes
    assert len(f.per_layer_sparsity) == 14 and 0.0 <= f.sparsity < 1.0
    assert f.kernel and f.build_seconds > 0 and f.build_peak_mem_mb > 0
    assert isinstance(f.dense_fallback, bool)
    assert f.runtime_weight_bytes and f.stored_bytes_per_token <= f.runtime_weight_bytes
    assert f.bytes_read_per_token >= f.stored_bytes_per_token  # a layer seen running dense reads its dense bytes
    # serialization: measured when the library can save, else the library's reason
    if f.serializable:
        assert f.serialized_bytes and 0.9 <= f.serialized_bytes / f.weight_bytes <= 1.15, (
            f.serialized_bytes,
            f.weight_bytes,
        )
        assert f.serializable_reason is None
    else:
        assert f.serialized_bytes is None and f.serializable_reason
    # distance from the base model
    assert 0.0 <= f.top1_agree_vs_base <= 1.0 and f.kl_vs_base >= 0.0 and f.weight_rel_error >= 0.0
    if name == "none":
        assert f.kl_vs_base == 0.0 and f.top1_agree_vs_base == 1.0 and f.weight_rel_error == 0.0
        assert f.bits_per_weight == 32.0 and f.sparsity == 0.0
    else:
        assert f.kl_vs_base > 0.0 and f.weight_rel_error > 0.0
    if name in PRUNED:
        assert f.bits_per_weight == 32.0 and f.dense_fallback is True
    if VARIANTS[name][0] in ("gptq", "awq", "wanda", "sparsegpt") or isinstance(VARIANTS[name], list):
        assert f.extra["calibration.source"] == "mmlu-validation"
        assert len(f.extra["calibration.sha256"]) == 64 and f.extra["calibration.samples"] >= 1
        sha = hashlib.sha256((mmlu_dir / "validation.jsonl").read_bytes()).hexdigest()
        assert f.extra["calibration.file_sha256"] == sha


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_8bit_beats_4bit_beats_2bit(build):
    kl = {n: build(n).fidelity.kl_vs_base for n in ("hqq-8", "hqq-4", "hqq-2", "rtn-8", "rtn-4")}
    assert kl["hqq-8"] < kl["hqq-4"] < kl["hqq-2"]
    assert kl["rtn-8"] < kl["rtn-4"]


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_int4_cpu_form_is_not_serializable_and_says_why(build):
    f = build("int4-weight-only").fidelity
    assert f.serializable is False
    assert "torchao" in f.serializable_reason and "Int4OpaqueTensor" in f.serializable_reason
    assert "_weight_int4pack_mm_for_cpu" in f.kernel and f.dense_fallback is False


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_compressed_tensors_stores_packed_runs_dequantized(build):
    f = build("gptq-4").fidelity
    # stored: int4 packed into int32 + fp32 group scales; running: the dequantized fp32 weights
    assert f.weight_bytes < f.runtime_weight_bytes
    assert f.bytes_read_per_token > f.weight_bytes
    assert "pack-quantized" in f.kernel and f.dense_fallback is True


# -- sparsity ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
@pytest.mark.parametrize("name", ["magnitude-2of4", "wanda-2of4", "sparsegpt-2of4", "sparsegpt-2of4+gptq-4"])
def test_2of4_pattern_holds_exactly(build, name):
    from pipeline.methods.targets import target_linears
    from pipeline.variants.storage import dense_weight

    a = build(name)
    assert a.fidelity.nm_pattern_ok is True
    for layer, module in target_linears(a.model):
        w = dense_weight(module)
        nonzero_per_group = (w.reshape(-1, 4) != 0).sum(dim=1)
        assert int(nonzero_per_group.max()) <= 2, layer
        assert a.fidelity.per_layer_sparsity[layer] >= 0.5


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
@pytest.mark.parametrize(
    "name,amount", [("magnitude-30", 0.3), ("magnitude-50", 0.5), ("wanda-30", 0.3), ("sparsegpt-50", 0.5)]
)
def test_sparsity_matches_amount_within_one_weight_per_layer(build, name, amount):
    from pipeline.methods.targets import target_linears
    from pipeline.variants.storage import dense_weight

    a = build(name)
    total = 0
    for layer, module in target_linears(a.model):
        w = dense_weight(module)
        zeros = int((w == 0).sum())
        total += zeros
        assert abs(zeros - amount * w.numel()) <= 1, (layer, zeros, amount * w.numel())
        assert a.fidelity.per_layer_sparsity[layer] == zeros / w.numel()
    assert a.fidelity.sparsity == total / a.fidelity.linear_weight_count


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_global_magnitude_sparsity_is_global(build):
    f = build("magnitude-global-30").fidelity
    assert abs(f.sparsity * f.linear_weight_count - 0.3 * f.linear_weight_count) <= 1
    assert len({round(s, 3) for s in f.per_layer_sparsity.values()}) > 1  # layers differ: ranked across all


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_lm_head_and_embeddings_untouched(build, tiny):
    import torch
    from transformers import AutoModelForCausalLM

    resolved, _ = tiny
    dense = AutoModelForCausalLM.from_pretrained(resolved.dense_dir, dtype=torch.float32)
    for name in ("sparsegpt-50", "wanda-30", "gptq-4", "magnitude-2of4", "hqq-4", "bnb-nf4"):
        m = build(name).model
        assert torch.equal(m.lm_head.weight, dense.lm_head.weight), name
        assert torch.equal(m.get_input_embeddings().weight, dense.get_input_embeddings().weight), name


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_composition_keeps_the_mask_through_gptq(build):
    a = build("sparsegpt-2of4+gptq-4")
    f = a.fidelity
    assert a.methods == ("sparsegpt", "gptq")
    assert f.nm_pattern_ok is True and f.sparsity >= 0.5
    assert "gptq.refilled_zeros" in f.extra  # GPTQ's error feedback refills zeros; they were re-masked
    assert " then " in f.kernel
    assert f.kl_vs_base > build("sparsegpt-2of4").fidelity.kl_vs_base * 0.5


# -- the reason GPTQ and SparseGPT exist -------------------------------------------------------------
@pytest.fixture(scope="module")
def calib_inputs(tiny):
    """Inputs reaching every linear layer of the DENSE model on the calibration text GPTQ/SparseGPT saw."""
    import torch
    from _reconstruction import capture_layer_inputs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.data.calibration import load_calibration
    from pipeline.methods.batches import tokenized_batches

    resolved, _ = tiny
    tok = AutoTokenizer.from_pretrained(resolved.dense_dir)
    dense = AutoModelForCausalLM.from_pretrained(resolved.dense_dir, dtype=torch.float32).eval()
    data = load_calibration(None, CAL["calibration_samples"], tokenizer=tok, seq_len=CAL["calibration_seq_len"])
    return capture_layer_inputs(dense, tokenized_batches(tok, data.texts, CAL["calibration_seq_len"]))


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_gptq_reconstructs_calibration_outputs_better_than_rtn(build, base, calib_inputs):
    from _reconstruction import reconstruction_error

    gptq = reconstruction_error(calib_inputs, base, build("gptq-4").model)
    rtn = reconstruction_error(calib_inputs, base, build("rtn-4").model)
    assert build("gptq-4").fidelity.bits_per_weight == pytest.approx(build("rtn-4").fidelity.bits_per_weight)
    assert gptq < rtn, (gptq, rtn)


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_sparsegpt_reconstructs_calibration_outputs_better_than_magnitude(build, base, calib_inputs):
    from _reconstruction import reconstruction_error

    sgpt = reconstruction_error(calib_inputs, base, build("sparsegpt-50").model)
    mag = reconstruction_error(calib_inputs, base, build("magnitude-50").model)
    assert build("sparsegpt-50").fidelity.sparsity == pytest.approx(build("magnitude-50").fidelity.sparsity, abs=1e-3)
    assert sgpt < mag, (sgpt, mag)


# -- llm-compressor's ignore=["lm_head"] --------------------------------------------------------------
@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_upstream_plain_ignore_prunes_lm_head_which_is_why_we_add_a_regex(tiny):
    """Documents the upstream behaviour our IGNORE list works around (llm-compressor 0.14.0.1)."""
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.data.calibration import load_calibration
    from pipeline.methods.batches import hf_dataset
    from pipeline.methods.llmcompressor_methods import IGNORE

    resolved, _ = tiny
    tok = AutoTokenizer.from_pretrained(resolved.dense_dir)
    model = AutoModelForCausalLM.from_pretrained(resolved.dense_dir, dtype=torch.float32)
    data = load_calibration(None, 4, tokenizer=tok, seq_len=32)
    recipe = [SparseGPTModifier(sparsity=0.5, targets=["Linear"], ignore=["lm_head"])]
    oneshot(
        model=model,
        recipe=recipe,
        dataset=hf_dataset(tok, data.texts, 32),
        processor=tok,
        num_calibration_samples=4,
        max_seq_length=32,
    )
    assert float((model.lm_head.weight == 0).float().mean()) > 0.4  # pruned despite ignore=["lm_head"]
    assert any(i.startswith("re:") for i in IGNORE)


# -- GPU-only paths ------------------------------------------------------------------------------------
def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
@pytest.mark.parametrize("name,params", [("int4-weight-only", {"group_size": 64}), ("bnb-nf4", {}), ("bnb-int8", {})])
def test_gpu_paths(tiny, name, params):
    from pipeline.variants.artifact import base_reference_for, build_artifact

    resolved, spec = tiny
    spec = spec.model_copy(update={"dtype": "bfloat16"})
    base = base_reference_for(resolved, spec, device="cuda", cache=False)
    f = build_artifact(
        resolved, spec, VariantSpec(name=name, method=name, params=params), device="cuda", base=base
    ).fidelity
    assert 4.0 <= f.bits_per_weight <= 9.0 and f.kl_vs_base > 0
    if name == "int4-weight-only":
        assert f.serializable is True and "CUDA" in f.kernel


def _real_methods() -> set[str]:
    """Registered methods minus test doubles other test modules may register (library "tests")."""
    return {n for n, c in registry().items() if c.library != "tests" and not n.startswith("test-")}


def test_catalog_covers_every_method():
    from pipeline.methods.catalog import method_catalog, render_catalog

    infos = {i.name: i for i in method_catalog() if i.name in _real_methods()}
    assert set(infos) == _real_methods()
    assert infos["quanto-int4"].maintenance and "unmaintained" in infos["quanto-int4"].maintenance
    assert infos["gptq"].needs_calibration and not infos["rtn"].needs_calibration
    assert infos["int4-weight-only"].serializable is False and infos["int4-weight-only"].serializable_note
    for i in infos.values():
        assert i.version, i.name  # every library is installed here
    gptq_params = {p.name: p for p in infos["gptq"].params}
    assert gptq_params["bits"].default == 4 and gptq_params["bits"].type == "4 | 8" and gptq_params["bits"].description
    data = json.loads(render_catalog(json=True))
    assert {d["name"] for d in data} >= _real_methods()
    text = render_catalog(json=False)
    assert all(name in text for name in _real_methods())


def test_all_cpu_methods_are_covered_by_these_tests():
    covered = {v[0] if isinstance(v, tuple) else v[0][0] for v in VARIANTS.values()}
    # methods writing an engine's own file (gguf-*) never touch the torch model: tests/test_gguf_export.py
    engine = {n for n in _real_methods() if registry()[n].artifact_format is not None}
    assert engine and covered == _real_methods() - engine, _real_methods() - engine - covered
