"""Evaluation: Dice and normalised surface Dice of a bundle's segmentations against reference labels.

- :mod:`~TextGuidedSegLib.evaluation.metrics`: :func:`dice_score`, :func:`surface_dice`, :func:`score_masks`
  on one mask pair, with the empty-reference policy (both empty -> 1, only one empty -> 0).
- :mod:`~TextGuidedSegLib.evaluation.report`: ``metrics.csv``, ``summary.md`` and ``dice_boxplot.png``.
- :mod:`~TextGuidedSegLib.evaluation.evaluate`: :func:`evaluate`, a list file in, a report out (the
  ``textguidedseg evaluate`` command and ``Training/evaluate.py``).
"""

from TextGuidedSegLib.evaluation.evaluate import EvaluationReport, evaluate, query_mask, requested_queries
from TextGuidedSegLib.evaluation.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    MaskScores,
    dice_score,
    score_masks,
    surface_dice,
)
from TextGuidedSegLib.evaluation.report import (
    CSV_COLUMNS,
    CaseScore,
    StructureSummary,
    read_metrics_csv,
    summarize,
)

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_NSD_TOLERANCE_MM",
    "CaseScore",
    "EvaluationReport",
    "MaskScores",
    "StructureSummary",
    "dice_score",
    "evaluate",
    "query_mask",
    "read_metrics_csv",
    "requested_queries",
    "score_masks",
    "summarize",
    "surface_dice",
]
