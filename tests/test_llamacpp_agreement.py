"""llama.cpp and transformers agree on MMLU when they run the same weights.

The bundled SmolLM2 Q4_1 GGUF is requantized by llama.cpp to an all-F32 GGUF (`allow_requantize`
dequantizes Q4_1/Q8_0 exactly as transformers did when it built the dense copy), then a 100-question 5-shot
sample is scored by both runtimes' lm-eval LMs: per-question predictions must agree on >= 98 %, and every
request's log-likelihood within `LL_TOLERANCE`. The two still differ in arithmetic: llama.cpp keeps its KV
cache in f16 (torch: fp32) and uses its own kernels, so a few 1e-3 nats of drift on ~600-token prompts is
expected. Measured (2-core host): 100/100 predictions agree, max |delta LL| 6.9e-3 nats, mean 1.3e-3, p99 5.7e-3.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from lm_recording import recording

from pipeline.bindings.llamacpp import require_llama_cpp
from pipeline.config.recipe import EvalSpec, ModelSpec
from pipeline.models import load_model, resolve_model
from pipeline.models.bundled import BUNDLED, cache_root
from pipeline.models.gguf_facts import tensor_census
from pipeline.runtime.mmlu import score_mmlu

# 10 subjects x 10 questions; 5-shot prompts of ~300-900 tokens
SUBJECTS = [
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "college_biology",
    "computer_security",
    "high_school_geography",
    "marketing",
    "nutrition",
    "philosophy",
    "world_religions",
]
LL_TOLERANCE = 0.02  # nats, per request: ~3x the measured max of 6.9e-3
MIN_AGREEMENT = 0.98


def _f32_gguf(src: Path, dst: Path) -> Path:
    lib = require_llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = lib.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    assert lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


def test_llamacpp_agrees_with_transformers_on_the_same_weights(tmp_path):
    from pipeline.runtime.llamacpp_lm import LlamaCppLM
    from pipeline.runtime.transformers import _hflm_class

    src = BUNDLED["smollm2-135m-instruct"].locate(cache_root())
    f32 = _f32_gguf(src, tmp_path / "smollm2-f32.gguf")
    census = tensor_census(f32)
    assert census.linear_types == {"F32": 210} and census.file_type == "F32"

    spec = EvalSpec(num_fewshot=5, subjects=SUBJECTS, limit_per_subject=10)
    model_spec = ModelSpec(name="smollm2", source="smollm2-135m-instruct")
    loaded = load_model(resolve_model(model_spec), model_spec, device="cpu")
    hf_lm, hf_lls = recording(_hflm_class()(pretrained=loaded.model, tokenizer=loaded.tokenizer, device="cpu"))
    hf = score_mmlu(hf_lm, spec)
    del loaded, hf_lm

    lcp_lm, lcp_lls = recording(LlamaCppLM(f32))
    try:
        lcp = score_mmlu(lcp_lm, spec)
    finally:
        lcp_lm.close()

    assert hf.n_questions == lcp.n_questions == 100
    assert set(hf_lls) == set(lcp_lls) and len(hf_lls) == 400
    same = sum(a.predicted == b.predicted for a, b in zip(hf.questions, lcp.questions))
    keys = sorted(hf_lls)
    delta = np.abs(np.array([lcp_lls[k] for k in keys]) - np.array([hf_lls[k] for k in keys]))
    print(
        f"\nagreement {same}/100, acc hf {hf.acc:.3f} llama.cpp {lcp.acc:.3f}, |dLL| max {delta.max():.2e} "
        f"mean {delta.mean():.2e} p99 {np.percentile(delta, 99):.2e}; scoring s: hf {hf.seconds:.1f} llama.cpp {lcp.seconds:.1f}"
    )
    assert same / 100 >= MIN_AGREEMENT
    assert delta.max() < LL_TOLERANCE
    assert abs(hf.acc - lcp.acc) <= 1 - MIN_AGREEMENT + 1e-9
