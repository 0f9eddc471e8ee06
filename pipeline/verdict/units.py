"""How a number reads in a report or a gate check's detail (kept apart so checks and renderers agree)."""

from __future__ import annotations

import math
from typing import Any

from pipeline import metrics as M


def fmt(value: Any, key: str = "") -> str:
    """A value for people; `key` (a metric or column name) picks the unit: bytes, p-value, share, points."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        if key == M.WEIGHT_BYTES:
            return f"{value / 1e9:.3f} GB" if value >= 1e8 else f"{value / 1e6:.2f} MB"
        if key.startswith("mcnemar"):
            return f"{value:.3g}"
        if key.startswith(("flip", M.MBU)):
            return f"{value:.1%}"
        if key.endswith("_pts"):
            return f"{value:+.2f}"
        return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)
