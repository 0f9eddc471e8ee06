"""One process of tests/test_determinism.py: build each variant of the tiny Llama, score a few MMLU questions
with the CPU scorer the pipeline uses (last positions only) at each thread count, and write every
per-choice log-likelihood as `float.hex` (exact) to a JSON file (llm-compressor logs to stdout).

Usage: python tests/_determinism_worker.py MODEL_DIR THREADS VARIANTS_JSON OUT_JSON
THREADS: comma-separated, e.g. "1,2": the build runs at the first, scoring at each in turn.
VARIANTS_JSON: {"name": [method, params], ...}. lm-eval builds the requests once (first variant, the full
`score_mmlu` path); every variant is then scored on those very `Instance`s.
"""

from __future__ import annotations

import json
import sys
import warnings

SPEC = {
    "subjects": ["abstract_algebra", "marketing"],
    "limit_per_subject": 1,
    "num_fewshot": 5,
}  # 5-shot: the quickstart's prompt lengths


def main(model_dir: str, threads: list[int], variants: dict[str, list], out_path: str) -> None:
    import torch

    torch.set_num_threads(threads[0])  # what the child does with speed.threads, before anything runs
    from pipeline.config.recipe import EvalSpec, ModelSpec
    from pipeline.methods import BuildContext, make_method
    from pipeline.models import load_model, resolve_model
    from pipeline.runtime.mmlu import score_mmlu
    from pipeline.runtime.transformers import _hflm_class
    from pipeline.variants.artifact import apply_steps

    spec = ModelSpec(name="tiny", source=model_dir)
    resolved = resolve_model(spec)
    requests: list = []
    out: dict[str, dict[int, list[str]]] = {}
    for name, (method, params) in variants.items():
        torch.set_num_threads(threads[0])
        torch.manual_seed(1234)  # as the child does before building
        step = make_method(method, params)
        with warnings.catch_warnings():  # the build's own steps, without its byte accounting and profiling
            warnings.simplefilter("ignore")
            loaded = load_model(resolved, spec, device="cpu", load_kwargs=step.load_kwargs("cpu"))
            model = apply_steps(loaded.model, [step], BuildContext(tokenizer=loaded.tokenizer, device="cpu")).eval()
        lm = _hflm_class()(pretrained=model, tokenizer=loaded.tokenizer, device="cpu")
        if not requests:
            scored = lm.loglikelihood
            lm.loglikelihood = lambda reqs, **kw: requests.extend(reqs) or scored(reqs, **kw)  # type: ignore[method-assign]
            score_mmlu(lm, EvalSpec(**SPEC))  # type: ignore[arg-type]
            lm.loglikelihood = scored  # type: ignore[method-assign]
            requests.sort(key=lambda r: (r.task_name, r.doc_id, r.idx))
        out[name] = {}
        for t in threads:
            torch.set_num_threads(t)
            out[name][t] = [float(ll).hex() for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        del model, loaded, lm
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump({"n_requests": len(requests), "lls": out}, fh)


if __name__ == "__main__":
    main(sys.argv[1], [int(t) for t in sys.argv[2].split(",")], json.loads(sys.argv[3]), sys.argv[4])
