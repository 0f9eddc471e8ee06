"""One registry style for everything looked up by name: methods, weight handlers, runtimes, builders, executors.

Modelled on lm-eval's generic `Registry`: a registry maps a key to an object (usually a class); a class
registers itself with `@REG.register` (the key read from its `name` attribute, or given) and callers look it up
with `REG.get(key)`, which fails with one line naming what exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown key; `str()` is the one-line message (KeyError's own quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, what: str, *, key_attr: str = "name", hint: str = "") -> None:
        self.what = what  # "method", "runtime", ... : the word the error message uses
        self.key_attr = key_attr
        self.hint = hint  # where to look, in brackets after an unknown-key error ("see `shrinkgate methods`")
        self._entries: dict[str, T] = {}

    def register(self, obj: T | None = None, *, key: str | None = None) -> T | Callable[[T], T]:
        """Register `obj` under `key` (default: its `key_attr`); usable as `@reg.register` or
        `@reg.register(key="x")`. Registering another object under a taken key is a programming error."""

        def add(o: T) -> T:
            k = key if key is not None else getattr(o, self.key_attr)
            have = self._entries.get(k)
            if have is not None and have is not o:
                raise ValueError(f"{self.what} {k!r} is registered twice ({have!r} and {o!r})")
            self._entries[k] = o
            return o

        return add(obj) if obj is not None else add

    def unregister(self, key: str) -> None:
        """Drop `key` if registered (tests that register a throwaway entry clean up with this)."""
        self._entries.pop(key, None)

    def get(self, key: str) -> T:
        try:
            return self._entries[key]
        except KeyError:
            names = ", ".join(sorted(self._entries))
            raise RegistryError(
                f"unknown {self.what} {key!r}; use one of: {names}{f' ({self.hint})' if self.hint else ''}"
            ) from None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def as_dict(self) -> dict[str, T]:
        return dict(self._entries)
