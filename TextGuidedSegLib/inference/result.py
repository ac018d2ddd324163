"""What a segmentation run returns: the label map, what each label means, optional probability maps, and
where it came from.

The JSON sidecar (:meth:`SegmentationResult.sidecar`, written beside the label map by
:meth:`SegmentationResult.save`) holds, in format :data:`SIDECAR_FORMAT_VERSION` = 2:

- ``format_version``, ``label_map`` (the label map's file name);
- ``input``: ``path``, ``shape``, ``spacing`` (mm) and ``phantom`` (one of this library's phantoms);
- ``prompt`` as typed and ``queries`` (``text``, ``class_name``, ``prompt`` each, in label order);
- ``bundle``: ``name``, ``version``, ``sha256`` (of the .zip, or of the folder's ``config.json``, which
  records every file's sha256), ``source`` and ``intended_use``;
- ``options``: ``SegmentationOptions.to_dict()`` (``SegmentationOptions.from_dict`` reads it back) and
  ``settings``: the values used (``overlap``, ``threshold``, ``sw_batch_size``, ``roi_size``,
  ``blend_mode``, ``padding_mode``: the options' or the bundle's);
- ``runtime``: ``device`` and ``precision`` actually used, ``textguidedseg``, ``torch``, ``monai`` and
  ``python`` versions;
- ``warnings``: caveats of the run (e.g. a phantom-trained bundle on a real CT), empty when none;
- ``layout``: what the label map file holds: ``"labels"`` (one exclusive label map) or, when the queried
  structures may overlap, ``"masks"`` (one mask per segment: a 4D file, ``[..., label_id - 1]``, or layers
  of a ``.seg.nrrd``), and then ``overlapping_segments``: the label id pairs that may overlap;
- ``segments``: label_id, name, class_name, prompt, text, color, terminology, voxels, volume_ml (each
  segment's own mask's, when the layout is ``"masks"``; and ``probability_map`` / ``uncertainty_map``
  file names when written).

Format 1 had ``input`` as a path string, ``bundle`` without sha256 and a top-level ``threshold`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from TextGuidedSegLib.io import Volume
from TextGuidedSegLib.taxonomy import StructureQuery

if TYPE_CHECKING:
    from TextGuidedSegLib.inference.outputs import SegmentationFiles

SIDECAR_FORMAT_VERSION = 2


@dataclass
class SegmentInfo:
    """One segment of a segmentation result: what it is and how large it came out.

    Attributes:
        label_id: value of this segment in the label map (1 = first query).
        name: display name ("Right Kidney", or the free text).
        class_name: taxonomy key, None for a free-text query.
        prompt: text the model was conditioned on.
        text: the words the user typed for it.
        color: recommended display colour, RGB 0-255.
        terminology: Slicer terminology entry string, None for free text.
        voxels: number of voxels in the label map.
        volume_ml: volume in millilitres.
    """

    label_id: int
    name: str
    class_name: str | None
    prompt: str
    text: str
    color: tuple[int, int, int]
    terminology: str | None
    voxels: int
    volume_ml: float


@dataclass
class SegmentationResult:
    """Output of ``Segmenter.segment``: a label map on the input grid plus what each label means.

    Attributes:
        labels: (I, J, K) uint8 (uint16 beyond 255 queries) label map on the input volume's grid; 0 is
            background, ``q + 1`` is query ``q``.
        segments: one entry per query, in label order.
        queries: the structure queries, in label order.
        probabilities: the sigmoid probabilities on the input grid, when requested: Q float32 (I, J, K) maps,
            a lazy ``ProbabilityMaps`` (each computed when indexed) or, for softmax models, an array.
        uncertainty: the same for the standard deviation of the probabilities over the test-time flips, when
            the segmenter ran with ``flip_tta``.
        masks: (Q, I, J, K) bool, each query's own mask on the input grid (query ``q``'s own threshold), set
            when the queried structures may overlap (a tumour or cyst and its host organ); None otherwise.
            ``labels`` stays the exclusive label map (each voxel to its most probable query).
        volume: the input volume (its grid is the label map's; ``save`` writes onto it).
        provenance: what produced the result (input, prompt, queries, bundle, options, settings, runtime,
            warnings), as the module docstring lists; filled by the ``Segmenter``.
    """

    labels: np.ndarray
    segments: list[SegmentInfo]
    queries: list[StructureQuery]
    probabilities: Sequence[np.ndarray] | None = None
    uncertainty: Sequence[np.ndarray] | None = None
    masks: np.ndarray | None = None
    volume: Volume | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """Caveats of the run (e.g. a bundle trained on phantoms only, on a real CT); empty when none."""
        return list(self.provenance.get("warnings", []))

    def save(self, path: str | Path) -> SegmentationFiles:
        """Write the label map on the input's grid, its JSON sidecar and any probability / uncertainty maps.

        ``path`` ends in ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.seg.nrrd`` (a Slicer segmentation file); the
        sidecar is ``<stem>.json`` beside it; existing files are replaced. Same files as ``textguidedseg
        segment`` (``outputs.write_segmentation``).
        """
        from TextGuidedSegLib.inference.outputs import write_segmentation

        return write_segmentation(path, self)

    def sidecar(self, **extra: Any) -> dict[str, Any]:
        """The JSON sidecar written beside a label map: provenance, then ``extra``, then the segments' names,
        codes, colours and volumes (keys in the module docstring)."""
        return {
            "format_version": SIDECAR_FORMAT_VERSION,
            **self.provenance,
            **extra,
            "segments": [
                {
                    "label_id": s.label_id,
                    "name": s.name,
                    "class_name": s.class_name,
                    "prompt": s.prompt,
                    "text": s.text,
                    "color": list(s.color),
                    "terminology": s.terminology,
                    "voxels": s.voxels,
                    "volume_ml": round(s.volume_ml, 3),
                }
                for s in self.segments
            ],
        }


# Colours for free-text segments, which have no terminology entry.
_FREE_TEXT_COLORS = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
]


def segment_infos(
    labels: np.ndarray,
    queries: Sequence[StructureQuery],
    volume: Volume,
    masks: np.ndarray | None = None,
) -> list[SegmentInfo]:
    """Names, codes, colours and volumes of the segments in ``labels``, or of each query's own ``masks``
    ((Q, I, J, K) bool) when given."""
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    if masks is not None:
        counts = np.array([0, *(int(np.count_nonzero(mask)) for mask in masks)])
    else:
        counts = np.bincount(labels.ravel(), minlength=len(queries) + 1)
    infos = []
    for q, query in enumerate(queries):
        structure = query.structure
        if structure is not None:
            color = tuple(structure.terminology.color)
            terminology = structure.terminology.slicer_entry()
        else:
            color = _FREE_TEXT_COLORS[q % len(_FREE_TEXT_COLORS)]
            terminology = None
        voxels = int(counts[q + 1])
        infos.append(
            SegmentInfo(
                label_id=q + 1,
                name=query.name,
                class_name=query.class_name,
                prompt=query.prompt,
                text=query.text,
                color=color,
                terminology=terminology,
                voxels=voxels,
                volume_ml=voxels * voxel_ml,
            )
        )
    return infos
