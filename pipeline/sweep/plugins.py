"""Plugin modules a child imports before it unpickles its work, so methods and runtimes registered outside
`pipeline` exist there too (the process executor's child, a Ray worker)."""

from __future__ import annotations

import importlib
import os

PLUGINS_ENV = "SHRINKGATE_PLUGINS"


def env_plugins() -> list[str]:
    """The modules named in `$SHRINKGATE_PLUGINS` (comma-separated)."""
    return [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]


def import_plugins(names: list[str]) -> None:
    """Import modules that register methods or runtimes (an ImportError propagates: the child cannot do its work)."""
    for name in names:
        importlib.import_module(name)
