"""Writing a segmentation result: the label map, its JSON sidecar and optional probability maps.

Shared by ``textguidedseg segment``, ``textguidedseg demo`` and ``textguidedseg evaluate --save-predictions``,
so every command writes the same files:

- the label map (``.nii.gz``, ``.nii`` or ``.nrrd``) on exactly the input's grid, when the queried structures
  cannot overlap; when they may (a tumour and its organ: ``result.masks`` is set), the same file holds one
  mask per structure instead: a 4D ``(I, J, K, Q)`` uint8 NIfTI (structure ``label_id`` in
  ``[..., label_id - 1]``) or a NRRD of ``Q``-component vectors; a ``.seg.nrrd`` holds the overlapping
  segments in separate layers. The sidecar's ``layout`` says which (``"labels"`` or ``"masks"``);
- ``<stem>.json``: :meth:`SegmentationResult.sidecar`: the result's provenance (input, prompt, bundle with
  sha256, options and the settings used, device, precision, versions, warnings), the label map's file name
  and the segments (see ``inference.result``);
- with probabilities in the result, ``<stem>_probability_<label_id>_<class_name><suffix>`` per query.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy, SimpleITK, nibabel load when writing; the CLI checks -o with label_map_stem first
    from TextGuidedSegLib.inference.result import SegmentationResult

logger = logging.getLogger(__name__)

#: File endings a label map may have (the first one is the default).
#: ``.seg.nrrd`` is a 3D Slicer segmentation file (segment names, colours, terminology; ``io.seg_nrrd``).
LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd")


@dataclass
class SegmentationFiles:
    """The files :func:`write_segmentation` wrote.

    Attributes:
        label_map: the label map, or the mask per structure when structures may overlap (``layout``).
        sidecar: its JSON sidecar.
        probability_maps: one float map per query, in label order (empty unless the result holds them).
        uncertainty_maps: one float map per query of the flip-TTA standard deviation (empty without it).
    """

    label_map: Path
    sidecar: Path
    probability_maps: list[Path] = field(default_factory=list)
    uncertainty_maps: list[Path] = field(default_factory=list)


def label_map_stem(path: str | Path) -> tuple[Path, str]:
    """Split a label map path into (path without suffix, suffix).

    Raises:
        ValueError: the path does not end in one of :data:`LABEL_MAP_SUFFIXES` (the message names it).
    """
    path = Path(path)
    name = path.name
    for suffix in LABEL_MAP_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return path.with_name(name[: -len(suffix)]), suffix
    raise ValueError(f"{path}: the label map must end in one of {', '.join(LABEL_MAP_SUFFIXES)}")


def write_segmentation(
    path: str | Path, result: SegmentationResult, input: str | Path | None = None
) -> SegmentationFiles:
    """Write ``result``'s label map on its input volume's grid, its JSON sidecar and any probability /
    uncertainty maps (``<stem>_probability_01_liver.nii.gz``, ``<stem>_uncertainty_01_liver.nii.gz``, ...).

    What :meth:`SegmentationResult.save` runs.

    Args:
        path: the label map to write (``.nii.gz``, ``.nii``, ``.nrrd``, or ``.seg.nrrd`` for a Slicer
            segmentation file with names, colours and terminology); the sidecar is ``<stem>.json`` beside it.
            Existing files are replaced (the label map atomically).
        result: the output of ``Segmenter.segment`` (it holds its input volume and provenance).
        input: what to record as the input path (default: the provenance's, i.e. ``volume.source``).

    Returns:
        The paths written.

    Raises:
        ValueError: the path has another ending, or the result holds no input volume (it was not made by
            ``Segmenter.segment``).
    """
    from TextGuidedSegLib.io import save_label_map, save_masks, save_volume

    output = Path(path)
    stem, suffix = label_map_stem(output)
    volume = result.volume
    if volume is None:
        raise ValueError(
            f"{output}: this SegmentationResult holds no input volume (result.volume), so its grid is "
            "unknown; write results made by Segmenter.segment"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".seg.nrrd":
        from TextGuidedSegLib.io.seg_nrrd import save_seg_nrrd

        data = result.labels if result.masks is None else list(result.masks)  # overlaps: layers
        save_seg_nrrd(output, data, result.segments, reference=volume)
        suffix = ".nrrd"  # probability / uncertainty maps are plain NRRD volumes
    elif result.masks is not None:
        save_masks(output, result.masks, reference=volume)
    else:
        save_label_map(output, result.labels, reference=volume)
    layout = "labels" if result.masks is None else "masks"
    sidecar = result.sidecar(label_map=output.name, layout=layout)
    if input is not None:
        sidecar["input"] = {**sidecar.get("input", {}), "path": str(input)}
    maps: dict[str, list[Path]] = {"probability": [], "uncertainty": []}
    for kind, values in (("probability", result.probabilities), ("uncertainty", result.uncertainty)):
        if values is None:
            continue
        for segment, channel in zip(result.segments, values, strict=True):
            key = segment.class_name or f"query{segment.label_id}"
            name = f"{stem}_{kind}_{segment.label_id:02d}_{key}{suffix}"
            maps[kind].append(save_volume(Path(name), channel, volume))
            sidecar["segments"][segment.label_id - 1][f"{kind}_map"] = maps[kind][-1].name
    sidecar_path = Path(f"{stem}.json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    logger.debug("wrote %s and %s", output, sidecar_path)
    return SegmentationFiles(
        label_map=output,
        sidecar=sidecar_path,
        probability_maps=maps["probability"],
        uncertainty_maps=maps["uncertainty"],
    )
