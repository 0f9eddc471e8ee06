"""lm-eval's `LM` over llama.cpp in-process: MMLU log-likelihoods from the GGUF file that was built.

Imported lazily (it imports lm_eval); `pipeline.runtime.llamacpp` is the runtime that uses it. Registered
with lm-eval as `shrinkgate-llamacpp` (`lm_eval.api.registry.get_model`), arguments `gguf_path=...,n_threads=N`.

Tokenization is lm-eval's own (`TemplateLM._encode_pair`: trailing spaces move to the continuation, the
whole string is encoded and split after the context's tokens) with the GGUF's tokenizer in llama.cpp; BOS
follows HFLM's rule: the tokenizer's default (here `tokenizer.ggml.add_bos_token`) unless the text already
starts with the BOS text. Contexts are evaluated once and shared by every continuation that follows them
(MMLU's 4 one-token choices), and a context that extends the previous one (the same few-shot prefix) only
evaluates its new tokens; multi-token continuations are evaluated after the context and rolled back.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from pipeline.bindings.llamacpp import LlamaCppModel, llama_cpp_version, log_softmax
from pipeline.runtime.mmlu import common_prefix, prefix_groups

# The first context is sized from the data (`_loglikelihood_tokens`); this only serves tokenization.
_INITIAL_CTX = 512
SCORING_BATCH = 512  # tokens per llama_decode while scoring (llama.cpp's default micro-batch)
# Saved KV states of shared prefixes kept between calls (a sequential sample's looks meet every subject's
# 5-shot prefix again); least recent first out.
PREFIX_STATE_BYTES = 2 * 2**30


@register_model("shrinkgate-llamacpp")
class LlamaCppLM(TemplateLM):
    """Log-likelihood scoring on a GGUF file with llama.cpp; `generate_until` and rolling are not offered."""

    def __init__(
        self,
        gguf_path: str | Path | None = None,
        *,
        n_threads: int | None = None,
        max_length: int | None = None,
        llama: LlamaCppModel | None = None,
        **_lm_eval_args: Any,  # batch_size / device from lm-eval's CLI: one CPU sequence at a time here
    ) -> None:
        super().__init__()
        if llama is None:
            if gguf_path is None:
                raise ValueError("LlamaCppLM needs gguf_path (a .gguf file) or an open LlamaCppModel")
            if n_threads is None:
                from pipeline.host import default_threads

                n_threads = default_threads()
            llama = LlamaCppModel.open(
                gguf_path, n_ctx=_INITIAL_CTX, n_threads=int(n_threads), n_batch=SCORING_BATCH, logits_all=True
            )
            self._owned = True
        else:
            if not llama.logits_all:
                raise ValueError(
                    "LlamaCppLM needs a LlamaCppModel opened with logits_all=True (continuations score every position)"
                )
            self._owned = False
        self.llama = llama
        # HFLM's max_length is the model's trained context; longer inputs are left-truncated the same way
        self._max_length = int(max_length or llama.n_ctx_train or 2048)
        self._bos_text = llama.detokenize([self.prefix_token_id]) if self.prefix_token_id >= 0 else None
        self.evaluated_tokens = 0  # tokens llama.cpp evaluated while scoring
        self.keep_prefixes = False  # keep shared-prefix states between calls (`score_sequential` sets it)
        self.prefix_states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()

    # -- lm-eval interface ---------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.llama.eos_id

    @property
    def prefix_token_id(self) -> int:
        # HFLM: BOS when the tokenizer has one, else EOS (llama.cpp answers -1 for "none")
        return self.llama.bos_id if self.llama.bos_id >= 0 else self.llama.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        # HFLM: None -> the tokenizer's default (BOS iff the model wants it), except for text that already
        # starts with the BOS text; llama.cpp's add_special=True likewise adds BOS only when the GGUF says so.
        add = True if add_special_tokens is None else add_special_tokens
        if add_special_tokens is None and self._bos_text and string.startswith(self._bos_text):
            add = False
        return self.llama.tokenize(string, add)

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        prepared: list[tuple[list[int], list[int]]] = []
        for _, context_enc, continuation_enc in requests:
            if not continuation_enc:
                raise ValueError("empty continuation: nothing to score")
            # HFLM: the model sees (context + continuation)[-(max_length + 1):][:-1]
            whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1) :]
            context = whole[: -len(continuation_enc)]
            if not context:
                raise ValueError(
                    f"continuation of {len(continuation_enc)} tokens leaves no context within max_length={self.max_length}"
                )
            prepared.append((context, list(continuation_enc)))
        if not prepared:
            return []
        need = max(len(c) + len(k) - 1 for c, k in prepared)
        if need > self.llama.n_ctx:
            self.llama.resize(need)
            self.prefix_states.clear()  # states of a context that is gone
        # In token order: equal contexts are adjacent, and so are contexts sharing a few-shot prefix. With
        # `keep_prefixes` each group's shared prefix is restored from (or saved to) `prefix_states`.
        groups = prefix_groups([tuple(c) for c, _ in prepared], [1] * len(prepared))
        starts = {members[0]: shared for shared, members in groups} if self.keep_prefixes else {}
        order = [i for _, members in groups for i in members]
        results: list[tuple[float, bool] | None] = [None] * len(prepared)
        llama = self.llama
        llama.clear()
        cached: list[int] = []  # tokens sequence 0 of the KV cache holds
        last: np.ndarray | None = None  # logits after the last cached token
        for i in tqdm(order, desc="llama.cpp loglikelihood", disable=disable_tqdm):
            context, continuation = prepared[i]
            if starts.get(i):
                cached, last = self._restore_prefix(tuple(context[: starts[i]])), None
            if context != cached or last is None:
                keep = min(common_prefix(cached, context), len(context) - 1)  # re-evaluate >= 1 token for its logits
                if keep < len(cached) and not llama.truncate(0, keep):
                    llama.clear()
                    keep = 0
                last = llama.eval(context[keep:], pos0=keep, logits="last")[0]
                self.evaluated_tokens += len(context) - keep
                cached = context
            rows = [last]
            if len(continuation) > 1:
                rows.extend(llama.eval(continuation[:-1], pos0=len(context), logits="all"))
                self.evaluated_tokens += len(continuation) - 1
                if not llama.truncate(0, len(context)):  # roll the continuation back out of the cache
                    llama.clear()
                    cached, last = [], None
            logits = np.stack(rows)
            logp = log_softmax(logits)
            ll = float(sum(logp[j, tok] for j, tok in enumerate(continuation)))
            greedy = bool(all(int(logits[j].argmax()) == tok for j, tok in enumerate(continuation)))
            results[i] = (ll, greedy)
            self.cache_hook.add_partial("loglikelihood", requests[i][0], (ll, greedy))
        llama.clear()
        return [r for r in results if r is not None]

    def _restore_prefix(self, prefix: tuple[int, ...]) -> list[int]:
        """Sequence 0 holds exactly `prefix` afterwards: restored from a kept state, else evaluated and kept."""
        llama = self.llama
        llama.clear()
        state = self.prefix_states.get(prefix)
        if state is not None and llama.load_seq(state):
            self.prefix_states.move_to_end(prefix)
            return list(prefix)
        llama.clear()
        llama.eval(prefix, pos0=0, logits="last")
        self.evaluated_tokens += len(prefix)
        self.prefix_states[prefix] = llama.save_seq(0)
        while len(self.prefix_states) > 1 and sum(map(len, self.prefix_states.values())) > PREFIX_STATE_BYTES:
            self.prefix_states.popitem(last=False)
        return list(prefix)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "runtime llama.cpp scores log-likelihoods of continuations only (no rolling perplexity)"
        )

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("runtime llama.cpp scores log-likelihoods only (no generate_until tasks)")

    def get_model_info(self) -> dict[str, Any]:
        return {"model": "llama.cpp", "gguf": str(self.llama.path), "llama_cpp_python": llama_cpp_version()}

    def close(self) -> None:
        if self._owned:
            self.llama.close()
