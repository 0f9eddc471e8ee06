"""Secrets out of everything shrinkgate writes: tracking (params, tags, text artifacts, uploaded text files), the
server log, `shrinkgate export`'s `shrinkgate.json`.

What counts as a secret:
  - the value of every environment variable registered with `protect_env` (`serve.api_key_env`), read when
    redacting, so a key exported later still counts;
  - every value registered with `protect_argv`: the argument after a key/token option of a command line
    (`--api-key X`, `--api_key=X`, `--hf-token X`, ...), so a server that echoes its arguments in its own
    format (vLLM logs `'api_key': ['X']`) is covered too;
  - in any text: the value after a key/token option (`--token X`, `--auth-token=X`, also as a JSON or YAML
    list item), after `Authorization:` and `Bearer`, a URL's password and its `?token=` / `&api_key=` values.

Each becomes `REDACTED`: a bare word, so a redacted YAML or JSON document still parses (YAML reads a leading
`*` as an alias). Values under 4 characters are not taken as secrets (they would blank out ordinary text).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "REDACTED"
_MIN_SECRET = 4

# An option whose last word names a credential: --api-key, --api_key, --hf-token, --auth-token, --password;
# not --max-tokens, --tokenizer or --keyfile (the word must end the option name).
_SECRET_WORD = r"(?:api[-_]?key|apikey|key|token|secret|password|passwd|credentials?)"
_OPTION = re.compile(rf"^--?(?:[A-Za-z0-9]+[-_])*{_SECRET_WORD}(?:=(?P<value>.*))?$", re.IGNORECASE)
_TEXT_RULES = (
    # Authorization: Bearer X / "Authorization": "Basic X" (the whole credential)
    re.compile(
        r"(?P<keep>authorization[\"']?\s*[:=]\s*[\"']?)(?P<secret>(?:(?:bearer|basic|token|digest|apikey)\s+)?[^\s\"',;}]+)",
        re.IGNORECASE,
    ),
    # Bearer X, the scheme as HTTP writes it and a token-like value (not "bearer bonds" in a question)
    re.compile(r"(?P<keep>\bBearer\s+)(?P<secret>(?!REDACTED)[A-Za-z0-9._~+/=-]{8,})"),
    # --api-key X, --token=X, and the same as list items: "--api-key", "X" (JSON) or `- --api-key\n- X` (YAML)
    re.compile(
        rf"(?P<keep>(?<![\w-])--?(?:[A-Za-z0-9]+[-_])*{_SECRET_WORD}(?![\w-])(?:=|[\"']?(?:\s*,\s*|\s+)(?:-\s+)?[\"']?))"
        r"(?P<secret>(?!-)(?!REDACTED)[^\s\"',\]]+)",
        re.IGNORECASE,
    ),
    # https://user:PASSWORD@host, ?token=X&api_key=Y
    re.compile(r"(?P<keep>://[^/\s:@]+:)(?P<secret>[^/\s@]+)(?=@)"),
    re.compile(rf"(?P<keep>[?&](?:[A-Za-z0-9]+[-_])*{_SECRET_WORD}=)(?P<secret>[^&\s\"'#]+)", re.IGNORECASE),
)

_ENV_NAMES: set[str] = set()
_VALUES: set[str] = set()


def protect_env(name: str | None) -> None:
    """Treat the value of environment variable `name` as a secret from now on (in this process)."""
    if name:
        _ENV_NAMES.add(name)


def protect_argv(argv: Iterable[str] | None) -> None:
    """Treat the value of every key/token option of `argv` as a secret from now on (in this process)."""
    for value in _argv_secrets(list(argv or ())):
        if len(value) >= _MIN_SECRET:
            _VALUES.add(value)


def _argv_secrets(argv: list[str]) -> list[str]:
    found = []
    for i, arg in enumerate(argv):
        m = _OPTION.match(arg)
        if m is None:
            continue
        if m.group("value") is not None:
            found.append(m.group("value"))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            found.append(argv[i + 1])
    return found


def _known_values() -> list[str]:
    values = set(_VALUES)
    values.update(os.environ.get(name, "") for name in _ENV_NAMES)
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)  # longest first


def redact(text: str) -> str:
    """`text` with every secret (see the module docstring) replaced by `REDACTED`."""
    for value in _known_values():
        text = text.replace(value, REDACTED)
    for rule in _TEXT_RULES:
        text = rule.sub(lambda m: m.group("keep") + REDACTED, text)
    return text


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with its key/token option values redacted (list items keep their places)."""
    out = [redact(a) for a in argv]
    for i, arg in enumerate(argv):
        m = _OPTION.match(arg)
        if m is None:
            continue
        if m.group("value") is not None:
            out[i] = arg[: len(arg) - len(m.group("value"))] + REDACTED
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out[i + 1] = REDACTED
    return out


def redact_data(value: Any) -> Any:
    """JSON-like data with every string redacted; a list of strings is redacted as a command line."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return redact_argv(list(value))
        return [redact_data(v) for v in value]
    return value
