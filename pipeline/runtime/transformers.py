"""transformers in-process: lm-eval's HFLM wraps the in-memory model, so MMLU scores the built object."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.runtime.base import RUNTIMES, InProcessRuntime
from pipeline.runtime.mmlu import prefix_groups

if TYPE_CHECKING:
    from pipeline.config.recipe import EvalSpec, SpeedSpec
    from pipeline.results import AccuracyResult, SpeedResult
    from pipeline.runtime.mmlu import StopRule
    from pipeline.variants.artifact import Artifact

# MMLU continuations are one token (" A"); keep a margin for tokenizers that split the letter.
SCORED_POSITIONS = 8
# Questions of one prefix evaluated in one forward (right-padded): measured on 2 AVX2 cores, SmolLM2 tails of
# 100 tokens after a 500-token prefix run at 373 tok/s one by one, 467 at 8, 477 at 16 (prefill peak 517).
TAIL_BATCH = 8
# Cap on the scored-logits tensor of one batched forward (rows x kept positions x vocabulary x 4 bytes).
LOGITS_BUDGET_BYTES = 256 * 2**20
# KV caches of shared prefixes kept between lm-eval calls (a sequential sample's looks meet every subject's
# 5-shot prefix again): SmolLM2 fp32 ~23 MB per 500-token prefix, all 57 subjects ~1.3 GB; least recent first out.
PREFIX_CACHE_BYTES = 2 * 2**30


def cache_bytes(cache) -> int:
    """Bytes held by a transformers KV cache (its layers' key and value tensors)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            total += int(tensor.nelement() * tensor.element_size()) if hasattr(tensor, "element_size") else 0
    return total


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` by name (a `**kwargs` may drop or reject it)."""
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def tail_batches(
    tail_lengths: list[int],
    scored: list[int],
    vocab_size: int,
    max_batch: int = TAIL_BATCH,
    logits_budget: int = LOGITS_BUDGET_BYTES,
) -> list[list[int]]:
    """Split one prefix group's members (by position in `tail_lengths`) into batches of one forward each.

    Members are taken shortest tail first so that a batch's right padding stays small. A batch keeps the
    logits of the union of its members' scored positions, so it also stops growing before
    rows x positions x vocabulary x 4 bytes would pass `logits_budget` (Gemma's 262k vocabulary).
    """
    order = sorted(range(len(tail_lengths)), key=lambda i: (tail_lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < max_batch:
            trial = batches[-1] + [i]
            kept = {
                p for j in trial for p in range(tail_lengths[j] - scored[j], tail_lengths[j])
            }  # tails start together
            if len(trial) * len(kept) * vocab_size * 4 <= logits_budget:
                batches[-1] = trial
                continue
        batches.append([i])
    return batches


def _hflm_class():
    import copy
    from collections import OrderedDict

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
        run is evaluated once, and its questions evaluate only their own tokens on a copy of that cache, up to
        `TAIL_BATCH` per forward (right-padded, shortest first).
        Tokenization, truncation (`max_length`), the one-forward-per-context rule for one-token continuations
        and the (log-likelihood, is-greedy) answers are HFLM's; only where the forward starts differs.
        """

        def __init__(self, *args, keep: int = SCORED_POSITIONS, prefix_reuse: bool = True, **kwargs):
            super().__init__(*args, batch_size=1, **kwargs)
            self._keep = keep if accepts_logits_to_keep(self.model) else None
            self.prefix_reuse = prefix_reuse and self._keep is not None
            self.forwarded_tokens = 0  # tokens the model evaluated while scoring (prefix reuse's saving)
            self.shared_prefixes: list[int] = []  # length of each shared prefix evaluated once
            self.padded_tokens = 0  # pads evaluated to batch the questions of one prefix
            self.prefix_cache: OrderedDict[tuple[int, ...], tuple[object, int]] = (
                OrderedDict()
            )  # tokens -> (cache, bytes)
            self.keep_prefixes = (
                False  # keep prefix caches after a call (`score_sequential` sets it: its looks come back)
            )

        def _prefix_cache_for(self, tokens: tuple[int, ...]):
            """The KV cache after `tokens`: kept from an earlier call, extended from the longest kept prefix of
            them, or evaluated; kept for later calls within PREFIX_CACHE_BYTES. None: the model keeps no cache."""
            if tokens in self.prefix_cache:
                self.prefix_cache.move_to_end(tokens)
                return self.prefix_cache[tokens][0]
            known = max(
                (k for k in self.prefix_cache if len(k) < len(tokens) and tokens[: len(k)] == k), key=len, default=()
            )
            kwargs = {"past_key_values": copy.deepcopy(self.prefix_cache[known][0])} if known else {}
            todo = torch.tensor([tokens[len(known) :]], dtype=torch.long, device=self.device)
            cache = self.model(todo, use_cache=True, logits_to_keep=1, **kwargs).past_key_values
            if cache is None:
                return None
            self.forwarded_tokens += todo.shape[1]
            size = cache_bytes(cache)
            self.prefix_cache[tokens] = (cache, size)
            while len(self.prefix_cache) > 1 and sum(b for _, b in self.prefix_cache.values()) > PREFIX_CACHE_BYTES:
                self.prefix_cache.popitem(last=False)
            return cache

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
                    raise ValueError(
                        f"continuation of {len(continuation_enc)} tokens exceeds the {self._keep} scored positions"
                    )
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
            pbar = tqdm(
                total=len(feeds), disable=disable_tqdm or self.rank != 0, desc="Scoring inputs (shared prefixes)"
            )
            with torch.no_grad():
                for shared, members in prefix_groups(feeds, scored):
                    cache = self._prefix_cache_for(feeds[members[0]][:shared]) if shared else None
                    if cache is None:  # a model that keeps no cache: every input from its first token
                        shared = 0
                    else:
                        self.shared_prefixes.append(shared)
                    batchable = cache is not None and hasattr(cache, "batch_repeat_interleave")
                    tail_lengths = [len(feeds[m]) - shared for m in members]
                    vocab = self.model.config.get_text_config().vocab_size
                    batches = (
                        tail_batches(tail_lengths, [scored[m] for m in members], vocab)
                        if batchable
                        else [[j] for j in range(len(members))]
                    )
                    for batch in batches:
                        rows = [members[j] for j in batch]
                        tails = [feeds[m][shared:] for m in rows]
                        width = max(map(len, tails))
                        # Right padding (a row's last token repeated): causal attention keeps real tokens blind to it.
                        tokens = torch.tensor(
                            [t + (t[-1],) * (width - len(t)) for t in tails], dtype=torch.long, device=self.device
                        )
                        kwargs: dict = {}
                        if cache is not None:
                            rows_cache = copy.deepcopy(cache)
                            if len(rows) > 1:
                                rows_cache.batch_repeat_interleave(len(rows))
                            kwargs = {"past_key_values": rows_cache, "use_cache": True}
                        keep = sorted(
                            {len(t) - p for m, t in zip(rows, tails, strict=True) for p in range(1, scored[m] + 1)}
                        )
                        index = torch.tensor(keep, dtype=torch.long, device=self.device)
                        logits = self.model(tokens, logits_to_keep=index, **kwargs).logits
                        self.forwarded_tokens += sum(map(len, tails))
                        self.padded_tokens += len(rows) * width - sum(map(len, tails))
                        for b, (m, tail) in enumerate(zip(rows, tails, strict=True)):
                            picks = [keep.index(len(tail) - p) for p in range(scored[m], 0, -1)]
                            logprobs = torch.log_softmax(logits[b, picks], dim=-1, dtype=self.softmax_dtype)
                            for r in asked_by[m]:  # answered now: full-vocabulary rows are not kept (Gemma: 1 MB each)
                                cont_toks = requests[r][2]
                                own = logprobs[-len(cont_toks) :]
                                cont = torch.tensor(cont_toks, dtype=torch.long, device=own.device)
                                answers[r] = (
                                    float(own.gather(1, cont.unsqueeze(1)).sum()),
                                    bool((own.argmax(dim=-1) == cont).all()),
                                )
                            pbar.update(1)
            pbar.close()
            if not self.keep_prefixes:
                self.prefix_cache.clear()
            for (request_str, _, _), answer in zip(requests, answers, strict=True):
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
            return answers

    return LastPositionsHFLM


@RUNTIMES.register
class TransformersRuntime(InProcessRuntime["Artifact"]):
    name = "transformers"
    artifact_format = "torch"

    def score_mmlu(self, artifact: Artifact, spec: EvalSpec, stop: StopRule | None = None) -> AccuracyResult:
        from lm_eval.models.huggingface import HFLM

        from pipeline.runtime.mmlu import score_mmlu

        if artifact.device == "cpu":
            # CPU: batching buys little and full-vocabulary logits cost GBs; score the last positions only.
            lm = _hflm_class()(pretrained=artifact.model, tokenizer=artifact.tokenizer, device=artifact.device)
        else:
            lm = HFLM(
                pretrained=artifact.model,
                tokenizer=artifact.tokenizer,
                batch_size=spec.batch_size,
                device=artifact.device,
            )
        return score_mmlu(lm, spec, stop)

    def decode(self, artifact: Artifact, spec: SpeedSpec) -> SpeedResult:
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
