"""Compression methods: one file per library, each method a small registered pydantic class whose fields are
its params (`base.Method` documents the contract); each library file also registers how its weights are
stored, counted and dequantized (`weights.WeightHandler`)."""

# Importing the modules registers their methods and weight handlers; heavy libraries are imported inside hooks.
from pipeline.methods import basic as _basic  # noqa: F401,E402
from pipeline.methods import bnb as _bnb  # noqa: F401,E402
from pipeline.methods import hqq_methods as _hqq  # noqa: F401,E402
from pipeline.methods import llamacpp_methods as _llamacpp  # noqa: F401,E402
from pipeline.methods import llmcompressor_methods as _llmcompressor  # noqa: F401,E402
from pipeline.methods import pruning as _pruning  # noqa: F401,E402
from pipeline.methods import quanto as _quanto  # noqa: F401,E402
from pipeline.methods import torchao_methods as _torchao  # noqa: F401,E402
from pipeline.methods import wanda as _wanda  # noqa: F401,E402
from pipeline.methods.base import (
    BuildContext,
    CalibratedMethod,
    Method,
    MethodError,
    NotSerializable,
    make_method,
    param_names,
    register,
    registry,
    validate_steps,
    validate_variant,
)
from pipeline.methods.weights import WeightHandler, register_weight_handler, weight_handlers

__all__ = [
    "BuildContext",
    "CalibratedMethod",
    "Method",
    "MethodError",
    "NotSerializable",
    "WeightHandler",
    "make_method",
    "param_names",
    "register",
    "register_weight_handler",
    "registry",
    "validate_steps",
    "validate_variant",
    "weight_handlers",
]
