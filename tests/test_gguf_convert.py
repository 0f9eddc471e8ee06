"""Safetensors -> GGUF with llama.cpp's converter (pipeline.models.gguf_convert), and the llama-cpp-python build
flags scripts/install.sh derives from /proc/cpuinfo.

Tolerances, measured on this host (f32 GGUF, llama.cpp CPU vs transformers fp32, 64 tokens):
  tiny Llama (logits within +-0.6):  max |diff| 1.3e-4  -> atol 1e-3
  SmolLM2-135M (logits up to ~35):   max |diff| 0.022   -> atol 0.1
and the next-token argmax agrees at every position.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CMAKE_ARGS_SH = REPO / "scripts" / "llama_cpp_cmake_args.sh"


def _mmlu_lines(mmlu_dir: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in (mmlu_dir / "dev.jsonl").read_text(encoding="utf-8").splitlines()[:n]]
    return [r["question"] + " " + " ".join(r["choices"]) for r in rows]


def _llama(gguf: Path):
    import llama_cpp

    return llama_cpp.Llama(str(gguf), logits_all=True, n_ctx=256, n_threads=2, verbose=False)


def _hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _check_model(model_dir: Path, gguf: Path, texts: list[str], atol: float) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = _llama(gguf)
    try:
        for text in texts:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(
                text, add_special_tokens=False
            ), text
        ids = tok.encode(" ".join(texts), add_special_tokens=False)[:64]
        assert len(ids) == 64
        got = _llama_logits(llm, ids)
    finally:
        llm.close()
    ref = _hf_logits(model_dir, ids)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_tiny_llama_converts_and_matches_transformers(tiny_model_dir, mmlu_dir, tmp_path):
    from pipeline.models.gguf_convert import convert_hf_dir

    out = convert_hf_dir(tiny_model_dir, tmp_path / "tiny.gguf")
    assert out == tmp_path / "tiny.gguf" and out.is_file()
    assert not (tmp_path / "tiny.gguf.part").exists()
    # The locally trained tokenizer has no hash entry in the converter: the driver named it GPT-2 ByteLevel.
    from gguf import GGUFReader

    field = GGUFReader(out).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt-2"
    texts = _mmlu_lines(mmlu_dir, 12) + [
        "Answer: 1234 and 3.14159, x=2023!",
        "  two  spaces\n\nnew\tlines",
        "Ünïcödé 😀",
    ]
    _check_model(tiny_model_dir, out, texts, atol=1e-3)


def test_smollm2_dense_dir_converts_and_matches_transformers(mmlu_dir, tmp_path):
    from pipeline.config.recipe import ModelSpec
    from pipeline.models import resolve_model
    from pipeline.models.gguf_convert import convert_hf_dir

    dense = resolve_model(ModelSpec(name="s", source="smollm2-135m-instruct")).dense_dir
    out = convert_hf_dir(dense, tmp_path / "smollm2-f32.gguf")
    _check_model(dense, out, _mmlu_lines(mmlu_dir, 6), atol=0.1)


def _tiny_opt(path: Path) -> Path:
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        max_position_embeddings=32,
    )
    OPTForCausalLM(config).save_pretrained(path)
    return path


def test_architecture_the_converter_lacks_is_one_line(tmp_path):
    from pipeline.models import ModelError
    from pipeline.models.gguf_convert import convert_hf_dir, converter_dir

    # OPT exists in transformers and the converter registers no class for it.
    assert '"OPTForCausalLM"' not in "".join(p.read_text() for p in (converter_dir() / "conversion").glob("*.py"))
    with pytest.raises(ModelError) as info:
        convert_hf_dir(_tiny_opt(tmp_path / "opt"), tmp_path / "opt.gguf")
    msg = str(info.value)
    assert "\n" not in msg and "cannot take architecture OPTForCausalLM" in msg
    assert any("is not supported" in note for note in info.value.__notes__)  # the converter's stderr, kept
    assert not list(tmp_path.glob("opt.gguf*"))


def test_unknown_non_gpt2_pre_tokenizer_keeps_the_converters_refusal(tiny_model_dir, tmp_path):
    from pipeline.models import ModelError
    from pipeline.models.gguf_convert import convert_hf_dir

    model = tmp_path / "prefix-space"
    shutil.copytree(tiny_model_dir, model)
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True  # splits differently from llama.cpp's "gpt-2"
    (model / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="does not know the tokenizer") as info:
        convert_hf_dir(model, tmp_path / "x.gguf")
    assert "\n" not in str(info.value)
    assert any("BPE pre-tokenizer was not recognized" in n for n in info.value.__notes__)


def test_missing_converter_is_one_line(monkeypatch, tiny_model_dir, tmp_path):
    import pipeline.models.gguf_convert as gc

    monkeypatch.setattr(gc, "converter_dir", lambda: tmp_path / "none")
    with pytest.raises(gc.ConverterMissing, match=r"run `bash scripts/install.sh`$"):
        gc.convert_hf_dir(tiny_model_dir, tmp_path / "x.gguf")


# --- build flags (scripts/llama_cpp_cmake_args.sh, sourced by scripts/install.sh) -----------------------------

SAPPHIRE_RAPIDS = (
    "fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw "
    "avx512vl avx_vnni avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8"
)
HASWELL = "fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 popcnt avx f16c bmi1 avx2 bmi2"


def _cmake_args(tmp_path: Path, cpuinfo: str) -> dict[str, str]:
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    out = subprocess.run(["bash", str(CMAKE_ARGS_SH), str(fake)], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def _options(args: str) -> dict[str, str]:
    return dict(a.removeprefix("-D").split("=") for a in args.split())


def test_amx_host_builds_without_amx_but_with_avx512_bf16(tmp_path):
    got = _cmake_args(tmp_path, f"processor\t: 0\nflags\t\t: {SAPPHIRE_RAPIDS}\n")
    opts = _options(got["LLAMA_CMAKE_ARGS"])
    assert opts["GGML_NATIVE"] == "OFF"
    assert {opts[k] for k in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")} == {"OFF"}
    for k in ("AVX", "AVX2", "FMA", "F16C", "AVX_VNNI", "AVX512", "AVX512_VNNI", "AVX512_VBMI", "AVX512_BF16"):
        assert opts[f"GGML_{k}"] == "ON", k
    assert "AMX_INT8" not in got["LLAMA_SYSINFO_EXPECT"].split()


def test_avx2_only_host_gets_no_avx512(tmp_path):
    got = _cmake_args(tmp_path, f"processor\t: 0\nflags\t\t: {HASWELL}\n")
    opts = _options(got["LLAMA_CMAKE_ARGS"])
    assert opts["GGML_NATIVE"] == "OFF"
    assert {k for k, v in opts.items() if v == "ON"} == {
        f"GGML_{k}" for k in ("SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C")
    }
    assert all(opts[k] == "OFF" for k in opts if "AVX512" in k or "AMX" in k)
    assert got["LLAMA_CPU_FEATURES"] == "SSE42 AVX AVX2 BMI2 FMA F16C"


def test_host_without_x86_flags_builds_generic(tmp_path):
    got = _cmake_args(tmp_path, "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n")
    assert got == {"LLAMA_CMAKE_ARGS": "-DGGML_NATIVE=OFF", "LLAMA_CPU_FEATURES": "", "LLAMA_SYSINFO_EXPECT": ""}


def test_installed_build_matches_this_hosts_flags(tmp_path):
    """install.sh's marker records this host's args, and the library reports exactly those CPU features."""
    import llama_cpp

    marker = Path(sys.prefix) / "share" / "shrinkgate" / "llama_cpp_build.json"
    assert marker.is_file(), f"{marker} missing: run `bash scripts/install.sh`"
    recorded = json.loads(marker.read_text())
    host = _cmake_args(tmp_path, Path("/proc/cpuinfo").read_text())
    assert recorded["version"] == llama_cpp.__version__ == "0.3.36"
    assert recorded["cmake_args"] == host["LLAMA_CMAKE_ARGS"]
    x86 = {
        "AVX",
        "AVX_VNNI",
        "AVX2",
        "F16C",
        "FMA",
        "BMI2",
        "AVX512",
        "AVX512_VBMI",
        "AVX512_VNNI",
        "AVX512_BF16",
        "AMX_INT8",
    }
    info = llama_cpp.llama_print_system_info().decode()
    have = sorted(
        k.strip() for k, _, v in (p.partition("=") for p in info.split("|")) if k.strip() in x86 and v.strip() == "1"
    )
    assert " ".join(have) == host["LLAMA_SYSINFO_EXPECT"]
