"""Which MMLU test questions a sample scores: a fixed-size sample stratified by subject, or one seeded random
order across subjects that a sequential sample scores look by look.

Both are seeded (`pipeline.results.question_rank`) and nested: a larger sample contains a smaller one, and each
prefix of the sequential order is a simple random sample. Their estimators are in `pipeline.data.estimates`.
"""

from __future__ import annotations

import heapq

from pipeline.data.mmlu import MMLUData, MMLUDataError
from pipeline.results import question_rank


def allocate(questions: int, sizes: dict[str, int]) -> dict[str, int]:
    """Questions per subject: >= 1 each, the rest in proportion to size, capped at size.

    The rest are handed out one at a time (Sainte-Lague, a divisor method): the next goes to the subject with
    the most `(size - 1) / (extra + 0.5)`, ties to the first by name. So allocate(N + 1) is allocate(N) plus one
    question (house-monotone) and a larger sample contains a smaller one; largest remainder is not: N -> N + 1
    can take a question from a subject.
    """
    total = sum(sizes.values())
    if questions >= total:
        return dict(sizes)
    if questions < len(sizes):
        raise MMLUDataError(
            f"eval.sample.questions: {questions} is fewer than the {len(sizes)} selected subjects; sample at least "
            f"{len(sizes)} questions or select fewer eval.subjects"
        )
    out = dict.fromkeys(sizes, 1)
    # Priorities are ratios of small ints: equal ratios give equal floats, distinct ones distinct floats.
    heap = [(-(n - 1) / 0.5, s) for s, n in sizes.items() if n > 1]
    heapq.heapify(heap)
    for _ in range(questions - len(sizes)):
        s = heap[0][1]
        out[s] += 1
        if out[s] < sizes[s]:
            heapq.heapreplace(heap, (-(sizes[s] - 1) / (out[s] - 0.5), s))
        else:
            heapq.heappop(heap)  # capped: every question of the subject is in
    return out


def _require_local_rows(data: MMLUData) -> None:
    """Sampling needs every subject's row count, which only a local copy knows before scoring."""
    if data.source != "local":
        raise MMLUDataError(
            "eval.sample: needs the MMLU rows locally (their counts per subject); unset the hub source or set eval.data_dir"
        )


def sample_questions(data: MMLUData, questions: int, seed: int) -> dict[str, tuple[int, ...]]:
    """Subject -> sorted test-row indices of a seeded sample stratified by subject (`allocate`); within a
    subject the first questions of the seeded order (`question_rank`), so a larger sample contains a smaller one."""
    _require_local_rows(data)
    counts = allocate(questions, {s: data.test_rows[s] for s in data.subjects})
    return {
        s: tuple(sorted(sorted(range(data.test_rows[s]), key=lambda i, s=s: question_rank(seed, s, i))[:n]))
        for s, n in counts.items()
    }


def sequential_order(data: MMLUData, seed: int) -> tuple[tuple[str, int], ...]:
    """Every selected test question as (subject, row) in one seeded random order across subjects (`question_rank`):
    each prefix of it is a simple random sample without replacement, which the sequential test assumes."""
    _require_local_rows(data)
    every = [(s, i) for s in data.subjects for i in range(data.test_rows[s])]
    return tuple(sorted(every, key=lambda q: question_rank(seed, *q)))


def look_sizes(step: int, most: int) -> list[int]:
    """Questions scored by the end of each look: step, 2 step, 4 step, ... capped at `most` (a few looks, so the
    per-look cost - each subject's few-shot prefix evaluated again - stays small; the test itself looks at every question)."""
    sizes, n = [], step
    while n < most:
        sizes.append(n)
        n *= 2
    return sizes + [most]
