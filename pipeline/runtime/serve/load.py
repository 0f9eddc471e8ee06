"""Load on an OpenAI-compatible server, measured from the client side as `vllm bench serve` does.

Each request streams `/v1/completions` (greedy, `max_tokens` = the recipe's new tokens, `ignore_eos` for the
engines that honour it): TTFT is the first streamed text, inter-token latencies are the gaps between text
chunks, TPOT is (end-to-end - TTFT) / (output tokens - 1), output tokens come from the server's `usage` when it
sends one (`stream_options.include_usage`), else from the chunks counted. A concurrency level keeps N requests
in flight (closed loop); a rate level starts requests at Poisson arrivals (open loop). Goodput counts the
requests per second that met the SLO.

Why not GuideLLM: 0.8.1 pins click~=8.4 (ours is 8.5) and requires an unpinned torch and transformers, so it can
share neither our venv nor a small isolated one (a bare torch pulls a multi-GB CUDA build); the client below
is aiohttp, which lm-eval's API models already bring.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.results import LoadLevel

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    ok: bool = False
    start_s: float = 0.0
    ttft_s: float | None = None
    e2e_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)  # arrival of each text chunk, from the start
    output_tokens: int = 0
    tokens_from_usage: bool = False
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        t = self.chunk_times_s
        return [b - a for a, b in zip(t, t[1:])]


@dataclass(frozen=True)
class LoadPlan:
    url: str  # .../v1/completions
    model: str
    prompts: list[str]  # rotated over the requests
    max_tokens: int
    headers: dict[str, str]
    timeout_s: float
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    seed: int = 0


async def _one_request(session: Any, plan: LoadPlan, prompt: str, t_origin: float) -> RequestRecord:
    import aiohttp

    rec = RequestRecord()
    payload = {
        "model": plan.model,
        "prompt": prompt,
        "max_tokens": plan.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    start = time.perf_counter()
    rec.start_s = start - t_origin
    try:
        async with session.post(plan.url, json=payload, headers=plan.headers) as resp:
            if resp.status != 200:
                body = (await resp.text()).strip().replace("\n", " ")[:200]
                rec.error = f"HTTP {resp.status}: {body}"
                return rec
            buf = b""
            done = False
            async for raw in resp.content:
                buf += raw
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    now = time.perf_counter() - start
                    usage = chunk.get("usage") or None
                    if usage and usage.get("completion_tokens") is not None:
                        rec.output_tokens = int(usage["completion_tokens"])
                        rec.tokens_from_usage = True
                    text = "".join(str(c.get("text") or "") for c in chunk.get("choices") or [])
                    if text:
                        if rec.ttft_s is None:
                            rec.ttft_s = now
                        rec.chunk_times_s.append(now)
                if done:
                    break
        rec.e2e_s = time.perf_counter() - start
        if not rec.tokens_from_usage:
            rec.output_tokens = len(rec.chunk_times_s)
        if rec.ttft_s is None:
            rec.error = "the stream carried no text"
        else:
            rec.ok = True
    except TimeoutError:
        rec.error = f"no complete answer within {plan.timeout_s:g} s (serve.request_timeout_s)"
    except aiohttp.ClientError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    except json.JSONDecodeError as exc:
        rec.error = f"a streamed chunk is not JSON ({exc})"
    return rec


async def _run_level(
    plan: LoadPlan, n_requests: int, concurrency: int | None, rate: float | None
) -> tuple[list[RequestRecord], float]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
    limit = concurrency or n_requests
    records: list[RequestRecord] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=limit)) as session:
        t0 = time.perf_counter()
        if concurrency is not None:
            queue = list(range(n_requests))

            async def worker() -> None:
                while queue:
                    i = queue.pop(0)
                    records.append(await _one_request(session, plan, plan.prompts[i % len(plan.prompts)], t0))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            rng = random.Random(plan.seed)
            tasks = []
            for i in range(n_requests):
                tasks.append(asyncio.create_task(_one_request(session, plan, plan.prompts[i % len(plan.prompts)], t0)))
                await asyncio.sleep(rng.expovariate(rate or 1.0))
            records = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - t0
    return records, duration


def _pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def summarize_level(
    records: list[RequestRecord], duration_s: float, plan: LoadPlan, *, concurrency: int | None, rate: float | None
) -> LoadLevel:
    import numpy as np

    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None]
    tpot = [t * 1e3 for r in ok if (t := r.tpot_s) is not None]
    itl = [x * 1e3 for r in ok for x in r.itl_s]
    e2e = [r.e2e_s * 1e3 for r in ok if r.e2e_s is not None]
    decode = [
        (r.output_tokens - 1) / (r.e2e_s - r.ttft_s)
        for r in ok
        if r.output_tokens > 1 and r.e2e_s and r.ttft_s is not None and r.e2e_s > r.ttft_s
    ]

    def meets_slo(r: RequestRecord) -> bool:
        if plan.slo_ttft_ms is not None and (r.ttft_s is None or r.ttft_s * 1e3 > plan.slo_ttft_ms):
            return False
        tp = r.tpot_s
        return plan.slo_tpot_ms is None or (tp is not None and tp * 1e3 <= plan.slo_tpot_ms)

    good = [r for r in ok if meets_slo(r)]
    has_slo = plan.slo_ttft_ms is not None or plan.slo_tpot_ms is not None
    return LoadLevel(
        concurrency=concurrency,
        request_rate=rate,
        requests=len(records),
        completed=len(ok),
        failed=len(records) - len(ok),
        duration_s=duration_s,
        request_throughput=len(ok) / duration_s if duration_s > 0 else 0.0,
        output_tok_s=sum(r.output_tokens for r in ok) / duration_s if duration_s > 0 else 0.0,
        decode_tok_s=_pct(decode, 50),
        decode_cv=float(np.std(decode) / np.mean(decode)) if len(decode) > 1 else None,
        ttft_ms={q: v for q in PERCENTILES if (v := _pct(ttft, q)) is not None},
        tpot_ms={q: v for q in PERCENTILES if (v := _pct(tpot, q)) is not None},
        itl_ms={q: v for q in PERCENTILES if (v := _pct(itl, q)) is not None},
        e2e_ms={q: v for q in PERCENTILES if (v := _pct(e2e, q)) is not None},
        goodput_req_s=(len(good) / duration_s if duration_s > 0 else 0.0) if has_slo else None,
        slo_attainment=(len(good) / len(records) if records else 0.0) if has_slo else None,
        tokens_from_usage=bool(ok) and all(r.tokens_from_usage for r in ok),
        errors=tuple(sorted({r.error for r in records if r.error}))[:5],
        mean_output_tokens=float(np.mean([r.output_tokens for r in ok])) if ok else 0.0,
    )


def run_level(
    plan: LoadPlan, n_requests: int, *, concurrency: int | None = None, rate: float | None = None
) -> LoadLevel:
    """One level of load: `concurrency` streams in flight, or requests started at `rate` per second."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give a concurrency or a request rate")
    records, duration = asyncio.run(_run_level(plan, n_requests, concurrency, rate))
    return summarize_level(records, duration, plan, concurrency=concurrency, rate=rate)
