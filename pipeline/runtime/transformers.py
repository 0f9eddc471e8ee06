"""transformers in-process: lm-eval's HFLM wraps the in-memory model, so MMLU scores the built object."""

from __future__ import annotations

from pipeline.runtime.base import Runtime


class TransformersRuntime(Runtime):
    name = "transformers"

    def score_mmlu(self, artifact, spec):
        from lm_eval.models.huggingface import HFLM

        from pipeline.accuracy import score_mmlu

        lm = HFLM(pretrained=artifact.model, tokenizer=artifact.tokenizer, batch_size=spec.batch_size, device=artifact.device)
        return score_mmlu(lm, spec)

    def decode(self, artifact, spec):
        from pipeline.speed import measure_decode

        return measure_decode(
            artifact.model,
            artifact.tokenizer,
            spec,
            weight_bytes_per_token=artifact.fidelity.bytes_read_per_token,
            device=artifact.device,
        )
