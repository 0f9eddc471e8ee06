"""Calibration text for methods that look at activations (GPTQ, AWQ, SparseGPT, Wanda, W8A8), and the
fixed held-out batch the fidelity record scores KL on.

A method's `calibration` param names the source:

- `mmlu-validation` (the default, offline): MMLU's `validation` split read from the eval data dir
  (`eval.data_dir`, else `$SHRINKGATE_MMLU_DIR`, else the copy shipped in the package, else the hub's
  cais/mmlu when it is reachable); `.jsonl` or `.jsonl.gz`, hashed uncompressed.
  Never `test` (that is what gets scored) and never `dev` (the few-shot examples).
- a local file: `.txt` (paragraphs separated by blank lines; one text per line when there are none) or
  `.jsonl` (field `text`, else MMLU-style `question` + `choices`).
- a hub dataset id `org/name` (optionally `org/name:split`, default split `train`), online only.

Validation rows that repeat a test question verbatim (MMLU has a few dozen such duplicates) are dropped
when the local test split is there. The rest of the validation split is cut in two disjoint parts: every 10th row is held out for the KL batch, the rest
is calibration material, so a calibrated method is never scored on the very text it was fitted to.
What was used is recorded (`calibration.source`, `calibration.sha256` of the exact text fed to the
method, `calibration.file_sha256` of a local file) in `BuildContext.notes` -> `FidelityRecord.extra`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import metrics as M
from pipeline.data.mmlu import SHIPPED_ORIGIN, MMLUDataError, locate_data_dir, read_split, shipped_dir, split_path
from pipeline.env import MMLU_DIR_ENV, hub_reachable

DEFAULT_SOURCE = "mmlu-validation"
HELDOUT_EVERY = 10  # validation row i is held out (KL batch) when i % HELDOUT_EVERY == 0
_FILE_SUFFIXES = (".txt", ".jsonl")
_LETTERS = "ABCD"


class CalibrationError(RuntimeError):
    """Calibration data that cannot be had; one line naming the source and the fix."""


@dataclass(frozen=True)
class CalibrationData:
    texts: tuple[str, ...]  # the samples fed to the method, in order
    source: str
    kind: str  # mmlu-local | mmlu-hub | file | hub
    sha256: str  # of "\n\n".join(texts): identifies exactly what the method saw
    file_sha256: str | None = None
    tokens: int | None = None
    excluded_test_duplicates: int = 0  # MMLU validation rows dropped because test holds the same question

    def notes(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            M.TAG_CALIBRATION_SOURCE: self.source,
            M.NOTE_CALIBRATION_KIND: self.kind,
            M.TAG_CALIBRATION_SHA256: self.sha256,
            M.NOTE_CALIBRATION_SAMPLES: len(self.texts),
        }
        if self.file_sha256:
            out[M.TAG_CALIBRATION_FILE_SHA256] = self.file_sha256
        if self.tokens is not None:
            out[M.NOTE_CALIBRATION_TOKENS] = self.tokens
        if self.excluded_test_duplicates:
            out[M.NOTE_CALIBRATION_EXCLUDED] = self.excluded_test_duplicates
        return out


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def looks_like_file(source: str) -> bool:
    return source.endswith(_FILE_SUFFIXES) or source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def check_source(source: str) -> str | None:
    """Validation-time check (no model, no network): a one-line problem or None."""
    if source == DEFAULT_SOURCE:
        return None
    if looks_like_file(source):
        path = Path(source).expanduser()
        if not path.is_file():
            return f"calibration file {source} does not exist; give a .txt/.jsonl file, a hub dataset id or {DEFAULT_SOURCE!r}"
        if path.suffix not in _FILE_SUFFIXES:
            return f"calibration file {source} must be .txt or .jsonl"
        return None
    name = source.split(":", 1)[0]
    if name.count("/") != 1 or not all(name.split("/")):
        return f"calibration {source!r} is neither {DEFAULT_SOURCE!r}, a local .txt/.jsonl file nor a hub dataset id (org/name[:split])"
    return None


# -- MMLU -------------------------------------------------------------------------------------------
def mmlu_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The MMLU dir whose validation split calibration reads: `data_dir`, else `$SHRINKGATE_MMLU_DIR`, else
    the shipped copy (verified). A data dir without a validation split falls back to the shipped one (the
    same rows the hub would give); None (-> hub) when there is none at all."""
    try:
        path, origin = locate_data_dir(data_dir)
        if path is not None and split_path(path, "validation") is not None:
            return path
        if origin != SHIPPED_ORIGIN:
            return shipped_dir()
    except MMLUDataError as exc:  # the shipped copy fails its sums
        raise CalibrationError(str(exc)) from None
    return None


def format_mmlu(row: dict[str, Any]) -> str:
    choices = "\n".join(f"{_LETTERS[i]}. {c}" for i, c in enumerate(row["choices"]))
    answer = row.get("answer")
    tail = f"\nAnswer: {_LETTERS[int(answer)]}" if isinstance(answer, int) or str(answer).isdigit() else "\nAnswer:"
    return f"{str(row['question']).strip()}\n{choices}{tail}"


def _row_key(row: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    return str(row["question"]).strip(), tuple(str(c) for c in row["choices"])


_VALIDATION_CACHE: dict[tuple[str, float], tuple[list[dict[str, Any]], str, str | None, int]] = {}


def _mmlu_validation_rows(data_dir: str | os.PathLike | None) -> tuple[list[dict[str, Any]], str, str | None, int]:
    """Validation rows (minus any that repeat a test question verbatim: MMLU has a few dozen), kind,
    sha256 of the local file, and how many rows were dropped as test duplicates."""
    local = mmlu_dir(data_dir)
    if local is not None:
        path = split_path(local, "validation")
        assert path is not None  # mmlu_dir checked it
        key = (str(path.resolve()), path.stat().st_mtime)
        if key in _VALIDATION_CACHE:
            return _VALIDATION_CACHE[key]
        raw = read_split(path)  # uncompressed: the recorded sha256 is the same for .jsonl and .jsonl.gz
        rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        dropped = 0
        test = split_path(local, "test")
        if test is not None:
            test_text = read_split(test).decode("utf-8")
            test_keys = {_row_key(json.loads(line)) for line in test_text.splitlines() if line.strip()}
            kept = [r for r in rows if _row_key(r) not in test_keys]
            dropped, rows = len(rows) - len(kept), kept
        _VALIDATION_CACHE[key] = (rows, "mmlu-local", _sha256_bytes(raw), dropped)
        return _VALIDATION_CACHE[key]

    if not hub_reachable():
        raise CalibrationError(
            f"calibration {DEFAULT_SOURCE!r}: no MMLU validation split (none in eval.data_dir / ${MMLU_DIR_ENV} and "
            "the shipped copy is missing) and the hub is unreachable; point the eval data dir at a MMLU JSONL folder "
            "with validation.jsonl, reinstall shrinkgate, or give a local calibration file"
        )
    from datasets import load_dataset

    ds = load_dataset("cais/mmlu", "all", split="validation")
    test_keys = {_row_key(r) for r in load_dataset("cais/mmlu", "all", split="test")}
    rows = [dict(r) for r in ds]
    kept = [r for r in rows if _row_key(r) not in test_keys]
    return kept, "mmlu-hub", None, len(rows) - len(kept)


def heldout_texts(n: int, *, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The fixed KL batch: the first `n` held-out MMLU validation rows (disjoint from calibration)."""
    rows, _, _, _ = _mmlu_validation_rows(data_dir)
    held = [format_mmlu(r) for i, r in enumerate(rows) if i % HELDOUT_EVERY == 0]
    return held[:n]


# -- loading ----------------------------------------------------------------------------------------
def _file_texts(path: Path) -> list[str]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise CalibrationError(f"calibration file {path}: line {i + 1} is not JSON") from None
            if isinstance(row, dict) and isinstance(row.get("text"), str):
                texts.append(row["text"])
            elif isinstance(row, dict) and "question" in row and "choices" in row:
                texts.append(format_mmlu(row))
            else:
                raise CalibrationError(
                    f"calibration file {path}: line {i + 1} has neither `text` nor `question`+`choices`"
                )
        return texts
    paras = [p.strip() for p in raw.split("\n\n") if p.strip()]
    if len(paras) <= 1:
        paras = [line.strip() for line in raw.splitlines() if line.strip()]
    return paras


def _hub_texts(source: str, limit: int) -> list[str]:

    name, _, split = source.partition(":")
    if not hub_reachable():
        raise CalibrationError(
            f"calibration dataset {name!r} needs the hub, which is unreachable (offline); use a local .txt/.jsonl file or {DEFAULT_SOURCE!r}"
        )
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split or "train", streaming=True)
    except Exception as exc:  # noqa: BLE001 - any hub/dataset failure becomes one line
        raise CalibrationError(
            f"calibration dataset {source!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    texts: list[str] = []
    for row in ds:
        text = row.get("text")
        if not isinstance(text, str):
            text = next((v for v in row.values() if isinstance(v, str)), None)
        if text and text.strip():
            texts.append(text.strip())
        if len(texts) >= limit:
            break
    if not texts:
        raise CalibrationError(f"calibration dataset {source!r} has no text column")
    return texts


def load_calibration(
    source: str | None,
    n_samples: int,
    *,
    tokenizer: Any = None,
    seq_len: int | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> CalibrationData:
    """`n_samples` calibration texts from `source`; with a tokenizer and `seq_len`, short texts are packed
    (joined with blank lines) into samples of about `seq_len` tokens so every sample carries real context."""
    source = source or DEFAULT_SOURCE
    problem = check_source(source)
    if problem:
        raise CalibrationError(problem)
    file_sha = None
    dropped = 0
    if source == DEFAULT_SOURCE:
        rows, kind, file_sha, dropped = _mmlu_validation_rows(data_dir)
        pool = [format_mmlu(r) for i, r in enumerate(rows) if i % HELDOUT_EVERY != 0]
        random.Random(seed).shuffle(pool)
    elif looks_like_file(source):
        path = Path(source).expanduser()
        pool, kind, file_sha = _file_texts(path), "file", _sha256_bytes(path.read_bytes())
    else:
        pool, kind = _hub_texts(source, limit=max(64, n_samples * 16)), "hub"
    if not pool:
        raise CalibrationError(f"calibration {source!r} holds no text")
    texts = _pack(pool, n_samples, tokenizer, seq_len)
    tokens = None
    if tokenizer is not None:
        tokens = sum(min(len(tokenizer(t)["input_ids"]), seq_len or 10**9) for t in texts)
    return CalibrationData(
        texts=tuple(texts),
        source=source,
        kind=kind,
        sha256=_sha256_bytes("\n\n".join(texts).encode("utf-8")),
        file_sha256=file_sha,
        tokens=tokens,
        excluded_test_duplicates=dropped,
    )


def _pack(pool: list[str], n_samples: int, tokenizer: Any, seq_len: int | None) -> list[str]:
    if tokenizer is None or not seq_len:
        return [pool[i % len(pool)] for i in range(n_samples)] if len(pool) < n_samples else pool[:n_samples]
    out: list[str] = []
    cur: list[str] = []
    cur_len = 0
    i = 0
    while len(out) < n_samples and i < len(pool) * 2:
        text = pool[i % len(pool)]
        i += 1
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        cur.append(text)
        cur_len += n + 2
        if cur_len >= seq_len:
            out.append("\n\n".join(cur))
            cur, cur_len = [], 0
    if len(out) < n_samples and cur:
        out.append("\n\n".join(cur))
    return out
