"""The whole llama.cpp path on the tiny Llama through `shrinkgate run`: safetensors -> llama.cpp's converter ->
f32 GGUF -> every llama.cpp quantizer (and prune -> quantize), MMLU on 2 subjects through our lm-eval LM over
llama.cpp, speed from the engine, fidelity from the tensor types; and the bad inputs that path can meet."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.cli import app
from pipeline.methods.llamacpp_methods import GGUF_TYPES

SUBJECTS = ["abstract_algebra", "anatomy"]


def _recipe(tmp: Path, model_dir: Path, variants: list[dict], *, batch_sizes=(1, 2)) -> Path:
    doc = {
        "name": "e2e-llamacpp",
        "runtime": "llama.cpp",
        "models": [{"name": "tiny", "source": str(model_dir), "role": "candidate"}],
        "variants": variants,
        "eval": {"num_fewshot": 0, "subjects": SUBJECTS, "limit_per_subject": 1, "batch_size": 4},
        "speed": {
            "prompt_tokens": 16,
            "new_tokens": 4,
            "batch_sizes": list(batch_sizes),
            "warmup": 0,
            "repeats": 1,
            "threads": 2,
        },
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "e2e-llamacpp"},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _children(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("e2e-llamacpp")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return [r for r in runs if r.data.tags.get(M.TAG_KIND) == "variant"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("llamacpp-e2e")
    variants = [{"name": "none", "method": "none"}]
    variants += [{"name": name, "method": name} for name in GGUF_TYPES]
    variants.append(
        {
            "name": "pruned-q4_k_m",
            "steps": [{"method": "magnitude-prune", "params": {"amount": 0.5}}, {"method": "gguf-q4_k_m"}],
        }
    )
    path = _recipe(tmp, tiny_model_dir, variants)
    result = CliRunner().invoke(app, ["run", str(path), "--executor", "inline"])
    return tmp, result, {c.data.tags[M.TAG_VARIANT]: c for c in _children(f"sqlite:///{tmp}/mlflow.db")}


def test_every_gguf_method_runs_end_to_end(sweep):
    from pipeline.bindings.llamacpp import llama_cpp_version as version

    _, result, runs = sweep
    llama_cpp_version = version()
    assert result.exit_code == 0, result.output
    assert set(runs) == {"none", "pruned-q4_k_m", *GGUF_TYPES}
    for name, run in runs.items():
        assert run.info.status == "FINISHED", (name, run.data.tags.get(M.TAG_STATUS_ERROR))
        tags, m = run.data.tags, run.data.metrics
        assert tags[M.TAG_RUNTIME] == "llama.cpp"
        assert "AVX" in tags[M.TAG_RUNTIME_CPU_FEATURES] or tags[M.TAG_RUNTIME_CPU_FEATURES] == "", tags[
            M.TAG_RUNTIME_CPU_FEATURES
        ]
        assert tags[M.TAG_KERNEL].startswith("llama.cpp "), tags[M.TAG_KERNEL]
        assert tags[M.TAG_DENSE_FALLBACK] == "false"
        assert tags["engine.system_info"].startswith("CPU :") and tags["version.llama_cpp_python"] == llama_cpp_version
        counts = {kind: int(n) for kind, _, n in (p.partition(":") for p in tags["gguf.tensor_types"].split(","))}
        assert sum(counts.values()) == 21, counts  # the tiny Llama's 21 tensors, each of one type
        assert set(counts) == {"F32"} if name in ("none", "gguf-f32") else len(counts) >= 2, (name, counts)
        assert m[M.MMLU_N_QUESTIONS] == 2 and 0.0 <= m[M.MMLU_ACC] <= 1.0
        assert m[M.DECODE_TOK_S] > 0 and m[M.batch_metric(M.DECODE_TOK_S, 2)] > 0
        assert m[M.TTFT_MS] > 0 and 0 < m[M.MBU] < 2
        assert m[M.WEIGHT_BYTES] > 0 and m[M.KL_VS_BASE] >= 0.0


def test_file_types_and_bits_follow_the_quantizer(sweep):
    _, _, runs = sweep
    file_type = {name: run.data.tags["gguf.file_type"] for name, run in runs.items()}
    assert file_type["none"] == "F32"
    for name, (ftype, _) in GGUF_TYPES.items():
        assert file_type[name] == ftype, (name, file_type[name])
    bits = {name: run.data.metrics[M.BITS_PER_WEIGHT] for name, run in runs.items()}
    assert bits["none"] == pytest.approx(32.0, abs=0.01)
    assert bits["gguf-f32"] == pytest.approx(32.0, abs=0.01) and bits["gguf-f16"] == pytest.approx(16.0, abs=0.01)
    # Fewer bits per weight as the type shrinks (the tiny model's rows force some fallbacks, so only an order).
    assert bits["gguf-f16"] > bits["gguf-q8_0"] > bits["gguf-q4_0"] > 4.0
    assert bits["gguf-q8_0"] > bits["gguf-q4_k_m"]
    ratio_q8 = runs["gguf-q8_0"].data.metrics[M.WEIGHT_BYTES] / runs["none"].data.metrics[M.WEIGHT_BYTES]
    assert ratio_q8 < 0.35  # 8.5 of 32 bits per weight, plus the few tensors kept f32


def test_fidelity_against_the_transformers_base(sweep):
    _, _, runs = sweep
    kl = {name: run.data.metrics[M.KL_VS_BASE] for name, run in runs.items()}
    top1 = {name: run.data.metrics[M.TOP1_AGREE_VS_BASE] for name, run in runs.items()}
    assert kl["none"] < 1e-4 and top1["none"] > 0.99  # the f32 export is the same function
    assert kl["gguf-q2_k"] > kl["gguf-q8_0"]
    pruned = runs["pruned-q4_k_m"].data.metrics
    assert pruned[M.SPARSITY] == pytest.approx(0.5, abs=0.01)
    assert pruned[M.KL_VS_BASE] > kl["gguf-q4_k_m"]


def test_unsupported_batch_size_is_refused_at_validate(tmp_path, tiny_model_dir):
    path = _recipe(tmp_path, tiny_model_dir, [{"name": "q4", "method": "gguf-q4_0"}], batch_sizes=(1, 512))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code != 0
    assert "512" in result.output and "llama.cpp" in result.output
    assert "Traceback" not in result.output


def test_unknown_quant_type_is_refused_at_validate(tmp_path, tiny_model_dir):
    path = _recipe(tmp_path, tiny_model_dir, [{"name": "q4", "method": "gguf-q4_z"}])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code != 0
    assert "gguf-q4_z" in result.output and "gguf-q4_k_m" in result.output  # names the known ones
    assert "Traceback" not in result.output


def _tiny_opt(model_dir: Path) -> Path:
    """An OPT checkpoint: transformers runs it, llama.cpp's converter registers no class for it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    config = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=2048,
        word_embed_proj_dim=16,
    )
    OPTForCausalLM(config).save_pretrained(model_dir)
    vocab = {f"t{i}": i for i in range(60)} | {"<unk>": 60, "<s>": 61, "</s>": 62, "<pad>": 63}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(model_dir)
    return model_dir


def test_architecture_llama_cpp_cannot_take_is_refused_at_validate(tmp_path):
    path = _recipe(tmp_path, _tiny_opt(tmp_path / "opt"), [{"name": "q4", "method": "gguf-q4_0"}])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code != 0
    assert "variants[0]" in result.output and "OPTForCausalLM" in result.output
    assert "Traceback" not in result.output


def test_reference_llama_cpp_cannot_take_is_refused_at_validate(tmp_path, tiny_model_dir):
    """A reference is measured as published on every engine a variant uses: an OPT reference next to a
    llama.cpp variant is named by its `models[i]` field."""
    path = _recipe(tmp_path, tiny_model_dir, [{"name": "q4", "method": "gguf-q4_0"}])
    doc = yaml.safe_load(path.read_text())
    doc["models"].append({"name": "opt-ref", "source": str(_tiny_opt(tmp_path / "opt")), "role": "reference"})
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code != 0
    assert (
        "models[1]" in result.output
        and "as published on llama.cpp" in result.output
        and "OPTForCausalLM" in result.output
    )
    assert "Traceback" not in result.output


def test_architecture_llama_cpp_cannot_take_is_a_failed_run(tmp_path):
    """`run` without `validate` first: the converter's refusal is a FAILED run with a one-line error naming the
    architecture, and the sweep still ends."""
    path = _recipe(tmp_path, _tiny_opt(tmp_path / "opt"), [{"name": "q4", "method": "gguf-q4_0"}])
    result = CliRunner().invoke(app, ["run", str(path), "--executor", "inline"])
    assert "Traceback" not in result.output
    (run,) = _children(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "FAILED"
    error = run.data.tags[M.TAG_STATUS_ERROR]
    assert "OPTForCausalLM" in error and "\n" not in error.strip()
