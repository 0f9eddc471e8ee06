"""MMLU scoring (pipeline/data/mmlu.py + pipeline/data/tasks.py + evals/mmlu/ + pipeline/runtime/mmlu.py): fidelity to
lm-eval's built-in `mmlu` prompts, known answers, per-subject limits, data errors, and one HFLM smoke run
on the tiny Llama.

Reads the MMLU copy shipped in the package ($SHRINKGATE_MMLU_DIR overrides it); no hub access.
"""

from __future__ import annotations

import os

# Before lm-eval/datasets are imported: the hub must never be touched.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gzip
import importlib.util
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scripted_lm import ScriptedLM

import pipeline.data.mmlu as data_mmlu
from pipeline.config.recipe import EvalSpec
from pipeline.data.mmlu import CATEGORIES, GROUP, SHIPPED_DIR, SUBJECTS, TASK_PREFIX, MMLUDataError, resolve_data
from pipeline.data.tasks import EVALS_DIR, materialize_tasks
from pipeline.env import MMLU_DIR_ENV
from pipeline.runtime.mmlu import score_mmlu

# What the pipeline reads with eval.data_dir unset: the override, else the shipped copy (.jsonl.gz).
MMLU_DIR = Path(os.environ.get(MMLU_DIR_ENV) or SHIPPED_DIR)
BUILTIN_DIR = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks" / "mmlu" / "default"  # type: ignore[arg-type]

# Fidelity: every subject, its first test rows. Edge cases among them: college_mathematics (a dev row with
# special characters), nutrition (questions with leading/trailing whitespace in test and dev: the template
# strips them), professional_law (dev choices with stray whitespace: the template keeps them).
FIDELITY_SUBJECTS = SUBJECTS
FIDELITY_LIMIT = 2
CONST_SUBJECTS = ("abstract_algebra", "marketing", "world_religions")
CONST_LIMIT = 10


# ----------------------------------------------------------------------------------------- helpers


def _split_file(split: str) -> Path:
    plain = MMLU_DIR / f"{split}.jsonl"
    return plain if plain.is_file() else MMLU_DIR / f"{split}.jsonl.gz"


def _rows(split: str) -> dict[str, list[dict[str, Any]]]:
    """Rows of one split per subject, in file order (independent of the code under test)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    path = _split_file(split)
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out[row["subject"]].append(row)
    return out


def _render(row: dict[str, Any]) -> str:
    """lm-eval's MMLU doc_to_text, written out independently."""
    a, b, c, d = row["choices"]
    return f"{row['question'].strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"


def _scripted_lm(pick: Callable[[dict[str, Any]], int]) -> ScriptedLM:
    """An lm-eval LM giving the choice `pick(doc)` log-likelihood 0 and the others -5; records requests."""
    return ScriptedLM(lambda req: pick(req.doc))


def _builtin_task(subject: str) -> Any:
    """lm-eval's own `mmlu_<subject>` task from its installed YAML, reading the local JSONL.

    Only the data loading is changed: cais/mmlu's per-subject hub config becomes that subject's rows, read
    by this file (not by the code under test), handed over as lm-eval's `custom_dataset`.
    """
    from datasets import Dataset, DatasetDict
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    splits = {s: _rows_cached(s)[subject] for s in ("test", "dev")}
    cfg = load_yaml(BUILTIN_DIR / f"mmlu_{subject}.yaml", resolve_func=True)
    cfg.pop("tag", None)
    cfg.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs=None,
        custom_dataset=lambda **_: DatasetDict({s: Dataset.from_list(rows) for s, rows in splits.items()}),
    )
    return ConfigurableTask(config=cfg)


_ROWS: dict[str, dict[str, list[dict[str, Any]]]] = {}


def _rows_cached(split: str) -> dict[str, list[dict[str, Any]]]:
    if split not in _ROWS:
        _ROWS[split] = _rows(split)
    return _ROWS[split]


_RUNS: dict[tuple[str, int], Any] = {}


def _run(kind: str, num_fewshot: int) -> Any:
    """Cached runs (each costs a few seconds of lm-eval overhead): ours/builtin with an oracle, ours constant-A."""
    key = (kind, num_fewshot)
    if key in _RUNS:
        return _RUNS[key]
    if kind == "builtin":
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        lm = _scripted_lm(lambda doc: doc["answer"])
        simple_evaluate(
            model=lm,
            tasks=[_builtin_task(s) for s in FIDELITY_SUBJECTS],
            task_manager=TaskManager(include_defaults=False),
            num_fewshot=num_fewshot,
            limit=FIDELITY_LIMIT,
        )
        _RUNS[key] = (lm, None)
    else:
        oracle = kind == "oracle"
        lm = _scripted_lm((lambda doc: doc["answer"]) if oracle else (lambda doc: 0))
        spec = EvalSpec(
            subjects=list(FIDELITY_SUBJECTS if oracle else CONST_SUBJECTS),
            limit_per_subject=FIDELITY_LIMIT if oracle else CONST_LIMIT,
            num_fewshot=num_fewshot,  # type: ignore[arg-type]
        )  # eval.data_dir unset: the default source (the shipped copy unless overridden)
        _RUNS[key] = (lm, score_mmlu(lm, spec))
    return _RUNS[key]


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("_mmlu_generate", EVALS_DIR / "_generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------- configs vs lm-eval


def test_committed_configs_match_generator() -> None:
    rendered = _load_generator().render()
    on_disk = {p.name for p in EVALS_DIR.iterdir() if p.is_file() and p.name != "_generate.py"}
    assert on_disk == set(rendered), "evals/mmlu/ is out of date: run .venv/bin/python evals/mmlu/_generate.py"
    for name, text in rendered.items():
        assert (EVALS_DIR / name).read_text(encoding="utf-8") == text, f"{name} differs from _generate.py output"


def test_configs_mirror_lm_eval_builtin_mmlu() -> None:
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = yaml.safe_load((EVALS_DIR / "_default_template_yaml").read_text())
    theirs = yaml.safe_load((BUILTIN_DIR / "_default_template_yaml").read_text())
    assert (ours.pop("dataset_path"), ours.pop("dataset_name")) == ("cais/mmlu", "all")
    theirs.pop("dataset_path")
    assert ours == theirs  # same prompt, target, few-shot split and sampler, metric
    assert len(SUBJECTS) == 57
    for subject in SUBJECTS:
        mine = load_yaml(EVALS_DIR / f"{TASK_PREFIX}{subject}.yaml", resolve_func=False, recursive=False)
        builtin = load_yaml(BUILTIN_DIR / f"mmlu_{subject}.yaml", resolve_func=False, recursive=False)
        assert mine["description"] == builtin["description"]
        assert builtin["tag"] == f"mmlu_{CATEGORIES[subject]}_tasks"
        assert mine["tag"] == f"{TASK_PREFIX}{CATEGORIES[subject]}_tasks"
    for name in ("_mmlu.yaml", "_mmlu_stem.yaml"):  # same weight_by_size aggregation
        builtin_group = yaml.safe_load((BUILTIN_DIR / name).read_text())
        our_group = yaml.safe_load((EVALS_DIR / name.replace("_mmlu", f"_{GROUP}", 1)).read_text())
        assert our_group["aggregate_metric_list"] == [{"metric": "acc", "weight_by_size": True}]
        assert builtin_group["aggregate_metric_list"] == our_group["aggregate_metric_list"]


def _no_local_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither an override nor the shipped copy: the hub is the last source left."""
    monkeypatch.delenv(MMLU_DIR_ENV, raising=False)
    monkeypatch.setattr(data_mmlu, "SHIPPED_DIR", tmp_path / "not-installed")


def test_hub_materialization_indexes_all_subjects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from lm_eval.tasks import TaskManager

    _no_local_data(monkeypatch, tmp_path)
    data = resolve_data(EvalSpec())
    assert data.source == "hub" and data.subjects == SUBJECTS
    materialize_tasks(data, tmp_path)
    template = yaml.safe_load((tmp_path / "_default_template_yaml").read_text())
    assert (template["dataset_path"], template["dataset_name"]) == ("cais/mmlu", "all")
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert sorted(manager.all_subtasks) == sorted(TASK_PREFIX + s for s in SUBJECTS)
    assert set(manager.all_groups) == {GROUP} | {f"{TASK_PREFIX}{c}" for c in set(CATEGORIES.values())}


def test_local_materialization_keeps_only_selected_subjects(tmp_path: Path) -> None:
    import yaml

    data = resolve_data(EvalSpec(subjects=["nutrition", "abstract_algebra"], data_dir=str(MMLU_DIR)))
    assert data.subjects == ("abstract_algebra", "nutrition")  # canonical order
    assert data.test_rows == {"abstract_algebra": 100, "nutrition": 306}
    materialize_tasks(data, tmp_path)
    template = yaml.safe_load((tmp_path / "_default_template_yaml").read_text())
    assert template["dataset_path"] == "json" and "dataset_name" not in template
    assert template["dataset_kwargs"]["data_files"]["test"] == str(_split_file("test").resolve())
    group = yaml.safe_load((tmp_path / f"_{GROUP}.yaml").read_text())
    assert group["task"] == [f"{TASK_PREFIX}stem", f"{TASK_PREFIX}other"]
    assert sorted(p.name for p in tmp_path.glob(f"{TASK_PREFIX}*.yaml")) == [
        f"{TASK_PREFIX}abstract_algebra.yaml",
        f"{TASK_PREFIX}nutrition.yaml",
    ]


# ------------------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("num_fewshot", [0, 5])
def test_prompts_byte_identical_to_lm_eval_builtin(num_fewshot: int) -> None:
    ours, _ = _run("oracle", num_fewshot)
    builtin, _ = _run("builtin", num_fewshot)
    expected_keys = {(s, i) for s in FIDELITY_SUBJECTS for i in range(FIDELITY_LIMIT)}
    assert len(expected_keys) == 57 * FIDELITY_LIMIT
    assert set(ours.requests) == expected_keys == set(builtin.requests)
    for key in sorted(expected_keys):
        assert ours.requests[key] == builtin.requests[key], f"prompt differs for {key}"
        assert [cont for _, cont in ours.requests[key]] == [" A", " B", " C", " D"]

    # The edge cases really are exercised: stripped question, whitespace kept in few-shot choices.
    test_rows, dev_rows = _rows("test"), _rows("dev")
    raw = test_rows["nutrition"][0]["question"]
    context = ours.requests[("nutrition", 0)][0][0]
    assert raw != raw.strip() and context.endswith(_render(test_rows["nutrition"][0]))
    description = "The following are multiple choice questions (with answers) about professional law.\n\n"
    law_context = ours.requests[("professional_law", 0)][0][0]
    assert law_context.startswith(description)
    assert law_context.count("\nAnswer:") == num_fewshot + 1
    if num_fewshot:
        shot = dev_rows["professional_law"][1]
        assert shot["choices"] != [c.strip() for c in shot["choices"]]
        assert f"{_render(shot)} {'ABCD'[shot['answer']]}\n\n" in law_context


# --------------------------------------------------------------------------------- known answers


def test_oracle_scores_exactly_one() -> None:
    _, result = _run("oracle", 5)
    assert result.acc == 1.0
    assert result.per_subject == {s: 1.0 for s in FIDELITY_SUBJECTS}
    assert len(result.questions) == FIDELITY_LIMIT * len(FIDELITY_SUBJECTS)
    assert all(q.correct and q.predicted == q.answer for q in result.questions)
    assert result.acc_stderr == 0.0 and result.num_fewshot == 5


def test_constant_a_scores_share_of_answer_a() -> None:
    _, result = _run("const", 0)
    test_rows = _rows("test")
    scored = {s: test_rows[s][:CONST_LIMIT] for s in CONST_SUBJECTS}
    flags = {s: [r["answer"] == 0 for r in rows] for s, rows in scored.items()}
    n_total = sum(len(f) for f in flags.values())
    assert result.acc == pytest.approx(sum(map(sum, flags.values())) / n_total, abs=1e-12)
    assert result.per_subject == pytest.approx({s: sum(f) / len(f) for s, f in flags.items()}, abs=1e-12)
    assert 0.0 < result.acc < 1.0  # the check is not vacuous

    # Pooled stderr as lm-eval computes it: within-subject sum of squares over (N - k), divided by N.
    sum_sq = sum(sum((x - sum(f) / len(f)) ** 2 for x in f) for f in flags.values())
    pooled = math.sqrt(sum_sq / (n_total - len(flags)) / n_total)
    assert result.acc_stderr == pytest.approx(pooled, rel=1e-9)
    group = result.lm_eval_results["results"][GROUP]
    assert (result.acc, result.acc_stderr) == (group["acc,none"], group["acc_stderr,none"])

    for q in result.questions:
        row = scored[q.subject][q.index]
        assert (q.answer, q.predicted, q.correct) == (row["answer"], 0, row["answer"] == 0)


def test_limit_scores_first_n_rows_of_each_subject() -> None:
    lm, result = _run("const", 0)
    assert result.n_questions == CONST_LIMIT * len(CONST_SUBJECTS)
    assert result.limit_per_subject == CONST_LIMIT
    by_subject: dict[str, list[int]] = defaultdict(list)
    for q in result.questions:
        by_subject[q.subject].append(q.index)
    assert by_subject == {s: list(range(CONST_LIMIT)) for s in CONST_SUBJECTS}
    # The questions lm-eval was asked are the first N rows of each subject, in file order.
    test_rows = _rows("test")
    for (subject, index), reqs in lm.requests.items():
        assert len(reqs) == 4 and reqs[0][0].endswith(_render(test_rows[subject][index]))
    assert Counter(s for s, _ in lm.requests) == {s: CONST_LIMIT for s in CONST_SUBJECTS}
    n_shot = result.lm_eval_results["n-shot"]
    assert all(n_shot[TASK_PREFIX + s] == 0 for s in CONST_SUBJECTS)
    json.dumps(result.lm_eval_results)  # serialisable, samples dropped
    assert "samples" not in result.lm_eval_results


# ------------------------------------------------------------------------------------- data errors


def _row(subject: str = "abstract_algebra", **over: Any) -> dict[str, Any]:
    return {"subject": subject, "question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 1} | over


def _write(path: Path, rows: list[Any]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def good_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mmlu"
    d.mkdir()
    _write(d / "test.jsonl", [_row(), _row(answer=0)])
    _write(d / "dev.jsonl", [_row() for _ in range(5)])
    return d


ERROR_CASES: list[tuple[str, Callable[[Path], None], dict[str, Any], list[str]]] = [
    ("test_missing", lambda d: (d / "test.jsonl").unlink(), {}, ["test.jsonl", "split file missing", "add test.jsonl"]),
    ("dev_missing", lambda d: (d / "dev.jsonl").unlink(), {}, ["dev.jsonl", "split file missing"]),
    ("empty_file", lambda d: _write(d / "dev.jsonl", []), {}, ["dev.jsonl", "empty file"]),
    (
        "wrong_columns",
        lambda d: _write(
            d / "test.jsonl", [{"subject": "abstract_algebra", "question": "Q", "choices": ["a"] * 4, "label": 1}]
        ),
        {},
        ["test.jsonl: line 1", "missing column(s) answer", "subject, question, choices, answer"],
    ),
    (
        "three_choices",
        lambda d: _write(d / "test.jsonl", [_row(), _row(choices=["a", "b", "c"])]),
        {},
        ["test.jsonl: line 2", "`choices`", "4 strings"],
    ),
    (
        "answer_4",
        lambda d: _write(d / "test.jsonl", [_row(answer=4)]),
        {},
        ["test.jsonl: line 1", "`answer` is 4", "0-3"],
    ),
    (
        "answer_letter",
        lambda d: _write(d / "dev.jsonl", [_row(answer="B")] * 5),
        {},
        ["dev.jsonl: line 1", "`answer` is 'B'", "0-3"],
    ),
    (
        "bad_json",
        lambda d: _write(d / "test.jsonl", [_row(), "{not json"]),
        {},
        ["test.jsonl: line 2", "not valid JSON"],
    ),
    (
        "file_subject_spaces",
        lambda d: _write(d / "test.jsonl", [_row(subject="abstract algebra")]),
        {},
        ["test.jsonl: line 1", "unknown subject 'abstract algebra'", "did you mean 'abstract_algebra'"],
    ),
    (
        "spec_unknown_subject",
        lambda d: None,
        {"subjects": ["abstract_algebr"]},
        ["eval.subjects", "unknown subject 'abstract_algebr'", "did you mean 'abstract_algebra'"],
    ),
    ("subject_not_in_test", lambda d: None, {"subjects": ["anatomy"]}, ["test.jsonl", "no rows for subject 'anatomy'"]),
    (
        "too_few_dev_rows",
        lambda d: _write(d / "dev.jsonl", [_row()] * 2),
        {"num_fewshot": 5},
        ["dev.jsonl", "has 2 row(s), 5-shot needs 5", "num_fewshot: 0"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "spec_kw", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_data_errors(
    good_dir: Path, mutate: Callable[[Path], None], spec_kw: dict[str, Any], expected: list[str]
) -> None:
    resolve_data(EvalSpec(subjects=["abstract_algebra"], data_dir=str(good_dir)))  # the base case is valid
    mutate(good_dir)
    spec = EvalSpec(**({"subjects": ["abstract_algebra"], "data_dir": str(good_dir)} | spec_kw))
    with pytest.raises(MMLUDataError) as err:
        resolve_data(spec)
    msg = str(err.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, msg


def test_missing_dir_names_its_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(MMLUDataError, match=r"nope: MMLU data dir not found \(from eval\.data_dir\)"):
        resolve_data(EvalSpec(data_dir=str(missing)))
    monkeypatch.setenv(MMLU_DIR_ENV, str(missing))
    with pytest.raises(MMLUDataError, match=r"not found \(from \$SHRINKGATE_MMLU_DIR\).*unset it"):
        resolve_data(EvalSpec())


def test_data_dir_wins_over_env(good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MMLU_DIR_ENV, str(tmp_path / "nope"))
    data = resolve_data(EvalSpec(subjects=["abstract_algebra"], data_dir=str(good_dir)))
    assert (data.source, data.data_dir, data.test_rows) == ("local", good_dir.resolve(), {"abstract_algebra": 2})


def test_score_fails_fast_before_the_model_runs(good_dir: Path) -> None:
    lm = _scripted_lm(lambda doc: pytest.fail("the model must not be called"))  # type: ignore[arg-type,return-value]
    with pytest.raises(MMLUDataError):
        score_mmlu(lm, EvalSpec(subjects=["anatomy"], data_dir=str(good_dir)))


def test_unreachable_hub_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub

    # Offline whatever the caller's environment says (the hub must not be contacted): never a skip.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _no_local_data(monkeypatch, tmp_path)
    lm = _scripted_lm(lambda doc: pytest.fail("the model must not be called"))  # type: ignore[arg-type,return-value]
    with pytest.raises(MMLUDataError, match=r"hub dataset cais/mmlu: cannot be loaded .*set eval\.data_dir"):
        score_mmlu(lm, EvalSpec(subjects=["anatomy"], limit_per_subject=1, num_fewshot=0))


# ------------------------------------------------------------------------------------- HFLM smoke


def test_hflm_smoke_on_tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> None:
    from lm_eval.models.huggingface import HFLM
    from tiny_llama import build_tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", mmlu_dir=MMLU_DIR)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(path), batch_size=2)
    spec = EvalSpec(
        subjects=["abstract_algebra", "anatomy"], limit_per_subject=2, num_fewshot=0, data_dir=str(MMLU_DIR)
    )
    result = score_mmlu(lm, spec)
    assert result.n_questions == 4
    assert 0.0 <= result.acc <= 1.0
    assert set(result.per_subject) == {"abstract_algebra", "anatomy"}
    assert {(q.subject, q.index) for q in result.questions} == {(s, i) for s in spec.subjects for i in (0, 1)}  # type: ignore[union-attr]
    assert all(q.correct == (q.predicted == q.answer) for q in result.questions)
    assert result.acc == sum(q.correct for q in result.questions) / 4
    assert result.seconds > 0
    json.dumps(result.lm_eval_results)
