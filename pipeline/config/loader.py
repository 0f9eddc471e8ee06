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


class _DuplicateKey(yaml.constructor.ConstructorError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(problem=f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load` that refuses a key given twice in one mapping (PyYAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` keys may be overridden: YAML's merge, not a duplicate
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in first
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error below says so
            line = key_node.start_mark.line + 1
            if seen:
                raise _DuplicateKey(key, line, first[key])
            first[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, kind: str, example: str) -> Any:
    """The parsed document of a `kind` file (recipe, policy), as `yaml.safe_load` reads it but refusing a key
    given twice; a missing file, bytes that are not UTF-8, bad YAML or a duplicate key is a RecipeError."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such {kind} file -> give the path to a YAML {kind} (see {example})")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise RecipeError(
            f"{path}: line {line}, column {column}: byte 0x{raw[exc.start]:02x} is not UTF-8 -> save the {kind} as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except _DuplicateKey as exc:
        raise RecipeError(
            f"{path}: line {exc.line}: key `{exc.key}` is given twice (first on line {exc.first_line}) -> keep one; "
            f"YAML would silently use the last"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(
            f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}) -> fix the syntax"
        ) from None
