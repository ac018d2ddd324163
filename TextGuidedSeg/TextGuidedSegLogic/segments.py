"""Writing a segmentation result into segments: names, colours, terminology and labelmaps.

Both the module panel and the "Text prompt" Segment Editor effect write through :func:`write_segments`; they
differ only in how a labelmap reaches a segment (``modify``): the panel replaces the segment's labelmap
(:func:`replace_labelmap`), the effect calls the editor's ``modifySegmentByLabelmap``, which honours the
editable area and overwrite settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import slicer
import vtk

from .nodes import oriented_labelmap

if TYPE_CHECKING:
    from TextGuidedSegLib.inference import SegmentInfo

ModifySegment = Callable[[str, Any], None]
"""``modify(segment_id, labelmap)``: put a binary ``vtkOrientedImageData`` into the segment ``segment_id``."""


@dataclass
class SegmentTarget:
    """Where one result segment is written.

    Attributes:
        info: the result segment (name, label id, colour, terminology).
        segment_id: an existing segment to write into, None for a new segment.
        keep_properties: keep the existing segment's name, colour and terminology (the effect's selected
            segment); otherwise they are set from ``info``.
    """

    info: SegmentInfo
    segment_id: str | None = None
    keep_properties: bool = False


def terminology_tag_name() -> str:
    """The segment tag Slicer keeps the terminology entry string in (``"TerminologyEntry"``)."""
    return slicer.vtkSegment.GetTerminologyEntryTagName()


def segment_terminology(segment: Any) -> str | None:
    """The terminology entry string of a segment, None when it has none."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(terminology_tag_name(), value) and str(value) else None


def apply_segment_info(segment: Any, info: SegmentInfo) -> None:
    """Set a segment's name, colour (0-1 floats from the 0-255 ``info.color``) and terminology entry."""
    segment.SetName(info.name)
    segment.SetColor(*(channel / 255.0 for channel in info.color))
    if info.terminology:
        segment.SetTag(terminology_tag_name(), info.terminology)
    else:
        segment.RemoveTag(terminology_tag_name())


def find_segment_by_name(segmentation: Any, name: str) -> str | None:
    """The ID of the first segment named ``name`` (case-insensitive), None when there is none."""
    wanted = name.strip().casefold()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        if segmentation.GetSegment(segment_id).GetName().strip().casefold() == wanted:
            return segment_id
    return None


def conflicting_names(segmentation_node: Any, names: Sequence[str]) -> list[str]:
    """The names in ``names`` that a segment of ``segmentation_node`` already has."""
    if segmentation_node is None:
        return []
    segmentation = segmentation_node.GetSegmentation()
    return [name for name in names if find_segment_by_name(segmentation, name) is not None]


def plan_segments(
    segmentation: Any, infos: Sequence[SegmentInfo], selected_segment_id: str | None = None
) -> list[SegmentTarget]:
    """Decide which segment each result segment goes to.

    One structure and a selected segment: the selected segment, keeping its name and colour (the effect's
    "fill the selected segment"). Otherwise one segment per structure: the existing segment of that name,
    or a new one.
    """
    if selected_segment_id and len(infos) == 1:
        if segmentation.GetSegment(selected_segment_id) is None:
            raise ValueError(f"the selected segment {selected_segment_id!r} is not in the segmentation")
        return [SegmentTarget(info=infos[0], segment_id=selected_segment_id, keep_properties=True)]
    return [
        SegmentTarget(info=info, segment_id=find_segment_by_name(segmentation, info.name)) for info in infos
    ]


def replace_labelmap(segmentation_node: Any) -> ModifySegment:
    """A ``modify`` that replaces a segment's whole labelmap (no editor masking)."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic

    def modify(segment_id: str, labelmap: Any) -> None:
        if not logic.SetBinaryLabelmapToSegment(
            labelmap, segmentation_node, segment_id, logic.MODE_REPLACE, labelmap.GetExtent()
        ):
            raise RuntimeError(f"could not write the labelmap of segment {segment_id}")

    return modify


def write_segments(
    segmentation_node: Any,
    labels: np.ndarray,
    infos: Sequence[SegmentInfo],
    affine: np.ndarray,
    modify: ModifySegment,
    selected_segment_id: str | None = None,
    extent_start: tuple[int, int, int] = (0, 0, 0),
    masks: np.ndarray | None = None,
) -> list[str]:
    """Write each result segment's mask (``labels == info.label_id``, or its own mask from ``masks``) into
    its segment; return their IDs.

    Segments may overlap (a tumour inside its organ): Slicer's ``SetBinaryLabelmapToSegment`` (through
    ``vtkSegmentationModifier::ModifyBinaryLabelmap``) moves a segment whose new labelmap overlaps another
    segment of its shared labelmap to a layer of its own, so both keep the shared voxels.

    Args:
        segmentation_node: the segmentation to write into.
        labels: ``(I, J, K)`` label map of the result, on ``affine``'s grid.
        infos: the result segments, in label order.
        affine: ``(4, 4)`` voxel-to-RAS of ``labels`` in the segmentation node's coordinates.
        modify: how a labelmap reaches a segment (:func:`replace_labelmap`, or the editor's masked write).
        selected_segment_id: the effect's selected segment (see :func:`plan_segments`).
        extent_start: first voxel index of the grid ``labels`` came from (the editor's aligned source
            volume may not start at 0), so each labelmap has exactly that grid.
        masks: ``(Q, I, J, K)`` bool, each query's own mask (``SegmentationResult.masks``, set when the
            structures may overlap); segment ``info`` takes ``masks[info.label_id - 1]``.
    """
    segmentation = segmentation_node.GetSegmentation()
    segment_ids = []
    for target in plan_segments(segmentation, infos, selected_segment_id):
        info = target.info
        segment_id = target.segment_id
        if segment_id is None:
            segment_id = segmentation.AddEmptySegment("", info.name, [c / 255.0 for c in info.color])
        if not target.keep_properties:
            apply_segment_info(segmentation.GetSegment(segment_id), info)
        mask = labels == info.label_id if masks is None else masks[info.label_id - 1]
        modify(segment_id, oriented_labelmap(mask, affine, extent_start))
        segment_ids.append(segment_id)
    return segment_ids
