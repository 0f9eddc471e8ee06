"""The fast GGUF header reader agrees with gguf-py's GGUFReader on a published file, field for field."""

from __future__ import annotations

import pytest

from pipeline.gguf_header import ArrayInfo, GGUFHeaderError, read_gguf_header


def test_header_matches_gguf_py_on_bundled_smollm2(tmp_path):
    from gguf import GGUFReader

    from pipeline.models.bundled import BUNDLED, cache_root

    path = BUNDLED["smollm2-135m-instruct"].locate(cache_root())
    ours, theirs = read_gguf_header(path), GGUFReader(str(path))
    assert set(ours.fields) == {k for k in theirs.fields if not k.startswith("GGUF.")}
    skipped = 0
    for key, value in ours.fields.items():
        expected = theirs.fields[key].contents()
        if isinstance(value, ArrayInfo):
            assert value.count == len(expected), key
            skipped += 1
        elif isinstance(value, float):
            assert value == pytest.approx(expected), key
        else:
            assert value == expected, key
    assert skipped >= 2  # the vocabulary and the merges were skipped, not read
    assert [(t.name, t.shape, t.type_name, t.n_elements, t.n_bytes) for t in ours.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), t.tensor_type.name, int(t.n_elements), int(t.n_bytes))
        for t in theirs.tensors
    ]


def test_not_a_gguf_and_truncated_files_are_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(GGUFHeaderError, match="not a GGUF file"):
        read_gguf_header(bad)
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little"))
    with pytest.raises(GGUFHeaderError, match="ends early"):
        read_gguf_header(bad)


def test_loader_provenance_names_the_quant_as_the_census_does(tmp_path, monkeypatch):
    """One spelling of a GGUF's quant type: the provenance the loader logs and the census agree ("Q8_0", not
    "MOSTLY_Q8_0")."""
    import transformers

    from pipeline.config.recipe import ModelSpec
    from pipeline.models.bundled import BUNDLED, cache_root
    from pipeline.models.gguf_facts import tensor_census
    from pipeline.models.loader import resolve_model, sha256_file

    path = BUNDLED["smollm2-135m-instruct"].locate(cache_root())
    # A dense-cache entry made here, so resolving reads the header and skips transformers' dequantization.
    monkeypatch.setenv("SHRINKGATE_CACHE", str(tmp_path))
    dense = tmp_path / "dense" / f"{sha256_file(path)[:16]}-tf{transformers.__version__}"
    dense.mkdir(parents=True)
    (dense / "config.json").write_text("{}")
    resolved = resolve_model(ModelSpec(name="smollm2", source=str(path)))
    assert resolved.dense_dir == dense
    census = tensor_census(path).file_type
    assert resolved.provenance.gguf_quant_type == census and not census.startswith(("MOSTLY_", "ALL_")), census
