"""Runs llama.cpp's convert_hf_to_gguf.py (never imported: pipeline.models.gguf_convert runs this file by path).

usage: python _gguf_convert_driver.py CONVERTER_DIR convert_hf_to_gguf.py-arguments...

The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a fixed text, and refuses any hash
it has no entry for ("BPE pre-tokenizer was not recognized"). A tokenizer trained locally (tests/tiny_llama.py)
or re-created by transformers from a GGUF (the dense dirs of bundled GGUF models) has a vocabulary no hash entry
knows, even when its pre-tokenizer is exactly GPT-2's. Only when tokenizer.json says so - no normalizer, a plain
ByteLevel pre-tokenizer (GPT-2 regex, no prefix space), a plain BPE model - does this driver answer "gpt-2",
which llama.cpp maps to that same regex (src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_GPT2). Anything else keeps the
converter's own error.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


def plain_gpt2_byte_level(tokenizer_json: Path) -> bool:
    """True when the tokenizer splits text exactly as llama.cpp's "gpt-2" pre-type does."""
    if not tokenizer_json.is_file():
        return False
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre = {k: v for k, v in (spec.get("pre_tokenizer") or {}).items() if k != "trim_offsets"}  # offsets only
    model = spec.get("model") or {}
    return (
        spec.get("normalizer") is None
        and pre == GPT2_BYTE_LEVEL
        and model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and not model.get("ignore_merges")
        and model.get("dropout") is None
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
    )


def main(argv: list[str]) -> None:
    converter_dir = Path(argv[0])
    sys.path.insert(0, str(converter_dir))
    from conversion.base import TextModel  # llama.cpp's, from converter_dir

    known = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            if not plain_gpt2_byte_level(Path(self.dir_model) / "tokenizer.json"):
                raise
            note = "shrinkgate: unknown BPE pre-tokenizer hash; tokenizer.json is plain GPT-2 ByteLevel -> 'gpt-2'"
            print(note, file=sys.stderr)
            return "gpt-2"

    TextModel.get_vocab_base_pre = get_vocab_base_pre  # type: ignore[method-assign]
    script = converter_dir / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
