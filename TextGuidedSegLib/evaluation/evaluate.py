"""Evaluate a bundle on a list of labelled CTs: Dice and NSD per case and structure, and a report.

For each case of a list file (``image<TAB>label`` lines, read by
:func:`~TextGuidedSegLib.data.datasets.read_list_file`):

1. the CT is read and segmented on its original grid by the :class:`~TextGuidedSegLib.inference.Segmenter`
   (sliding window at the bundle's spacing, probabilities resampled back, thresholded), for the requested
   structures that the case's dataset annotates;
2. the reference label map (on the same grid as the CT) is transferred into the universal32 taxonomy with
   :func:`~TextGuidedSegLib.data.label_transfer.transfer_labels`; structures match by ``class_name``;
3. each structure's own predicted mask (``result.masks[q]`` when the structures may overlap, as a tumour
   and its organ do in the reference; else label ``q + 1`` of the label map) is scored against its
   reference with :func:`~TextGuidedSegLib.evaluation.metrics.score_masks` (Dice, NSD at a tolerance in mm
   with the CT's voxel spacing; empty-reference policy in :mod:`TextGuidedSegLib.evaluation.metrics`).

Structures a case's dataset does not annotate are neither segmented nor scored for that case: no score is
made up for a structure nobody labelled. The report (``metrics.csv``, ``summary.md``, ``dice_boxplot.png``
and, on request, ``predictions/<case>.nii.gz`` with JSON sidecars) is described in
:mod:`TextGuidedSegLib.evaluation.report`.

Example::

    report = evaluate("demo_phantom_film_v1", "phantoms/phantom.txt", "eval_out", save_predictions=True)
    print(report.summary["liver"].dice_mean, report.mean_dice)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from TextGuidedSegLib.bundle import Bundle, load_bundle
from TextGuidedSegLib.data.datasets import NUM_CHANNELS, Case, get_dataset, read_list_file, structure_name
from TextGuidedSegLib.data.label_transfer import transfer_labels
from TextGuidedSegLib.evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, score_masks
from TextGuidedSegLib.evaluation.report import (
    CaseScore,
    StructureSummary,
    plot_dice_boxplot,
    summarize,
    summary_table,
    write_metrics_csv,
    write_summary_md,
)
from TextGuidedSegLib.inference.options import SegmentationOptions
from TextGuidedSegLib.inference.result import SegmentationResult
from TextGuidedSegLib.io import Volume, load_volume
from TextGuidedSegLib.taxonomy import PromptError, StructureQuery, Taxonomy, parse_prompt

logger = logging.getLogger(__name__)

#: Largest difference (mm) between the CT's and the label map's affine entries that counts as the same grid.
GRID_TOLERANCE_MM = 1e-3


class SegmenterLike(Protocol):
    """What :func:`evaluate` needs of a segmenter (``inference.Segmenter``, or a test oracle)."""

    threshold: float

    def segment(self, volume: Volume, prompt: Sequence[StructureQuery]) -> SegmentationResult:
        """Label map on ``volume``'s grid, label ``q + 1`` for query ``q``."""
        ...


@dataclass
class EvaluationReport:
    """What :func:`evaluate` computed and wrote.

    Attributes:
        scores: one row per (case, scored structure), in case order (the rows of ``metrics.csv``).
        summary: ``class_name`` -> mean and std of Dice and NSD over the cases that annotate it.
        output_dir: the report folder.
        files: what was written: ``"metrics"``, ``"summary"``, ``"boxplot"`` and, with predictions,
            ``"predictions"`` (the folder).
        nsd_tolerance_mm: the surface Dice tolerance used.
    """

    scores: list[CaseScore]
    summary: dict[str, StructureSummary]
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM

    @property
    def mean_dice(self) -> float:
        """Mean over structures of the per-structure mean Dice (NaN without any score)."""
        return float(np.mean([s.dice_mean for s in self.summary.values()])) if self.summary else float("nan")

    @property
    def mean_nsd(self) -> float:
        """Mean over structures of the per-structure mean NSD (NaN without any score)."""
        return float(np.mean([s.nsd_mean for s in self.summary.values()])) if self.summary else float("nan")


def query_mask(result: SegmentationResult, index: int) -> np.ndarray:
    """Query ``index``'s own (I, J, K) bool mask: ``result.masks[index]`` when the queried structures may
    overlap (a tumour stays part of its organ, as in the reference), else its label in the label map."""
    if result.masks is not None:
        return np.asarray(result.masks[index], dtype=bool)
    return result.labels == index + 1


def universal_label_ids() -> dict[str, int]:
    """``class_name`` -> universal32 label id: the channels :func:`transfer_labels` fills."""
    return {structure_name(label_id): label_id for label_id in range(1, NUM_CHANNELS + 1)}


def requested_queries(taxonomy: Taxonomy, structures: str | Sequence[str] | None) -> list[StructureQuery]:
    """The structure queries to evaluate, from the bundle's taxonomy.

    Args:
        taxonomy: the bundle's taxonomy.
        structures: ``None`` for every structure of the taxonomy; a prompt (``"liver, spleen and kidneys"``,
            parsed as ``textguidedseg segment`` does, free text not allowed); or a list of class names.

    Raises:
        ValueError: a name the taxonomy does not know (``PromptError`` for a prompt), or an empty selection.
    """
    if structures is None:
        return [StructureQuery(text=s.name, prompt=s.prompt, structure=s) for s in taxonomy]
    if isinstance(structures, str):
        try:
            return parse_prompt(structures, taxonomy, allow_free_text=False)
        except PromptError as err:
            raise PromptError(f"structures {structures!r}: {err}") from None
    queries = []
    for class_name in dict.fromkeys(structures):
        if class_name not in taxonomy:
            raise ValueError(
                f"structure {class_name!r} is not in the bundle's taxonomy "
                f"({', '.join(taxonomy.class_names)})"
            )
        structure = taxonomy[class_name]
        queries.append(StructureQuery(text=structure.name, prompt=structure.prompt, structure=structure))
    if not queries:
        raise ValueError("no structure to evaluate: the structure list is empty")
    return queries


def _check_same_grid(image: Volume, label: Volume, case: Case) -> None:
    if image.shape != label.shape or not np.allclose(image.affine, label.affine, atol=GRID_TOLERANCE_MM):
        raise ValueError(
            f"{case.label}: the label map's grid ({'x'.join(map(str, label.shape))}) differs from its CT "
            f"{case.image} ({'x'.join(map(str, image.shape))}) or their affines differ; evaluation compares "
            "them voxel by voxel on the CT's grid"
        )


def _unique_name(case: Case, seen: set[str]) -> str:
    name = case.name if case.name not in seen else f"{case.name}_line{case.line}"
    seen.add(name)
    return name


def evaluate(
    bundle: str | Path | Bundle,
    list_file: str | Path,
    output_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    dataset: str | None = None,
    structures: str | Sequence[str] | None = None,
    save_predictions: bool = False,
    options: SegmentationOptions | None = None,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    progress: bool = True,
    segmenter: SegmenterLike | None = None,
    **changes: Any,
) -> EvaluationReport:
    """Segment every case of ``list_file`` with ``bundle``, score it against its labels and write a report.

    Args:
        bundle: a bundle folder or .zip, or a loaded :class:`~TextGuidedSegLib.bundle.Bundle`.
        list_file: ``image<TAB>label`` lines (image-only lines are an error here).
        output_dir: the report folder (created; report files in it are replaced).
        data_root: the folder the list's paths are relative to (default: the list file's folder).
        dataset: the dataset key of every case (``"phantom"``, ``"totalseg"``, ``"btcv"``, ...); default:
            recognised from each image path's leading folders.
        structures: what to evaluate: a prompt or a list of class names of the bundle's taxonomy; default
            every structure of the bundle. Each case scores those its dataset annotates.
        save_predictions: also write each case's label map and sidecar to ``output_dir/predictions``.
        options: the ``Segmenter``'s options (device, overlap, ...); None: the defaults (the bundle's).
        nsd_tolerance_mm: surface Dice tolerance in mm (default 3 mm).
        progress: show a progress bar over the cases.
        segmenter: segments instead of a ``Segmenter`` built from ``bundle`` and ``options`` (a differently
            configured one, or a test oracle); it must answer queries of ``bundle``'s taxonomy.
        **changes: option fields applied on top of ``options`` (``evaluate(..., device="cpu")``).

    Returns:
        The :class:`EvaluationReport` (per-case scores and per-structure means).

    Raises:
        FileNotFoundError: the list file does not exist.
        ValueError: a negative tolerance, a malformed list (``DatasetListError``: every bad line), an
            unknown dataset or structure, a case without a label map or with a label map on another grid, or
            no requested structure that any case's dataset annotates.
    """
    from tqdm.auto import tqdm

    if not np.isfinite(nsd_tolerance_mm) or nsd_tolerance_mm < 0:
        raise ValueError(f"nsd_tolerance_mm must be a distance in mm >= 0, got {nsd_tolerance_mm}")
    list_path = Path(list_file)
    if not list_path.is_file():
        raise FileNotFoundError(f"list file {list_path} does not exist")
    if dataset is not None:
        get_dataset(dataset)  # an unknown key fails here, listing the known ones
    cases = read_list_file(list_path, data_root=data_root, default_dataset=dataset)
    if dataset is not None:
        cases = [dataclasses.replace(case, dataset=dataset) for case in cases]
    unlabelled = [f"{list_path}:{case.line}" for case in cases if case.label is None]
    if unlabelled:
        raise ValueError(
            "evaluation needs a label map for every case ('image<TAB>label' lines); "
            f"no label on {', '.join(unlabelled)}"
        )
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if segmenter is not None and (options is not None or changes):
        raise ValueError("evaluate: pass the segmentation options or a segmenter built with them, not both")
    if segmenter is None:
        from TextGuidedSegLib.inference import Segmenter

        segmenter = Segmenter(bundle, options, progress=False, **changes)

    universal = universal_label_ids()
    queries = []
    for query in requested_queries(bundle.config.taxonomy, structures):
        if query.class_name in universal:
            queries.append(query)
        elif structures is not None:
            raise ValueError(
                f"structure {query.class_name!r} has no channel in the universal32 label taxonomy"
            )
        else:
            logger.warning(
                "%s is outside the universal32 taxonomy of the datasets: not evaluated", query.name
            )
    reachable = set()
    for key in {case.dataset for case in cases}:
        spec = get_dataset(key)
        reachable.update(spec.channels_of(list(spec.table)))
    unreachable = [q.class_name for q in queries if universal[q.class_name] not in reachable]
    if unreachable and len(unreachable) < len(queries):
        logger.warning("no dataset of %s annotates %s: not evaluated", list_path, ", ".join(unreachable))
    if len(unreachable) == len(queries):
        raise ValueError(
            f"none of the structures to evaluate ({', '.join(q.class_name for q in queries)}) is "
            f"annotated by the dataset(s) of {list_path} ({', '.join(sorted({c.dataset for c in cases}))})"
        )

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    predictions = output / "predictions"
    scores: list[CaseScore] = []
    seen: set[str] = set()
    for case in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        name = _unique_name(case, seen)
        volume = load_volume(case.image)
        reference = load_volume(case.label)
        _check_same_grid(volume, reference, case)
        transferred = transfer_labels(reference.array, case.dataset, affine=volume.affine)
        case_queries = [q for q in queries if universal[q.class_name] in transferred.annotated]
        if not case_queries:
            logger.warning(
                "%s: dataset %r annotates none of the structures to evaluate; skipped", name, case.dataset
            )
            continue
        result = segmenter.segment(volume, case_queries)
        voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
        for index, query in enumerate(case_queries):
            masks = score_masks(
                query_mask(result, index),
                transferred.mask(universal[query.class_name]),
                volume.spacing,
                nsd_tolerance_mm,
            )
            scores.append(
                CaseScore(
                    case=name,
                    dataset=case.dataset,
                    structure=query.class_name,
                    dice=masks.dice,
                    nsd=masks.nsd,
                    reference_ml=masks.reference_voxels * voxel_ml,
                    predicted_ml=masks.predicted_voxels * voxel_ml,
                )
            )
        logger.debug("%s: %s", name, {s.structure: round(s.dice, 3) for s in scores if s.case == name})
        if save_predictions:
            if result.volume is None:  # a custom segmenter's result: its grid is the case's
                result.volume = volume
            result.save(predictions / f"{name}.nii.gz")

    summary = summarize(scores)
    about = [
        ("bundle", f"{bundle.config.name} v{bundle.config.version}"),
        ("list file", str(list_path)),
        ("cases", str(len({s.case for s in scores}))),
        ("NSD tolerance", f"{nsd_tolerance_mm:g} mm"),
        ("empty reference", "empty prediction scores 1, any predicted voxel scores 0 (Dice and NSD)"),
    ]
    files = {
        "metrics": write_metrics_csv(output / "metrics.csv", scores),
        "summary": write_summary_md(output / "summary.md", summary, about),
        "boxplot": plot_dice_boxplot(output / "dice_boxplot.png", scores),
    }
    if save_predictions:
        files["predictions"] = predictions
    for line in summary_table(summary):
        logger.info("%s", line)
    logger.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return EvaluationReport(
        scores=scores, summary=summary, output_dir=output, files=files, nsd_tolerance_mm=nsd_tolerance_mm
    )
