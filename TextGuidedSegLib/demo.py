"""The demo job behind ``make demo`` and ``textguidedseg demo``: segment a CT from a prompt, show the result.

Without an input CT the demo makes a procedural phantom (:mod:`TextGuidedSegLib.data.phantom`, fixed seed) on
the bundle's voxel spacing, so it runs anywhere without data, and scores the segmentation against the
phantom's own labels. It writes into the output folder:

- ``phantom_ct.nii.gz`` and ``phantom_truth.nii.gz`` (phantom only): the CT and its label map;
- ``segmentation.nii.gz`` and ``segmentation.json``: the label map on the CT's grid and its sidecar, the same
  files ``textguidedseg segment`` writes;
- ``overlay.png``: axial and coronal slices through the segmented structures with coloured outlines
  (:func:`TextGuidedSegLib.visualize.save_overlay`);
- ``volumes.md``: a table of the structure volumes in mL and, on a phantom, the true volume and the Dice of
  each structure against the phantom's labels.

A bundle not validated on real CT (``BundleConfig.intended_use`` other than "published", e.g. the demo
bundle, trained on phantoms) run on a real CT gets its caveat in the log, the sidecar's ``warnings``, the
top of ``volumes.md`` and the overlay's title. An output folder that is not empty is refused
unless ``overwrite`` is set; then the files an earlier demo wrote there (:func:`demo_files`) are removed
first, and nothing else.

Example::

    result = run_demo("demo_out", overwrite=True)   # the shipped demo bundle on a phantom
    print("\\n".join(result.table))
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from TextGuidedSegLib.bundle import INTENDED_USES, Bundle, load_bundle
from TextGuidedSegLib.data.label_transfer import transfer_labels
from TextGuidedSegLib.data.phantom import PhantomConfig, make_phantom
from TextGuidedSegLib.evaluation.evaluate import universal_label_ids
from TextGuidedSegLib.evaluation.metrics import dice_score
from TextGuidedSegLib.inference.options import SegmentationOptions
from TextGuidedSegLib.inference.provenance import short_caveat
from TextGuidedSegLib.inference.result import SegmentInfo
from TextGuidedSegLib.taxonomy import StructureQuery

logger = logging.getLogger(__name__)

#: Where the demo bundle is shipped (trained on phantoms with the project's trainer).
DEFAULT_DEMO_BUNDLE = Path(__file__).resolve().parent / "resources" / "demo_bundle"
DEFAULT_PROMPT = "liver, spleen and both kidneys"
#: Field of view of the demo phantom in mm (x, y, z): the upper abdomen, as ``PhantomConfig()``'s default.
PHANTOM_FIELD_OF_VIEW_MM = (320.0, 320.0, 160.0)


@dataclass
class DemoResult:
    """What :func:`run_demo` did and wrote.

    Attributes:
        output_dir: the output folder.
        input: the CT that was segmented (``phantom_ct.nii.gz`` or the user's file).
        truth: the phantom's label map, None for a user's CT.
        segmentation: the label map; ``sidecar`` its JSON description.
        overlay: the overlay PNG.
        volumes: ``volumes.md``.
        segments: one entry per query (name, colour, voxels, volume in mL), in label order.
        truth_ml: per segment, the phantom's volume of that structure in mL (None: not a phantom structure).
        dice: per segment, Dice against the phantom's labels (None: no truth for it).
        table: the lines of the Markdown table in ``volumes.md`` (what the command prints).
        seconds: wall time of the whole demo.
        warnings: caveats of the run (a bundle not validated on real CT, on a real CT); empty when none.
    """

    output_dir: Path
    input: Path
    truth: Path | None
    segmentation: Path
    sidecar: Path
    overlay: Path
    volumes: Path
    segments: list[SegmentInfo]
    truth_ml: list[float | None] = field(default_factory=list)
    dice: list[float | None] = field(default_factory=list)
    table: list[str] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def missing_bundle_message(path: Path) -> str:
    """What to do when the default demo bundle is absent."""
    return (
        f"the demo bundle {path} is missing: it is trained on phantoms and committed with the package. "
        "Train and export it from a checkout: python Training/train.py --config "
        "Training/configs/demo_phantom.yaml, then python Training/export_bundle.py --checkpoint "
        f"runs/demo_phantom/best.pt --output {path}; or use another bundle: textguidedseg demo --bundle PATH "
        "(run_demo(..., bundle=PATH))"
    )


def demo_phantom_config(spacing: Sequence[float], seed: int = 0) -> PhantomConfig:
    """The demo phantom's config: :data:`PHANTOM_FIELD_OF_VIEW_MM` sampled at ``spacing`` (the bundle's)."""
    spacing = tuple(float(s) for s in spacing)
    shape = tuple(
        max(2, math.ceil(fov / s - 1e-6)) for fov, s in zip(PHANTOM_FIELD_OF_VIEW_MM, spacing, strict=True)
    )
    return PhantomConfig(shape=shape, spacing=spacing, seed=seed)


def truth_scores(
    labels: np.ndarray,
    queries: Sequence[StructureQuery],
    truth: np.ndarray,
    affine: np.ndarray,
    dataset: str = "phantom",
) -> tuple[list[float | None], list[float | None]]:
    """Dice and true volume of each query's mask against a reference label map on the same grid.

    Args:
        labels: ``(I, J, K)`` predicted label map, label ``q + 1`` for query ``q``.
        queries: the queries, in label order.
        truth: ``(I, J, K)`` reference label map in ``dataset``'s raw label ids (the phantom's by default).
        affine: ``(4, 4)`` voxel-to-RAS affine of both.
        dataset: the dataset key whose label mapping reads ``truth``.

    Returns:
        ``(dice, truth_ml)``, one entry per query; None where ``dataset`` does not annotate the structure
        (or the query is free text).
    """
    if labels.shape != truth.shape:
        raise ValueError(f"labels {labels.shape} and truth {truth.shape} must lie on the same grid")
    transferred = transfer_labels(truth, dataset, affine=affine)
    universal = universal_label_ids()
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    dice: list[float | None] = []
    truth_ml: list[float | None] = []
    for index, query in enumerate(queries):
        label_id = universal.get(query.class_name or "")
        if label_id is None or label_id not in transferred.annotated:
            dice.append(None)
            truth_ml.append(None)
            continue
        reference = transferred.mask(label_id)
        dice.append(dice_score(labels == index + 1, reference))
        truth_ml.append(int(np.count_nonzero(reference)) * voxel_ml)
    return dice, truth_ml


def volume_table(
    segments: Sequence[SegmentInfo],
    truth_ml: Sequence[float | None] = (),
    dice: Sequence[float | None] = (),
) -> list[str]:
    """Markdown table lines: label, structure, voxels, volume (mL) and, when given, true volume and Dice."""
    with_truth = bool(truth_ml) or bool(dice)
    header = "| label | structure | voxels | volume (mL) |"
    rule = "|---:|---|---:|---:|"
    if with_truth:
        header += " truth (mL) | Dice |"
        rule += "---:|---:|"
    lines = [header, rule]
    for index, segment in enumerate(segments):
        line = f"| {segment.label_id} | {segment.name} | {segment.voxels} | {segment.volume_ml:.1f} |"
        if with_truth:
            ml = truth_ml[index] if index < len(truth_ml) else None
            score = dice[index] if index < len(dice) else None
            line += f" {'-' if ml is None else f'{ml:.1f}'} | {'-' if score is None else f'{score:.3f}'} |"
        lines.append(line)
    return lines


#: The files a demo writes into its output folder (besides ``segmentation_{probability,uncertainty}_*`` maps).
DEMO_FILES = (
    "phantom_ct.nii.gz",
    "phantom_truth.nii.gz",
    "segmentation.nii.gz",
    "segmentation.json",
    "overlay.png",
    "volumes.md",
)


def demo_files(output_dir: str | Path) -> list[Path]:
    """The files in ``output_dir`` an earlier demo wrote there (:data:`DEMO_FILES` and its maps)."""
    folder = Path(output_dir)
    maps = [p for kind in ("probability", "uncertainty") for p in folder.glob(f"segmentation_{kind}_*.nii*")]
    return [p for p in (*(folder / name for name in DEMO_FILES), *sorted(maps)) if p.is_file()]


def _load_demo_bundle(bundle: str | Path | Bundle) -> Bundle:
    if isinstance(bundle, Bundle):
        return bundle
    path = Path(bundle)
    if not path.exists() and path.resolve() == DEFAULT_DEMO_BUNDLE:
        raise FileNotFoundError(missing_bundle_message(path))
    return load_bundle(path)


def run_demo(
    output_dir: str | Path,
    bundle: str | Path | Bundle = DEFAULT_DEMO_BUNDLE,
    input: str | Path | None = None,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    options: SegmentationOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **changes: Any,
) -> DemoResult:
    """Segment a CT (a phantom by default) from ``prompt`` and write the demo files into ``output_dir``.

    Args:
        output_dir: the output folder (created); one that is not empty is refused without ``overwrite``.
        bundle: a bundle folder or .zip, or a loaded bundle; default the shipped demo bundle.
        input: a CT (NIfTI, NRRD or DICOM folder); None makes a phantom with ``seed`` on the bundle's spacing.
        prompt: what to segment.
        seed: the phantom's seed (ignored with ``input``).
        options: the Segmenter's options (device, overlap, precision, ...; a lower overlap is faster on a
            CPU); None: the defaults, every value the bundle's.
        progress: show the sliding-window progress bar.
        overwrite: write into a folder that is not empty, first removing the files an earlier demo wrote
            there (:func:`demo_files`); other files are left alone.
        **changes: option fields applied on top of ``options`` (``run_demo(out, device="cpu")``).

    Returns:
        The :class:`DemoResult`.

    Raises:
        FileNotFoundError: the default demo bundle is absent (the message says how to get one) or the input
            does not exist.
        FileExistsError: ``output_dir`` is not empty and ``overwrite`` is not set.
        ValueError: a bundle that does not load, an unreadable CT or a prompt the bundle cannot answer.
    """
    from TextGuidedSegLib.inference import Segmenter
    from TextGuidedSegLib.io import load_volume
    from TextGuidedSegLib.visualize import save_overlay

    start = time.perf_counter()
    output = Path(output_dir)
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {output} is not empty; pass --overwrite (run_demo(..., overwrite=True)) to "
            "replace the files an earlier demo wrote there, or choose another folder with -o/--output"
        )
    if input is not None and not Path(input).exists():
        raise FileNotFoundError(f"input CT {input} does not exist")
    bundle = _load_demo_bundle(bundle)
    output.mkdir(parents=True, exist_ok=True)
    keep = Path(input).resolve() if input is not None else None
    for earlier in demo_files(output):
        if earlier.resolve() != keep:
            earlier.unlink()
    truth_path = None
    if input is None:
        config = demo_phantom_config(bundle.config.preprocessing.spacing, seed=seed)
        phantom = make_phantom(config)
        ct_path, truth_path = output / "phantom_ct.nii.gz", output / "phantom_truth.nii.gz"
        phantom.save(ct_path, truth_path)
        description = (
            f"phantom (seed {seed}, {'x'.join(map(str, config.shape))} voxels of "
            f"{'x'.join(f'{s:g}' for s in config.spacing)} mm), `{ct_path.name}`; truth `{truth_path.name}`"
        )
    else:
        ct_path = Path(input)
        description = f"`{ct_path}`"
    volume = load_volume(ct_path)

    segmenter = Segmenter(bundle, options, progress=progress, **changes)
    result = segmenter.segment(volume, prompt)  # logs any caveat of the bundle on this CT
    files = result.save(output / "segmentation.nii.gz")
    caveat = short_caveat(bundle.config.intended_use, phantom_input=result.provenance["input"]["phantom"])
    dice: list[float | None] = []
    truth_ml: list[float | None] = []
    if truth_path is not None:
        dice, truth_ml = truth_scores(result.labels, result.queries, phantom.labels, volume.affine)
    overlay = save_overlay(
        output / "overlay.png",
        volume.array,
        result.labels,
        volume.affine,
        result.segments,
        title=(f"{caveat}  |  " if caveat else "")
        + f'"{prompt}"  ({bundle.config.name} v{bundle.config.version})',
    )
    table = volume_table(result.segments, truth_ml, dice)
    fit_for = INTENDED_USES[bundle.config.intended_use]
    lines = [
        "# TextGuidedSeg demo",
        "",
        *(f"> **Warning:** {warning}\n" for warning in result.warnings),
        f"- input: {description}",
        f"- bundle: {bundle.config.name} v{bundle.config.version} ({fit_for})",
        f'- prompt: "{prompt}"',
        f"- files: `{files.label_map.name}`, `{files.sidecar.name}`, `{overlay.name}`",
        "",
        *table,
        "",
    ]
    volumes = output / "volumes.md"
    volumes.write_text("\n".join(lines), encoding="utf-8")
    seconds = time.perf_counter() - start
    logger.info("demo finished in %.1f s: %s", seconds, output)
    return DemoResult(
        output_dir=output,
        input=ct_path,
        truth=truth_path,
        segmentation=files.label_map,
        sidecar=files.sidecar,
        overlay=overlay,
        volumes=volumes,
        segments=result.segments,
        truth_ml=truth_ml,
        dice=dice,
        table=table,
        seconds=seconds,
        warnings=result.warnings,
    )
