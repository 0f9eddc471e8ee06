"""Wrap an lm-eval `LM` so its log-likelihood answers are kept, keyed by the request (task, doc, choice)."""

from __future__ import annotations


def recording(lm):
    """(lm, answers): `answers` fills with (task, doc_id, choice index) -> log-likelihood as lm-eval asks."""
    scored, seen = lm.loglikelihood, {}

    def loglikelihood(requests, **kw):
        out = scored(requests, **kw)
        seen.update({(r.task_name, r.doc_id, r.idx): ll for r, (ll, _) in zip(requests, out, strict=True)})
        return out

    lm.loglikelihood = loglikelihood
    return lm, seen
