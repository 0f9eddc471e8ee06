"""A test-only method that makes the noise real libraries make while a child works: a Python warning, a
library logger's warning and bytes written straight to file descriptor 2 (as native code or a subprocess
does). Importable by the process executor's child (it passes the modules that registered methods)."""

from __future__ import annotations

import logging
import os
import warnings

from pipeline.methods import Method, register, registry

NOISE = ("shrinkgate-test warning", "shrinkgate-test library log", "shrinkgate-test native stderr")


class Noisy(Method):
    """Leaves the weights alone and is loud about it."""

    name = "test-noisy"
    library = "tests"
    kind = "none"

    def apply(self, model, ctx):
        warnings.warn(NOISE[0], UserWarning, stacklevel=1)
        logging.getLogger("transformers.test_noise").warning(NOISE[1])
        os.write(2, (NOISE[2] + "\n").encode())
        return model


if Noisy.name not in registry():
    register(Noisy)
