"""Bad-input catalogue: every case fails before any model loads, with exit 2 and one line naming the fix."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.recipe import Recipe, RecipeError
from pipeline.config.recipe import parse_recipe as parse_schema
from pipeline.runtime import check_runtime_names
from pipeline.variants.plan import check_recipe


def checked(doc, path="<recipe>"):
    """A recipe as `shrinkgate validate` checks it before the host: schema, methods, runtimes and formats."""
    return check_runtime_names(check_recipe(parse_schema(doc, path), path), str(path))


def _base(model_dir: str, data_dir: str) -> dict:
    return {
        "name": "bad",
        "models": [{"name": "tiny", "source": model_dir, "role": "candidate"}],
        "variants": [{"name": "none", "method": "none"}],
        "eval": {"num_fewshot": 0, "subjects": ["anatomy"], "limit_per_subject": 1, "data_dir": data_dir},
        "speed": {"prompt_tokens": 8, "new_tokens": 2},
    }


def _mmlu_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("test.jsonl", "dev.jsonl", "validation.jsonl"):
        lines = (src / name).read_text(encoding="utf-8").splitlines()
        keep = [ln for ln in lines if '"subject": "anatomy"' in ln]
        (dst / name).write_text("\n".join(keep) + "\n", encoding="utf-8")
    return dst


def _rewrite_first_row(path: Path, change) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    change(row)
    lines[0] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _unsupported_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# (case id, mutation of (doc, tmp dir, paths), extra CLI args, expected message fragment)
CASES = [
    ("unknown-top-key", lambda d, t: d.update(colour="red"), "field `colour` (got 'red'): remove it (unknown key"),
    (
        "unknown-model-key",
        lambda d, t: d["models"][0].update(size="big"),
        "field `models[0].size` (got 'big'): remove it",
    ),
    ("unknown-eval-key", lambda d, t: d["eval"].update(shots=5), "field `eval.shots` (got 5): remove it"),
    ("unknown-speed-key", lambda d, t: d["speed"].update(tokens=5), "field `speed.tokens` (got 5): remove it"),
    (
        "wrong-type-batch",
        lambda d, t: d["eval"].update(batch_size="eight"),
        "field `eval.batch_size` (got 'eight'): Input should be a valid integer",
    ),
    (
        "wrong-type-models",
        lambda d, t: d.update(models="tiny"),
        "field `models` (got 'tiny'): Input should be a valid list",
    ),
    ("missing-name", lambda d, t: d.pop("name"), "field `name`: add it"),
    ("missing-source", lambda d, t: d["models"][0].pop("source"), "field `models[0].source`: add it"),
    (
        "bad-role",
        lambda d, t: d["models"][0].update(role="teacher"),
        "field `models[0].role` (got 'teacher'): use one of: 'candidate' or 'reference'",
    ),
    (
        "bad-dtype",
        lambda d, t: d["models"][0].update(dtype="int3"),
        "field `models[0].dtype` (got 'int3'): use one of:",
    ),
    (
        "bad-fewshot",
        lambda d, t: d["eval"].update(num_fewshot=3),
        "field `eval.num_fewshot` (got 3): use one of: 0 or 5",
    ),
    (
        "limit-zero",
        lambda d, t: d["eval"].update(limit_per_subject=0),
        "field `eval.limit_per_subject` (got 0): must be >= 1",
    ),
    (
        "batch-sizes-empty",
        lambda d, t: d["speed"].update(batch_sizes=[]),
        "field `speed.batch_sizes`: list at least one batch size",
    ),
    (
        "batch-sizes-negative",
        lambda d, t: d["speed"].update(batch_sizes=[1, -4]),
        "field `speed.batch_sizes`: list at least one batch size, each >= 1",
    ),
    (
        "new-tokens-one",
        lambda d, t: d["speed"].update(new_tokens=1),
        "field `speed.new_tokens` (got 1): Input should be greater than or equal to 2",
    ),
    (
        "duplicate-variants",
        lambda d, t: d["variants"].append({"name": "none", "method": "none"}),
        "variants names must be unique; repeated: none",
    ),
    (
        "unknown-method",
        lambda d, t: d["variants"].append({"name": "x", "method": "zip-it"}),
        "field `variants[1]` (x): unknown method 'zip-it'; use one of:",
    ),
    (
        "unknown-param",
        lambda d, t: d["variants"].append({"name": "x", "method": "magnitude-prune", "params": {"amout": 0.3}}),
        "method 'magnitude-prune' has no param `amout`; its params are: amount, scope",
    ),
    (
        "param-out-of-range",
        lambda d, t: d["variants"].append({"name": "x", "method": "magnitude-prune", "params": {"amount": 1.5}}),
        "method 'magnitude-prune' param `amount`: Input should be less than 1",
    ),
    (
        "param-bad-choice",
        lambda d, t: d["variants"].append({"name": "x", "method": "magnitude-prune", "params": {"scope": "row"}}),
        "method 'magnitude-prune' param `scope`: Input should be 'per-layer' or 'global'",
    ),
    (
        "method-and-steps",
        lambda d, t: d["variants"].append({"name": "x", "method": "none", "steps": [{"method": "none"}]}),
        "give either `method`",
    ),
    ("empty-steps", lambda d, t: d["variants"].append({"name": "x", "steps": []}), "`steps` is empty"),
    (
        "quantize-then-prune",
        lambda d, t: d["variants"].append(
            {"name": "x", "steps": [{"method": "int8-weight-only"}, {"method": "magnitude-prune"}]}
        ),
        "field `variants[1].steps` (x): step 1 (int8-weight-only) quantizes the weights, so step 2 (magnitude-prune) would get no dense weights",
    ),
    (
        "group-size-vs-model",
        lambda d, t: d["variants"].append({"name": "x", "method": "gptq", "params": {"group_size": 128}}),
        "does not divide model.layers.0.self_attn.q_proj's input width 64; use a group_size that divides it",
    ),
    (
        "remote-code-unpinned",
        lambda d, t: d["models"][0].update(trust_remote_code=True),
        "trust_remote_code: true needs a pinned `revision`",
    ),
    ("model-path-missing", lambda d, t: d["models"][0].update(source=str(t / "nope")), "does not exist; fix `source`"),
    ("gguf-missing", lambda d, t: d["models"][0].update(source=str(t / "m.gguf")), "GGUF file"),
    (
        "source-nonsense",
        lambda d, t: d["models"][0].update(source="not a source"),
        "is neither a local path, a .gguf, a hub id",
    ),
    (
        "hub-id-offline",
        lambda d, t: d["models"][0].update(source="no-such-org/no-such-model"),
        "is not in the local Hugging Face cache and the hub is unreachable",
    ),
    (
        "dir-without-config",
        lambda d, t: (t / "empty-model").mkdir() or d["models"][0].update(source=str(t / "empty-model")),
        "has no config.json",
    ),
    ("pickle-refused", None, "holds only pickle checkpoints (.bin)"),
    ("mmlu-dir-missing", lambda d, t: d["eval"].update(data_dir=str(t / "no-mmlu")), "no-mmlu"),
    ("mmlu-split-missing", None, "dev.jsonl"),
    ("mmlu-wrong-columns", None, "column"),
    ("mmlu-answer-out-of-range", None, "answer"),
    ("mmlu-empty-file", None, "empty"),
    ("unknown-subject", lambda d, t: d["eval"].update(subjects=["abstract algebra"]), "abstract_algebra"),
    ("cuda-unavailable", lambda d, t: d["eval"].update(device="cuda"), "CUDA is not available here"),
]


@pytest.fixture()
def env(tmp_path, tiny_model_dir, mmlu_dir):
    data = _mmlu_copy(mmlu_dir, tmp_path / "mmlu")
    return tmp_path, _base(str(tiny_model_dir), str(data)), data


def _special(case: str, doc: dict, tmp: Path, data: Path, tiny_model_dir: Path) -> None:
    if case == "pickle-refused":
        pickled = tmp / "pickled"
        pickled.mkdir()
        shutil.copy(tiny_model_dir / "config.json", pickled / "config.json")
        (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
        doc["models"][0]["source"] = str(pickled)
    elif case == "mmlu-split-missing":
        (data / "dev.jsonl").unlink()
    elif case == "mmlu-wrong-columns":
        _rewrite_first_row(data / "test.jsonl", lambda r: r.pop("choices"))
    elif case == "mmlu-answer-out-of-range":
        _rewrite_first_row(data / "test.jsonl", lambda r: r.update(answer=7))
    elif case == "mmlu-empty-file":
        (data / "test.jsonl").write_text("")


@pytest.mark.parametrize("case, mutate, expected", CASES, ids=[c[0] for c in CASES])
def test_validate_rejects_with_one_line(env, tiny_model_dir, monkeypatch, case, mutate, expected):
    tmp, doc, data = env
    if case == "cuda-unavailable":  # the same on a GPU host: this host "has" no CUDA
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    doc = copy.deepcopy(doc)
    if mutate is None:
        _special(case, doc, tmp, data, tiny_model_dir)
    else:
        mutate(doc, tmp)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert expected in re.sub(r"\s+", " ", message), message


def test_catalogue_is_large_enough():
    assert len(CASES) + 4 >= 30  # + the CLI cases below


def test_limit_flag_zero_is_rejected(env):
    tmp, doc, _ = env
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["run", str(path), "--limit-per-subject", "0"])
    assert result.exit_code == 2 and "--limit-per-subject: must be >= 1" in result.output


def test_only_unknown_variant_is_rejected(env):
    tmp, doc, _ = env
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["run", str(path), "--only", "nope"])
    assert result.exit_code == 2 and "--only: unknown variant(s) nope; the recipe has: none" in result.output


def test_unreachable_tracking_server_fails_before_any_model_loads(env, monkeypatch):
    import pipeline.models.loader as loader

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the tracking check")

    monkeypatch.setattr(loader, "load_model", boom)
    tmp, doc, _ = env
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["run", str(path), "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "tracking.uri http://127.0.0.1:9: server unreachable" in result.output


def test_unsupported_gguf_architecture(tmp_path):
    from pipeline.config.recipe import ModelSpec
    from pipeline.models import ModelError, resolve_model

    gguf = _unsupported_gguf(tmp_path / "odd.gguf")
    with pytest.raises(ModelError) as info:
        resolve_model(ModelSpec(name="odd", source=str(gguf)))
    msg = str(info.value)
    assert (
        "(architecture 'rwkv6') cannot be dequantized by transformers" in msg
        and "not supported" in msg
        and "\n" not in msg
    )


def test_missing_recipe_file():
    result = CliRunner().invoke(app, ["validate", "/no/such/recipe.yaml"])
    assert result.exit_code == 2 and "no such recipe file" in result.output


def test_recipe_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: demo\nmodels:\n  - {name: café, source: x}\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["validate", str(path)])
    message = result.output.strip()
    assert result.exit_code == 2 and message.startswith("error:") and "\n" not in message, result.output
    assert f"{path}: line 3, column 15: byte 0xe9 is not UTF-8 -> save the recipe as UTF-8" in re.sub(
        r"\s+", " ", message
    )


DUPLICATES = [  # (document, line of the second key, key, line of the first)
    ("name: a\nmodels: []\nname: b\n", 3, "name", 1),
    ("name: a\nmodels:\n  - name: m\n    source: x\n    source: y\n", 5, "source", 4),
    ("name: a\neval:\n  sample: {questions: 100, seed: 1, seed: 2}\n", 3, "seed", 3),
]


@pytest.mark.parametrize("text, line, key, first", DUPLICATES, ids=["top", "in-a-list", "flow-mapping"])
def test_duplicate_recipe_keys_are_refused_not_last_wins(tmp_path, text, line, key, first):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(path)])
    message = result.output.strip()
    assert result.exit_code == 2 and message.startswith("error:") and "\n" not in message, result.output
    expected = f"{path}: line {line}: key `{key}` is given twice (first on line {first}) -> keep one"
    assert expected in re.sub(r"\s+", " ", message), message


def test_duplicate_policy_keys_are_refused_and_yaml_merge_keys_still_work(tmp_path):
    from pipeline.config.loader import read_yaml
    from pipeline.config.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text("max_mmlu_drop_points: 1.0\nconfidence: 0.95\nmax_mmlu_drop_points: 5.0\n")
    with pytest.raises(RecipeError, match=r"line 3: key `max_mmlu_drop_points` is given twice \(first on line 1\)"):
        load_policy(path)
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")  # overriding a merged key is no duplicate
    assert read_yaml(path, "policy", "policies/default.yaml") == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}}


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
_docs = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "models",
                    "variants",
                    "eval",
                    "speed",
                    "tracking",
                    "source",
                    "role",
                    "method",
                    "params",
                    "steps",
                    "num_fewshot",
                    "batch_sizes",
                    "amount",
                    "limit_per_subject",
                    "subjects",
                    "x",
                ]
            ),
            inner,
            max_size=6,
        ),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_docs)
def test_random_documents_only_raise_recipe_errors(doc):
    try:
        recipe = checked(doc, "fuzz.yaml")
    except RecipeError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.yaml")
    else:
        assert isinstance(recipe, Recipe)


@settings(max_examples=100, deadline=None)
@given(
    model=st.fixed_dictionaries({"name": st.text(min_size=1, max_size=5), "source": st.text(min_size=1, max_size=5)}),
    extra=st.dictionaries(
        st.sampled_from(["role", "dtype", "revision", "trust_remote_code", "zzz"]), _scalars, max_size=3
    ),
)
def test_random_model_entries_only_raise_recipe_errors(model, extra):
    try:
        checked({"name": "n", "models": [{**model, **extra}]}, "fuzz.yaml")
    except RecipeError as exc:
        assert "\n" not in str(exc)
