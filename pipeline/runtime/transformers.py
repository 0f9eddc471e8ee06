"""transformers in-process: lm-eval's HFLM wraps the in-memory model, so MMLU scores the built object."""

from __future__ import annotations

from pipeline.runtime.base import Runtime
from pipeline.runtime.mmlu import common_prefix

# MMLU continuations are one token (" A"); keep a margin for tokenizers that split the letter.
SCORED_POSITIONS = 8
# Inputs sharing at least this many leading tokens (a subject's few-shot prefix) share its KV cache.
MIN_SHARED_PREFIX = 16


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` by name (a `**kwargs` may drop or reject it)."""
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def prefix_groups(inputs: list[tuple[int, ...]], scored: list[int], min_shared: int = MIN_SHARED_PREFIX) -> list[tuple[int, list[int]]]:
    """Group inputs that share a leading run of tokens: [(shared length, member indices)].

    Inputs are visited in token order, so a subject's questions (one few-shot prefix) are adjacent. A group's
    shared length stops before the first position any member scores (`scored[i]` = positions at the end of
    input i whose logits are read), so every scored position is computed after the shared part. An input
    that would cut its group's shared run below `min_shared` or to less than half (the next subject, whose
    header may share a few words) starts a new group; a lone input is a group of shared length 0.
    """
    order = sorted(range(len(inputs)), key=lambda i: inputs[i])
    groups: list[tuple[int, list[int]]] = []
    for i in order:
        own_room = len(inputs[i]) - scored[i]
        if groups:
            shared, members = groups[-1]
            lcp = common_prefix(inputs[members[-1]], inputs[i])
            if len(members) == 1:
                candidate = min(lcp, own_room, len(inputs[members[0]]) - scored[members[0]])
            else:
                candidate = min(shared, lcp, own_room)
            if candidate >= min_shared and (len(members) == 1 or candidate * 2 >= shared):
                groups[-1] = (candidate, members + [i])
                continue
        groups.append((0, [i]))
    return groups


def _hflm_class():
    import copy

    import torch
    from lm_eval.models.huggingface import HFLM
    from tqdm import tqdm

    class LastPositionsHFLM(HFLM):
        """HFLM that asks the model for logits of the last `keep` positions only, and computes a shared
        few-shot prefix once.

        lm-eval log-softmaxes logits over the whole padded sequence: with a 262k vocabulary (Gemma 3) and a
        2,700-token 5-shot prompt that is ~2.8 GB per sequence and dominates the forward. Only continuation
        positions are scored, and lm-eval's own slice (`inplen + (len(logits) - padding_len)`) already
        accounts for a shorter logits tensor, so scores are unchanged. Batch size 1 keeps that slice exact
        (no right padding). A model whose forward does not take `logits_to_keep` gets full logits.

        With `prefix_reuse` (the default), inputs that share a leading run of tokens (every question of a
        subject shares its 5-shot prefix, ~500 of ~600 tokens) are scored from one KV cache of that run: the
        run is evaluated once, and each question evaluates only its own tokens on a copy of that cache.
        Tokenization, truncation (`max_length`), the one-forward-per-context rule for one-token continuations
        and the (log-likelihood, is-greedy) answers are HFLM's; only where the forward starts differs.
        """

        def __init__(self, *args, keep: int = SCORED_POSITIONS, prefix_reuse: bool = True, **kwargs):
            super().__init__(*args, batch_size=1, **kwargs)
            self._keep = keep if accepts_logits_to_keep(self.model) else None
            self.prefix_reuse = prefix_reuse and self._keep is not None
            self.forwarded_tokens = 0  # tokens the model evaluated while scoring (prefix reuse's saving)
            self.shared_prefixes: list[int] = []  # length of each shared prefix evaluated once

        def _model_call(self, inps, attn_mask=None, labels=None):
            if attn_mask is not None or labels is not None or self._keep is None:  # as lm-eval does it
                return super()._model_call(inps, attn_mask, labels)
            with torch.no_grad():
                return self.model(inps, logits_to_keep=self._keep).logits

        def _select_cont_toks(self, logits, contlen=None, inplen=None):
            if self._keep is not None and contlen is not None and contlen > self._keep:
                raise ValueError(f"continuation of {contlen} tokens exceeds the {self._keep} scored positions")
            return super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            if not self.prefix_reuse or self.backend != "causal":
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            # What HFLM feeds the model per request: (context + continuation) left-truncated, last token dropped;
            # requests with the same input (MMLU's 4 one-token choices) share one forward, like HFLM's logits cache.
            inputs: dict[tuple[int, ...], int] = {}
            feeds: list[tuple[int, ...]] = []
            scored: list[int] = []
            slot_of: list[int] = []  # request -> its input
            for _, context_enc, continuation_enc in requests:
                if not context_enc or not continuation_enc or len(continuation_enc) > self.max_length:
                    raise ValueError("empty context or continuation, or a continuation longer than max_length")
                if len(continuation_enc) > self._keep:
                    raise ValueError(f"continuation of {len(continuation_enc)} tokens exceeds the {self._keep} scored positions")
                feed = tuple((context_enc + continuation_enc)[-(self.max_length + 1) :][:-1])
                slot = inputs.setdefault(feed, len(feeds))
                if slot == len(feeds):
                    feeds.append(feed)
                    scored.append(len(continuation_enc))
                else:
                    scored[slot] = max(scored[slot], len(continuation_enc))
                slot_of.append(slot)
            asked_by: list[list[int]] = [[] for _ in feeds]
            for r, slot in enumerate(slot_of):
                asked_by[slot].append(r)
            answers: list[tuple[float, bool] | None] = [None] * len(requests)
            pbar = tqdm(total=len(feeds), disable=disable_tqdm or self.rank != 0, desc="Scoring inputs (shared prefixes)")
            with torch.no_grad():
                for shared, members in prefix_groups(feeds, scored):
                    cache = None
                    if shared:
                        prefix = torch.tensor([feeds[members[0]][:shared]], dtype=torch.long, device=self.device)
                        cache = self.model(prefix, use_cache=True, logits_to_keep=1).past_key_values
                        if cache is None:  # a model that keeps no cache: every input from its first token
                            shared = 0
                        else:
                            self.forwarded_tokens += shared
                            self.shared_prefixes.append(shared)
                    for m in members:
                        tail = torch.tensor([feeds[m][shared:]], dtype=torch.long, device=self.device)
                        kwargs = {"past_key_values": copy.deepcopy(cache), "use_cache": True} if cache is not None else {}
                        logits = self.model(tail, logits_to_keep=scored[m], **kwargs).logits[0, -scored[m] :]
                        logprobs = torch.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
                        self.forwarded_tokens += tail.shape[1]
                        for r in asked_by[m]:  # answered now: full-vocabulary rows are not kept (Gemma: 1 MB each)
                            cont_toks = requests[r][2]
                            rows = logprobs[-len(cont_toks) :]
                            cont = torch.tensor(cont_toks, dtype=torch.long, device=rows.device)
                            answers[r] = (float(rows.gather(1, cont.unsqueeze(1)).sum()), bool((rows.argmax(dim=-1) == cont).all()))
                        pbar.update(1)
            pbar.close()
            for (request_str, _, _), answer in zip(requests, answers, strict=True):
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
            return answers

    return LastPositionsHFLM


class TransformersRuntime(Runtime):
    name = "transformers"

    def score_mmlu(self, artifact, spec):
        from lm_eval.models.huggingface import HFLM

        from pipeline.runtime.mmlu import score_mmlu

        if artifact.device == "cpu":
            # CPU: batching buys little and full-vocabulary logits cost GBs; score the last positions only.
            lm = _hflm_class()(pretrained=artifact.model, tokenizer=artifact.tokenizer, device=artifact.device)
        else:
            lm = HFLM(pretrained=artifact.model, tokenizer=artifact.tokenizer, batch_size=spec.batch_size, device=artifact.device)
        return score_mmlu(lm, spec)

    def decode(self, artifact, spec):
        from pipeline.runtime.speed import measure_decode

        return measure_decode(
            artifact.model,
            artifact.tokenizer,
            spec,
            weight_bytes_per_token=artifact.fidelity.bytes_read_per_token,
            device=artifact.device,
            kernel=artifact.fidelity.kernel,
            dense_fallback=artifact.fidelity.dense_fallback,
        )
