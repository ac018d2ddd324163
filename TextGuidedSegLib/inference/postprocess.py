"""Post-processing of binary masks on a volume's own grid: largest component, body mask, left/right split.

Masks are numpy ``(I, J, K)`` arrays (bool or uint8 in {0, 1}) on the grid of a
:class:`~TextGuidedSegLib.io.Volume`. Connected components come from ``scipy.ndimage.label`` (MONAI's
``KeepLargestConnectedComponent`` needs scikit-image or cuCIM for numpy input, which the library does not
depend on).

Laterality convention: world coordinates are RAS+ millimetres (nibabel/NIfTI), where **+x points to the
patient's Right** (+y Anterior, +z Superior). DICOM/ITK use LPS, where +x points to the patient's Left; the
two differ by the sign of x and y, and :mod:`TextGuidedSegLib.io` converts LPS to RAS when reading. The world
(patient) coordinate system is attached to the patient, so this holds for supine, prone and any voxel
orientation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from TextGuidedSegLib.io import Volume

logger = logging.getLogger(__name__)


def keep_largest_component(mask: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """Keep the largest connected component of a binary mask (``scipy.ndimage.label``).

    Args:
        mask: ``(I, J, K)`` bool or integer array; non-zero voxels are foreground.
        connectivity: 1 (faces, 6-neighbourhood), 2 (faces and edges, 18) or 3 (also corners, 26).

    Returns:
        ``(I, J, K)`` array of ``mask``'s dtype holding only the largest component (value 1, or ``True``);
        all zeros when ``mask`` is empty. Ties go to the component found first in C order.
    """
    mask = np.asarray(mask)
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    structure = ndimage.generate_binary_structure(mask.ndim, min(connectivity, mask.ndim))
    components, count = ndimage.label(mask != 0, structure=structure)
    if count <= 1:
        return (components > 0).astype(mask.dtype)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = components == int(np.argmax(sizes))
    logger.debug("kept the largest of %d components (%d of %d voxels)", count, sizes.max(), int(sizes.sum()))
    return largest.astype(mask.dtype)


def body_mask(volume: Volume, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient's body: the largest connected region above ``threshold_hu``, holes filled slice by slice.

    Holes are filled in each axial slice (slices across the image axis closest to superior-inferior), so lungs
    and bowel gas cut open by the field of view's top or bottom are filled too. The table is excluded when it
    is not connected to the body.

    Args:
        volume: a CT volume in HU.
        threshold_hu: voxels strictly above this are tissue (-500 HU separates air from soft tissue).

    Returns:
        ``(I, J, K)`` bool mask on ``volume``'s grid; all False when no voxel exceeds the threshold.
    """
    body = keep_largest_component(volume.array > threshold_hu)
    axial_axis = _axial_axis(volume.affine)
    filled = np.empty_like(body)
    for index in range(body.shape[axial_axis]):
        slicer: list[slice | int] = [slice(None)] * 3
        slicer[axial_axis] = index
        filled[tuple(slicer)] = ndimage.binary_fill_holes(body[tuple(slicer)])
    return filled


def midline_x(affine: np.ndarray, body: np.ndarray) -> float:
    """World (RAS) x (mm) of the centroid of ``body`` (an ``(I, J, K)`` bool mask)."""
    body = np.asarray(body, dtype=bool)
    if not body.any():
        raise ValueError("the body mask is empty: cannot locate the mid-sagittal plane")
    centre_index = np.asarray(ndimage.center_of_mass(body))
    affine = np.asarray(affine, dtype=np.float64)
    return float(affine[0, :3] @ centre_index + affine[0, 3])


def split_by_laterality(
    mask: np.ndarray,
    side: Literal["right", "left"],
    affine: np.ndarray,
    body: np.ndarray | None = None,
    *,
    midline: float | None = None,
) -> np.ndarray:
    """Keep the voxels of ``mask`` on the patient's ``side`` of the mid-sagittal plane.

    The plane is ``x = x_mid`` in RAS world millimetres, where ``x_mid`` is the world x of the centroid of
    ``body`` (or, without ``body``, of the grid's centre voxel, right for a patient centred in the field of
    view). RAS +x is the patient's Right, so ``"right"`` keeps voxels with world ``x >= x_mid`` and ``"left"``
    those with ``x < x_mid``: the two halves partition the mask.

    Args:
        mask: ``(I, J, K)`` bool or integer array (non-zero = inside), e.g. both kidneys together.
        side: ``"right"`` or ``"left"``, the patient's side.
        affine: ``(4, 4)`` voxel-to-RAS affine of the grid (``Volume.affine``; RAS, not LPS).
        body: optional ``(I, J, K)`` bool body mask (see :func:`body_mask`) locating the mid-sagittal plane.
        midline: the plane's world x (:func:`midline_x`) instead of ``body``, e.g. for a box of a larger grid.

    Returns:
        ``(I, J, K)`` array of ``mask``'s dtype, zero outside the chosen side.
    """
    mask = np.asarray(mask)
    affine = np.asarray(affine, dtype=np.float64)
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left' (the patient's side), got {side!r}")
    if mask.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(f"expected an (I, J, K) mask and a (4, 4) affine, got {mask.shape}, {affine.shape}")
    if midline is not None:
        x_mid = float(midline)
    elif body is not None:
        if np.shape(body) != mask.shape:
            raise ValueError(f"body mask shape {np.shape(body)} does not match the mask shape {mask.shape}")
        x_mid = midline_x(affine, body)
    else:
        centre_index = (np.asarray(mask.shape, dtype=np.float64) - 1.0) / 2.0
        x_mid = float(affine[0, :3] @ centre_index + affine[0, 3])
    i, j, k = (np.arange(n, dtype=np.float64) for n in mask.shape)
    world_x = (
        affine[0, 0] * i[:, None, None] + affine[0, 1] * j[None, :, None] + affine[0, 2] * k[None, None, :]
    ) + affine[0, 3]
    keep = world_x >= x_mid if side == "right" else world_x < x_mid
    logger.debug("mid-sagittal plane at RAS x = %.1f mm; kept the patient's %s side", x_mid, side)
    return np.where(keep, mask, 0).astype(mask.dtype)


def _axial_axis(affine: np.ndarray) -> int:
    """Index of the voxel axis closest to the world superior-inferior (z) direction."""
    directions = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    directions = directions / np.linalg.norm(directions, axis=0, keepdims=True)
    return int(np.argmax(directions[2]))


def threshold_maps(maps: Sequence[np.ndarray], threshold: float) -> np.ndarray:
    """``(Q, I, J, K)`` bool: each query's own mask, ``maps[q] >= threshold``, from ``Q`` (I, J, K)
    probability maps computed one at a time (a lazy ``ProbabilityMaps`` never holds two float maps)."""
    masks = None
    for q in range(len(maps)):
        values = np.asarray(maps[q])
        if masks is None:
            masks = np.zeros((len(maps), *values.shape), dtype=bool)
        np.greater_equal(values, threshold, out=masks[q])
    if masks is None:
        raise ValueError("threshold_maps: no probability map given")
    return masks
