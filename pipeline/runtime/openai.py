"""Runtime `openai`: a model behind an OpenAI-compatible server (vLLM, SGLang, TGI, TensorRT-LLM, llama.cpp's
server, ...), measured over HTTP.

Per child, the session starts the recipe's `serve.launch` command on what the build made (`{artifact}`: a GGUF
file, or a checkpoint folder) or reaches a server that already runs, waits for health, checks that it serves
`serve.model`, and stops it when the child ends (`pipeline.runtime.serve.server`). MMLU is lm-eval's
`local-completions` model on the same endpoint (`pipeline.runtime.serve.lm`), speed is the load sweep of
`pipeline.runtime.serve.load`: concurrency 1 always (the single-stream figures the verdict compares, logged
unsuffixed like batch 1 elsewhere), then every level the recipe lists, each level's figures suffixed `_c<N>`
or `_r<R>`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pipeline import metrics as M
from pipeline.redact import protect_argv, protect_env, redact, redact_argv
from pipeline.runtime.base import Runtime, Session
from pipeline.runtime.serve.server import Server, ServerError, free_port, http_json, python_executable

if TYPE_CHECKING:
    from pipeline.config.recipe import EvalSpec, Recipe, ServeSpec, SpeedSpec
    from pipeline.results import AccuracyResult, LoadLevel, SpeedResult

_LOG_MAX_CHARS = 2_000_000
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Endpoint:
    """The server one child measures."""

    base_url: str  # ends in /v1
    model: str
    headers: dict[str, str]
    tokenizer: str  # HF tokenizer dir or id lm-eval and the load prompts count tokens with
    server: Server
    gguf_path: Path | None = None  # the GGUF a launched local server loaded (weights counted for MBU)
    api_key_env: str | None = None

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/completions"

    def gone(self) -> str:
        """Why requests fail when the server went away ('' when it still runs)."""
        proc = self.server.proc
        if proc is not None and proc.poll() is not None:
            return f"the server exited (code {proc.returncode}) during the run; see logs/server.log"
        return ""


def _substitute(text: str, values: dict[str, str]) -> str:
    # plain replacement, not str.format: launch arguments may hold JSON braces of their own
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


class ServerSession(Session):
    def __init__(self, serve: ServeSpec, artifact: Any, model_dir: Path | None, threads: int | None) -> None:
        super().__init__(None)
        self.serve, self.artifact, self.model_dir, self.threads = serve, artifact, model_dir, threads
        self.workdir = Path(tempfile.mkdtemp(prefix="shrinkgate-serve-"))
        self.server: Server | None = None

    def __enter__(self) -> Endpoint:
        from pipeline.runtime.speed.host import default_threads

        serve = self.serve
        gguf = getattr(self.artifact, "gguf_path", None)
        target = gguf or getattr(self.artifact, "checkpoint_dir", None)
        values = {
            "python": python_executable(),
            "host": serve.host,
            "port": str(serve.port or free_port(serve.host if serve.host not in ("0.0.0.0", "::") else "127.0.0.1")),
            "threads": str(self.threads or default_threads()),
            "artifact": str(target or ""),
        }
        values["model"] = model = _substitute(serve.model, values)  # TGI serves under its --model-id: {artifact}
        base_url = _substitute(serve.base_url, values).rstrip("/")
        health = _substitute(serve.health_url, values) if serve.health_url else f"{base_url}/models"
        tokenizer = serve.tokenizer or (str(self.model_dir) if self.model_dir else None)
        if tokenizer is None:
            raise ServerError("serve.tokenizer: no tokenizer to count MMLU's tokens with; name an HF tokenizer dir or id")
        headers = {}
        if serve.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(serve.api_key_env, '')}"
        argv = [_substitute(a, values) for a in serve.launch] if serve.launch else None
        # the key and the launch line's key/token values never reach a tag, a log or an error (pipeline.redact)
        protect_env(serve.api_key_env)
        protect_argv(argv)
        self.server = Server(
            base_url=base_url,
            health_url=health,
            argv=argv,
            log_path=self.workdir / "server.log",
            health_timeout_s=serve.health_timeout_s,
            headers=headers,
        )
        self.server.start()
        try:
            served = self.server.served_models()
            if model not in served:
                raise ServerError(
                    f"serve.model: {model!r} is not what {base_url}/models lists ({', '.join(served) or 'nothing'}); "
                    "set serve.model to the served name"
                )
            self.tags = {
                M.TAG_SERVE_MODEL: model,
                M.TAG_SERVE_BASE_URL: base_url,
                M.TAG_SERVE_LAUNCHED: str(argv is not None).lower(),
                M.TAG_SERVE_MODELS: ",".join(served)[:500],
            }
            version = _server_version(base_url, headers)
            if version:
                self.tags[M.TAG_SERVE_VERSION] = version
            if argv is not None:
                self.tags["serve.launch"] = " ".join(redact_argv(argv))[:5000]
                self.tags["serve.started_s"] = f"{self.server.started_s:.1f}"
        except BaseException:
            self.server.stop()
            raise
        local = urlsplit(base_url).hostname in _LOOPBACK and argv is not None
        return Endpoint(base_url, model, headers, tokenizer, self.server, gguf if local else None, serve.api_key_env)

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()

    def logs(self) -> dict[str, str]:
        path = self.workdir / "server.log"
        try:
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                return {M.ART_SERVER_LOG: redact(text)[-_LOG_MAX_CHARS:]}
            return {}
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _server_version(base_url: str, headers: dict[str, str]) -> str:
    """What the server says its version is: vLLM/SGLang `GET /version`, TGI `GET /info`; '' when neither."""
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    for path in ("/version", "/info"):
        try:
            doc = http_json(root + path, headers=headers, timeout=3)
        except ServerError:
            continue
        if isinstance(doc, dict):
            found = {k: doc[k] for k in ("version", "model_id", "model_sha", "docker_label") if doc.get(k)}
            if found:
                return ", ".join(f"{k}={v}" for k, v in found.items())[:500]
    return ""


def check_serve(recipe: Recipe) -> str | None:
    """One line naming what of `serve` / `speed` cannot work, or None (before any model loads)."""
    serve = recipe.serve
    if serve is None:
        return "add a `serve:` section (base_url, model, launch; see README)"
    if recipe.speed.compile:
        return "speed.compile: true is a torch.compile option; a server runs its own engine, so set compile: false"
    if recipe.speed.static_cache:
        return "speed.static_cache: true is a transformers option; a server manages its own KV cache, so leave it null"
    if not serve.base_url.startswith(("http://", "https://")):
        return f"serve.base_url: {serve.base_url!r} is not an http(s) URL; e.g. http://{{host}}:{{port}}/v1"
    if serve.api_key_env and serve.api_key_env not in os.environ:
        return f"serve.api_key_env: ${serve.api_key_env} is not set; export it or remove api_key_env"
    if serve.launch is None:
        if serve.artifact != "none":
            return (
                f"serve.artifact: {serve.artifact} builds something no server is told about: add serve.launch with "
                "{artifact} in it, or set artifact: none to measure the model a running server serves"
            )
        if "{port}" in serve.base_url and serve.port is None:
            return "serve.port: a server that already runs has a fixed port; set serve.port or write it into serve.base_url"
        return None
    exe = serve.launch[0].replace("{python}", python_executable())
    if shutil.which(exe) is None and not Path(exe).is_file():
        return f"serve.launch[0]: {serve.launch[0]!r} is not a program on PATH; install the engine or fix the command"
    if serve.artifact != "none" and not any("{artifact}" in a for a in serve.launch):
        return (
            f"serve.launch: no {{artifact}} in the command, so the server would not serve the {serve.artifact} "
            "shrinkgate built; pass it (e.g. --model {artifact}) or set artifact: none"
        )
    if not any("{host}" in a for a in serve.launch):
        return (
            "serve.launch: no {host} in the command, so the server would bind wherever its default is (some bind "
            "every interface); pass it (e.g. --host {host}) so it binds serve.host, loopback unless you change it"
        )
    return None


class OpenAIRuntime(Runtime):
    name = "openai"

    def __init__(self, serve: ServeSpec | None = None, threads: int | None = None) -> None:
        self.serve, self.threads = serve, threads

    @property
    def artifact_format(self) -> str:  # type: ignore[override]
        from pipeline.config.recipe import SERVE_ARTIFACT_FORMATS

        return SERVE_ARTIFACT_FORMATS[self.serve.artifact] if self.serve is not None else "gguf"

    @property
    def scores_mmlu(self) -> bool:  # type: ignore[override]
        return self.serve is None or self.serve.mmlu

    @classmethod
    def for_recipe(cls, recipe: Recipe | None) -> OpenAIRuntime:
        if recipe is None or recipe.serve is None:
            raise ValueError("runtime openai needs the recipe's `serve:` section")
        return cls(recipe.serve, recipe.speed.threads)

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> str | None:
        return check_serve(recipe)

    def unmeasured_reproducibility(self, device: str) -> str | None:  # noqa: ARG002 - the server picks its own device
        return "scored by a server over HTTP (runtime openai): its batching and kernels are its own, not measured run to run"

    def session(self, artifact: Any, model_dir: Path | None = None) -> ServerSession:
        if self.serve is None:
            raise ValueError("runtime openai needs the recipe's `serve:` section")
        return ServerSession(self.serve, artifact, model_dir, self.threads)

    def score_mmlu(self, endpoint: Endpoint, spec: EvalSpec, stop=None) -> AccuracyResult:  # type: ignore[override]
        import requests

        from pipeline.runtime.mmlu import score_mmlu
        from pipeline.runtime.serve.lm import ServerCompletionsLM

        assert self.serve is not None
        lm = ServerCompletionsLM(
            model=endpoint.model,
            base_url=endpoint.completions_url,
            tokenizer=endpoint.tokenizer,
            api_key_env=endpoint.api_key_env,
            max_length=self.serve.max_length,
            num_concurrent=self.serve.mmlu_concurrency,
            max_retries=self.serve.max_retries,
            timeout=int(max(1, round(self.serve.request_timeout_s))),
            seed=spec.seed,
        )
        try:
            return score_mmlu(lm, spec, stop)
        except requests.Timeout:
            raise ServerError(
                f"{endpoint.completions_url}: no answer within {self.serve.request_timeout_s:g} s (serve.request_timeout_s)"
            ) from None
        except requests.HTTPError as exc:
            resp = exc.response
            body = (resp.text if resp is not None else "").strip().replace("\n", " ")[:200]
            code = resp.status_code if resp is not None else "?"
            raise ServerError(f"{endpoint.completions_url}: HTTP {code} while scoring MMLU: {body}") from None
        except requests.ConnectionError as exc:
            why = endpoint.gone() or f"connection failed ({type(exc).__name__})"
            raise ServerError(f"{endpoint.completions_url}: {why}") from None

    def decode(self, endpoint: Endpoint, spec: SpeedSpec) -> SpeedResult:  # type: ignore[override]
        return measure_server(endpoint, spec, self.serve)


def _prompts(tokenizer_name: str, length: int, count: int) -> list[str]:
    """`count` different English prompts of `length` tokens (the tokenizer's count), as text."""
    from transformers import AutoTokenizer

    from pipeline.runtime.speed.measure import prompt_ids

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


def measure_server(endpoint: Endpoint, spec: SpeedSpec, serve: ServeSpec | None, *, bandwidth_gb_s: float | None = None) -> SpeedResult:
    """Concurrency 1 and every level `serve` lists; the concurrency-1 level becomes the batch-1 point."""
    from pipeline.results import SpeedPoint, SpeedResult
    from pipeline.runtime.serve.load import LoadPlan, run_level
    from pipeline.runtime.speed.host import bandwidth_probe, default_threads, load_average

    assert serve is not None
    levels: list[tuple[int | None, float | None]] = [(c, None) for c in sorted({1, *serve.concurrency})]
    levels += [(None, r) for r in serve.request_rates]
    n_prompts = max(max(c or 1 for c, _ in levels) * 4, 8)
    plan = LoadPlan(
        url=endpoint.completions_url,
        model=endpoint.model,
        prompts=_prompts(endpoint.tokenizer, spec.prompt_tokens, n_prompts),
        max_tokens=spec.new_tokens,
        headers=endpoint.headers,
        timeout_s=serve.request_timeout_s,
        slo_ttft_ms=serve.slo.ttft_p90_ms,
        slo_tpot_ms=serve.slo.tpot_p90_ms,
    )
    load_before = load_average()
    if spec.warmup:  # the first requests pay the server's lazy start (graph capture, first allocations)
        run_level(plan, spec.warmup, concurrency=1)
    measured: list[LoadLevel] = []
    warns: list[str] = []
    peak_rss = _server_rss_mb(endpoint.server)
    for concurrency, rate in levels:
        n = serve.requests_per_level or max(8, 4 * (concurrency or 1))
        if concurrency == 1:
            n = serve.requests_per_level or max(spec.repeats, 4)
        level = run_level(plan, n, concurrency=concurrency, rate=rate)
        measured.append(level)
        rss = _server_rss_mb(endpoint.server)
        if rss is not None:
            peak_rss = rss if peak_rss is None else max(peak_rss, rss)
        if level.completed and level.mean_output_tokens < 0.9 * spec.new_tokens:
            warns.append(
                f"level {level.suffix[1:]}: {level.mean_output_tokens:.1f} of {spec.new_tokens} tokens per request on average: the "
                "server ended streams early (end of sequence where it ignores `ignore_eos`, or it interrupts a request "
                "when another arrives: llama-cpp-python's server needs --interrupt_requests false)"
            )
        if level.failed:
            gone = endpoint.gone()
            if gone or level.completed == 0:
                raise ServerError(f"{endpoint.completions_url}: {gone or 'every request failed'} at level {level.suffix[1:]}: {'; '.join(level.errors)}")
            warns.append(f"level {level.suffix[1:]}: {level.failed} of {level.requests} requests failed: {'; '.join(level.errors)}")
    single = measured[0]
    if single.failed or single.decode_tok_s is None:
        raise ServerError(f"{endpoint.completions_url}: single-stream requests failed or streamed under 2 tokens: {'; '.join(single.errors)}")
    threads = default_threads()
    bytes_per_token = wall = mbu = None
    bw = bandwidth_gb_s
    if endpoint.gguf_path is not None:  # a server launched here on a GGUF shrinkgate counted: weights + f16 KV
        from pipeline.models.gguf_engine import gguf_shape, tensor_census
        from pipeline.runtime.llamacpp import KV_CACHE_BYTES

        kv = gguf_shape(endpoint.gguf_path).kv_bytes_at_context(spec.prompt_tokens + spec.new_tokens / 2.0, KV_CACHE_BYTES)
        bytes_per_token = float(tensor_census(endpoint.gguf_path).bytes_read_per_token + kv)
        if bw is None:
            bw = float(bandwidth_probe("cpu", threads)["bandwidth_gb_s"])
        wall = bw * 1e9 / bytes_per_token
        mbu = single.decode_tok_s * bytes_per_token / (bw * 1e9)
    ttft = single.ttft_ms.get(50, 0.0)
    point = SpeedPoint(
        batch_size=1,
        prompt_tokens=spec.prompt_tokens,
        new_tokens=spec.new_tokens,
        ttft_ms=ttft,
        ttft_p90_ms=single.ttft_ms.get(90, 0.0),
        tpot_ms=single.tpot_ms.get(50, 0.0),
        tpot_p90_ms=single.tpot_ms.get(90, 0.0),
        itl_p99_ms=single.itl_ms.get(99, 0.0),
        e2e_ms=single.e2e_ms.get(50, 0.0),
        decode_tok_s=single.decode_tok_s,
        prefill_tok_s=spec.prompt_tokens / (ttft / 1e3) if ttft else 0.0,  # client-side: includes the HTTP round trip
        peak_mem_mb=peak_rss,  # type: ignore[arg-type]  # None: a server not launched here
        bytes_per_token=bytes_per_token or 0.0,
        wall_tok_s=wall,
        mbu=mbu,
        cv=single.decode_cv or 0.0,
        itl_p50_ms=single.itl_ms.get(50, 0.0),
        itl_p90_ms=single.itl_ms.get(90, 0.0),
        e2e_p90_ms=single.e2e_ms.get(90, 0.0),
        bytes_per_step=bytes_per_token or 0.0,
        context_tokens=spec.prompt_tokens + spec.new_tokens / 2.0,
        scenario="server",
    )
    if not all(lv.tokens_from_usage for lv in measured):
        warns.append("output tokens counted from streamed chunks (the server sent no usage in its stream)")
    loads = [x for x in (load_before, load_average()) if x is not None]
    return SpeedResult(
        points=(point,),
        bandwidth_gb_s=bw or 0.0,
        device="server",
        threads=threads,
        timer="perf_counter (client, streamed chunks)",
        load_avg=max(loads) if loads else None,
        warnings=tuple(warns),
        scenario="server",
        kv_cache="the server's",
        model=endpoint.model,
        load=tuple(measured),
    )
