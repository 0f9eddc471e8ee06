"""Safetensors (transformers) model dir -> GGUF, with llama.cpp's own converter.

scripts/install.sh copies convert_hf_to_gguf.py, its `conversion` package and its gguf-py from the pinned
llama-cpp-python sdist into <venv>/share/shrinkgate/llama.cpp. It runs in a subprocess of our own interpreter
(transformers 5.23 serves it: it only asks transformers for AutoConfig and the tokenizer) with PYTHONPATH on the
vendored gguf-py, which is newer than the PyPI gguf transformers reads GGUF with: in a subprocess it never
shadows that one in our process. _gguf_convert_driver.py wraps the converter to name a plain GPT-2 ByteLevel
pre-tokenizer the converter has no hash for.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.models.loader import ModelError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_DRIVER = Path(__file__).with_name("_gguf_convert_driver.py")
_UNSUPPORTED = re.compile(r"Model (\S+) is not supported")


class ConverterMissing(ModelError):
    """llama.cpp's converter is not where scripts/install.sh puts it."""


def converter_dir() -> Path:
    return Path(sys.prefix) / "share" / "shrinkgate" / "llama.cpp"


def _check_converter() -> Path:
    d = converter_dir()
    if not (d / "convert_hf_to_gguf.py").is_file() or not (d / "gguf-py" / "gguf").is_dir():
        raise ConverterMissing(f"llama.cpp's converter is not installed in {sys.prefix}; run `bash scripts/install.sh`")
    return d


@functools.cache
def converter_architectures() -> frozenset[str]:
    """The transformers architectures (config.json `architectures`) llama.cpp's converter registers a class for,
    read from its `@ModelBase.register(...)` decorators without importing it."""
    names: set[str] = set()
    for source in sorted((_check_converter() / "conversion").glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register":
                names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return frozenset(names)


def unsupported_architecture(config: object) -> str | None:
    """One line when a transformers config names no architecture the converter can take, else None."""
    archs = list(getattr(config, "architectures", None) or [])
    if not archs:
        return "its config.json names no `architectures`, so llama.cpp's converter cannot pick a converter class"
    if not set(archs) & converter_architectures():
        return f"llama.cpp's converter cannot take architecture {archs[0]}; use a model llama.cpp supports (or a GGUF source)"
    return None


def convert_hf_dir(model_dir: Path, out_path: Path, *, outtype: str = "f32") -> Path:
    """Write `model_dir` (config.json + safetensors + tokenizer) as one GGUF file at `out_path`; returns it."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise ModelError(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} has no config.json; pass a transformers model directory")
    conv = _check_converter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    part = out_path.with_name(out_path.name + ".part")  # no braces: the converter expands {ftype} in names
    env = {**os.environ, "PYTHONPATH": str(conv / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(_DRIVER), str(conv), str(model_dir), "--outfile", str(part), "--outtype", outtype]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not part.is_file():
        part.unlink(missing_ok=True)
        err = ModelError(_one_line(proc.stderr, model_dir))
        err.add_note(f"llama.cpp converter stderr (exit {proc.returncode}):\n{proc.stderr}")
        raise err
    part.replace(out_path)
    return out_path


def _one_line(stderr: str, model_dir: Path) -> str:
    if m := _UNSUPPORTED.search(stderr):
        return (
            f"llama.cpp's converter cannot take architecture {m.group(1)} ({model_dir}); "
            "the llama.cpp runtime needs a model llama.cpp supports (or a GGUF source)"
        )
    if "BPE pre-tokenizer was not recognized" in stderr:
        return (
            f"llama.cpp's converter does not know the tokenizer of {model_dir} (a BPE pre-tokenizer it has no hash "
            "for, and not plain GPT-2 ByteLevel); the llama.cpp runtime cannot run this model"
        )
    last = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return f"llama.cpp's converter failed on {model_dir}: {last[-1].strip() if last else 'no output'}"
