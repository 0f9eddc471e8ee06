"""The `serve:` section: an OpenAI-compatible server the `openai` runtime measures, and its latency SLO."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.config.schema import StrictModel, positive_levels


class SLOSpec(StrictModel):
    """Service-level objective a request must meet to count towards goodput (client-side, per request)."""

    ttft_p90_ms: float | None = Field(None, gt=0, description="time to first token limit (ms)")
    tpot_p90_ms: float | None = Field(None, gt=0, description="time per output token after the first (ms)")


class ServeSpec(StrictModel):
    """An OpenAI-compatible server (`runtime: openai`): where it listens, what it serves, how to start it and
    the load to put on it. `launch` and the URLs take placeholders: {artifact} (the file or folder shrinkgate
    built, per `artifact`), {host}, {port}, {model} (the served name), {threads}, {python} (shrinkgate's own
    interpreter)."""

    base_url: str = Field("http://{host}:{port}/v1", description="the API root the requests go to (ends in /v1)")
    model: str = Field("shrinkgate", description="the model name the server serves (`model` in every request)")
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key (sent as a Bearer token)"
    )
    launch: list[str] | None = Field(
        None, description="command that starts the server (argv list); null = it already runs"
    )
    artifact: Literal["gguf", "checkpoint", "none"] = Field(
        "gguf",
        description="what shrinkgate builds and hands the server as {artifact}: a GGUF file, a transformers / "
        "compressed-tensors checkpoint folder, or nothing (the server serves its own model; variant `none` only)",
    )
    host: str = Field(
        "127.0.0.1", description="interface a launched server binds ({host}); loopback unless you change it"
    )
    port: int | None = Field(None, ge=1, le=65535, description="{port}; null = a free port for each launch")
    health_url: str | None = Field(None, description="polled until it answers 200; null = {base_url}/models")
    health_timeout_s: float = Field(180, gt=0)
    request_timeout_s: float = Field(120, gt=0, description="per request, for MMLU and load alike")
    max_retries: int = Field(1, ge=1, description="attempts per MMLU request (1 = no retry)")
    max_length: int = Field(
        4096, ge=2, description="longest prompt MMLU sends (tokens); longer ones are left-truncated by lm-eval"
    )
    tokenizer: str | None = Field(
        None, description="HF tokenizer (dir or hub id) lm-eval counts tokens with; null = the model's own"
    )
    mmlu: bool = Field(
        True,
        description="score MMLU from this endpoint; false: speed only (servers without echoed prompt log-probabilities, "
        "e.g. TGI), and the verdict, missing accuracy, stays undecided",
    )
    mmlu_concurrency: int = Field(1, ge=1, description="MMLU requests in flight")
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 4, 16], description="concurrency sweep: streams in flight"
    )
    request_rates: list[float] = Field(default_factory=list, description="request-rate sweep (req/s, Poisson arrivals)")
    requests_per_level: int | None = Field(
        None, ge=1, description="requests per concurrency/rate level; null = max(8, 4 x concurrency)"
    )
    slo: SLOSpec = Field(default_factory=SLOSpec)

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        return positive_levels(v, "concurrency")

    @field_validator("request_rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(r <= 0 for r in v):
            raise ValueError("request rates are requests per second, each > 0")
        return sorted(set(v))

    @field_validator("launch")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError(
                "give the command as a list, e.g. ['{python}', '-m', 'llama_cpp.server', '--model', '{artifact}'], or leave it out"
            )
        return v
