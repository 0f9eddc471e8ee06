"""The lm-eval task configs for MMLU, materialised for the selected subjects and data source.

The configs live in the top-level `evals/mmlu/` folder of the repository (57 `shrinkgate_mmlu_<subject>`
tasks, 4 category subgroups and the `shrinkgate_mmlu` group; same prompt, few-shot and aggregation as
lm-eval's built-in `mmlu`); a wheel installs that folder as `pipeline/evals/`. `materialize_tasks` copies the
selected subjects to a temp dir with the data source filled in (a local JSONL dir or the hub's cais/mmlu);
`pipeline.runtime.mmlu.score_mmlu` runs them with lm-eval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.data.mmlu import CATEGORIES, GROUP, TASK_PREFIX, MMLUData

_PACKAGE = Path(__file__).resolve().parents[1]
# A wheel installs `evals/` as package data (`pipeline/evals/`); a checkout (an editable install) reads the
# repository's own top-level `evals/`, beside `pipeline/`.
EVALS_ROOT = _PACKAGE / "evals" if (_PACKAGE / "evals").is_dir() else _PACKAGE.parent / "evals"
EVALS_DIR = EVALS_ROOT / "mmlu"


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
