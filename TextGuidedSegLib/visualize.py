"""Overlay pictures: CT slices in a soft-tissue window with each segment's outline in its colour.

:func:`save_overlay` writes one PNG with two panels, an axial and a coronal slice through the centre of the
segmented voxels, and a legend with the segment names (and volumes). :func:`render_panels` returns the two
panels as RGB arrays, which is what the PNG shows (tests look at them).

Orientation. Panels follow the radiological convention: the patient's right is on the image's left, anterior
is up in the axial panel and superior is up in the coronal panel. Volumes come with a voxel-to-RAS affine
(+x = patient's Right, +y Anterior, +z Superior, see :class:`TextGuidedSegLib.io.Volume`); they are first
brought to the closest RAS axes with nibabel's orientation tools (``io_orientation``, ``ornt_transform``,
``apply_orientation``), so any input orientation (LPS, flipped, permuted) displays the same way. Oblique
rotations are ignored: this is a picture, not a resampling.

Each panel is resampled to square pixels (bilinear for the CT, nearest for the labels) so that millimetres
have the same length in both directions, and outlines are drawn at that resolution, :data:`OUTLINE_PX` pixels
wide, in the segment's terminology colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Soft-tissue window (level 40 HU, width 400 HU) as (low, high) HU.
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
#: Width of a segment outline in panel pixels.
OUTLINE_PX = 2
#: Longest side of a panel in pixels (before matplotlib scales it into its axes).
PANEL_PX = 480
#: Size of the written PNG in pixels (width, height), at :data:`DPI`.
FIGURE_PX = (1200, 640)
DPI = 100
#: Where the panels lie in the figure: (left, bottom, width, height) as fractions of the figure (about
#: 530 x 490 pixels each, so a :data:`PANEL_PX` panel is shown at least at its own resolution).
AXIAL_RECT = (0.03, 0.13, 0.44, 0.77)
CORONAL_RECT = (0.53, 0.13, 0.44, 0.77)


class SegmentLike(Protocol):
    """What a legend entry needs (``inference.SegmentInfo`` has it; ``volume_ml`` is shown when present)."""

    label_id: int
    name: str
    color: tuple[int, int, int]


@dataclass
class OverlayPanels:
    """The two pictures of an overlay.

    Attributes:
        axial: ``(H, W, 3)`` uint8 RGB axial slice; rows run anterior -> posterior, columns the patient's
            right -> left (radiological convention).
        coronal: ``(H, W, 3)`` uint8 RGB coronal slice; rows run superior -> inferior, columns the patient's
            right -> left.
        centre: ``(x, y, z)`` voxel index in the RAS-reoriented grid the slices go through (axial at ``z``,
            coronal at ``y``).
        pixel_mm: size of a panel pixel in mm (the same in both panels and both directions).
    """

    axial: np.ndarray
    coronal: np.ndarray
    centre: tuple[int, int, int]
    pixel_mm: float


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip and permute an ``(I, J, K)`` array onto the closest RAS axes.

    Returns:
        ``(X, Y, Z)`` array whose index increases towards the patient's Right, Anterior and Superior, and
        the ``(3,)`` voxel size in mm along those axes.
    """
    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))
    ras = nib.orientations.apply_orientation(np.asarray(array), transform)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = nib.affines.voxel_sizes(affine)
    return ras, spacing


def segment_centre(labels_ras: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the centre of mass of all labelled voxels; the grid's centre when there is none."""
    foreground = labels_ras > 0
    if not foreground.any():
        return tuple(int(n // 2) for n in labels_ras.shape)  # type: ignore[return-value]
    centre = ndimage.center_of_mass(foreground)
    return tuple(int(round(c)) for c in centre)  # type: ignore[return-value]


def _resample(plane: np.ndarray, spacing: tuple[float, float], pixel_mm: float, order: int) -> np.ndarray:
    """A 2D plane ``(rows, cols)`` with voxel size ``spacing`` -> square pixels of ``pixel_mm``.

    Output pixel ``o`` covers ``[o, o + 1) * pixel_mm`` from the plane's edge; its source position is the
    voxel coordinate of its centre. ``order`` 0 takes the voxel holding that point (labels), 1 interpolates.
    """
    size = [max(1, int(round(n * s / pixel_mm))) for n, s in zip(plane.shape, spacing, strict=True)]
    axes = [(np.arange(m) + 0.5) * pixel_mm / s for m, s in zip(size, spacing, strict=True)]
    if order == 0:
        rows, cols = (
            np.clip(np.floor(a).astype(int), 0, n - 1) for a, n in zip(axes, plane.shape, strict=True)
        )
        return plane[np.ix_(rows, cols)]
    grid = np.meshgrid(axes[0] - 0.5, axes[1] - 0.5, indexing="ij")
    return ndimage.map_coordinates(plane.astype(np.float32), grid, order=1, mode="nearest")


def _panel(
    ct: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float],
    pixel_mm: float,
    segments: Sequence[SegmentLike],
    window: tuple[float, float],
) -> np.ndarray:
    """One RGB panel: the windowed CT plane with each segment's outline painted in its colour."""
    low, high = window
    grey = np.clip((_resample(ct, spacing, pixel_mm, order=1) - low) / (high - low), 0.0, 1.0)
    rgb = np.repeat(np.rint(grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    plane = _resample(labels, spacing, pixel_mm, order=0)
    for segment in segments:
        mask = plane == segment.label_id
        if mask.any():
            outline = mask & ~ndimage.binary_erosion(mask, iterations=OUTLINE_PX, border_value=0)
            rgb[outline] = np.asarray(segment.color, dtype=np.uint8)
    return rgb


def render_panels(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    segments: Sequence[SegmentLike],
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
    centre: tuple[int, int, int] | None = None,
    panel_px: int = PANEL_PX,
) -> OverlayPanels:
    """The axial and coronal overlay panels of a CT and its label map.

    Args:
        image: ``(I, J, K)`` CT in HU.
        labels: ``(I, J, K)`` integer label map on the same grid (0 = background).
        affine: ``(4, 4)`` voxel-to-RAS affine of both.
        segments: the labels to outline: ``label_id``, ``name`` and RGB ``color`` (0-255) each.
        window: (low, high) display window in HU.
        centre: ``(x, y, z)`` index in the RAS-reoriented grid to slice through; default the centre of mass of
            the labelled voxels (the grid's centre when nothing is labelled).
        panel_px: length in pixels of the longest side of the two slices' fields of view.

    Returns:
        The :class:`OverlayPanels`.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be 3D arrays on the same grid")
    if not window[0] < window[1]:
        raise ValueError(f"window must be (low, high) HU with low < high, got {window}")
    ct, spacing = reorient_to_ras(image, affine)
    lab, _ = reorient_to_ras(labels, affine)
    if centre is None:
        centre = segment_centre(lab)
    x, y, z = (int(np.clip(c, 0, n - 1)) for c, n in zip(centre, ct.shape, strict=True))
    sx, sy, sz = (float(s) for s in spacing)
    pixel_mm = max(n * s for n, s in zip(ct.shape, spacing, strict=True)) / panel_px
    # axial: rows = y reversed (anterior up), columns = x reversed (patient's right on the left)
    axial = _panel(ct[::-1, ::-1, z].T, lab[::-1, ::-1, z].T, (sy, sx), pixel_mm, segments, window)
    # coronal: rows = z reversed (superior up), columns = x reversed
    coronal = _panel(ct[::-1, y, ::-1].T, lab[::-1, y, ::-1].T, (sz, sx), pixel_mm, segments, window)
    return OverlayPanels(axial=axial, coronal=coronal, centre=(x, y, z), pixel_mm=pixel_mm)


def _show(axes, panel: np.ndarray, title: str, top: str, bottom: str) -> None:
    """Draw a panel without ticks, its title, and the orientation letters just outside its four sides."""
    axes.imshow(panel, interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(title, color="white", fontsize=11, pad=22)
    height, width = panel.shape[:2]
    style = {"color": "white", "fontsize": 12, "fontweight": "bold", "clip_on": False}
    axes.text(-6, (height - 1) / 2, "R", ha="right", va="center", **style)
    axes.text(width + 5, (height - 1) / 2, "L", ha="left", va="center", **style)
    axes.text((width - 1) / 2, -6, top, ha="center", va="bottom", **style)
    axes.text((width - 1) / 2, height + 5, bottom, ha="center", va="top", **style)


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    segments: Sequence[SegmentLike],
    title: str | None = None,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
    centre: tuple[int, int, int] | None = None,
) -> Path:
    """Write the overlay PNG (:data:`FIGURE_PX` pixels): axial and coronal panels, legend, optional title.

    Arguments as in :func:`render_panels`; the legend lists every segment (with its volume when the segment
    has ``volume_ml``), in its colour. ``title`` (e.g. the prompt, the bundle and any caveat of it) is
    written above the panels and as the PNG's ``Title`` text chunk. Uses matplotlib's Agg canvas.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    panels = render_panels(image, labels, affine, segments, window=window, centre=centre)
    figure = Figure(figsize=(FIGURE_PX[0] / DPI, FIGURE_PX[1] / DPI), dpi=DPI, facecolor="black")
    FigureCanvasAgg(figure)
    x, y, z = panels.centre
    _show(figure.add_axes(AXIAL_RECT), panels.axial, f"axial (slice z = {z})", "A", "P")
    _show(figure.add_axes(CORONAL_RECT), panels.coronal, f"coronal (slice y = {y})", "S", "I")
    handles = []
    for segment in segments:
        volume_ml = getattr(segment, "volume_ml", None)
        label = segment.name if volume_ml is None else f"{segment.name}  {volume_ml:.0f} mL"
        color = np.asarray(segment.color, dtype=float) / 255.0
        handles.append(Patch(facecolor=color, edgecolor=color, label=label))
    if handles:
        figure.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), max(4, math.ceil(len(handles) / 3))),  # at most 3 rows
            frameon=False,
            labelcolor="white",
            fontsize=11,
            bbox_to_anchor=(0.5, 0.0),
        )
    if title:
        figure.suptitle(title, color="white", fontsize=12, y=0.99)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, facecolor="black", metadata={"Title": title} if title else None)
    return path
