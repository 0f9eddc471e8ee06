"""Compression methods: one file per library, each method a small registered class."""

from pipeline.methods.base import (
    BuildContext,
    Method,
    MethodError,
    MethodParams,
    get_method,
    register,
    registry,
    validate_variant,
)

# Importing the modules registers their methods; heavy libraries are imported inside `apply`.
from pipeline.methods import basic as _basic  # noqa: F401,E402
from pipeline.methods import bnb as _bnb  # noqa: F401,E402
from pipeline.methods import pruning as _pruning  # noqa: F401,E402
from pipeline.methods import torchao_methods as _torchao  # noqa: F401,E402

__all__ = [
    "BuildContext",
    "Method",
    "MethodError",
    "MethodParams",
    "get_method",
    "register",
    "registry",
    "validate_variant",
]
