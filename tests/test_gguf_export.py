"""GGUF export of built variants and llama.cpp's quantizers as methods, on the bundled models.

- round trip: a built variant exported to f32 GGUF gives llama.cpp the logits transformers gives
  (SmolLM2 with one pruned linear, Gemma-3-270M as published);
- pruning survives the export, where llama.cpp expects it (Llama q rows are permuted in GGUF);
- every `gguf-*` method writes the types llama.cpp documents, fallbacks included, in size order;
- bad input fails as one line.

Measured here (2-core host): max |Δlogit| / max |logit| 7.4e-4 (SmolLM2), 7.5e-4 (Gemma-3-270M), top-1 1.0.
"""

from __future__ import annotations

import collections
import gc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.config.recipe import ModelSpec
from pipeline.methods import MethodError, make_method, registry, validate_steps, validate_variant
from pipeline.models import ModelError

GGUF_METHODS = [n for n, c in registry().items() if c.artifact_format == "gguf"]
# llama.cpp's row-width fallbacks (src/llama-quant.cpp `tensor_type_fallback`): a 256-block type on a row
# width it does not divide becomes a 32-block type.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}
# block weights whose rows a 256-block divides (SmolLM2: ffn_down only): the types each file type may put
# there, the first one must appear (llama.cpp's mixes: *_K_M keep some layers a type higher; Q3_K_M stores
# ffn_down in Q4_K/Q5_K, Q2_K in Q3_K)
NATIVE = {
    "gguf-f32": ("F32",),
    "gguf-f16": ("F16",),
    "gguf-q8_0": ("Q8_0",),
    "gguf-q6_k": ("Q6_K",),
    "gguf-q5_k_m": ("Q5_K", "Q6_K"),
    "gguf-q4_k_m": ("Q4_K", "Q6_K"),
    "gguf-q4_0": ("Q4_0",),
    "gguf-iq4_xs": ("IQ4_XS", "Q5_K"),
    "gguf-q3_k_m": ("Q4_K", "Q5_K", "Q3_K"),
    "gguf-q2_k": ("Q3_K", "Q2_K", "Q4_K"),
}
KEEP_LAYERS = 4  # of SmolLM2's 30: the quantizer tests run on a cut (same row widths, a tenth of the bytes)


def _resolve(source: str):
    from pipeline.models import load_model, resolve_model

    spec = ModelSpec(name=source, source=source)
    resolved = resolve_model(spec)
    return resolved, load_model(resolved, spec, device="cpu")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2 with half of layer 0's q_proj weights zeroed (a pruned variant), exported to f32 GGUF."""
    import torch

    from pipeline.variants.gguf_export import export_gguf

    resolved, lm = _resolve("smollm2-135m-instruct")
    q = lm.model.model.layers[0].self_attn.q_proj.weight
    mask = torch.rand(q.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        q[mask] = 0.0
    d = tmp_path_factory.mktemp("smol")
    path = export_gguf(
        lm.model, lm.tokenizer, d / "smol-f32.gguf", source_gguf=resolved.gguf_path, model_name="smol", workdir=d
    )
    from gguf import GGUFReader

    # gguf-py parses every tokenizer entry (~4 s here): read the export once for all tests
    return SimpleNamespace(
        model=lm.model,
        tokenizer=lm.tokenizer,
        path=path,
        mask=mask.numpy(),
        source=resolved.gguf_path,
        reader=GGUFReader(str(path)),
    )


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from pipeline.variants.gguf_export import export_gguf

    resolved, lm = _resolve("gemma-3-270m")
    d = tmp_path_factory.mktemp("gemma")
    path = export_gguf(
        lm.model, lm.tokenizer, d / "gemma-f32.gguf", source_gguf=resolved.gguf_path, model_name="gemma", workdir=d
    )
    yield SimpleNamespace(model=lm.model, tokenizer=lm.tokenizer, path=path)
    path.unlink()  # 1 GB
    del lm
    gc.collect()


def _logit_gap(model, tokenizer, path: Path) -> tuple[float, float]:
    """(max |Δlogit| / max |logit|, top-1 agreement) of llama.cpp on `path` vs transformers fp32, every
    position of two held-out texts (<= 64 tokens: short of Gemma's 512-token sliding window)."""
    import llama_cpp
    import torch

    from pipeline.data.calibration import heldout_texts

    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False)
    try:
        worst, agree, total = 0.0, 0, 0
        for text in heldout_texts(2):
            ids = tokenizer(text, return_tensors="pt").input_ids[:, :64]
            with torch.no_grad():
                ref = model(ids).logits[0].float().numpy()
            llm.reset()
            llm.eval(ids[0].tolist())
            got = np.asarray(llm.scores[: ids.shape[1]], dtype=np.float32)
            assert got.shape == ref.shape
            worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            total += ids.shape[1]
        return worst, agree / total
    finally:
        llm.close()


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_export_round_trips_logits_through_llama_cpp(request, which):
    m = request.getfixturevalue(which)
    from gguf import GGUFReader

    reader = GGUFReader(str(m.path))
    assert reader.fields["general.file_type"].contents() == 0  # ALL_F32
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    rel, top1 = _logit_gap(m.model, m.tokenizer, m.path)
    assert top1 == 1.0
    assert rel < 2e-3, rel  # measured 7.4e-4 / 7.5e-4: float32 summation order only


def test_export_keeps_the_source_header_and_tensor_shapes(smol):
    from gguf import GGUFReader

    src, out = GGUFReader(str(smol.source)), smol.reader
    skip = {"general.file_type", "GGUF.kv_count", "GGUF.tensor_count"}
    for key, field in src.fields.items():
        if key in skip:
            continue
        assert key in out.fields, key
        assert out.fields[key].types == field.types, key
        assert out.fields[key].contents() == field.contents(), key
    assert [(t.name, t.shape.tolist()) for t in out.tensors] == [(t.name, t.shape.tolist()) for t in src.tensors]
    assert "output.weight" not in {t.name for t in out.tensors}  # tied embeddings stay tied


def test_pruned_zeros_land_where_llama_cpp_reads_them(smol):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    t = next(t for t in smol.reader.tensors if t.name == "blk.0.attn_q.weight")
    stored = np.asarray(t.data, dtype=np.float32)
    pruned = smol.model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    zeros = pruned == 0  # the mask, plus the few weights Q4_1 had already rounded to 0
    assert stored.shape == pruned.shape and zeros[smol.mask].all()
    assert (stored == 0).sum() == zeros.sum()
    # GGUF holds q rows in llama.cpp's rotary order: not the transformers layout ...
    assert not np.array_equal(stored == 0, zeros)
    # ... and transformers' own load-time inverse gives back exactly the pruned weights, zeros in place.
    config = {
        "num_attention_heads": smol.model.config.num_attention_heads,
        "num_key_value_heads": smol.model.config.num_key_value_heads,
    }
    back = LlamaTensorProcessor(config=config).process(stored, "blk.0.attn_q.weight").weights
    assert (back[smol.mask] == 0).all()
    np.testing.assert_array_equal(back, pruned)


@pytest.fixture(scope="module")
def quantized(smol, tmp_path_factory):
    """Every gguf-* method applied to a small cut of the SmolLM2 export: its first 4 layers, 512 rows of the
    embedding, no tokenizer (the quantizer reads none). Same row widths (576, 1536), a tenth of the bytes.
    Returns the cut's path and name -> (path, notes, reader)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    d = tmp_path_factory.mktemp("quant")
    small = d / "smol-cut-f32.gguf"
    w = GGUFWriter(str(small), arch="llama")
    for key, field in smol.reader.fields.items():
        if key.startswith(("GGUF.", "tokenizer.")) or key == "general.architecture":
            continue
        value = {"llama.block_count": KEEP_LAYERS, "llama.vocab_size": 512}.get(key, field.contents())
        w.add_key_value(
            key, value, field.types[0], sub_type=field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        )
    for t in smol.reader.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= KEEP_LAYERS:
            continue
        data = np.asarray(t.data)
        w.add_tensor(t.name, np.ascontiguousarray(data[:512] if t.name == "token_embd.weight" else data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = {}
    for name in GGUF_METHODS:
        notes: dict = {}
        dst = d / f"{name}.gguf"
        make_method(name).quantize_file(small, dst, threads=2, notes=notes)
        out[name] = (dst, notes, GGUFReader(str(dst)))
    return SimpleNamespace(src=small, files=out)


def test_every_gguf_method_is_registered_with_its_llama_cpp_type():
    assert sorted(GGUF_METHODS) == sorted(NATIVE)
    for name in GGUF_METHODS:
        cls = registry()[name]
        assert cls.library == "llama-cpp-python" and cls.kind == "quantize" and cls.deterministic
        assert cls.llama_type == name.removeprefix("gguf-").upper()
        assert make_method(name).kernel("cpu") == f"llama.cpp {cls.llama_type} (GGUF)"


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_quantized_file_has_llama_cpps_types(quantized, name):
    path, notes, reader = quantized.files[name]
    native, narrow = collections.Counter(), collections.Counter()
    for t in reader.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            (native if int(t.shape[0]) % 256 == 0 else narrow)[t.tensor_type.name] += 1
    allowed = NATIVE[name]
    assert set(native) <= set(allowed), native
    assert allowed[0] in native, native
    assert set(narrow) <= {FALLBACK.get(t, t) for t in allowed}, narrow
    # notes: what llama.cpp chose, counted from the file, and how many tensors it had to fall back
    assert notes["gguf.ftype"] == registry()[name].llama_type
    census = collections.Counter(t.tensor_type.name for t in reader.tensors)
    assert notes["gguf.tensor_types"] == ",".join(
        f"{k}:{v}" for k, v in sorted(census.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    # SmolLM2's 576-wide rows: every block weight but ffn_down (1536) falls back from a 256-block type.
    # (token_embd has its own rule, straight to Q8_0, except under Q4_0, where llama.cpp counts its
    # Q6_K -> Q8_0 as a fallback.)
    expected = {"gguf-f32": 0, "gguf-f16": 0, "gguf-q8_0": 0, "gguf-q4_0": 1}.get(name, sum(narrow.values()))
    assert notes["gguf.fallback_tensors"] == expected


def test_quantized_sizes_shrink_in_order(quantized):
    size = {name: path.stat().st_size for name, (path, _, _) in quantized.files.items()}
    assert size["gguf-f32"] == pytest.approx(quantized.src.stat().st_size, rel=1e-3)
    order = ["gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m", "gguf-q3_k_m", "gguf-q2_k"]
    sizes = [size[n] for n in order]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), dict(zip(order, sizes))
    assert size["gguf-q4_0"] < size["gguf-q8_0"] / 1.5 and size["gguf-iq4_xs"] < size["gguf-q8_0"] / 1.5


def test_q4_k_m_of_the_whole_model_runs_in_llama_cpp(smol, tmp_path):
    """The full 30-layer export through gguf-q4_k_m: K-quant blocks where rows allow, and llama.cpp runs it."""
    import llama_cpp
    import torch

    notes: dict = {}
    path = tmp_path / "smol-q4_k_m.gguf"
    make_method("gguf-q4_k_m").quantize_file(smol.path, path, threads=2, notes=notes)
    types = dict(item.split(":") for item in notes["gguf.tensor_types"].split(","))
    assert int(types["Q4_K"]) > 0 and int(types["Q6_K"]) > 0 and notes["gguf.fallback_tensors"] == 6 * 30
    assert path.stat().st_size < smol.path.stat().st_size / 4
    ids = smol.tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = smol.model(ids).logits[0].numpy()
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=64, n_threads=2, verbose=False)
    try:
        llm.eval(ids[0].tolist())
        got = np.asarray(llm.scores[: ids.shape[1]], dtype=np.float32)
    finally:
        llm.close()
    assert np.isfinite(got).all()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.6


# -- bad input: one line each -----------------------------------------------------------------------


def test_unknown_gguf_type_names_the_known_ones():
    msg = validate_variant("gguf-q9_9", {})
    assert msg is not None and "\n" not in msg and msg.startswith("unknown method 'gguf-q9_9'; use one of: ")
    assert all(name in msg for name in GGUF_METHODS)


def test_gguf_step_order_is_validated():
    assert validate_steps([("gguf-q4_k_m", {}), ("magnitude-prune", {})]) == (
        "method 'gguf-q4_k_m' writes a GGUF file, so it must be the last step"
    )
    assert validate_steps([("gptq", {}), ("gguf-q4_k_m", {})]) == (
        "step 1 (gptq) quantizes the weights, so step 2 (gguf-q4_k_m) would get no dense weights; "
        "put pruning steps first and one quantizer last"
    )
    assert validate_steps([("magnitude-prune", {}), ("gguf-q4_k_m", {})]) is None
    assert (
        validate_variant("gguf-q4_k_m", {"bits": 4}) == "method 'gguf-q4_k_m' has no param `bits`; its params are: none"
    )


def test_gguf_method_is_never_applied_to_a_torch_model():
    with pytest.raises(MethodError, match="quantize_file, never apply"):
        make_method("gguf-q8_0").apply(object(), object())


def test_quantizer_failure_is_one_line(tmp_path):
    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(MethodError) as err:
        make_method("gguf-q4_0").quantize_file(bad, tmp_path / "out.gguf", threads=1, notes={})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(
        "method 'gguf-q4_0': llama.cpp could not quantize not.gguf to Q4_0 (llama_model_quantize returned 1: "
    )
    assert "failed to quantize" in msg  # llama.cpp's own reason
    assert not (tmp_path / "out.gguf").exists() and list(tmp_path.iterdir()) == [bad]


def test_unmapped_source_architecture_is_one_line(smol, tmp_path):
    from gguf import GGUFWriter

    from pipeline.variants.gguf_export import export_gguf

    src = tmp_path / "mamba.gguf"
    w = GGUFWriter(str(src), arch="mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError) as err:
        export_gguf(
            smol.model, smol.tokenizer, tmp_path / "out.gguf", source_gguf=src, model_name="m", workdir=tmp_path
        )
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "models `m`: cannot export a 'mamba' GGUF source to GGUF (mapped architectures: gemma2, gemma3, llama, qwen2, qwen3)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mamba.gguf"]  # nothing half-written


def test_safetensors_model_exports_through_llama_cpps_converter(tiny_model_dir, tmp_path):
    from pipeline.models import load_model, resolve_model
    from pipeline.variants.gguf_export import export_gguf

    spec = ModelSpec(name="tiny", source=str(tiny_model_dir))
    resolved = resolve_model(spec)
    assert resolved.gguf_path is None
    lm = load_model(resolved, spec, device="cpu")
    path = export_gguf(
        lm.model, lm.tokenizer, tmp_path / "tiny.gguf", source_gguf=None, model_name="tiny", workdir=tmp_path / "work"
    )
    rel, top1 = _logit_gap(lm.model, lm.tokenizer, path)
    assert top1 == 1.0 and rel < 1e-3, rel
