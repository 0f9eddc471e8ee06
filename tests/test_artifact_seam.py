"""The artifact seam: a new runtime on an existing artifact format is one class plus one registration, and a real
sweep child builds that format for it, hands it the build, and records what it measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import metrics as M
from pipeline.config.recipe import EvalSpec, RecipeError, SpeedSpec, parse_recipe
from pipeline.results import AccuracyResult, SpeedResult
from pipeline.runtime import artifact_formats, check_runtime_names
from pipeline.runtime.base import RUNTIMES, InProcessRuntime, Session
from pipeline.runtime.mmlu import StopRule
from pipeline.variants.artifact import Artifact
from pipeline.variants.plan import check_recipe


# -- the whole of a new runtime on the torch format: this class and its registration -----------------------------
@RUNTIMES.register
class ToyRuntime(InProcessRuntime[Artifact]):
    """Scores MMLU with lm-eval's stock HFLM on the built model; times nothing (the recipe turns speed off)."""

    name = "toy-seam"
    artifact_format = "torch"

    def session(self, built: Artifact, model_dir: Path | None = None) -> Session[Artifact]:
        session = super().session(built, model_dir)
        session.tags["toy.given"] = f"{type(built).__name__} {'+'.join(built.methods)}"  # what the child handed it
        return session

    def score_mmlu(self, artifact: Artifact, spec: EvalSpec, stop: StopRule | None = None) -> AccuracyResult:
        from lm_eval.models.huggingface import HFLM

        from pipeline.runtime.mmlu import score_mmlu

        return score_mmlu(
            HFLM(pretrained=artifact.model, tokenizer=artifact.tokenizer, device=artifact.device), spec, stop
        )

    def decode(self, artifact: Artifact, spec: SpeedSpec) -> SpeedResult:
        raise NotImplementedError("the toy runtime times nothing")


def _doc(tmp: Path, model_dir: Path, runtime: str = "toy-seam") -> dict:
    return {
        "name": "seam",
        "runtime": runtime,
        "models": [{"name": "tiny", "source": str(model_dir), "role": "candidate"}],
        "variants": [{"name": "p", "method": "magnitude-prune", "params": {"amount": 0.5}}],
        "eval": {"num_fewshot": 0, "subjects": ["anatomy"], "limit_per_subject": 1, "device": "cpu"},
        "speed": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "seam"},
    }


def _checked(doc: dict) -> object:
    return check_runtime_names(check_recipe(parse_recipe(doc, "r.yaml"), "r.yaml"), "r.yaml")


def test_a_registered_runtime_validates_and_takes_the_format_it_declares(tmp_path):
    recipe = _checked(_doc(tmp_path, tmp_path))
    assert artifact_formats(recipe) == {"toy-seam": "torch"}
    # the torch format's rule holds for it as for transformers: a GGUF quantizer needs llama.cpp
    doc = _doc(tmp_path, tmp_path) | {"variants": [{"name": "q", "method": "gguf-q8_0"}]}
    with pytest.raises(
        RecipeError,
        match=r"^r\.yaml: field `variants\[0\]` \(q\): .*runtime 'toy-seam' cannot run; set `runtime: llama.cpp`",
    ):
        _checked(doc)


def test_a_process_child_builds_the_torch_format_for_the_new_runtime(tmp_path, tiny_model_dir):
    """A real sweep on the default executor: the child, a fresh interpreter, imports the module that registered
    the toy runtime (as it does a plugin's methods), builds the torch format and hands it to the toy."""
    from mlflow.tracking import MlflowClient

    from pipeline.sweep.driver import run_sweep

    recipe = _checked(_doc(tmp_path, tiny_model_dir))
    outcome = run_sweep(recipe, executor="process")
    [child] = outcome.children
    assert (child.item.variant.name, child.status, child.error) == ("p", "FINISHED", None)
    assert child.fidelity.sparsity == pytest.approx(0.5, abs=0.05)
    run = MlflowClient(tracking_uri=recipe.tracking.uri).get_run(child.run_id)
    # the child built the torch format (an in-memory model, pruned) and handed it to the new runtime
    assert run.data.tags["toy.given"] == "Artifact magnitude-prune"
    assert run.data.tags[M.TAG_RUNTIME] == "toy-seam"
    assert M.MMLU_ACC in run.data.metrics and M.WEIGHT_BYTES in run.data.metrics  # its score and the build's fidelity
