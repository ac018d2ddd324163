"""The one place where SimpleITK images meet the library's ``(I, J, K)`` array + voxel-to-RAS affine.

SimpleITK (ITK, DICOM, NRRD) describes a grid in world LPS millimetres (+x patient Left, +y Posterior,
+z Superior) through ``origin`` (world position of voxel centre ``(0, 0, 0)``), ``spacing`` and a
``direction`` cosine matrix whose columns are the world directions of the index axes. The library uses RAS
millimetres (+x Right, +y Anterior, +z Superior), as nibabel and NIfTI do. The two worlds differ by the sign
of x and y: ``affine_ras = diag(-1, -1, 1, 1) @ affine_lps`` (the matrix is its own inverse).

``sitk.GetArrayFromImage`` returns the voxels as ``(K, J, I)`` (slowest index first); the library's arrays are
``(I, J, K)``. Both conversions live here, in :func:`sitk_to_array_affine` and its inverse
:func:`array_affine_to_sitk`; no other module converts between LPS and RAS or transposes ITK arrays.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: ``diag(-1, -1, 1, 1)``: maps LPS world coordinates to RAS and RAS to LPS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_to_array_affine(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Convert a 3D scalar SimpleITK image to an ``(I, J, K)`` array and its voxel-to-RAS affine.

    Args:
        image: 3D, one component per voxel, geometry in LPS (as SimpleITK reads every format).

    Returns:
        ``(array, affine)``: ``array`` is ``(I, J, K)`` with the image's pixel type (index ``i`` runs
        fastest in ITK's buffer, i.e. along ``direction[:, 0]``); ``affine`` is ``(4, 4)`` float64 mapping
        voxel indices ``(i, j, k, 1)`` to RAS millimetres.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing[None, :]
    affine_lps[:3, 3] = image.GetOrigin()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (K, J, I) -> (I, J, K)
    return np.ascontiguousarray(array), LPS_TO_RAS @ affine_lps


def array_affine_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Inverse of :func:`sitk_to_array_affine`: an ``(I, J, K)`` array on a voxel-to-RAS affine to SimpleITK.

    Args:
        array: ``(I, J, K)`` voxel values; the image keeps the array's dtype.
        affine: ``(4, 4)`` voxel index -> RAS millimetres; its 3x3 part must be a rotation times per-axis
            spacing (no shear), as every affine read by ``load_volume`` is.

    Returns:
        A 3D SimpleITK image whose LPS origin, spacing and direction reproduce ``affine``.
    """
    if array.ndim != 3:
        raise ValueError(f"expected an (I, J, K) array, got shape {array.shape}")
    affine_lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing[None, :]
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # (I, J, K) -> (K, J, I)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in affine_lps[:3, 3]])
    image.SetDirection([float(d) for d in direction.ravel()])
    return image
