"""Choosing the engine per recipe and per variant: what is planned on which runtime, what a recipe may not
ask of an engine, and verdicts that only compare runs measured on the same engine."""

from __future__ import annotations

import pytest

from pipeline import metrics as M
from pipeline.config.recipe import RecipeError
from pipeline.config.recipe import parse_recipe as parse_schema
from pipeline.records import VariantRecord
from pipeline.runtime import check_runtime_names
from pipeline.variants.plan import check_recipe, plan
from pipeline.verdict.analysis import base_for
from pipeline.verdict.frontier import frontier_verdicts, speed_axis


def parse_recipe(doc, path="<recipe>"):
    """Schema, methods, then the runtimes and what each variant's artifact format can build."""
    return check_runtime_names(check_recipe(parse_schema(doc, path), path), str(path))


def _doc(**over):
    doc = {
        "name": "r",
        "models": [
            {"name": "big", "source": "/m/big", "role": "candidate"},
            {"name": "small", "source": "/m/small", "role": "reference"},
        ],
        "variants": [
            {"name": "none", "method": "none"},
            {"name": "q4", "method": "gguf-q4_k_m", "runtime": "llama.cpp"},
        ],
    }
    doc.update(over)
    return doc


def test_every_runtime_gets_references_and_a_base():
    items = plan(parse_recipe(_doc()))
    got = [(i.label, i.runtime) for i in items]
    assert got == [
        ("big/none", "transformers"),
        ("big/q4", "llama.cpp"),
        ("big/none@llama.cpp", "llama.cpp"),  # like-for-like base on the variant's engine
        ("small/none", "transformers"),
        ("small/none@llama.cpp", "llama.cpp"),
    ]


def test_recipe_runtime_is_the_default_and_a_listed_base_is_not_doubled():
    doc = _doc(
        runtime="llama.cpp", variants=[{"name": "none", "method": "none"}, {"name": "q8", "method": "gguf-q8_0"}]
    )
    items = plan(parse_recipe(doc))
    assert [(i.label, i.runtime) for i in items] == [
        ("big/none", "llama.cpp"),
        ("big/q8", "llama.cpp"),
        ("small/none", "llama.cpp"),
    ]


def test_pruning_then_gguf_quantizer_is_allowed_on_llama_cpp():
    doc = _doc(
        runtime="llama.cpp",
        variants=[
            {
                "name": "p",
                "steps": [{"method": "magnitude-prune", "params": {"amount": 0.5}}, {"method": "gguf-q4_k_m"}],
            }
        ],
    )
    assert [(i.label, i.runtime) for i in plan(parse_recipe(doc))] == [
        ("big/p", "llama.cpp"),
        ("small/none", "llama.cpp"),
    ]


@pytest.mark.parametrize(
    ("variants", "runtime", "needle"),
    [
        ([{"name": "q", "method": "gguf-q4_k_m"}], "transformers", "set `runtime: llama.cpp`"),
        ([{"name": "b", "method": "bnb-nf4"}], "llama.cpp", "quantizes inside transformers"),
        (
            [{"name": "x", "steps": [{"method": "gguf-q8_0"}, {"method": "magnitude-prune"}]}],
            "llama.cpp",
            "must be the last step",
        ),
        (
            [{"name": "x", "steps": [{"method": "int8-weight-only"}, {"method": "gguf-q8_0"}]}],
            "llama.cpp",
            "would get no dense weights",
        ),
        ([{"name": "q", "method": "gguf-q9_9"}], "llama.cpp", "unknown method 'gguf-q9_9'"),
    ],
)
def test_what_an_engine_cannot_take_fails_at_validate(variants, runtime, needle):
    with pytest.raises(RecipeError) as err:
        parse_recipe(_doc(variants=variants, runtime=runtime), "r.yaml")
    msg = str(err.value)
    assert needle in msg and msg.startswith("r.yaml: field `variants[0]") and "\n" not in msg


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"runtime": "vllm"}, "runtime"),
        ({"variants": [{"name": "none", "method": "none", "runtime": "vllm"}]}, "variants[0].runtime"),
    ],
)
def test_unknown_runtime_names_the_file_field_and_registered_runtimes(over, field):
    with pytest.raises(RecipeError) as err:
        parse_recipe(_doc(**over), "r.yaml")
    msg = str(err.value)
    assert (
        msg.startswith(f"r.yaml: field `{field}` (got 'vllm'): unknown runtime 'vllm'; use one of: ")
        and "\n" not in msg
    )
    assert all(name in msg for name in ("llama.cpp", "openai", "transformers"))


def test_each_runtime_declares_the_artifact_format_it_takes():
    from pipeline.config.serve import ServeSpec
    from pipeline.runtime import RUNTIMES
    from pipeline.variants.built import BUILDERS

    assert {name: RUNTIMES.get(name).artifact_format for name in ("transformers", "llama.cpp")} == {
        "transformers": "torch",
        "llama.cpp": "gguf",
    }
    # a server takes what its `serve.artifact` says, and each such format has a builder
    for artifact in ("gguf", "checkpoint", "none"):
        fmt = RUNTIMES.get("openai")(ServeSpec(artifact=artifact)).artifact_format
        assert fmt == artifact and BUILDERS.get(fmt).format == fmt


def _rec(label, acc, tok_s, runtime, role="candidate", method="x"):
    model, _, variant = label.partition("/")
    return VariantRecord(
        run_id=f"id-{label}",
        model=model,
        variant=variant,
        role=role,
        status="FINISHED",
        metrics={M.MMLU_ACC: acc, M.DECODE_TOK_S: tok_s},
        tags={"method": method, M.TAG_RUNTIME: runtime},
    )


def test_verdicts_compare_like_with_like():
    # The llama.cpp reference is faster and more accurate than the transformers variant, but they ran on
    # different engines: only the llama.cpp variant may be dominated by it.
    tf_q = _rec("big/int8", 0.50, 20, "transformers")
    tf_ref = _rec("small/none", 0.40, 25, "transformers", role="reference", method="none")
    cpp_q = _rec("big/q4", 0.48, 60, "llama.cpp")
    cpp_ref = _rec("small/none@llama.cpp", 0.55, 90, "llama.cpp", role="reference", method="none")
    v = frontier_verdicts([tf_q, tf_ref, cpp_q, cpp_ref], speed_axis(1))
    assert v[tf_q.run_id].status == "frontier"
    assert v[cpp_q.run_id].status == "dominated" and v[cpp_q.run_id].dominated_by == ("small/none@llama.cpp",)


def test_base_is_taken_from_the_same_engine():
    tf_base = _rec("big/none", 0.5, 20, "transformers", method="none")
    cpp_base = _rec("big/none@llama.cpp", 0.49, 70, "llama.cpp", method="none")
    cpp_q = _rec("big/q4", 0.48, 90, "llama.cpp")
    assert base_for(cpp_q, [tf_base, cpp_base, cpp_q]) is cpp_base
    assert base_for(cpp_q, [tf_base, cpp_q]) is None  # never the other engine's


def test_runs_without_a_runtime_tag_count_as_transformers():
    r = VariantRecord(run_id="i", model="m", variant="v", role="candidate", status="FINISHED")
    assert r.runtime == "transformers"
