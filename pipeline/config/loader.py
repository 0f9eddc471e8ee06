"""One YAML loader and one error formatter for every file a user writes (recipes, policies).

Every problem a user can fix is a `RecipeError` whose `str()` is one line: `FILE: field X: problem -> fix`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class RecipeError(ValueError):
    """A recipe (or policy) a user can fix; `str()` is one line: file, field, fix."""


def _loc(err: dict[str, Any]) -> str:
    parts: list[str] = []
    for p in err.get("loc", ()):
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def _fix_hint(err: dict[str, Any], unknown_key_fix: str) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return unknown_key_fix
    if kind == "missing":
        return "add it"
    if kind == "literal_error":
        return f"use one of: {err.get('ctx', {}).get('expected', '?')}"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def format_validation_error(path: str | Path, exc: ValidationError, unknown_key_fix: str) -> str:
    """First pydantic error as `FILE: field PATH: problem -> fix` (one line)."""
    err = exc.errors()[0]
    more = len(exc.errors()) - 1
    tail = f" (+{more} more)" if more else ""
    got = err.get("input")
    got_s = ""
    if err.get("type") not in ("missing",) and not isinstance(got, (dict, list)):
        got_s = f" (got {got!r})"
    return f"{path}: field `{_loc(err)}`{got_s}: {_fix_hint(err, unknown_key_fix)}{tail}"


def read_yaml(path: str | Path, kind: str, example: str) -> Any:
    """The parsed document of a `kind` file (recipe, policy); a missing file or bad YAML is a RecipeError."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such {kind} file -> give the path to a YAML {kind} (see {example})")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}) -> fix the syntax") from None
