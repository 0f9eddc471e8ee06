"""MMLU accuracy of an in-memory model, scored by lm-eval with our copy of lm-eval's `mmlu` task.

The task configs live in `evals/mmlu/` (57 `shrinkgate_mmlu_<subject>` tasks, 4 category subgroups
and the `shrinkgate_mmlu` group; same prompt, few-shot and aggregation as lm-eval's built-in `mmlu`).
At run time they are copied to a temp dir with the data source resolved (a local JSONL dir or the
hub's cais/mmlu) and only the selected subjects, then `lm_eval.simple_evaluate` runs them on the
given `LM`. Scoring, aggregation and stderr are lm-eval's own; this module only reads them back.

`resolve_data` is cheap (no torch, no lm-eval import) so a recipe can be checked before any model loads.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from pipeline.config.recipe import EvalSpec
from pipeline.env import MMLU_DIR_ENV
from pipeline.results import AccuracyResult, QuestionOutcome

if TYPE_CHECKING:
    from lm_eval.api.model import LM

EVALS_DIR = Path(__file__).resolve().parent / "evals" / "mmlu"
GROUP = "shrinkgate_mmlu"
TASK_PREFIX = "shrinkgate_mmlu_"
HUB_DATASET = "cais/mmlu"
HUB_CONFIG = "all"
REQUIRED_SPLITS = ("test", "dev")  # the task reads test (scored) and dev (few-shot) only
OPTIONAL_SPLITS = ("validation",)
COLUMNS = ("subject", "question", "choices", "answer")

# Subject -> lm-eval's category (lm_eval/tasks/mmlu/_generate_configs.py), alphabetical like cais/mmlu.
CATEGORIES: dict[str, str] = {
    "abstract_algebra": "stem",
    "anatomy": "stem",
    "astronomy": "stem",
    "business_ethics": "other",
    "clinical_knowledge": "other",
    "college_biology": "stem",
    "college_chemistry": "stem",
    "college_computer_science": "stem",
    "college_mathematics": "stem",
    "college_medicine": "other",
    "college_physics": "stem",
    "computer_security": "stem",
    "conceptual_physics": "stem",
    "econometrics": "social_sciences",
    "electrical_engineering": "stem",
    "elementary_mathematics": "stem",
    "formal_logic": "humanities",
    "global_facts": "other",
    "high_school_biology": "stem",
    "high_school_chemistry": "stem",
    "high_school_computer_science": "stem",
    "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem",
    "high_school_psychology": "social_sciences",
    "high_school_statistics": "stem",
    "high_school_us_history": "humanities",
    "high_school_world_history": "humanities",
    "human_aging": "other",
    "human_sexuality": "social_sciences",
    "international_law": "humanities",
    "jurisprudence": "humanities",
    "logical_fallacies": "humanities",
    "machine_learning": "stem",
    "management": "other",
    "marketing": "other",
    "medical_genetics": "other",
    "miscellaneous": "other",
    "moral_disputes": "humanities",
    "moral_scenarios": "humanities",
    "nutrition": "other",
    "philosophy": "humanities",
    "prehistory": "humanities",
    "professional_accounting": "other",
    "professional_law": "humanities",
    "professional_medicine": "other",
    "professional_psychology": "social_sciences",
    "public_relations": "social_sciences",
    "security_studies": "social_sciences",
    "sociology": "social_sciences",
    "us_foreign_policy": "social_sciences",
    "virology": "other",
    "world_religions": "humanities",
}
SUBJECTS: tuple[str, ...] = tuple(CATEGORIES)


class MMLUDataError(ValueError):
    """MMLU data a user can fix; `str()` is one line: file or field, problem, fix."""


@dataclass(frozen=True)
class MMLUData:
    """Where the MMLU rows come from, checked; what `score_mmlu` will evaluate."""

    source: Literal["local", "hub"]
    subjects: tuple[str, ...]  # selected subjects, in SUBJECTS order
    data_dir: Path | None = None  # local only
    files: dict[str, Path] = field(default_factory=dict)  # split -> JSONL file (local only)
    test_rows: dict[str, int] = field(default_factory=dict)  # subject -> test rows (local only)

    @property
    def description(self) -> str:
        return f"local {self.data_dir}" if self.source == "local" else f"hub {HUB_DATASET} ({HUB_CONFIG})"


def _select_subjects(spec: EvalSpec) -> tuple[str, ...]:
    if spec.subjects == "all":
        return SUBJECTS
    if not spec.subjects:
        raise MMLUDataError("eval.subjects: empty list; list subject names (e.g. [abstract_algebra]) or use 'all'")
    for name in spec.subjects:
        if name not in CATEGORIES:
            close = difflib.get_close_matches(name, SUBJECTS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MMLUDataError(
                f"eval.subjects: unknown subject {name!r}{hint}; use cais/mmlu snake_case names, e.g. abstract_algebra"
            )
    chosen = set(spec.subjects)
    return tuple(s for s in SUBJECTS if s in chosen)  # canonical order, duplicates dropped


def _check_row(path: Path, lineno: int, line: str) -> str:
    """Validate one JSONL row; return its subject."""
    where = f"{path}: line {lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MMLUDataError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
    if not isinstance(row, dict):
        raise MMLUDataError(f"{where}: a row must be a JSON object with columns {', '.join(COLUMNS)}")
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise MMLUDataError(
            f"{where}: missing column(s) {', '.join(missing)} (has {', '.join(row) or 'none'}); "
            f"rows need the cais/mmlu columns {', '.join(COLUMNS)}"
        )
    choices, answer, subject = row["choices"], row["answer"], row["subject"]
    if not (isinstance(choices, list) and len(choices) == 4 and all(isinstance(c, str) for c in choices)):
        raise MMLUDataError(f"{where}: column `choices` must be a list of 4 strings (A-D); got {choices!r:.80}")
    if not isinstance(row["question"], str):
        raise MMLUDataError(f"{where}: column `question` must be a string")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer <= 3:
        raise MMLUDataError(f"{where}: column `answer` is {answer!r}, must be an int 0-3 (index of A-D in `choices`)")
    if subject not in CATEGORIES:
        close = difflib.get_close_matches(str(subject).replace(" ", "_"), SUBJECTS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MMLUDataError(f"{where}: unknown subject {subject!r}{hint}; use cais/mmlu snake_case subject names")
    return subject


def _scan_split(path: Path) -> Counter[str]:
    """Rows per subject of one split file, every row validated (~0.1 s for MMLU's 14k test rows)."""
    counts: Counter[str] = Counter()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                counts[_check_row(path, lineno, line)] += 1
    if not counts:
        raise MMLUDataError(f"{path}: empty file (no rows); write the split as JSONL with columns {', '.join(COLUMNS)}")
    return counts


def resolve_data(spec: EvalSpec) -> MMLUData:
    """Pick the data source (spec.data_dir, else $SHRINKGATE_MMLU_DIR, else hub) and check local files.

    Raises MMLUDataError on anything a user must fix. No model, torch or lm-eval is touched.
    """
    subjects = _select_subjects(spec)
    env_dir = os.environ.get(MMLU_DIR_ENV)
    raw_dir, origin = (spec.data_dir, "eval.data_dir") if spec.data_dir else (env_dir, f"${MMLU_DIR_ENV}")
    if not raw_dir:
        return MMLUData(source="hub", subjects=subjects)

    data_dir = Path(raw_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise MMLUDataError(
            f"{data_dir}: MMLU data dir not found (from {origin}); point {origin} at a folder holding "
            f"test.jsonl and dev.jsonl, or unset it to read the hub's {HUB_DATASET}"
        )
    files: dict[str, Path] = {}
    counts: dict[str, Counter[str]] = {}
    for split in REQUIRED_SPLITS + OPTIONAL_SPLITS:
        path = data_dir / f"{split}.jsonl"
        if not path.is_file():
            if split in OPTIONAL_SPLITS:
                continue
            raise MMLUDataError(
                f"{path}: split file missing; add {split}.jsonl (cais/mmlu `{split}` split, one JSON row per line) to {data_dir}"
            )
        files[split] = path
        counts[split] = _scan_split(path)

    for subject in subjects:
        if counts["test"][subject] == 0:
            raise MMLUDataError(
                f"{files['test']}: no rows for subject {subject!r}; add its test rows or drop it from eval.subjects"
            )
        if counts["dev"][subject] < spec.num_fewshot:
            raise MMLUDataError(
                f"{files['dev']}: subject {subject!r} has {counts['dev'][subject]} row(s), {spec.num_fewshot}-shot needs "
                f"{spec.num_fewshot}; add its dev rows or set eval.num_fewshot: 0"
            )
    return MMLUData(
        source="local",
        subjects=subjects,
        data_dir=data_dir,
        files=files,
        test_rows={s: counts["test"][s] for s in subjects},
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    # Only for our files without `!function` tags (template and groups).
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _write_yaml(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=10_000), encoding="utf-8")


def materialize_tasks(data: MMLUData, dest: Path, evals_dir: Path = EVALS_DIR) -> Path:
    """Copy the task configs for `data.subjects` into `dest` with the data source filled in; return `dest`.

    Only selected subjects are written so the category tags (and hence the groups) hold just them;
    empty category subgroups are dropped from the top group.
    """
    dest.mkdir(parents=True, exist_ok=True)
    template = _read_yaml(evals_dir / "_default_template_yaml")
    if data.source == "local":
        template.pop("dataset_name", None)
        template["dataset_path"] = "json"
        template["dataset_kwargs"] = {"data_files": {split: str(p) for split, p in data.files.items()}}
    _write_yaml(dest / "_default_template_yaml", template)
    (dest / "utils.py").write_text((evals_dir / "utils.py").read_text(encoding="utf-8"), encoding="utf-8")
    for subject in data.subjects:
        name = f"{TASK_PREFIX}{subject}.yaml"
        (dest / name).write_text((evals_dir / name).read_text(encoding="utf-8"), encoding="utf-8")

    used = {CATEGORIES[s] for s in data.subjects}
    group = _read_yaml(evals_dir / f"_{GROUP}.yaml")
    group["task"] = [sub for sub in group["task"] if sub.removeprefix(TASK_PREFIX) in used]
    _write_yaml(dest / f"_{GROUP}.yaml", group)
    for sub in group["task"]:
        (dest / f"_{sub}.yaml").write_text((evals_dir / f"_{sub}.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return dest


def _stderr(value: Any) -> float:
    # lm-eval reports "N/A" when a subject has a single scored question (sample stddev undefined).
    return float(value) if isinstance(value, (int, float)) else math.nan


def _json_safe(results: dict[str, Any]) -> dict[str, Any]:
    from lm_eval.utils import handle_non_serializable

    kept = {k: v for k, v in results.items() if k != "samples"}
    return json.loads(json.dumps(kept, default=handle_non_serializable))


def _outcomes(subject: str, samples: list[dict[str, Any]]) -> list[QuestionOutcome]:
    out = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        lls = [float(resp[0]) for resp in s["filtered_resps"]]  # one (loglikelihood, is_greedy) per choice
        predicted = max(range(len(lls)), key=lls.__getitem__)  # first max, like lm-eval's np.argmax
        out.append(
            QuestionOutcome(
                subject=subject,
                index=int(s["doc_id"]),
                answer=int(s["target"]),
                predicted=predicted,
                correct=bool(s["acc"]),
            )
        )
    return out


def score_mmlu(lm: LM, spec: EvalSpec) -> AccuracyResult:
    """Score MMLU on `lm` (any lm_eval LM, e.g. HFLM on an in-memory model) with lm-eval's own machinery.

    `acc`/`acc_stderr` are lm-eval's `shrinkgate_mmlu` group values (question-weighted mean, pooled
    stderr); `limit_per_subject=N` scores the first N test rows of every selected subject.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    data = resolve_data(spec)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shrinkgate_mmlu_") as tmp:
        # include_defaults=False: skips indexing lm-eval's ~10k built-in YAMLs (~8 s) and any name clash.
        manager = TaskManager(include_path=str(materialize_tasks(data, Path(tmp))), include_defaults=False)
        try:
            results = simple_evaluate(
                model=lm,
                tasks=[GROUP],
                task_manager=manager,
                num_fewshot=spec.num_fewshot,
                limit=spec.limit_per_subject,
                log_samples=True,
                random_seed=spec.seed,
                numpy_random_seed=spec.seed,
                torch_random_seed=spec.seed,
                fewshot_random_seed=spec.seed,
            )
        except ConnectionError as exc:
            if data.source != "hub":
                raise
            # datasets raises this when the hub is unreachable (e.g. HF_DATASETS_OFFLINE=1, nothing cached).
            raise MMLUDataError(
                f"hub dataset {HUB_DATASET}: cannot be loaded ({exc}); set eval.data_dir or ${MMLU_DIR_ENV} "
                "to a local MMLU JSONL dir, or allow hub access"
            ) from None
    seconds = time.perf_counter() - start
    if results is None:  # only non-zero ranks of a distributed run get None
        raise RuntimeError("lm-eval returned no results (not rank 0 of a distributed run)")

    group = results["results"][GROUP]
    questions = [q for s in data.subjects for q in _outcomes(s, results["samples"][TASK_PREFIX + s])]
    acc_stderr, stderr_source = _stderr(group.get("acc_stderr,none")), "lm-eval pooled (group)"
    if math.isnan(acc_stderr) and len(questions) > 1:
        # One question per subject leaves lm-eval's pooled stderr undefined; fall back to treating every
        # scored question as one sample (the binomial standard error of the mean).
        p = sum(q.correct for q in questions) / len(questions)
        acc_stderr = math.sqrt(p * (1 - p) / (len(questions) - 1))
        stderr_source = "sample stderr over all questions (lm-eval's pooled stderr is N/A with 1 question per subject)"
    per_subject = {s: float(results["results"][TASK_PREFIX + s]["acc,none"]) for s in data.subjects}
    safe_results = _json_safe(results)
    safe_results["shrinkgate"] = {"acc_stderr_source": stderr_source}
    return AccuracyResult(
        acc=float(group["acc,none"]),
        acc_stderr=acc_stderr,
        per_subject=per_subject,
        questions=tuple(questions),
        num_fewshot=spec.num_fewshot,
        limit_per_subject=spec.limit_per_subject,
        lm_eval_results=safe_results,
        seconds=seconds,
    )
