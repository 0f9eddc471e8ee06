"""`none`: the model exactly as published (the reference every other variant is measured against)."""

from __future__ import annotations

from pipeline.methods.base import Method, register


@register
class AsPublished(Method):
    name = "none"
    library = "transformers"
    kind = "none"
    summary = "the model as published (dense, unmodified)"

    def kernel(self, device: str, model=None) -> str:
        return f"dense matmul ({device})"
