"""Speed under load of a launched server, side by side with the same GGUF in-process, in one run.

SmolLM2-135M as published (Q4_1) and re-quantized by llama.cpp to Q4_K_M, each served by llama-cpp-python's
OpenAI-compatible server (launched by shrinkgate on 127.0.0.1, `--interrupt_requests false`), streamed at
concurrency 1, 4 and 16; the Q4_K_M file is also timed in-process (runtime llama.cpp, batch 1 and 4) so the
server's own overhead shows. MMLU is scored on one question per run only (this is about speed).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serving.py [--requests 16] [--threads 2]

Prints one table; run it with nothing else on the machine (the load average is printed beside it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

LEVELS = (1, 4, 16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from pipeline import metrics as M
    from pipeline.cli import app
    from pipeline.host import load_average

    tmp = Path(tempfile.mkdtemp(prefix="shrinkgate-bench-serving-"))
    launch = [
        "{python}", "-m", "llama_cpp.server", "--model", "{artifact}", "--model_alias", "{model}", "--host", "{host}",
        "--port", "{port}", "--n_ctx", "4096", "--n_threads", "{threads}", "--logits_all", "true", "--interrupt_requests", "false",
    ]  # fmt: skip
    doc = {
        "name": "bench-serving",
        "runtime": "openai",
        "models": [{"name": "smollm2", "source": "smollm2-135m-instruct", "role": "candidate"}],
        "variants": [
            {"name": "none", "method": "none"},
            {"name": "gguf-q4_k_m", "method": "gguf-q4_k_m"},
            {"name": "q4_k_m-in-process", "method": "gguf-q4_k_m", "runtime": "llama.cpp"},
        ],
        "eval": {"num_fewshot": 0, "subjects": ["abstract_algebra"], "limit_per_subject": 1},
        "speed": {
            "prompt_tokens": 128,
            "new_tokens": 32,
            "batch_sizes": [1, 4],
            "warmup": 1,
            "repeats": 4,
            "threads": args.threads,
        },
        "serve": {
            "model": "served",
            "launch": launch,
            "concurrency": list(LEVELS),
            "requests_per_level": args.requests,
        },
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "bench-serving"},
    }
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    load_before = load_average()
    result = CliRunner().invoke(app, ["run", str(recipe), "--executor", "inline"])
    load_after = load_average()
    if result.exit_code != 0:
        print(result.output, file=sys.stderr)
        return 1
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("bench-serving")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(M.TAG_KIND) == "variant"]
    by_name = {(r.data.tags[M.TAG_VARIANT], r.data.tags[M.TAG_RUNTIME]): r.data.metrics for r in runs}
    base = by_name[("q4_k_m-in-process", "llama.cpp")]
    print(
        f"host load average {load_before} before, {load_after} after; {os.cpu_count()} CPUs; {args.requests} requests per level"
    )
    print(
        "| engine | variant | in flight | per-stream decode tok/s | output tok/s (all streams) | req/s | TTFT p50 / p90 ms | TPOT p50 / p90 ms | ITL p99 ms | tokens/request |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch in (1, 4):
        m = base
        dec = m[M.batch_metric(M.DECODE_TOK_S, batch)]
        print(
            f"| llama.cpp in-process | q4_k_m | batch {batch} | {dec / batch:.1f} | {dec:.1f} | | "
            f"{m[M.batch_metric(M.TTFT_MS, batch)]:.0f} / {m[M.batch_metric(M.TTFT_P90_MS, batch)]:.0f} | "
            f"{m[M.batch_metric(M.TPOT_MS, batch)]:.1f} / {m[M.batch_metric(M.TPOT_P90_MS, batch)]:.1f} | "
            f"{m[M.batch_metric(M.ITL_P99_MS, batch)]:.1f} | 32 |"
        )
    for variant in ("none", "gguf-q4_k_m"):
        m = by_name[(variant, "openai")]
        for c in LEVELS:
            s = f"_c{c}"
            print(
                f"| llama-cpp-python server | {'published Q4_1' if variant == 'none' else 'q4_k_m'} | {c} | {m[M.DECODE_TOK_S + s]:.1f} | "
                f"{m[M.OUTPUT_TOK_S + s]:.1f} | {m[M.REQUEST_THROUGHPUT + s]:.2f} | {m[M.TTFT_MS + s]:.0f} / {m[M.TTFT_P90_MS + s]:.0f} | "
                f"{m[M.TPOT_MS + s]:.1f} / {m[M.TPOT_P90_MS + s]:.1f} | {m[M.ITL_P99_MS + s]:.1f} | {m[M.MEAN_OUTPUT_TOKENS + s]:.1f} |"
            )
    ratio = by_name[("gguf-q4_k_m", "openai")][M.DECODE_TOK_S + "_c1"] / base[M.DECODE_TOK_S]
    print(f"server single-stream decode / in-process batch-1 decode (q4_k_m): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
