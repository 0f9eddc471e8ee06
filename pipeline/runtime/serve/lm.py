"""lm-eval's `local-completions` model with two guards MMLU needs from a server (imported lazily: lm_eval).

lm-eval scores a choice from `/v1/completions` with `echo: true, logprobs: 1, max_tokens: 1`: the answer echoes
the prompt's tokens with their log-probabilities, and the continuation's are the ones after the context.
lm-eval counts the context with its own tokenizer; prompts go as text (`tokenized_requests=False`: servers
such as llama-cpp-python's take no token-id prompts), so the server tokenizes again and may prepend a BOS lm-eval
did not count. The continuation's log-probabilities are therefore read from the end of the echo (the
continuation's token count, before the one generated token), which holds whatever the server prepends.
A server that does not echo prompt log-probabilities gets `EchoUnsupported` naming the limitation, instead
of lm-eval's KeyError or a silently wrong slice.
"""

from __future__ import annotations

import os
from operator import itemgetter
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.openai_completions import LocalCompletionsAPI

ECHO_ENGINES = "vLLM, SGLang and llama-cpp-python's server (with --logits_all true)"


class EchoUnsupported(RuntimeError):
    pass


def _echo_problem(url: str) -> str:
    return (
        f"{url}: the server returned no prompt log-probabilities for `echo: true, logprobs: 1`, which MMLU scoring "
        f"needs (upstream llama-server and TGI refuse echo); serve the model with an engine that returns them "
        f"({ECHO_ENGINES}), or set `eval` aside for this runtime by scoring MMLU on runtime llama.cpp / transformers"
    )


@register_model("shrinkgate-openai")
class ServerCompletionsLM(LocalCompletionsAPI):
    """`local-completions` reading the continuation from the end of the echo; `api_key_env` names the key."""

    def __init__(self, *args: Any, api_key_env: str | None = None, **kwargs: Any) -> None:
        self._api_key_env = api_key_env
        kwargs.setdefault("tokenized_requests", False)
        kwargs.setdefault("tokenizer_backend", "huggingface")
        super().__init__(*args, **kwargs)

    @property
    def api_key(self) -> str:
        return os.environ.get(self._api_key_env, "") if self._api_key_env else ""

    @property
    def header(self) -> dict[str, str]:
        key = self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _loglikelihood_tokens(self, requests: Any, **kwargs: Any) -> list[tuple[float, bool]]:
        try:
            return super()._loglikelihood_tokens(requests, **kwargs)
        except EchoUnsupported:  # parse_logprobs is static (lm-eval's signature): name the server here
            raise EchoUnsupported(_echo_problem(str(self.base_url))) from None

    @staticmethod
    def parse_logprobs(
        outputs: Any, tokens: list[list[int]] | None = None, ctxlens: list[int] | None = None, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        res = []
        outs = outputs if isinstance(outputs, list) else [outputs]
        choices = [c for out in outs for c in sorted(out.get("choices") or [], key=itemgetter("index"))]
        for choice, toks, ctxlen in zip(choices, tokens or [], ctxlens or [], strict=False):
            logprobs = choice.get("logprobs") or {}
            token_lps = logprobs.get("token_logprobs")
            top = logprobs.get("top_logprobs")
            n_cont = len(toks) - ctxlen
            if not isinstance(token_lps, list) or not isinstance(top, list) or len(token_lps) < n_cont + 1:
                raise EchoUnsupported("no prompt log-probabilities")
            span = slice(len(token_lps) - 1 - n_cont, len(token_lps) - 1)  # the last entry is the generated token
            cont_lps, cont_top = token_lps[span], top[span]
            if any(lp is None for lp in cont_lps):
                raise EchoUnsupported("no prompt log-probabilities")
            greedy = all(t is not None and lp >= max(t.values()) for lp, t in zip(cont_lps, cont_top, strict=False))
            res.append((float(sum(cont_lps)), greedy))
        if len(res) != len(tokens or []):
            raise EchoUnsupported("no prompt log-probabilities")
        return res
