"""MMLU questions/s, side by side in one run: lm-eval's plain HFLM, our transformers LM with few-shot prefix
reuse, and llama.cpp with prefix reuse, on the same seeded 5-shot sample of SmolLM2-135M.

Every path runs lm-eval's own task (our copy of `mmlu`) through `pipeline.runtime.mmlu.score_mmlu`, so the
prompts, the few-shot examples and the metric are the same; only the `LM` differs. The transformers paths
score the dense fp32 model; llama.cpp scores an all-F32 GGUF of the same weights (bundled Q4_1 dequantized by
llama.cpp, as transformers dequantized it) and the published Q4_1 file itself. Predictions are compared with
plain HFLM's. Nothing is asserted: goals are printed beside the numbers. Run it with nothing else on the
machine (the load average is printed).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mmlu_throughput.py                 # 300-question sample, ~21 min
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mmlu_throughput.py --full          # + all 14,042 questions, fastest path
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mmlu_throughput.py --paths reuse --full --full-only   # the full run alone

The full run scores one subject at a time and keeps each subject's result under `--full-dir`, so an interrupted
run resumes where it stopped (the wall time printed is the sum of the subjects' own scoring times).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.bindings.llamacpp import cpu_features, require_llama_cpp  # noqa: E402
from pipeline.config.recipe import EvalSpec, ModelSpec  # noqa: E402
from pipeline.data.mmlu import CATEGORIES, SUBJECTS  # noqa: E402
from pipeline.host import default_threads, load_average  # noqa: E402
from pipeline.models import load_model, resolve_model  # noqa: E402
from pipeline.models.bundled import BUNDLED, cache_root  # noqa: E402
from pipeline.runtime.mmlu import score_mmlu  # noqa: E402
from pipeline.runtime.transformers import TAIL_BATCH  # noqa: E402

PATHS = ("plain", "reuse", "llama-f32", "llama-q4_1")

FULL_MMLU = 14_042
GOALS = (
    "transformers with prefix reuse >= 4x plain lm-eval HFLM (questions/s)",
    "full 5-shot MMLU (14,042 questions) on SmolLM2-135M in <= 30 min by the fastest path",
)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _f32_gguf(src: Path, dst: Path) -> Path:
    lib = require_llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = lib.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    if lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not write {dst}")
    return dst


def _paths(loaded, gguf_f32: Path, gguf_q41: Path, threads: int):
    """(label, factory) for every scoring path; each factory returns (lm, close)."""
    from lm_eval.models.huggingface import HFLM

    from pipeline.runtime.llamacpp_lm import LlamaCppLM
    from pipeline.runtime.transformers import _hflm_class

    def hf_plain():
        return HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, device="cpu"), None

    def hf_reuse():
        return _hflm_class()(pretrained=loaded.model, tokenizer=loaded.tokenizer, device="cpu"), None

    def llama(path):
        def make():
            lm = LlamaCppLM(path, n_threads=threads)
            return lm, lm.close

        return make

    return {
        "plain": ("lm-eval HFLM (plain, fp32, batch 1)", hf_plain),
        "reuse": (f"transformers + prefix reuse (fp32, up to {TAIL_BATCH} questions per forward)", hf_reuse),
        "llama-f32": ("llama.cpp + prefix reuse (F32 GGUF)", llama(gguf_f32)),
        "llama-q4_1": ("llama.cpp + prefix reuse (Q4_1, as published)", llama(gguf_q41)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=300, help="size of the seeded stratified 5-shot sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-plain", action="store_true", help="skip plain HFLM (the slowest path)")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument(
        "--full",
        action="store_true",
        help="then score all 14,042 questions on the fastest path and print lm-eval's table",
    )
    ap.add_argument("--full-only", action="store_true", help="with --full and one path: skip the side-by-side sample")
    ap.add_argument(
        "--full-dir", type=Path, default=None, help="where the full run keeps each subject's result (resumes from it)"
    )
    args = ap.parse_args(argv)
    chosen = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := sorted(set(chosen) - set(PATHS)):
        ap.error(f"--paths: unknown {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    threads = args.threads or default_threads()
    import torch

    torch.set_num_threads(threads)
    load_before = load_average()
    spec = EvalSpec(num_fewshot=5, sample={"questions": args.questions, "seed": args.seed})
    model_spec = ModelSpec(name="smollm2-135m-instruct", source="smollm2-135m-instruct")
    loaded = load_model(resolve_model(model_spec), model_spec, device="cpu")
    with tempfile.TemporaryDirectory(prefix="shrinkgate-bench-mmlu-") as tmp:
        q41 = BUNDLED["smollm2-135m-instruct"].locate(cache_root())
        f32 = _f32_gguf(q41, Path(tmp) / "smollm2-f32.gguf")
        rows, reference = [], None
        paths = _paths(loaded, f32, q41, threads)
        for key, (label, factory) in paths.items():
            if key not in chosen or (args.skip_plain and key == "plain") or (args.full_only and args.full):
                continue
            lm, close = factory()
            try:
                result = score_mmlu(lm, spec)
            finally:
                if close:
                    close()
            predicted = [q.predicted for q in result.questions]
            reference = reference or predicted
            same = sum(a == b for a, b in zip(predicted, reference))
            rows.append((label, result, same, getattr(lm, "forwarded_tokens", None)))
            print(
                f"  {label}: {result.n_questions} questions in {result.seconds:.1f} s, acc {result.acc:.3f}, "
                f"{same}/{result.n_questions} answers as the first path",
                flush=True,
            )

        full = None
        if args.full:
            rates = {k: r[1].n_questions / r[1].seconds for k in chosen for r in rows if r[0] == paths[k][0]}
            if args.full_only and len(chosen) != 1:
                ap.error("--full-only: name one path with --paths")
            key = chosen[0] if args.full_only else max(rates, key=rates.__getitem__)
            label = paths[key][0]
            full_dir = args.full_dir or cache_root() / "bench" / f"full-mmlu-{key}"
            full = (label, _full_mmlu(paths[key][1], full_dir), full_dir)
    load_after = load_average()

    print(f"\nMMLU 5-shot throughput, SmolLM2-135M, {args.questions}-question stratified sample (seed {args.seed})")
    print(
        f"host: {platform.processor() or platform.machine()}, {threads} threads, llama.cpp features: {' '.join(cpu_features())}"
    )
    print(f"load average before {_fmt(load_before)}, after {_fmt(load_after)}")
    base_rate = next((r[1].n_questions / r[1].seconds for r in rows if "plain" in r[0]), None)
    print(
        "\n| path | questions | seconds | questions/s | x plain HFLM | 14,042 questions at this rate | acc | same answer as first row |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, result, same, _tokens in rows:
        rate = result.n_questions / result.seconds
        ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
        print(
            f"| {label} | {result.n_questions} | {result.seconds:.1f} | {rate:.2f} | {ratio} | {FULL_MMLU / rate / 60:.0f} min | "
            f"{result.acc:.3f} ± {result.acc_stderr:.3f} | {same}/{result.n_questions} |"
        )
    print("\ngoals: " + "; ".join(GOALS))
    if full:
        label, subjects, full_dir = full
        print(f"\nfull 5-shot MMLU on {label} (per-subject results in {full_dir}):")
        print(_category_table(subjects))
    return 0


def _full_mmlu(factory, full_dir: Path) -> dict[str, dict]:
    """Every subject 5-shot, one at a time; a subject already in `full_dir` is read back, not scored again."""
    full_dir.mkdir(parents=True, exist_ok=True)
    lm, close = factory()
    done: dict[str, dict] = {}
    try:
        for subject in SUBJECTS:
            path = full_dir / f"{subject}.json"
            if not path.is_file():
                r = score_mmlu(lm, EvalSpec(num_fewshot=5, subjects=[subject]))
                record = {
                    "n": r.n_questions,
                    "correct": sum(q.correct for q in r.questions),
                    "seconds": r.seconds,
                    "load": load_average(),
                }
                path.write_text(json.dumps(record))
                print(f"  {subject}: {record['correct']}/{record['n']} in {r.seconds:.0f} s", flush=True)
            done[subject] = json.loads(path.read_text())
    finally:
        if close:
            close()
    return done


def _category_table(subjects: dict[str, dict]) -> str:
    """lm-eval's mmlu group table (question-weighted accuracy per category and overall; binomial stderr)."""

    def row(name: str, members: list[str]) -> str:
        n = sum(subjects[s]["n"] for s in members)
        p = sum(subjects[s]["correct"] for s in members) / n
        return f"| {name} | 5 | acc | {p:.4f} | ± {math.sqrt(p * (1 - p) / (n - 1)):.4f} | {n} |"

    lines = ["| group | n-shot | metric | value | stderr | questions |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    lines.append(row("mmlu", list(subjects)))
    for category in sorted(set(CATEGORIES.values())):
        lines.append(row(f" - {category}", [s for s in subjects if CATEGORIES[s] == category]))
    seconds = sum(r["seconds"] for r in subjects.values())
    loads = [r["load"] for r in subjects.values() if r.get("load") is not None]
    lines.append(
        f"\nscoring time, sum over subjects: {seconds / 60:.1f} min; load average per subject {min(loads, default=math.nan):.2f}-{max(loads, default=math.nan):.2f}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
