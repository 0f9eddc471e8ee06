"""What a speed spec asks for: the (batch size, prompt length) points, and the prompt ids every runtime times.

Every runtime runs the same English prompt text, tokenized by its own tokenizer and rotated per row, so their
figures are comparable point for point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pipeline.config.recipe import SpeedSpec

SERVER_BATCHES = (1, 4, 16, 64)

# English text tokenized into real, varied prompt ids (content does not change decode speed, but
# all-zero or constant prompts can hit degenerate kernels and caching paths).
_PROMPT_TEXT = (
    "The committee reviewed the annual budget and found that spending on public libraries had grown "
    "faster than population. Several members argued that digital lending reduced the need for new "
    "buildings, while others pointed to reading rooms crowded every afternoon with students. In the end "
    "they agreed to fund two small branches near the river, to extend opening hours on weekends, and to "
    "publish a report comparing costs per visitor across the region. Meanwhile, engineers measured the "
    "bridge for fatigue cracks; chemists titrated samples of groundwater; a historian traced letters "
    "written in 1848 between merchants in Lisbon, Hamburg and Boston about cotton, sugar and credit. "
    "Question: which of the following best explains why prices rose? A. demand B. supply C. taxes D. war"
)


def planned_batches(spec: SpeedSpec) -> list[int]:
    """Batch sizes the scenario asks for (offline's largest-that-fits search happens at run time)."""
    if spec.scenario == "single-stream":
        return [1]
    if spec.scenario == "server":
        return list(spec.batch_sizes) if "batch_sizes" in spec.model_fields_set else list(SERVER_BATCHES)
    if spec.scenario == "offline":
        top = max(spec.max_batch, max(spec.batch_sizes))
        return [top]
    return list(spec.batch_sizes)


def prompt_lengths(spec: SpeedSpec) -> list[int]:
    return list(spec.prompt_lengths) if spec.prompt_lengths else [spec.prompt_tokens]


def prompt_ids(tokenizer: Any, vocab_size: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """[batch, length] real token ids: the tokenizer's encoding of English text, each row a different
    rotation; random non-special ids from the vocab when there is no tokenizer (random-weight shapes)."""
    import torch

    special = set(getattr(tokenizer, "all_special_ids", []) or []) if tokenizer is not None else set()
    pool: list[int] = []
    if tokenizer is not None:
        ids = tokenizer(_PROMPT_TEXT, add_special_tokens=False)["input_ids"]
        pool = [int(i) for i in ids if 0 <= int(i) < vocab_size and int(i) not in special]
    gen = torch.Generator().manual_seed(seed)
    if len(set(pool)) < 8:
        low = min(max(max(special, default=2) + 1, 3), vocab_size - 1)  # above pad/bos/eos-style ids
        pool = torch.randint(low, vocab_size, (max(512, length),), generator=gen).tolist()
    rows = []
    for r in range(batch):
        start = (r * 7919) % len(pool)  # rows differ: batched sequences are not copies of one another
        idx = [(start + i) % len(pool) for i in range(length)]
        rows.append([pool[i] for i in idx])
    return torch.tensor(rows, dtype=torch.long)
