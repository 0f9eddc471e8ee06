"""Typed results that cross module boundaries. Frozen dataclasses; no torch, no MLflow.

Each result knows its own encoding as MLflow metrics and tags (names from `pipeline.metrics`), so the
tracking side logs what it is handed without knowing how any result was measured.
"""

from pipeline.results.accuracy import (
    DESIGNS,
    AccuracyResult,
    QuestionOutcome,
    parse_questions_csv,
    question_rank,
    questions_csv,
)
from pipeline.results.build import FidelityRecord, Provenance
from pipeline.results.speed import LoadLevel, SpeedPoint, SpeedResult

__all__ = [
    "AccuracyResult",
    "DESIGNS",
    "FidelityRecord",
    "LoadLevel",
    "Provenance",
    "QuestionOutcome",
    "SpeedPoint",
    "SpeedResult",
    "parse_questions_csv",
    "question_rank",
    "questions_csv",
]
