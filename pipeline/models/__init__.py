"""Model sources: hub ids, local dirs, GGUF files and models that PyPI packages ship; one dense cache."""

from pipeline.models.loader import LoadedModel, ModelError, ResolvedModel, load_model, preflight, resolve_model

__all__ = ["LoadedModel", "ModelError", "ResolvedModel", "load_model", "preflight", "resolve_model"]
