"""MMLU data: where the rows come from, checked (`resolve_data`).

Which questions a sample scores is `pipeline.data.sampling`, its estimators `pipeline.data.estimates`, and the
lm-eval task configs `pipeline.data.tasks`.

Data source, first that is set: the recipe's `eval.data_dir`, `$SHRINKGATE_MMLU_DIR`, the copy shipped in
this package (`mmlu_data/`: gzip'ed JSONL, checked once per process against its SHA256SUMS of the
uncompressed files), and only if that is missing the hub's cais/mmlu. A split may be `<split>.jsonl` or
`<split>.jsonl.gz`; readers here (and lm-eval's json loader) decompress transparently, and every hash is of
the uncompressed bytes, so provenance is the same whichever form was read.

Everything here is cheap (no torch, no lm-eval import) so a recipe can be checked before any model loads.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config.recipe import EvalSpec
from pipeline.env import MMLU_DIR_ENV, mmlu_dir_override

SHIPPED_DIR = Path(__file__).resolve().parent / "mmlu_data"  # test/dev/validation .jsonl.gz + SHA256SUMS
SUMS_FILE = "SHA256SUMS"  # sha256 of the uncompressed files, `sha256sum` format
SHIPPED_ORIGIN = "shipped"
GROUP = "shrinkgate_mmlu"
TASK_PREFIX = "shrinkgate_mmlu_"
HUB_DATASET = "cais/mmlu"
HUB_CONFIG = "all"
REQUIRED_SPLITS = ("test", "dev")  # the task reads test (scored) and dev (few-shot) only
OPTIONAL_SPLITS = ("validation",)
SPLITS = REQUIRED_SPLITS + OPTIONAL_SPLITS
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
    files: dict[str, Path] = field(default_factory=dict)  # split -> JSONL(.gz) file (local only)
    test_rows: dict[str, int] = field(default_factory=dict)  # subject -> test rows (local only)
    origin: str = "hub"  # eval.data_dir | $SHRINKGATE_MMLU_DIR | shipped | hub

    @property
    def description(self) -> str:
        if self.source == "hub":
            return f"hub {HUB_DATASET} ({HUB_CONFIG})"
        return f"{'shipped' if self.origin == SHIPPED_ORIGIN else 'local'} {self.data_dir}"


# -- files --------------------------------------------------------------------------------------------
def split_path(data_dir: str | Path, split: str) -> Path | None:
    """The file holding `split` in `data_dir`: `<split>.jsonl`, else `<split>.jsonl.gz`; None when neither."""
    for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
        path = Path(data_dir) / name
        if path.is_file():
            return path
    return None


def read_split(path: str | Path) -> bytes:
    """The uncompressed bytes of a split file (`.gz` is decompressed); what every hash is taken of."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a truncated file an EOFError
        raise MMLUDataError(
            f"{path}: not a complete gzip file ({exc}); write it with gzip, or give the plain .jsonl"
        ) from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_sums(data_dir: str | Path) -> dict[str, str]:
    """File name -> sha256 from a `sha256sum`-format SHA256SUMS."""
    out: dict[str, str] = {}
    for line in (Path(data_dir) / SUMS_FILE).read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


_VERIFIED: set[tuple[str, int, int]] = set()


def verify_shipped(data_dir: Path | None = None) -> None:
    """Check the shipped copy against its SHA256SUMS (uncompressed bytes); once per process per file state.

    Raises MMLUDataError naming the file when a sum is missing or differs (~0.1 s for all three splits).
    """
    data_dir = data_dir or SHIPPED_DIR
    try:
        sums = read_sums(data_dir)
    except (OSError, ValueError) as exc:
        raise MMLUDataError(
            f"{data_dir / SUMS_FILE}: unreadable ({exc}); reinstall shrinkgate, or set ${MMLU_DIR_ENV} to a MMLU JSONL dir"
        ) from None
    for split in SPLITS:
        name = f"{split}.jsonl"
        path = data_dir / f"{name}.gz"
        if not path.is_file():
            continue  # resolve_data reports a missing required split
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key in _VERIFIED:
            continue
        if name not in sums:
            raise MMLUDataError(f"{data_dir / SUMS_FILE}: no sum for {name}; reinstall shrinkgate")
        try:
            actual = sha256_hex(read_split(path))
        except MMLUDataError as exc:
            raise MMLUDataError(f"{exc}; the shipped MMLU copy is damaged: reinstall shrinkgate") from None
        if actual != sums[name]:
            raise MMLUDataError(
                f"{path}: sha256 of the uncompressed data is {actual}, {SUMS_FILE} says {sums[name]}; "
                f"the shipped MMLU copy is damaged: reinstall shrinkgate, or set ${MMLU_DIR_ENV} to a MMLU JSONL dir"
            )
        _VERIFIED.add(key)


def shipped_dir() -> Path | None:
    """The MMLU copy shipped in this package, verified against its sums; None when it is not installed."""
    if not all((SHIPPED_DIR / f"{split}.jsonl.gz").is_file() for split in REQUIRED_SPLITS):
        return None
    verify_shipped(SHIPPED_DIR)
    return SHIPPED_DIR


def locate_data_dir(explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """(dir, origin) of the MMLU data: `explicit` (eval.data_dir), `$SHRINKGATE_MMLU_DIR`, the shipped copy
    (verified), else (None, "hub"). The dir is not checked here beyond the shipped copy's sums."""
    if explicit:
        return Path(explicit).expanduser().resolve(), "eval.data_dir"
    env_dir = mmlu_dir_override()
    if env_dir:
        return Path(env_dir), f"${MMLU_DIR_ENV}"
    shipped = shipped_dir()
    return (shipped, SHIPPED_ORIGIN) if shipped is not None else (None, "hub")


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
    try:
        text = read_split(path).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        raise MMLUDataError(
            f"{path}: unreadable ({exc}); write the split as UTF-8 JSONL (optionally gzip'ed)"
        ) from None
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            counts[_check_row(path, lineno, line)] += 1
    if not counts:
        raise MMLUDataError(f"{path}: empty file (no rows); write the split as JSONL with columns {', '.join(COLUMNS)}")
    return counts


def resolve_data(spec: EvalSpec) -> MMLUData:
    """Pick the data source (spec.data_dir, else $SHRINKGATE_MMLU_DIR, else the shipped copy, else the hub)
    and check its files.

    Raises MMLUDataError on anything a user must fix. No model, torch or lm-eval is touched.
    """
    subjects = _select_subjects(spec)
    data_dir, origin = locate_data_dir(spec.data_dir)
    if data_dir is None:
        return MMLUData(source="hub", subjects=subjects, origin=origin)

    if not data_dir.is_dir():
        raise MMLUDataError(
            f"{data_dir}: MMLU data dir not found (from {origin}); point {origin} at a folder holding "
            f"test.jsonl and dev.jsonl, or unset it to read the MMLU copy shipped with shrinkgate"
        )
    files: dict[str, Path] = {}
    counts: dict[str, Counter[str]] = {}
    for split in SPLITS:
        path = split_path(data_dir, split)
        if path is None:
            if split in OPTIONAL_SPLITS:
                continue
            raise MMLUDataError(
                f"{data_dir / f'{split}.jsonl'}: split file missing; add {split}.jsonl (cais/mmlu `{split}` split, "
                f"one JSON row per line; .jsonl.gz also works) to {data_dir}"
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
        origin=origin,
    )
