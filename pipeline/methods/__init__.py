"""Compression methods: one file per library, each method a small registered class."""

from pipeline.methods.base import (
    BuildContext,
    CalibrationParams,
    Method,
    MethodError,
    MethodParams,
    NotSerializable,
    get_method,
    register,
    registry,
    validate_steps,
    validate_variant,
)

# Importing the modules registers their methods; heavy libraries are imported inside `apply`.
from pipeline.methods import basic as _basic  # noqa: F401,E402
from pipeline.methods import bnb as _bnb  # noqa: F401,E402
from pipeline.methods import hqq_methods as _hqq  # noqa: F401,E402
from pipeline.methods import llmcompressor_methods as _llmcompressor  # noqa: F401,E402
from pipeline.methods import pruning as _pruning  # noqa: F401,E402
from pipeline.methods import quanto as _quanto  # noqa: F401,E402
from pipeline.methods import torchao_methods as _torchao  # noqa: F401,E402
from pipeline.methods import wanda as _wanda  # noqa: F401,E402

__all__ = [
    "BuildContext",
    "CalibrationParams",
    "Method",
    "MethodError",
    "MethodParams",
    "NotSerializable",
    "get_method",
    "register",
    "registry",
    "validate_steps",
    "validate_variant",
]
