"""The CPU scoring path (logits for the last positions only) gives lm-eval's exact MMLU results."""

from __future__ import annotations

import math

import pytest
from lm_recording import recording

from pipeline.config.recipe import EvalSpec


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_last_positions_scoring_equals_full_logits(tiny):
    import numpy as np
    from lm_eval.models.huggingface import HFLM

    from pipeline.runtime.mmlu import score_mmlu
    from pipeline.runtime.transformers import _hflm_class

    model, tok = tiny
    spec = EvalSpec(num_fewshot=5, subjects=["abstract_algebra", "marketing"], limit_per_subject=3)
    full_lm, full_lls = recording(HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu"))
    last_lm, last_lls = recording(_hflm_class()(pretrained=model, tokenizer=tok, device="cpu"))
    full = score_mmlu(full_lm, spec)
    last = score_mmlu(last_lm, spec)
    # The log-likelihoods themselves, not only their argmax: a scorer that slices the wrong position or
    # rescales the logits can keep every letter and still be wrong.
    assert len(full_lls) == 6 * 4 and set(last_lls) == set(full_lls)
    keys = sorted(full_lls)
    np.testing.assert_allclose([last_lls[k] for k in keys], [full_lls[k] for k in keys], rtol=1e-5, atol=1e-5)
    assert [q.predicted for q in last.questions] == [q.predicted for q in full.questions]
    assert last.acc == full.acc and last.n_questions == 6
    assert math.isclose(last.acc_stderr, full.acc_stderr, rel_tol=1e-9)


def test_continuation_longer_than_kept_positions_is_refused(tiny):
    import torch

    from pipeline.runtime.transformers import _hflm_class

    model, tok = tiny
    lm = _hflm_class()(pretrained=model, tokenizer=tok, device="cpu", keep=2)
    with pytest.raises(ValueError, match="exceeds the 2 scored positions"):
        lm._select_cont_toks(torch.zeros(2, 5), contlen=3, inplen=2)
