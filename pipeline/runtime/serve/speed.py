"""A server's decode speed through the speed harness (runtime `openai`): `ServerAdapter` times requests, not steps.

The recipe's load sweep runs here: concurrency 1 always (the single-stream figures the verdict compares, logged
unsuffixed like batch 1 elsewhere, and the one `SpeedPoint`), then every level `serve` lists, each logged with
its `_c<N>` / `_r<R>` suffix (`pipeline.runtime.serve.load`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pipeline.runtime.serve.server import Server, ServerError
from pipeline.runtime.speed.harness import DecodeAdapter, Measured, Reads, SpeedRun
from pipeline.runtime.speed.timing import level_stats

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config.recipe import SpeedSpec
    from pipeline.config.serve import ServeSpec
    from pipeline.results import LoadLevel, SpeedResult


class Endpoint(Protocol):
    """What the speed sweep reads of the server a session opened (`pipeline.runtime.openai.Endpoint`)."""

    model: str
    headers: dict[str, str]
    tokenizer: str
    server: Server
    gguf_path: Path | None

    @property
    def completions_url(self) -> str: ...

    def gone(self) -> str: ...


def _prompts(tokenizer_name: str, length: int, count: int) -> list[str]:
    """`count` different English prompts of `length` tokens (the tokenizer's count), as text."""
    from transformers import AutoTokenizer

    from pipeline.runtime.speed.plan import prompt_ids

    tok = AutoTokenizer.from_pretrained(tokenizer_name)
    rows = prompt_ids(tok, len(tok), count, length).tolist()
    return [tok.decode(r) for r in rows]


def _server_rss_mb(server: Server) -> float | None:
    """RSS of the launched server's process tree (None: not launched here, or gone)."""
    import psutil

    if server.proc is None:
        return None
    try:
        root = psutil.Process(server.proc.pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**20
    except psutil.Error:
        return None


class ServerAdapter(DecodeAdapter):
    """A server measured from the client, request by request. Its one point (batch 1) is the concurrency-1 level
    of the load sweep; every level `serve` lists runs after it (`levels`), with what it warns of (`warnings`).
    Bytes a step reads are known only for a GGUF launched here: its tensor census plus its f16 KV."""

    def __init__(self, endpoint: Endpoint, serve: ServeSpec) -> None:
        self.endpoint, self.serve = endpoint, serve
        self.levels: list[LoadLevel] = []
        self.warnings: list[str] = []

    def measure(self, spec: SpeedSpec, batch: int, prompt: int) -> Measured:  # noqa: ARG002 - one stream: batch 1
        from pipeline.runtime.serve.load import LoadPlan, run_level

        serve, endpoint = self.serve, self.endpoint
        levels: list[tuple[int | None, float | None]] = [(c, None) for c in sorted({1, *serve.concurrency})]
        levels += [(None, r) for r in serve.request_rates]
        n_prompts = max(max(c or 1 for c, _ in levels) * 4, 8)
        plan = LoadPlan(
            url=endpoint.completions_url,
            model=endpoint.model,
            prompts=_prompts(endpoint.tokenizer, prompt, n_prompts),
            max_tokens=spec.new_tokens,
            headers=endpoint.headers,
            timeout_s=serve.request_timeout_s,
            slo_ttft_ms=serve.slo.ttft_p90_ms,
            slo_tpot_ms=serve.slo.tpot_p90_ms,
        )
        if spec.warmup:  # the first requests pay the server's lazy start (graph capture, first allocations)
            run_level(plan, spec.warmup, concurrency=1)
        peak_rss = _server_rss_mb(endpoint.server)
        for concurrency, rate in levels:
            n = serve.requests_per_level or max(8, 4 * (concurrency or 1))
            if concurrency == 1:
                n = serve.requests_per_level or max(spec.repeats, 4)
            level = run_level(plan, n, concurrency=concurrency, rate=rate)
            self.levels.append(level)
            rss = _server_rss_mb(endpoint.server)
            if rss is not None:
                peak_rss = rss if peak_rss is None else max(peak_rss, rss)
            self._check(level, spec.new_tokens)
        single = self.levels[0]
        if single.failed or single.decode_tok_s is None:
            raise ServerError(
                f"{endpoint.completions_url}: single-stream requests failed or streamed under 2 tokens: {'; '.join(single.errors)}"
            )
        return Measured(
            level_stats(single, prompt), self._reads(spec, prompt), peak_rss, f"{single.completed} requests"
        )

    def _check(self, level: LoadLevel, new_tokens: int) -> None:
        """Warn of streams cut short and of failed requests; raise when the server is gone or nothing completed."""
        name = level.suffix[1:]
        if level.completed and level.mean_output_tokens < 0.9 * new_tokens:
            self.warnings.append(
                f"level {name}: {level.mean_output_tokens:.1f} of {new_tokens} tokens per request on average: the "
                "server ended streams early (end of sequence where it ignores `ignore_eos`, or it interrupts a request "
                "when another arrives: llama-cpp-python's server needs --interrupt_requests false)"
            )
        if level.failed:
            gone = self.endpoint.gone()
            if gone or level.completed == 0:
                raise ServerError(
                    f"{self.endpoint.completions_url}: {gone or 'every request failed'} at level {name}: {'; '.join(level.errors)}"
                )
            self.warnings.append(
                f"level {name}: {level.failed} of {level.requests} requests failed: {'; '.join(level.errors)}"
            )

    def _reads(self, spec: SpeedSpec, prompt: int) -> Reads:
        context = prompt + spec.new_tokens / 2.0
        path = self.endpoint.gguf_path
        if path is None:  # a server shrinkgate did not launch on a GGUF it counted: bytes unknown
            return Reads(weight_bytes=None, context=context)
        from pipeline.models.gguf_facts import gguf_shape, tensor_census
        from pipeline.runtime.llamacpp import step_reads

        return step_reads(tensor_census(path), gguf_shape(path), context)


def measure_server(
    endpoint: Endpoint, spec: SpeedSpec, serve: ServeSpec | None, *, bandwidth_gb_s: float | None = None
) -> SpeedResult:
    """Concurrency 1 and every level `serve` lists; the concurrency-1 level becomes the batch-1 point."""
    from pipeline.host import default_threads

    assert serve is not None
    threads = default_threads()
    speed_run = SpeedRun(spec)
    if endpoint.gguf_path is not None or bandwidth_gb_s is not None:  # MBU against this host's peak
        speed_run.probe_bandwidth("cpu", threads, bandwidth_gb_s)
    with ServerAdapter(endpoint, serve) as adapter:
        speed_run.run(adapter, batches=[1], prompts=[spec.prompt_tokens], scenario="server")
    speed_run.warnings += adapter.warnings
    if not all(lv.tokens_from_usage for lv in adapter.levels):
        speed_run.warnings.append("output tokens counted from streamed chunks (the server sent no usage in its stream)")
    return speed_run.result(
        device="server",
        threads=threads,
        timer="perf_counter (client, streamed chunks)",
        scenario="server",
        kv_cache="the server's",
        model=endpoint.model,
        load=tuple(adapter.levels),
    )
