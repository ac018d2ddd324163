"""Reading CT volumes: NIfTI with nibabel, NRRD and DICOM series with SimpleITK."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from TextGuidedSegLib.io.itk_geometry import sitk_to_array_affine
from TextGuidedSegLib.io.volume import READ_EXTENSIONS, Volume, VolumeReadError, file_format

logger = logging.getLogger(__name__)

_SERIES_UID_TAG = "0020|000e"
_SERIES_DESCRIPTION_TAG = "0008|103e"
_MODALITY_TAG = "0008|0060"


def load_volume(path: str | Path) -> Volume:
    """Read a 3D scalar volume and its voxel-to-RAS geometry.

    Supported inputs:

    - NIfTI (``.nii``, ``.nii.gz``), read with nibabel; values are scaled by the header's slope/intercept.
      The affine is nibabel's (sform when its code is set, else qform); ``Volume.header`` keeps the header.
    - NRRD (``.nrrd``, ``.nhdr``), read with SimpleITK.
    - DICOM: a folder holding exactly one series, or one ``.dcm`` file (which stands for its whole series in
      that folder), read with SimpleITK's ``ImageSeriesReader``; slices are sorted by GDCM (image position
      along the slice normal); values are the rescaled ones (HU for CT).

    SimpleITK's LPS geometry and ``(K, J, I)`` arrays are converted in
    :func:`TextGuidedSegLib.io.itk_geometry.sitk_to_array_affine` only.

    Args:
        path: a file or a DICOM folder.

    Returns:
        A :class:`Volume` with an ``(I, J, K)`` float32 array and a ``(4, 4)`` voxel-to-RAS affine.

    Raises:
        VolumeReadError: the path is missing, has an unsupported ending, is an empty folder or holds no or
            several DICOM series, cannot be read, or is not a 3D scalar image (4D, vector or RGB voxels). The
            message names the path.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeReadError(f"cannot read volume {path}: no such file or folder")
    if path.is_dir():
        return _load_dicom_series(path, selected_file=None)
    kind = file_format(path)
    if kind == "nifti":
        return _load_nifti(path)
    if kind == "nrrd":
        return _load_with_sitk(path)
    if kind == "dicom":
        return _load_dicom_series(path.parent, selected_file=path)
    raise VolumeReadError(
        f"cannot read volume {path}: unsupported file type {''.join(path.suffixes) or '(no extension)'}; "
        f"supported are {', '.join(READ_EXTENSIONS)} and folders holding one DICOM series"
    )


def _load_nifti(path: Path) -> Volume:
    """Read a NIfTI-1/2 file with nibabel (float32, slope/intercept applied)."""
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for corrupt or non-NIfTI files
        raise VolumeReadError(f"cannot read volume {path}: not a readable NIfTI file ({error})") from error
    data_dtype = np.dtype(image.get_data_dtype())
    if data_dtype.fields is not None or data_dtype.kind not in "biuf":
        raise VolumeReadError(
            f"cannot read volume {path}: voxels of type {data_dtype} are not scalar; "
            "a CT volume must hold one number per voxel"
        )
    shape = tuple(int(s) for s in image.shape)
    while len(shape) > 3 and shape[-1] == 1:  # (I, J, K, 1) is a 3D volume stored as 4D
        shape = shape[:-1]
    if len(shape) != 3:
        raise VolumeReadError(
            f"cannot read volume {path}: expected a 3D volume, got {len(image.shape)}D with shape "
            f"{image.shape}; split 4D series (time points, channels) into 3D files first"
        )
    try:
        array = image.get_fdata(dtype=np.float32).reshape(shape)
    except Exception as error:
        raise VolumeReadError(f"cannot read volume {path}: voxel data unreadable ({error})") from error
    if not np.isfinite(image.affine).all():  # NaN/Inf in pixdim, quatern_* or srow_*: no position for a voxel
        raise VolumeReadError(
            f"cannot read volume {path}: the header's voxel-to-world affine holds NaN or infinite values "
            f"(pixdim, quaternion or srow fields): {image.affine.tolist()}"
        )
    logger.debug("read NIfTI %s: shape %s, axis codes %s", path, shape, nib.aff2axcodes(image.affine))
    return Volume(
        array=array,
        affine=np.asarray(image.affine, dtype=np.float64),
        source=str(path),
        header=image.header.copy(),
    )


def _sitk_image_to_volume(image: sitk.Image, source: Path) -> Volume:
    """Check that a SimpleITK image is 3D and scalar, then convert it (via the single LPS -> RAS helper)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(
            f"cannot read volume {source}: voxels have {image.GetNumberOfComponentsPerPixel()} components "
            f"({image.GetPixelIDTypeAsString()}); a CT volume must hold one number per voxel"
        )
    size = tuple(image.GetSize())
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
    elif image.GetDimension() != 3:
        raise VolumeReadError(
            f"cannot read volume {source}: expected a 3D volume, got {image.GetDimension()}D with size {size}"
        )
    array, affine = sitk_to_array_affine(image)
    return Volume(array=array.astype(np.float32, copy=False), affine=affine, source=str(source), header=None)


def _load_with_sitk(path: Path) -> Volume:
    """Read a single-file image (NRRD) with SimpleITK."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise VolumeReadError(f"cannot read volume {path}: SimpleITK could not read it ({error})") from error
    logger.debug("read %s with SimpleITK: size %s", path, image.GetSize())
    return _sitk_image_to_volume(image, path)


def _dicom_tag(first_file: str, tag: str) -> str:
    """A DICOM tag's value (``"gggg|eeee"``) in one file, ``""`` when absent or unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(first_file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    if reader.HasMetaDataKey(tag):
        return reader.GetMetaData(tag).strip().rstrip("\x00")
    return ""


def _series_description(first_file: str) -> str:
    """The Series Description (0008,103E) of a DICOM file, ``""`` when absent or unreadable."""
    return _dicom_tag(first_file, _SERIES_DESCRIPTION_TAG)


def _series_uid_of_file(path: Path) -> str:
    """The Series Instance UID (0020,000E) of one DICOM file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise VolumeReadError(f"cannot read volume {path}: not a readable DICOM file ({error})") from error
    if not reader.HasMetaDataKey(_SERIES_UID_TAG):
        raise VolumeReadError(f"cannot read volume {path}: the DICOM file has no Series Instance UID")
    return reader.GetMetaData(_SERIES_UID_TAG).strip().rstrip("\x00")


def _load_dicom_series(folder: Path, selected_file: Path | None) -> Volume:
    """Read the one DICOM series in ``folder`` (or the series of ``selected_file``), GDCM-sorted."""
    where = selected_file if selected_file is not None else folder
    if selected_file is None and not any(folder.iterdir()):
        raise VolumeReadError(f"cannot read volume {folder}: the folder is empty (expected one DICOM series)")
    series_uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if selected_file is not None:
        uid = _series_uid_of_file(selected_file)
        if uid not in series_uids:
            raise VolumeReadError(f"cannot read volume {where}: GDCM finds no series {uid} in {folder}")
    elif not series_uids:
        raise VolumeReadError(f"cannot read volume {folder}: the folder holds no DICOM series")
    elif len(series_uids) > 1:
        listing = []
        for series_uid in series_uids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
            description = _series_description(files[0]) if files else ""
            description = description or "no description"
            listing.append(f"  {series_uid} ({description}, {len(files)} files, e.g. {files[0]})")
        raise VolumeReadError(
            f"cannot read volume {folder}: the folder holds {len(series_uids)} DICOM series; "
            "choose one by passing one of its files:\n" + "\n".join(listing)
        )
    else:
        uid = series_uids[0]
    file_names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(file_names)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeReadError(
            f"cannot read volume {where}: the DICOM series {uid} is unreadable ({error})"
        ) from error
    modality = _dicom_tag(file_names[0], _MODALITY_TAG) or None
    logger.debug(
        "read DICOM series %s (%s) from %s: %d files, size %s",
        uid,
        modality,
        folder,
        len(file_names),
        image.GetSize(),
    )
    volume = _sitk_image_to_volume(image, folder)
    volume.modality = modality
    return volume
