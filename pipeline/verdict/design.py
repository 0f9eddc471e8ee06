"""How a run's MMLU questions were chosen, read back from what it logged: the design decides which bound holds.

    all         every test question of the selected subjects: a paired bound holds (questions as exchangeable draws)
    stratified  a seeded random sample stratified by subject: bounds weight each subject by its share of MMLU
    sequential  a prefix of one seeded random order, possibly stopped early: only anytime-valid bounds hold
    first-n     the first N rows of each subject (lm-eval's --limit): not a sample of MMLU; a bound over them is
                about those rows only, so no policy about MMLU can pass on it
    unknown     nothing recorded: no bound can be trusted

Runs log the `mmlu.design` tag; runs written before it existed are read from their `eval.*` params.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from pipeline import metrics as M
from pipeline.records import VariantRecord

Kind = Literal["all", "first-n", "stratified", "sequential", "unknown"]
_KINDS = ("all", "first-n", "stratified", "sequential")


@dataclass(frozen=True)
class Design:
    kind: Kind
    strata: dict[str, int] | None = field(default=None, compare=False)  # stratified: test rows per subject
    order_seed: int | None = None  # sequential
    population: int | None = None  # sequential: the questions the order was drawn from
    first_n: int | None = None  # first-n: rows per subject
    inferred: bool = False  # read from params (a run written before the design tag)

    @property
    def describes_mmlu(self) -> bool:
        """A bound over these questions is a statement about the MMLU test set (the selected subjects)."""
        return self.kind in ("all", "stratified", "sequential")

    def label(self) -> str:
        """Short words for reports: what a bound over these questions is about."""
        return {
            "all": "every test question",
            "stratified": "seeded sample stratified by subject",
            "sequential": "seeded sequential sample",
            "first-n": f"first {self.first_n or 'N'} rows per subject, not a sample",
            "unknown": "sampling design not recorded",
        }[self.kind]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "", "None") else None
    except ValueError:
        return None


def design_of(r: VariantRecord) -> Design:
    """The run's design from its tags, else from its `eval.*` params (older runs), else `unknown`."""
    kind = r.tags.get(M.TAG_MMLU_DESIGN)
    first_n = _int(r.params.get(M.PARAM_EVAL_LIMIT_PER_SUBJECT))
    seq = dict(order_seed=_int(r.tags.get(M.TAG_MMLU_ORDER_SEED)), population=_int(r.tags.get(M.TAG_MMLU_POPULATION)))
    inferred = kind is None
    if kind is None:
        questions = r.params.get(M.PARAM_EVAL_SAMPLE_QUESTIONS)
        if r.tags.get(M.TAG_MMLU_ORDER_SEED) is not None or questions == "auto":
            kind = "sequential"
        elif questions is not None:
            kind = "stratified"
        elif first_n is not None:
            kind = "first-n"
        elif r.params.get(M.PARAM_EVAL_LIMIT_PER_SUBJECT) == "None" and r.params.get(M.PARAM_EVAL_SAMPLE) == "None":
            kind = "all"
        else:
            return Design("unknown")
    if kind not in _KINDS:
        return Design("unknown")
    strata = None
    if kind == "stratified":
        try:
            raw = json.loads(r.tags.get(M.TAG_MMLU_STRATA, ""))
            strata = {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) and raw else None
        except (ValueError, TypeError, AttributeError):
            strata = None
    return Design(
        kind,
        strata=strata,
        first_n=first_n if kind == "first-n" else None,
        inferred=inferred,
        **(seq if kind == "sequential" else {}),
    )
