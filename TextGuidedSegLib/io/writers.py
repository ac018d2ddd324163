"""Writing label maps and float maps on exactly the grid of the volume they were computed from."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from TextGuidedSegLib.files import file_mode
from TextGuidedSegLib.io.itk_geometry import array_affine_to_sitk
from TextGuidedSegLib.io.volume import WRITE_EXTENSIONS, Volume, file_format

logger = logging.getLogger(__name__)

# NIfTI qform/sform code 1 ("scanner anatomical"), used when the reference was not read from a NIfTI file.
_SCANNER_CODE = 1


def save_label_map(path: str | Path, labels: np.ndarray, reference: Volume) -> Path:
    """Write an integer label map on exactly the reference volume's grid (same shape, same affine).

    Args:
        path: output file, ``.nii``, ``.nii.gz`` (nibabel) or ``.nrrd`` (SimpleITK). The folder is created
            when missing. A ``.seg.nrrd`` needs segment names: write it with :func:`save_seg_nrrd`.
        labels: ``(I, J, K)`` integer or bool array of label ids (0 = background), on ``reference``'s grid.
        reference: the volume the labels belong to; a NIfTI reference's qform/sform codes are kept.

    Returns:
        The written path. The file holds uint8 voxels when ``labels.max() < 256``, else uint16. It is written
        to a temporary file in the target folder and then renamed over ``path``, so an existing file is never
        left half-written.

    Raises:
        ValueError: ``labels`` is not on the reference grid (both shapes named), not integer, negative, above
            65535, or ``path`` has an unsupported ending (or ``.seg.nrrd``).
    """
    if Path(path).name.lower().endswith(".seg.nrrd"):
        raise ValueError(
            f"{path}: a .seg.nrrd is a Slicer segmentation with segment names, colours and terminology; "
            "write it with TextGuidedSegLib.io.save_seg_nrrd (or SegmentationResult.save), or use .nrrd"
        )
    labels = np.asarray(labels)
    _check_on_grid(labels, reference, "label map")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label map must hold integer label ids, got dtype {labels.dtype}; cast it first")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise ValueError(f"label ids must lie in [0, 65535], got [{low}, {high}]")
    dtype = np.uint8 if high < 256 else np.uint16
    return _write(Path(path), labels.astype(dtype), reference)


def save_volume(path: str | Path, array: np.ndarray, reference: Volume) -> Path:
    """Write a float map (e.g. probabilities) on exactly the reference volume's grid, as float32.

    Args:
        path: output file, ``.nii``, ``.nii.gz`` or ``.nrrd``.
        array: ``(I, J, K)`` real values on ``reference``'s grid.
        reference: the volume the map belongs to (see :func:`save_label_map`).

    Returns:
        The written path (written atomically, as :func:`save_label_map`).

    Raises:
        ValueError: ``array`` is not on the reference grid (both shapes named) or ``path`` has an unsupported
            ending.
    """
    array = np.asarray(array)
    _check_on_grid(array, reference, "array")
    return _write(Path(path), array.astype(np.float32), reference)


def save_masks(path: str | Path, masks: np.ndarray, reference: Volume) -> Path:
    """Write one binary mask per structure, which may overlap, in one file on the reference volume's grid.

    Args:
        path: ``.nii`` / ``.nii.gz``: a 4D ``(I, J, K, Q)`` uint8 NIfTI, structure ``q`` in ``[..., q]``;
            ``.nrrd``: a vector image of ``Q`` uint8 components per voxel (NRRD kind ``vector``).
        masks: ``(Q, I, J, K)`` bool (or 0/1 integers), each on ``reference``'s grid.
        reference: the volume the masks belong to (see :func:`save_label_map`).

    Returns:
        The written path (written atomically, as :func:`save_label_map`).

    Raises:
        ValueError: ``masks`` is not ``(Q, I, J, K)`` on the reference grid, holds values other than 0 and 1,
            or ``path`` has an unsupported ending.
    """
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[0] < 1:
        raise ValueError(f"{path}: masks must be (Q, I, J, K) with Q >= 1, got shape {masks.shape}")
    _check_on_grid(masks[0], reference, "mask")
    if masks.dtype != np.bool_ and not (
        np.issubdtype(masks.dtype, np.integer) and np.isin(masks, (0, 1)).all()
    ):
        raise ValueError(f"{path}: masks must be bool or hold only 0 and 1, got dtype {masks.dtype}")
    return _write(Path(path), np.moveaxis(masks.astype(np.uint8), 0, -1), reference)


def _check_on_grid(array: np.ndarray, reference: Volume, what: str) -> None:
    if array.shape != reference.shape:
        raise ValueError(
            f"{what} shape {array.shape} does not match the reference volume's shape {reference.shape} "
            f"({reference.source or 'in memory'}); resample it onto the reference grid first"
        )


def _write(path: Path, array: np.ndarray, reference: Volume) -> Path:
    """Write ``array`` on ``reference``'s grid to a temporary file beside ``path``, then rename it."""
    kind = file_format(path)
    if kind not in ("nifti", "nrrd") or path.name.lower().endswith(".nhdr"):
        raise ValueError(
            f"cannot write {path}: unsupported file type {''.join(path.suffixes) or '(no extension)'}; "
            f"supported are {', '.join(WRITE_EXTENSIONS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=ending)
    os.close(handle)
    try:
        if kind == "nifti":
            _write_nifti(Path(temporary), array, reference)
        else:
            sitk.WriteImage(_sitk_image(array, reference), temporary, True)
        os.chmod(temporary, file_mode(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    source = reference.source or "memory"
    logger.info("wrote %s %s (%s) on the grid of %s", path, array.shape, array.dtype, source)
    return path


def _sitk_image(array: np.ndarray, reference: Volume) -> sitk.Image:
    """``(I, J, K)`` -> a scalar image, ``(I, J, K, C)`` -> a vector image of C components, on the grid."""
    if array.ndim == 3:
        return array_affine_to_sitk(array, reference.affine)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0, 3)), isVector=True)
    image.CopyInformation(array_affine_to_sitk(array[..., 0], reference.affine))
    return image


def _write_nifti(path: Path, array: np.ndarray, reference: Volume) -> None:
    """Save as NIfTI with the reference affine as qform and sform, keeping a NIfTI reference's codes."""
    header = reference.header
    if isinstance(header, nib.Nifti1Header):  # Nifti2Header derives from Nifti1Header
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        qform_code = int(header["qform_code"])
        sform_code = int(header["sform_code"])
        header = header.copy()
        header["cal_min"] = 0
        header["cal_max"] = 0
    else:
        image_class, header = nib.Nifti1Image, None
        qform_code = sform_code = _SCANNER_CODE
    image = image_class(array, reference.affine, header=header)
    image.set_data_dtype(array.dtype)
    image.header.set_slope_inter(None, None)  # store values as they are, no scaling
    image.set_qform(reference.affine, code=qform_code)
    image.set_sform(reference.affine, code=sform_code)
    nib.save(image, path)
