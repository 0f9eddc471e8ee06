"""The layers are checked, not hoped for: import-linter's contracts hold, every package is in a layer, and
no module imports another module's private names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline"


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.is_file(), "lint-imports missing: install the dev extra (bash scripts/install.sh)"
    proc = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(rf"Contracts: {len(_contracts())} kept, 0 broken", proc.stdout), proc.stdout[-2000:]


def test_every_top_level_module_is_in_a_layer():
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    layered = {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}
    top = {f"pipeline.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    top |= {f"pipeline.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert top - layered == set(), f"add these to the layers contract in pyproject.toml: {sorted(top - layered)}"


def _private_imports(source: str, module: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("pipeline")
            and node.module != module
        ):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{module}: from {node.module} import {alias.name} (line {node.lineno})")
    return found


def test_no_private_names_imported_across_modules():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found += _private_imports(path.read_text(encoding="utf-8"), module)
    assert found == []


def test_private_import_check_catches_one():
    source = "from pipeline.env import _HUB_HOST\nfrom pipeline.env import __version__, pick_device\n"
    assert _private_imports(source, "pipeline.x") == ["pipeline.x: from pipeline.env import _HUB_HOST (line 1)"]
    assert _private_imports("from pipeline.x import _own\n", "pipeline.x") == []
