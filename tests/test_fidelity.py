"""Byte counting from the tensors for every library's storage, the base reference, and calibration data."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from pipeline.variants.storage import dense_weight, module_tensors, storage_bytes, tensor_storage_bytes

OUT, IN = 64, 128  # one Linear(128 -> 64): 8192 weights


class OneLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(IN, OUT, bias=False)


def _bytes(model: torch.nn.Module) -> int:
    return sum(tensor_storage_bytes(t) for t in module_tensors(model.proj))


def _rel_err(model, w0) -> float:
    return float((dense_weight(model.proj) - w0).norm() / w0.norm())


def test_plain_fp32():
    m = OneLinear()
    assert _bytes(m) == OUT * IN * 4


def test_torchao_int8_counts_qdata_scale_zero_point():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    m = OneLinear()
    w0 = m.proj.weight.detach().clone()
    quantize_(m, Int8WeightOnlyConfig())
    assert _bytes(m) == OUT * IN + OUT * 4 + OUT  # int8 values + fp32 row scales + int8 zero points
    assert _rel_err(m, w0) < 0.01


def test_torchao_int4_cpu_counts_packed_nibbles_and_scale_zero():
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    m = OneLinear()
    w0 = m.proj.weight.detach().clone()
    quantize_(m, PrototypeInt4WeightOnlyConfig(group_size=32))
    assert _bytes(m) == OUT * IN // 2 + (IN // 32) * OUT * 2 * 4  # 2 nibbles/byte + fp32 (scale, zero) per group
    assert _rel_err(m, w0) < 0.15  # no dequantize op on Int4OpaqueTensor: unpacked by torchao's weight handler


def test_quanto_qint8_and_qint4_count_inner_tensors():
    import optimum.quanto as oq

    m = OneLinear()
    oq.quantize(m, weights=oq.qint8)
    oq.freeze(m)
    assert _bytes(m) == OUT * IN + OUT * 4 + 2 * 4  # int8 data + fp32 scales + the two scalar activation scales
    m4 = OneLinear()
    oq.quantize(m4, weights=oq.qint4)
    oq.freeze(m4)
    n4 = _bytes(m4)
    assert OUT * IN // 2 < n4 < OUT * IN  # packed nibbles + group scales and shifts, far below int8


def test_get_memory_footprint_would_be_wrong_for_tensor_subclasses():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    m = OneLinear()
    quantize_(m, Int8WeightOnlyConfig())
    logical = sum(p.numel() * p.element_size() for p in m.parameters())  # what get_memory_footprint sums
    assert logical == OUT * IN * 4  # the subclass reports its logical fp32 size
    assert _bytes(m) < logical / 3


def test_hqq_counts_packed_wq_and_meta():
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    m = OneLinear()
    w0 = m.proj.weight.detach().clone()
    m.proj = HQQLinear(m.proj, BaseQuantizeConfig(nbits=4, group_size=64), compute_dtype=torch.float32, device="cpu")
    groups = OUT * IN // 64
    assert _bytes(m) == OUT * IN // 2 + groups * 4 * 2  # packed uint8 + fp32 scale and zero per group
    assert _rel_err(m, w0) < 0.15


def test_bnb_nf4_counts_quant_state():
    import bitsandbytes as bnb

    def quantized(double_quant: bool):
        m = OneLinear()
        layer = bnb.nn.Linear4bit(IN, OUT, bias=False, quant_type="nf4", compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(
            m.proj.weight.detach().clone(), requires_grad=False, quant_type="nf4", compress_statistics=double_quant
        )
        return layer.to("cpu").weight  # quantizes on .to(device)

    w = quantized(False)
    blocks = OUT * IN // w.quant_state.blocksize
    assert tensor_storage_bytes(w) == OUT * IN // 2 + blocks * 4 + 16 * 4  # nibbles + fp32 absmax + 16-entry code
    wdq = quantized(True)  # absmax as uint8 + offset, plus the nested state: fp32 absmax per 256 + 256-entry code
    nested = wdq.quant_state.state2
    assert tensor_storage_bytes(wdq) == OUT * IN // 2 + blocks + 4 + 16 * 4 + nested.absmax.numel() * 4 + 256 * 4


def test_storage_bytes_counts_tied_weights_once(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    b = storage_bytes(model)
    tensors = list(model.parameters()) + list(model.buffers())  # parameters() dedups ties too
    assert b.weight_bytes == sum(t.numel() * t.element_size() for t in tensors)
    assert b.bytes_read_per_token == b.weight_bytes  # tied: the gathered embedding is the lm_head read anyway


# -- base reference -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_llama import build_tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")
    return (
        path,
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(path),
    )


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_base_reference_is_disk_backed_and_none_scores_exactly_zero(tiny_model):
    from transformers import AutoModelForCausalLM

    from pipeline.variants.reference import compute_base_reference, distance_to_base

    path, model, tok = tiny_model
    ref = compute_base_reference(model, tok, model_name="tiny")
    assert ref.path.is_file() and len(ref.linear_names) == 14 and len(ref.input_ids) == 8
    again = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    d = distance_to_base(again, ref)
    assert d.kl_vs_base == 0.0 and d.top1_agree_vs_base == 1.0 and d.weight_rel_error == 0.0
    with torch.no_grad():
        again.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    d2 = distance_to_base(again, ref)
    assert d2.kl_vs_base > 0.0 and d2.weight_rel_error > 0.0
    tmp_dir = ref.path.parent
    ref.close()
    assert not tmp_dir.exists()


@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_base_reference_cache_and_pickle(tiny_model, tmp_path, monkeypatch):
    import pickle

    from pipeline.config.recipe import ModelSpec
    from pipeline.models import resolve_model
    from pipeline.variants.artifact import base_reference_for

    monkeypatch.setenv("SHRINKGATE_CACHE", str(tmp_path / "cache"))
    path, _, _ = tiny_model
    spec = ModelSpec(name="tiny", source=str(path))
    resolved = resolve_model(spec)
    first = base_reference_for(resolved, spec, device="cpu")
    assert first.path.parent == tmp_path / "cache" / "baseref"
    again = base_reference_for(resolved, spec, device="cpu")  # loaded, not recomputed
    assert again.path == first.path and again.texts_sha256 == first.texts_sha256
    assert all(a.equal(b) for a, b in zip(first.input_ids, again.input_ids))
    copy = pickle.loads(pickle.dumps(again))
    assert copy.linear_names == first.linear_names and next(copy.weights())[1].equal(next(first.weights())[1])


# -- calibration ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("mmlu_dir")  # calibration and held-out text come from MMLU validation
def test_default_calibration_is_mmlu_validation_never_test_and_disjoint_from_heldout(tiny_model, mmlu_dir):
    from pipeline.data.calibration import format_mmlu, heldout_texts, load_calibration

    _, _, tok = tiny_model
    data = load_calibration(None, 16, tokenizer=tok, seq_len=128)
    assert data.source == "mmlu-validation" and data.kind == "mmlu-local" and len(data.texts) == 16
    assert data.file_sha256 == hashlib.sha256((mmlu_dir / "validation.jsonl").read_bytes()).hexdigest()
    assert data.sha256 == hashlib.sha256("\n\n".join(data.texts).encode()).hexdigest()
    val = {format_mmlu(json.loads(x)) for x in (mmlu_dir / "validation.jsonl").read_text().splitlines() if x}
    pieces = {p for t in data.texts for p in t.split("\n\n")}
    assert pieces <= val  # every packed piece is a validation row
    # MMLU's validation split repeats some test questions verbatim: those rows are never calibration text
    test_rows = [json.loads(x) for x in (mmlu_dir / "test.jsonl").read_text().splitlines() if x]
    test_texts = {format_mmlu({**r, "answer": None}) for r in test_rows}
    assert not any(p.rsplit("\nAnswer:", 1)[0] + "\nAnswer:" in test_texts for p in pieces)
    assert data.excluded_test_duplicates > 0
    held = set(heldout_texts(1000))
    assert held and not (held & pieces)  # the KL batch never saw calibration
    assert data.notes()["calibration.sha256"] == data.sha256


def test_local_calibration_files(tmp_path):
    from pipeline.data.calibration import CalibrationError, check_source, load_calibration

    txt = tmp_path / "calib.txt"
    txt.write_text("first paragraph\nstill first\n\nsecond paragraph\n\nthird\n", encoding="utf-8")
    data = load_calibration(str(txt), 2)
    assert data.kind == "file" and data.texts == ("first paragraph\nstill first", "second paragraph")
    assert data.file_sha256 == hashlib.sha256(txt.read_bytes()).hexdigest()
    jl = tmp_path / "calib.jsonl"
    jl.write_text(
        json.dumps({"text": "hello"}) + "\n" + json.dumps({"question": "Q?", "choices": ["a", "b"], "answer": 1}) + "\n"
    )
    assert load_calibration(str(jl), 2).texts == ("hello", "Q?\nA. a\nB. b\nAnswer: B")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(CalibrationError, match=r"line 1 has neither `text` nor `question`\+`choices`$"):
        load_calibration(str(bad), 1)
    assert check_source(str(tmp_path / "missing.txt")).startswith("calibration file ")
    assert check_source(str(tmp_path / "x.csv")) is not None


def test_hub_calibration_offline_is_a_one_line_error(monkeypatch):
    from pipeline.data.calibration import CalibrationError, load_calibration

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CalibrationError) as exc:
        load_calibration("allenai/c4:train", 4)
    assert str(exc.value) == (
        "calibration dataset 'allenai/c4' needs the hub, which is unreachable (offline); "
        "use a local .txt/.jsonl file or 'mmlu-validation'"
    )
