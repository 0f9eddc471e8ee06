"""An lm-eval LM with a scripted answer, for tests that check what lm-eval asks and how it scores."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from lm_eval.api.model import LM


class ScriptedLM(LM):
    """Gives the choice `pick(request)` log-likelihood 0 and the others -5; records every request's
    (context, continuation) under (subject, doc_id)."""

    def __init__(self, pick: Callable[[Any], int]) -> None:
        super().__init__()
        self.pick = pick
        self.requests: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            subject = req.task_name.split("mmlu_", 1)[1]  # shrinkgate_mmlu_x and mmlu_x -> x
            context, continuation = req.args
            self.requests[(subject, req.doc_id)].append((context, continuation))
            chosen = " " + "ABCD"[self.pick(req)]
            out.append((0.0 if continuation == chosen else -5.0, continuation == chosen))
        return out

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        raise NotImplementedError

    def generate_until(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError
