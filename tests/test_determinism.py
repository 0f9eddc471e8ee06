"""Is a variant's MMLU score reproducible? Every CPU method of the catalogue is built and scored on the tiny
Llama in two separate processes (other hash seeds; one builds at 1 thread, the other at 2) and scored at 1
and at 2 threads in each, and the per-choice log-likelihoods are compared bit for bit (`float.hex`), not
only the argmax letters. Methods that claim `deterministic = True` must be bit-identical; the claim is logged as the `deterministic` tag, and the
gate widens its MMLU bounds by a measured flip rate (or wants one) where a method is not deterministic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import metrics as M
from pipeline.config.policy import Policy
from pipeline.records import SweepRecord, VariantRecord
from pipeline.results import QuestionOutcome
from pipeline.verdict import evaluate
from pipeline.verdict.stats import non_inferiority

WORKER = Path(__file__).with_name("_determinism_worker.py")
CAL = {"calibration_samples": 8, "calibration_seq_len": 64}
G = 64  # a group size dividing the tiny model's widths
# One variant per CPU method family (library), two for torchao and llm-compressor whose kernels differ.
VARIANTS: dict[str, tuple[str, dict]] = {
    "none": ("none", {}),
    "int8-weight-only": ("int8-weight-only", {}),
    "int4-weight-only": ("int4-weight-only", {"group_size": G}),
    "bnb-nf4": ("bnb-nf4", {}),
    "bnb-int8": ("bnb-int8", {}),
    "quanto-int8": ("quanto-int8", {}),
    "hqq-4": ("hqq", {"nbits": 4, "group_size": G}),
    "w8a8": ("w8a8", {}),
    "gptq-4": ("gptq", {"bits": 4, "group_size": G, **CAL}),
    "magnitude-50": ("magnitude-prune", {"amount": 0.5}),
    "wanda-50": ("wanda", {"amount": 0.5, **CAL}),
}
# Two processes at once (other hash seeds); each builds at its first thread count and scores at both.
RUNS = {"a": ("1,2", "1"), "b": ("2,1", "2")}


def _has_avx512bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.fixture(scope="module")
def measured(tiny_model_dir, tmp_path_factory):
    """variant -> {(process, threads): [log-likelihood per request]}."""
    tmp = tmp_path_factory.mktemp("determinism")
    procs = {}
    for name, (threads, hash_seed) in RUNS.items():
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        cmd = [
            sys.executable,
            str(WORKER),
            str(tiny_model_dir),
            threads,
            json.dumps(VARIANTS),
            str(tmp / f"{name}.json"),
        ]
        procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for p in procs.values():
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    runs = {name: json.loads((tmp / f"{name}.json").read_text()) for name in RUNS}
    assert runs["a"]["n_requests"] == 2 * 4  # 2 subjects x 1 question x 4 choices
    return {
        v: {(n, int(t)): [float.fromhex(x) for x in lls] for n in RUNS for t, lls in runs[n]["lls"][v].items()}
        for v in VARIANTS
    }


def _difference(a: list[float], b: list[float]) -> str:
    flips = sum(
        max(range(4), key=a[i : i + 4].__getitem__) != max(range(4), key=b[i : i + 4].__getitem__)
        for i in range(0, len(a), 4)
    )
    return f"max |delta log-likelihood| {max(abs(x - y) for x, y in zip(a, b)):.3g}, {flips} of {len(a) // 4} answers flipped"


def test_every_cpu_method_family_is_measured():
    from pipeline.methods import registry

    libraries = {
        cls.library for cls in registry().values() if cls.__module__.startswith("pipeline.") and "cpu" in cls.devices
    }
    measured = {registry()[m].library for m, _ in VARIANTS.values()} | {registry()[LLAMACPP_METHOD].library}
    assert libraries == measured, "measure every CPU family's determinism here"


LLAMACPP_METHOD = "gguf-q4_k_m"  # llama.cpp's quantizers run on the GGUF engine: measured on its own below


def test_llamacpp_quantizer_and_scores_are_bit_identical(tmp_path, tiny_model_dir):
    """The same variant quantized with 1 and with 2 llama.cpp threads is the same file, and llama.cpp scores
    it with the same per-choice log-likelihoods at 1 and at 2 threads."""
    import hashlib

    from pipeline.config.recipe import EvalSpec, ModelSpec, VariantSpec
    from pipeline.models import resolve_model
    from pipeline.runtime.llamacpp_lm import LlamaCppLM
    from pipeline.runtime.mmlu import score_mmlu
    from pipeline.variants.gguf_artifact import build_gguf_artifact

    spec = ModelSpec(name="tiny", source=str(tiny_model_dir))
    resolved = resolve_model(spec)
    variant = VariantSpec(name="q", method=LLAMACPP_METHOD)
    builds = [build_gguf_artifact(resolved, spec, variant, threads=t, workdir=tmp_path) for t in (1, 2)]
    try:
        digests = {hashlib.sha256(b.gguf_path.read_bytes()).hexdigest() for b in builds}
        assert len(digests) == 1, "llama.cpp's quantizer wrote other bytes at 2 threads"
        lls = {}
        for threads in (1, 2):
            lm = LlamaCppLM(builds[0].gguf_path, n_threads=threads)
            scored, seen = lm.loglikelihood, {}

            def recording(requests, _scored=scored, _seen=seen, **kw):
                out = _scored(requests, **kw)
                _seen.update({(r.task_name, r.doc_id, r.idx): ll.hex() for r, (ll, _) in zip(requests, out)})
                return out

            lm.loglikelihood = recording
            try:
                score_mmlu(lm, EvalSpec(num_fewshot=0, subjects=["abstract_algebra", "anatomy"], limit_per_subject=1))
            finally:
                lm.close()
            lls[threads] = seen
    finally:
        for b in builds:
            b.close()
    assert len(lls[1]) == 8 and lls[1] == lls[2]
    assert len(set(lls[1].values())) > 1  # real scores, not a constant


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_log_likelihoods_bit_identical_across_processes_and_thread_counts(measured, variant):
    from pipeline.methods import registry

    lls = measured[variant]
    method = registry()[VARIANTS[variant][0]]
    if not method.deterministic and (not method.name.startswith("bnb-") or _has_avx512bf16()):
        pytest.xfail(f"{method.name} declares deterministic = False")  # recorded, and tagged on its runs
    # bitsandbytes 4-bit declares False for its AVX512-BF16 kernel; without that CPU feature it must be exact.
    a1, a2, b1, b2 = lls["a", 1], lls["a", 2], lls["b", 1], lls["b", 2]
    assert a1 == b1 and a2 == b2, f"{variant}: two processes differ: {_difference(a1, b1)}; {_difference(a2, b2)}"
    assert a1 == a2, f"{variant}: 1 vs 2 threads differ: {_difference(a1, a2)}"
    assert len(set(a1)) > 1  # real scores, not a constant


def test_the_deterministic_tag_is_the_methods_claim_and_a_measured_scoring_path():
    """`true` only where the method is bit-reproducible AND this engine's scoring on this device was measured to be
    (here, CPU); a server's or CUDA's reproducibility was never measured, so it is `unknown`, not `true`."""
    from pipeline.config.recipe import ModelSpec, VariantSpec
    from pipeline.runtime import RUNTIMES
    from pipeline.runtime.openai import OpenAIRuntime
    from pipeline.sweep.child import determinism
    from pipeline.variants.plan import WorkItem

    def tag(method: str, runtime: str, device: str) -> tuple[str, str]:
        item = WorkItem(ModelSpec(name="m", source="x"), VariantSpec(name=method, method=method), runtime)
        engine = OpenAIRuntime() if runtime == "openai" else RUNTIMES.get(runtime)()
        t = determinism(item, engine, device)
        return t[M.TAG_DETERMINISTIC], t[M.TAG_DETERMINISTIC_BASIS]

    assert tag("none", "transformers", "cpu")[0] == "true"
    assert tag("int8-weight-only", "transformers", "cpu")[0] == "true"
    assert tag("bnb-nf4", "transformers", "cpu") == (
        "false",
        "method bnb-nf4 is not bit-reproducible run to run (tests/test_determinism.py)",
    )
    value, basis = tag("none", "transformers", "cuda")  # batched CUDA scoring: nobody measured it
    assert value == "unknown" and "cuda" in basis
    value, basis = tag("none", "openai", "cpu")  # a server (artifact none included)
    assert value == "unknown" and "server" in basis
    assert (
        tag("gguf-q4_k_m", "llama.cpp", "cuda")[0] == "true"
    )  # this llama.cpp build scores on the CPU whatever eval.device says


# -- the gate: a noise floor from a measured flip rate ---------------------------------------------------

N = 2000  # enough questions for a drop of 0 to pass a 1-point margin


def _questions(flip: int = 0) -> tuple[QuestionOutcome, ...]:
    """Half right; the first `flip` wrong answers changed to another wrong letter (accuracy unchanged)."""
    out = []
    for i in range(N):
        answer, right = i % 4, i % 2 == 0
        predicted = answer if right else (answer + 1) % 4
        if not right and flip > 0:
            predicted, flip = (answer + 2) % 4, flip - 1
        out.append(QuestionOutcome("anatomy", i, answer, predicted, right))
    return tuple(out)


def _rec(variant: str, method: str, questions, deterministic: str | None = None) -> VariantRecord:
    tags = {"method": method, M.TAG_MODEL: "m", M.TAG_VARIANT: variant, M.TAG_MMLU_DESIGN: "all"}
    if deterministic is not None:
        tags[M.TAG_DETERMINISTIC] = deterministic
    params = {"variant.name": variant, "variant.method": method}
    metrics = {M.MMLU_ACC: sum(q.correct for q in questions) / len(questions)}
    return VariantRecord(f"id-{variant}", "m", variant, "candidate", "FINISHED", metrics, tags, params, questions)


def _mmlu_check(*records: VariantRecord, gated: str = "nf4"):
    policy = Policy(
        max_mmlu_drop_points=1.0,
        must_not_be_dominated=False,
        bootstrap_samples=1000,
        variants=[gated],
        register_model=False,
    )
    (g,) = evaluate(SweepRecord("parent", "exp", tuple(records), planned=tuple(r.label for r in records)), policy)
    return next(c for c in g.checks if c.name == "mmlu_drop")


BASE = _rec("none", "none", _questions(), "true")


def test_gate_wants_a_flip_rate_before_passing_a_nondeterministic_variant():
    check = _mmlu_check(BASE, _rec("nf4", "bnb-nf4", _questions(), "false"))
    assert check.outcome == "undecided"
    assert "deterministic=false" in check.detail and "add the same variant again under another name" in check.detail
    # A deterministic variant with the same answers passes.
    assert _mmlu_check(BASE, _rec("nf4", "int8-weight-only", _questions(), "true")).outcome == "pass"


def test_gate_widens_the_bounds_by_the_flip_rate_of_a_repeat():
    nf4 = _rec("nf4", "bnb-nf4", _questions(), "false")
    assert (
        _mmlu_check(BASE, nf4, _rec("nf4-again", "bnb-nf4", _questions(), "false")).outcome == "pass"
    )  # measured: 0 flips
    noisy = _mmlu_check(BASE, nf4, _rec("nf4-again", "bnb-nf4", _questions(flip=40), "false"))  # 2 % flipped
    assert noisy.outcome == "undecided" and "noise floor 2.00 pts (flip rate vs m/nf4-again)" in noisy.detail
    # Measured beats declared: a method claiming determinism whose repeat flips gets the same floor.
    int8 = _rec("nf4", "int8-weight-only", _questions(), "true")
    assert (
        _mmlu_check(BASE, int8, _rec("int8-again", "int8-weight-only", _questions(flip=40), "true")).outcome
        == "undecided"
    )


def test_noise_floor_shifts_both_bounds():
    variant, base = _questions(flip=40), _questions()
    plain = non_inferiority(variant, base, 1.0, n_boot=1000)
    noisy = non_inferiority(variant, base, 1.0, n_boot=1000, noise_points=2.0)
    assert noisy.drop_upper_points == pytest.approx(plain.drop_upper_points + 2.0)
    assert noisy.drop_lower_points == pytest.approx(plain.drop_lower_points - 2.0)
    assert (plain.decision, noisy.decision) == ("pass", "undecided")
