"""Few-shot prefix reuse in the transformers LM gives plain lm-eval's answers from a fraction of the tokens.

The subject's 5-shot prefix is evaluated once and every question scores from a copy of its KV cache
(`pipeline.runtime.transformers`). Measured (2-core AMD host): SmolLM2-135M, 12 questions over 6 subjects,
predictions identical to lm-eval's HFLM, max |delta LL| 1.2e-5 nats; Gemma-3-270M (sliding-window attention,
512) from a 1,017-token shared prefix: identical predictions, max |delta LL| 7.9e-6.
"""

from __future__ import annotations

import numpy as np
from lm_recording import recording

from pipeline.config.recipe import EvalSpec, ModelSpec
from pipeline.runtime.mmlu import MIN_SHARED_PREFIX, prefix_groups
from pipeline.runtime.transformers import TAIL_BATCH, tail_batches

LL_TOLERANCE = 1e-3  # nats per request: fp32 with a cache vs one forward differs in summation order only

SUBJECTS = ["abstract_algebra", "anatomy", "high_school_biology", "high_school_chemistry", "marketing", "philosophy"]


def test_groups_follow_the_shared_prefix_and_stop_before_scored_positions():
    header = tuple(range(100, 120))  # both subjects' first line
    shots_a, shots_b = header + tuple(range(200, 300)), header + tuple(range(300, 420))
    inputs = [shots_a + (1, 2, 3), shots_b + (4, 5), shots_a + (1, 9, 9, 9), shots_b + (6,), (7, 7)]
    scored = [1, 1, 2, 1, 1]
    groups = sorted(prefix_groups(inputs, scored), key=lambda g: g[1])
    assert groups == [(len(shots_a) + 1, [0, 2]), (len(shots_b), [1, 3]), (0, [4])]  # a: the shared "1" too
    # a header alone (< half of the subject's shared run) never joins two subjects
    assert all(len({tuple(inputs[m][:20]) for m in members}) == 1 for _, members in groups)
    # the shared run ends where the first scored position begins
    assert prefix_groups([(1,) * 40 + (2,), (1,) * 40 + (3,)], [20, 1]) == [(21, [0, 1])]
    assert prefix_groups([(1,) * 40 + (2,), (1,) * 40 + (3,)], [40, 1]) == [(0, [0]), (0, [1])]
    assert MIN_SHARED_PREFIX > 1


def test_multi_token_continuations_match_one_forward(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.runtime.transformers import _hflm_class

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    shared = list(range(5, 69))
    requests = [
        (("", ""), shared + [70, 71], [72]),
        (("", ""), shared + [70, 71], [73, 74, 75]),
        (("", ""), shared + [80], [81, 82]),
        (("", ""), shared + [80], [81, 82]),  # a repeat answers the same
        (("", ""), [9, 8, 7], [6]),  # shares nothing
    ]
    reuse = _hflm_class()(pretrained=model, tokenizer=tok, device="cpu")
    plain = _hflm_class()(pretrained=model, tokenizer=tok, device="cpu", prefix_reuse=False)
    got, want = (
        reuse._loglikelihood_tokens(requests, disable_tqdm=True),
        plain._loglikelihood_tokens(requests, disable_tqdm=True),
    )
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=0, atol=1e-5)
    assert [g[1] for g in got] == [w[1] for w in want] and got[2] == got[3]
    # the 64 shared tokens once, then each input's own tokens; the three tails after it in one forward (2 + 2 pads)
    assert reuse.forwarded_tokens == 64 + 2 + 4 + 2 + 3 and reuse.padded_tokens == 4


def test_tail_batches_go_shortest_first_within_size_and_logits_budget():
    lengths = [90, 120, 80, 100, 95, 85, 130, 110, 105, 99]
    batches = tail_batches(lengths, [1] * len(lengths), vocab_size=49_152)
    assert [len(b) for b in batches] == [TAIL_BATCH, len(lengths) - TAIL_BATCH]
    assert [lengths[i] for b in batches for i in b] == sorted(lengths) and sorted(sum(batches, [])) == list(
        range(len(lengths))
    )
    # Gemma's 262k vocabulary and 8 scored positions each: 2 rows x 16 positions x 262k x 4 B > 16 MB
    assert tail_batches([50, 60, 70], [8, 8, 8], vocab_size=262_144, logits_budget=16 * 2**20) == [[0], [1], [2]]
    assert tail_batches([50, 50, 50], [1, 1, 1], vocab_size=262_144, logits_budget=16 * 2**20) == [[0, 1, 2]]


def _load(source: str):
    from pipeline.models import load_model, resolve_model

    spec = ModelSpec(name=source, source=source)
    return load_model(resolve_model(spec), spec, device="cpu")


def test_smollm2_predictions_equal_plain_lm_eval_hflm():
    from lm_eval.models.huggingface import HFLM

    from pipeline.runtime.mmlu import score_mmlu
    from pipeline.runtime.transformers import _hflm_class

    loaded = _load("smollm2-135m-instruct")
    spec = EvalSpec(num_fewshot=5, subjects=SUBJECTS, limit_per_subject=2)
    plain_lm, plain_lls = recording(
        HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, device="cpu")
    )
    reuse_lm, reuse_lls = recording(_hflm_class()(pretrained=loaded.model, tokenizer=loaded.tokenizer, device="cpu"))
    plain, reuse = score_mmlu(plain_lm, spec), score_mmlu(reuse_lm, spec)
    assert reuse.n_questions == 12 and [q.predicted for q in reuse.questions] == [q.predicted for q in plain.questions]
    keys = sorted(plain_lls)
    delta = np.abs(np.array([reuse_lls[k] for k in keys]) - np.array([plain_lls[k] for k in keys]))
    print(
        f"\n|dLL| max {delta.max():.2e}; tokens forwarded {reuse_lm.forwarded_tokens}; seconds plain {plain.seconds:.1f} reuse {reuse.seconds:.1f}"
    )
    assert delta.max() < LL_TOLERANCE
    assert reuse.acc == plain.acc


def test_gemma_sliding_window_past_its_window_equals_one_forward():
    from pipeline.runtime.mmlu import score_mmlu
    from pipeline.runtime.transformers import _hflm_class

    loaded = _load("gemma-3-270m")
    window = loaded.model.config.get_text_config().sliding_window
    spec = EvalSpec(num_fewshot=5, subjects=["security_studies"], limit_per_subject=3)
    reuse_lm, reuse_lls = recording(_hflm_class()(pretrained=loaded.model, tokenizer=loaded.tokenizer, device="cpu"))
    plain_lm, plain_lls = recording(
        _hflm_class()(pretrained=loaded.model, tokenizer=loaded.tokenizer, device="cpu", prefix_reuse=False)
    )
    reuse, plain = score_mmlu(reuse_lm, spec), score_mmlu(plain_lm, spec)
    assert [q.predicted for q in reuse.questions] == [q.predicted for q in plain.questions]
    keys = sorted(plain_lls)
    delta = np.abs(np.array([reuse_lls[k] for k in keys]) - np.array([plain_lls[k] for k in keys]))
    print(f"\nsliding window {window}; shared prefix {reuse_lm.shared_prefixes}; |dLL| max {delta.max():.2e}")
    assert window and max(reuse_lm.shared_prefixes) > window  # the cache copied had slid already
    assert delta.max() < LL_TOLERANCE


def test_prefix_reuse_can_be_turned_off(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.runtime.transformers import _hflm_class

    lm = _hflm_class()(
        pretrained=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
        device="cpu",
        prefix_reuse=False,
    )
    lm._loglikelihood_tokens([(("", ""), list(range(5, 40)), [41])], disable_tqdm=True)
    assert lm.prefix_reuse is False and lm.forwarded_tokens == 0  # HFLM's own path ran
