"""The one registry style (pipeline/registry.py) and that every name lookup uses it."""

import pathlib
import re

import pytest

from pipeline.registry import Registry, RegistryError


def test_registry_registers_by_name_and_fails_in_one_line():
    reg: Registry[type] = Registry("widget", hint="see `widgets`")

    @reg.register
    class New:
        name = "new"

    assert reg.get("new") is New and "new" in reg and "old" not in reg
    with pytest.raises(RegistryError) as exc:
        reg.get("nope")
    assert str(exc.value) == "unknown widget 'nope'; use one of: new (see `widgets`)"

    class Other:
        name = "new"

    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Other)
    reg.register(New)  # the same object again is fine (a module imported twice)


def test_no_hand_rolled_registries_in_the_package():
    """Name -> class tables are `Registry` objects: no module-level `dict[str, type[...]]` tables, no `_REGISTRY`."""
    root = pathlib.Path(__file__).resolve().parents[1] / "pipeline"
    hand_rolled = re.compile(r"^[A-Z_]+: dict\[str, type\[|^_REGISTRY\b", re.M)
    found = [str(p.relative_to(root)) for p in root.rglob("*.py") if hand_rolled.search(p.read_text())]
    assert found == []
