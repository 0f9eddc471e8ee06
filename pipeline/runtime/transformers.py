"""transformers in-process: lm-eval's HFLM wraps the in-memory model, so MMLU scores the built object."""

from __future__ import annotations

from pipeline.runtime.base import Runtime

# MMLU continuations are one token (" A"); keep a margin for tokenizers that split the letter.
SCORED_POSITIONS = 8


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` by name (a `**kwargs` may drop or reject it)."""
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _hflm_class():
    import torch
    from lm_eval.models.huggingface import HFLM

    class LastPositionsHFLM(HFLM):
        """HFLM that asks the model for logits of the last `keep` positions only.

        lm-eval log-softmaxes logits over the whole padded sequence: with a 262k vocabulary (Gemma 3) and a
        2,700-token 5-shot prompt that is ~2.8 GB per sequence and dominates the forward. Only continuation
        positions are scored, and lm-eval's own slice (`inplen + (len(logits) - padding_len)`) already
        accounts for a shorter logits tensor, so scores are unchanged. Batch size 1 keeps that slice exact
        (no right padding). A model whose forward does not take `logits_to_keep` gets full logits.
        """

        def __init__(self, *args, keep: int = SCORED_POSITIONS, **kwargs):
            super().__init__(*args, batch_size=1, **kwargs)
            self._keep = keep if accepts_logits_to_keep(self.model) else None

        def _model_call(self, inps, attn_mask=None, labels=None):
            if attn_mask is not None or labels is not None or self._keep is None:  # as lm-eval does it
                return super()._model_call(inps, attn_mask, labels)
            with torch.no_grad():
                return self.model(inps, logits_to_keep=self._keep).logits

        def _select_cont_toks(self, logits, contlen=None, inplen=None):
            if self._keep is not None and contlen is not None and contlen > self._keep:
                raise ValueError(f"continuation of {contlen} tokens exceeds the {self._keep} scored positions")
            return super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)

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
