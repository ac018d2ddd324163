"""Evaluation reports: the per-case metrics table, the per-structure summary and the Dice box plot.

Files (all written by :func:`TextGuidedSegLib.evaluation.evaluate`):

- ``metrics.csv``: one row per (case, structure): ``case, dataset, structure, dice, nsd, reference_ml,
  predicted_ml`` (``structure`` is the ``class_name``);
- ``summary.md``: a Markdown table per structure: number of cases, mean ± standard deviation of Dice and NSD
  (population standard deviation, ``numpy.std``), and the mean over structures;
- ``dice_boxplot.png``: one box of Dice values per structure.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

#: Column names of ``metrics.csv``, in order.
CSV_COLUMNS = ("case", "dataset", "structure", "dice", "nsd", "reference_ml", "predicted_ml")


@dataclass(frozen=True)
class CaseScore:
    """One row of ``metrics.csv``: the scores of one structure in one case.

    Attributes:
        case: the case name (the image file name without its extension).
        dataset: the dataset key its reference labels were transferred with.
        structure: the structure's ``class_name``.
        dice: Dice in [0, 1].
        nsd: normalised surface Dice in [0, 1].
        reference_ml: volume of the reference mask in mL.
        predicted_ml: volume of the predicted mask in mL.
    """

    case: str
    dataset: str
    structure: str
    dice: float
    nsd: float
    reference_ml: float
    predicted_ml: float


@dataclass(frozen=True)
class StructureSummary:
    """Dice and NSD of one structure over the cases that annotate it.

    Attributes:
        structure: the structure's ``class_name``.
        n: number of cases scored.
        dice_mean, dice_std: mean and population standard deviation of Dice.
        nsd_mean, nsd_std: mean and population standard deviation of NSD.
    """

    structure: str
    n: int
    dice_mean: float
    dice_std: float
    nsd_mean: float
    nsd_std: float


def summarize(scores: Iterable[CaseScore]) -> dict[str, StructureSummary]:
    """Per-structure summaries of ``scores``, in order of each structure's first row."""
    grouped: dict[str, list[CaseScore]] = {}
    for score in scores:
        grouped.setdefault(score.structure, []).append(score)
    summary = {}
    for structure, rows in grouped.items():
        dice = np.array([r.dice for r in rows], dtype=np.float64)
        nsd = np.array([r.nsd for r in rows], dtype=np.float64)
        summary[structure] = StructureSummary(
            structure=structure,
            n=len(rows),
            dice_mean=float(dice.mean()),
            dice_std=float(dice.std()),
            nsd_mean=float(nsd.mean()),
            nsd_std=float(nsd.std()),
        )
    return summary


def write_metrics_csv(path: str | Path, scores: Iterable[CaseScore]) -> Path:
    """Write ``metrics.csv`` (columns :data:`CSV_COLUMNS`; scores to 6 decimals, volumes to 0.001 mL)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for s in scores:
            writer.writerow(
                [
                    s.case,
                    s.dataset,
                    s.structure,
                    f"{s.dice:.6f}",
                    f"{s.nsd:.6f}",
                    f"{s.reference_ml:.3f}",
                    f"{s.predicted_ml:.3f}",
                ]
            )
    return path


def read_metrics_csv(path: str | Path) -> list[CaseScore]:
    """Read a ``metrics.csv`` written by :func:`write_metrics_csv`.

    Raises:
        ValueError: the header is not :data:`CSV_COLUMNS` (the message names the file).
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        header = tuple(next(reader, ()))
        if header != CSV_COLUMNS:
            raise ValueError(
                f"{path}: expected the columns {', '.join(CSV_COLUMNS)}, got {', '.join(header)}"
            )
        kinds = [f.type for f in fields(CaseScore)]
        return [
            CaseScore(
                *(float(v) if kind in (float, "float") else v for v, kind in zip(row, kinds, strict=True))
            )
            for row in reader
            if row
        ]


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def summary_table(summary: Mapping[str, StructureSummary]) -> list[str]:
    """The Markdown table of :func:`summarize`'s output, one line per row, with a mean-over-structures row."""
    lines = ["| structure | n | Dice (mean ± std) | NSD (mean ± std) |", "|---|---:|---:|---:|"]
    for s in summary.values():
        lines.append(
            f"| {s.structure} | {s.n} | {_mean_std(s.dice_mean, s.dice_std)} | "
            f"{_mean_std(s.nsd_mean, s.nsd_std)} |"
        )
    if summary:
        dice = [s.dice_mean for s in summary.values()]
        nsd = [s.nsd_mean for s in summary.values()]
        lines.append(
            f"| **mean over structures** | {len(summary)} | {np.mean(dice):.3f} | {np.mean(nsd):.3f} |"
        )
    return lines


def write_summary_md(
    path: str | Path, summary: Mapping[str, StructureSummary], about: Sequence[tuple[str, str]] = ()
) -> Path:
    """Write ``summary.md``: a title, ``about`` as a list of key: value lines, then the summary table."""
    path = Path(path)
    lines = ["# Evaluation summary", ""]
    lines += [f"- {key}: {value}" for key, value in about]
    lines += ["", *summary_table(summary), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def plot_dice_boxplot(
    path: str | Path, scores: Sequence[CaseScore], title: str = "Dice per structure"
) -> Path:
    """Write a PNG with one box of Dice values per structure (structures in order of first appearance)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    grouped: dict[str, list[float]] = {}
    for score in scores:
        grouped.setdefault(score.structure, []).append(score.dice)
    width = max(4.0, 1.0 + 0.7 * len(grouped))
    figure = Figure(figsize=(width, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if grouped:
        axes.boxplot(list(grouped.values()), showmeans=True)
        axes.set_xticks(range(1, len(grouped) + 1), list(grouped), rotation=45, ha="right")
    else:
        axes.text(0.5, 0.5, "no scores", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylim(-0.02, 1.02)
    axes.set_ylabel("Dice")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path)
    return path
