"""Runtime `openai`: a model behind an OpenAI-compatible server (vLLM, SGLang, TGI, TensorRT-LLM, llama.cpp's
server, ...), measured over HTTP.

Per child, the session starts the recipe's `serve.launch` command on what the build made (`{artifact}`: a GGUF
file, or a checkpoint folder) or reaches a server that already runs, waits for health, checks that it serves
`serve.model`, and stops it when the child ends (`pipeline.runtime.serve.server`). MMLU is lm-eval's
`local-completions` model on the same endpoint (`pipeline.runtime.serve.lm`), speed is the load sweep of
`pipeline.runtime.serve.load` through the speed harness (`pipeline.runtime.serve.speed`): concurrency 1 always (the single-stream figures the verdict compares, logged
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
from pipeline.runtime.base import RUNTIMES, Runtime, Session
from pipeline.runtime.serve.server import Server, ServerError, free_port, http_json, python_executable

if TYPE_CHECKING:
    from pipeline.config.recipe import EvalSpec, Recipe, SpeedSpec
    from pipeline.config.serve import ServeSpec
    from pipeline.results import AccuracyResult, SpeedResult
    from pipeline.runtime.mmlu import StopRule
    from pipeline.variants.built import Built

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


class ServerSession(Session[Endpoint]):
    def __init__(self, serve: ServeSpec, artifact: Built, model_dir: Path | None, threads: int | None) -> None:
        super().__init__(None)
        self.serve, self.artifact, self.model_dir, self.threads = serve, artifact, model_dir, threads
        self.workdir = Path(tempfile.mkdtemp(prefix="shrinkgate-serve-"))
        self.server: Server | None = None

    def __enter__(self) -> Endpoint:
        from pipeline.host import default_threads

        serve = self.serve
        gguf = self.artifact.gguf_path
        target = self.artifact.path
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
            raise ServerError(
                "serve.tokenizer: no tokenizer to count MMLU's tokens with; name an HF tokenizer dir or id"
            )
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
                self.tags[M.TAG_SERVE_LAUNCH] = " ".join(redact_argv(argv))[:5000]
                self.tags[M.TAG_SERVE_STARTED_S] = f"{self.server.started_s:.1f}"
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
        return "add a `serve:` section (base_url, model, launch; see docs/serving.md)"
    if recipe.speed.compile:
        return "speed.compile: true is a torch.compile option; a server runs its own kernels, so set compile: false"
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
        return f"serve.launch[0]: {serve.launch[0]!r} is not a program on PATH; install the server or fix the command"
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


@RUNTIMES.register
class OpenAIRuntime(Runtime["Built", Endpoint]):
    name = "openai"

    def __init__(self, serve: ServeSpec | None = None, threads: int | None = None) -> None:
        self.serve, self.threads = serve, threads
        # the one place a server's artifact is decided: what `serve.artifact` says (a BUILDERS format)
        self.artifact_format = serve.artifact if serve is not None else "gguf"
        self.scores_mmlu = serve is None or serve.mmlu

    @classmethod
    def for_recipe(cls, recipe: Recipe | None) -> OpenAIRuntime:
        if recipe is None or recipe.serve is None:
            raise ValueError("runtime openai needs the recipe's `serve:` section")
        return cls(recipe.serve, recipe.speed.threads)

    @classmethod
    def check_sections(cls, recipe: Recipe) -> str | None:
        if recipe.serve is None:
            return "it measures a server: add a `serve:` section (base_url, model, launch; see docs/serving.md)"
        return None

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> str | None:
        return check_serve(recipe)

    @classmethod
    def key_sections(cls, recipe: Recipe) -> dict[str, Any]:
        return {"serve": recipe.serve.model_dump()} if recipe.serve is not None else {}

    def unmeasured_reproducibility(self, device: str) -> str | None:  # noqa: ARG002 - the server picks its own device
        return "scored by a server over HTTP (runtime openai): its batching and kernels are its own, not measured run to run"

    def session(self, built: Built, model_dir: Path | None = None) -> ServerSession:
        if self.serve is None:
            raise ValueError("runtime openai needs the recipe's `serve:` section")
        return ServerSession(self.serve, built, model_dir, self.threads)

    def score_mmlu(self, endpoint: Endpoint, spec: EvalSpec, stop: StopRule | None = None) -> AccuracyResult:
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

    def decode(self, endpoint: Endpoint, spec: SpeedSpec) -> SpeedResult:
        from pipeline.runtime.serve.speed import measure_server

        return measure_server(endpoint, spec, self.serve)
