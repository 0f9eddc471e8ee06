"""llama.cpp in-process behind the runtime seam: GGUF census and shape, the model's log-probs, lm-eval scoring
(shared contexts, multi-token continuations rolled back), decode timing and what it refuses."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.bindings.llamacpp import (
    LlamaCppModel,
    LlamaCppUnavailable,
    cpu_features,
    log_softmax,
    require_llama_cpp,
    system_info,
)
from pipeline.config.recipe import EvalSpec, SpeedSpec
from pipeline.models.bundled import BUNDLED, cache_root
from pipeline.models.gguf_facts import gguf_shape, tensor_census
from pipeline.results import FidelityRecord, Provenance
from pipeline.runtime import RUNTIMES, get_runtime
from pipeline.runtime.llamacpp import LlamaCppRuntime, check_speed
from pipeline.variants.artifact import GGUFArtifact


@pytest.fixture(scope="module")
def smol_path() -> Path:
    return BUNDLED["smollm2-135m-instruct"].locate(cache_root())


def gguf_artifact(path: Path, name: str = "smollm2") -> GGUFArtifact:
    fidelity = FidelityRecord(
        weight_bytes=0,
        linear_weight_bytes=0,
        linear_weight_count=0,
        bits_per_weight=0.0,
        bytes_read_per_token=0,
        sparsity=0.0,
        kernel="",
    )
    return GGUFArtifact(name, "none", "candidate", path, Provenance(source=str(path), kind="gguf"), fidelity, ("none",))


@pytest.fixture(scope="module")
def llama(smol_path):
    with LlamaCppModel.open(smol_path, n_ctx=512, n_threads=2, logits_all=True) as m:
        yield m


@pytest.fixture(scope="module")
def lm(llama):
    from pipeline.runtime.llamacpp_lm import LlamaCppLM

    return LlamaCppLM(llama=llama)


# ------------------------------------------------------------------------------------------ census / shape


def test_census_of_bundled_q4_1(smol_path):
    c = tensor_census(smol_path)
    # SmolLM2's 30 blocks x 7 projections are Q4_1 (token_embd is Q8_0, norms F32); Q4_1 = 20 bytes per 32 weights
    assert c.linear_types == {"Q4_1": 210} and c.summary() == "Q4_1×210"
    assert c.bits_per_weight == pytest.approx(5.0)
    assert c.linear_weight_count == 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    assert c.file_type == "Q4_1" and c.tensor_count == 272
    assert c.linear_weight_bytes < c.weight_bytes < c.file_bytes
    # tied: no output.weight, so token_embd is the output matrix and a decode step reads it in full
    assert c.tied and c.output_bytes == 0 and c.token_embd_bytes == 49152 * 576 * 34 // 32  # Q8_0
    assert c.bytes_read_per_token == c.weight_bytes


def _write_gguf(path: Path, arch: str, *, untied: bool, window: int | None = None) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(6)
    w.add_embedding_length(16)
    w.add_feed_forward_length(32)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_context_length(128)
    w.add_vocab_size(8)
    w.add_file_type(1)
    if window:
        w.add_sliding_window(window)
    w.add_tensor("token_embd.weight", np.zeros((8, 16), np.float32))
    if untied:
        w.add_tensor("output.weight", np.zeros((8, 16), np.float16))
    for i in range(6):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((16, 16), np.float16))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.zeros(16, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_census_untied_excludes_the_embedding_gather(tmp_path):
    path = tmp_path / "untied.gguf"
    _write_gguf(path, "llama", untied=True)
    c = tensor_census(path)
    assert not c.tied and c.output_bytes == 8 * 16 * 2 and c.token_embd_bytes == 8 * 16 * 4
    assert c.linear_types == {"F16": 6} and c.linear_weight_count == 6 * 256 and c.bits_per_weight == 16.0
    assert c.bytes_read_per_token == c.weight_bytes - c.token_embd_bytes < c.weight_bytes
    assert c.file_type == "F16"


def test_shape_and_kv_bytes(smol_path, tmp_path):
    s = gguf_shape(smol_path)
    assert (s.architecture, s.n_layer, s.n_head, s.n_head_kv, s.head_dim, s.n_embd, s.n_vocab) == (
        "llama",
        30,
        9,
        3,
        64,
        576,
        49152,
    )
    assert s.context_length == 8192 and s.sliding_window is None
    assert s.kv_bytes_per_token() == 30 * 2 * 3 * 64 * 2  # f16 K and V
    assert s.kv_bytes_at_context(10) == 10 * s.kv_bytes_per_token()
    # gemma3 with no pattern key: llama.cpp's default, every 6th layer attends fully
    path = tmp_path / "swa.gguf"
    _write_gguf(path, "gemma3", untied=False, window=4)
    g = gguf_shape(path)
    assert g.swa_layers == (True, True, True, True, True, False) and g.sliding_window == 4
    per_layer_token = 2 * 2 * 4 * 2
    assert g.kv_bytes_at_context(10) == per_layer_token * (5 * 4 + 10)


def test_cpu_features_and_system_info():
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_BF16 = 0 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
    assert cpu_features(info) == ("SSE3", "AVX", "AVX2", "F16C", "FMA", "AVX512")
    assert system_info().startswith("CPU :") and "AVX2" in cpu_features()


def test_missing_library_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(LlamaCppUnavailable, match=r"^llama-cpp-python is not installed .*scripts/install.sh`$"):
        require_llama_cpp()


# ------------------------------------------------------------------------------------------ llama + LM


def test_logprobs_shape_and_normalisation(llama):
    ids = llama.tokenize("The capital of France is Paris. The capital of Germany is", True)
    lp = llama.logprobs(ids)
    assert llama.n_vocab == 49152 and lp.shape == (len(ids), 49152) and lp.dtype == np.float64
    np.testing.assert_allclose(np.exp(lp).sum(axis=-1), 1.0, atol=1e-9)
    assert llama.detokenize([int(lp[-1].argmax())]).strip() == "Berlin"
    # the last position alone (what scoring reads) is the same row
    llama.clear()
    np.testing.assert_allclose(log_softmax(llama.eval(ids, logits="last"))[0], lp[-1], atol=1e-5)
    llama.clear()


def _instance(context: str, continuation: str, idx: int = 0):
    from lm_eval.api.instance import Instance

    return Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=idx)


def test_lm_loglikelihood_equals_engine_logprobs(lm, llama):
    base = "Question: what is the capital of France?\nAnswer:"
    requests = [
        (base, " the city of Paris, on the Seine"),  # multi-token: evaluated after the context, then rolled back
        (base, " Paris"),  # same context: its logits are reused
        (base + " Paris.\nQuestion: and of Germany?\nAnswer:", " Berlin"),  # extends the cached context
        ("Completely different text, then", " more"),
    ]
    out = lm.loglikelihood([_instance(c, k, i) for i, (c, k) in enumerate(requests)], disable_tqdm=True)
    for (context, continuation), (ll, greedy) in zip(requests, out):
        ctx, cont = lm._encode_pair(context, continuation)
        lp = llama.logprobs(ctx + cont)  # naive: the whole sequence from an empty cache
        rows = [lp[len(ctx) - 1 + j] for j in range(len(cont))]
        expected = sum(row[tok] for row, tok in zip(rows, cont))
        assert ll == pytest.approx(expected, abs=2e-4), (context, continuation)
        assert greedy == all(int(row.argmax()) == tok for row, tok in zip(rows, cont))
    assert len(lm._encode_pair(base, " Paris")[1]) == 1 and len(lm._encode_pair(*requests[0])[1]) > 3
    # a greedy continuation is reported as such
    ctx = lm.tok_encode("The capital of France is Paris. The capital of Germany is")
    best = llama.detokenize([int(llama.logprobs(ctx)[-1].argmax())])
    [(_, greedy)] = lm.loglikelihood(
        [_instance("The capital of France is Paris. The capital of Germany is", best)], disable_tqdm=True
    )
    assert greedy


def test_lm_is_registered_and_refuses_generation(lm):
    from lm_eval.api.registry import get_model

    from pipeline.runtime.llamacpp_lm import LlamaCppLM

    assert get_model("shrinkgate-llamacpp") is LlamaCppLM
    with pytest.raises(NotImplementedError, match="llama.cpp"):
        lm.generate_until([])
    with pytest.raises(NotImplementedError, match="llama.cpp"):
        lm.loglikelihood_rolling([])


def test_bos_follows_the_gguf():
    from pipeline.runtime.llamacpp_lm import LlamaCppLM

    gemma = BUNDLED["gemma-3-270m"].locate(cache_root())
    lm = LlamaCppLM(gemma, n_threads=1)
    try:
        assert lm.llama.add_bos and lm.tok_encode("Answer:")[0] == lm.prefix_token_id == 2
        assert lm.tok_encode("<bos>Answer:") == lm.tok_encode("Answer:")  # HFLM: text with BOS gets no second one
        assert lm.tok_encode("Answer:", add_special_tokens=False)[0] != 2
    finally:
        lm.close()


# ------------------------------------------------------------------------------------------ runtime


def test_runtime_is_registered():
    assert RUNTIMES.get("llama.cpp") is LlamaCppRuntime and LlamaCppRuntime.artifact_format == "gguf"
    assert isinstance(get_runtime("llama.cpp"), LlamaCppRuntime)


def test_score_mmlu_two_subjects(smol_path):
    spec = EvalSpec(num_fewshot=0, subjects=["abstract_algebra", "marketing"], limit_per_subject=2)
    result = LlamaCppRuntime().score_mmlu(gguf_artifact(smol_path), spec)
    assert result.n_questions == 4 and 0.0 <= result.acc <= 1.0
    assert {(q.subject, q.index) for q in result.questions} == {(s, i) for s in spec.subjects for i in range(2)}
    assert all(q.predicted in range(4) and q.correct == (q.predicted == q.answer) for q in result.questions)
    assert result.acc == pytest.approx(sum(q.correct for q in result.questions) / 4)
    assert result.lm_eval_results["config"]["model"] == "llama.cpp"


def test_decode_points(smol_path):
    spec = SpeedSpec(batch_sizes=[1, 2], prompt_tokens=32, new_tokens=8, repeats=1, threads=2)
    art = gguf_artifact(smol_path)
    result = LlamaCppRuntime().decode(art, spec)
    census, shape = tensor_census(smol_path), gguf_shape(smol_path)
    assert [p.batch_size for p in result.points] == [1, 2] and not result.skipped
    for p in result.points:
        assert p.ttft_ms > 0 and p.tpot_ms > 0 and p.decode_tok_s > 0 and p.prefill_tok_s > 0
        assert p.context_tokens == 32 + 8 / 2
        assert p.bytes_per_token == census.bytes_read_per_token + shape.kv_bytes_at_context(36)
        assert p.bytes_per_step == census.bytes_read_per_token + p.batch_size * shape.kv_bytes_at_context(36)
        assert 0 < p.mbu < 1.5 and p.wall_tok_s > 0 and p.peak_mem_mb > 0
        assert len(p.samples[0]["marks_ms"]) == 9 and len(p.samples[-1]["inputs"]["generated_ids_row0"]) == 8
    # row 0 has the same prompt at both batch sizes: its greedy tokens do not depend on the other sequence
    assert (
        result.points[0].samples[-1]["inputs"]["generated_ids_row0"]
        == result.points[1].samples[-1]["inputs"]["generated_ids_row0"]
    )
    assert result.kernel.startswith("llama.cpp Q4_1×210, ") and "AVX2" in result.kernel
    assert (result.device, result.timer, result.dtype, result.dense_fallback) == (
        "cpu",
        "perf_counter_ns (host)",
        "Q4_1",
        False,
    )
    assert result.weight_bytes_per_token == census.bytes_read_per_token and result.threads == 2
    assert (result.layers, result.head_params) == (
        30,
        576 * 49152,
    )  # SmolLM2-135M: what `predict`'s fit charges per layer / per prompt


def test_check_speed_refuses_what_llama_cpp_cannot_run():
    assert check_speed(SpeedSpec(batch_sizes=[1, 4])) is None
    assert "256" in check_speed(SpeedSpec(batch_sizes=[1, 257])) and "speed.batch_sizes" in check_speed(
        SpeedSpec(batch_sizes=[257])
    )
    assert "speed.max_batch" in check_speed(SpeedSpec(scenario="offline", max_batch=512))
    assert check_speed(SpeedSpec(scenario="offline", max_batch=256)) is None
    assert "speed.compile" in check_speed(SpeedSpec(compile=True))
    assert "speed.static_cache" in check_speed(SpeedSpec(static_cache=True))
    assert LlamaCppRuntime.check(SpeedSpec(compile=True)) == check_speed(SpeedSpec(compile=True))
    assert LlamaCppRuntime.check(SpeedSpec(enabled=False, compile=True)) is None


def test_a_torch_artifact_is_refused():
    from types import SimpleNamespace

    with pytest.raises(TypeError, match="GGUFArtifact"):
        LlamaCppRuntime().score_mmlu(
            SimpleNamespace(model=None), EvalSpec(num_fewshot=0, subjects=["marketing"], limit_per_subject=1)
        )
