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
        (t.name, tuple(int(d) for d in t.shape), t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in theirs.tensors
    ]


def test_not_a_gguf_and_truncated_files_are_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(GGUFHeaderError, match="not a GGUF file"):
        read_gguf_header(bad)
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little"))
    with pytest.raises(GGUFHeaderError, match="ends early"):
        read_gguf_header(bad)
