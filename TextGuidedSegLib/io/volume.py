"""The :class:`Volume` container, the I/O error type and the file formats the library reads and writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

#: File endings ``load_volume`` reads (a folder, or one file of it, holding a DICOM series is read too).
READ_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm")
#: File endings ``save_label_map`` and ``save_volume`` write (``.seg.nrrd`` files: :func:`io.save_seg_nrrd`).
WRITE_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd")


class VolumeReadError(ValueError):
    """A volume could not be read; the message names the file or folder and what is wrong with it."""


def file_format(path: Path) -> str | None:
    """Return ``"nifti"``, ``"nrrd"`` or ``"dicom"`` from the file name ending, ``None`` when unknown.

    The test is case-insensitive; ``.nii.gz`` is a NIfTI ending, ``.seg.nrrd`` and ``.nhdr`` are NRRD endings.
    """
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith(".dcm"):
        return "dicom"
    return None


@dataclass
class Volume:
    """A 3D image on its own voxel grid, as read from disk.

    Attributes:
        array: ``(I, J, K)`` float32 voxel values (Hounsfield units for CT), indexed by voxel index
            ``(i, j, k)``.
        affine: ``(4, 4)`` float64 matrix mapping a voxel index ``(i, j, k, 1)`` (voxel centres, 0-based) to
            world RAS+ millimetres ``(x, y, z, 1)``: +x is the patient's Right, +y Anterior, +z Superior (the
            nibabel / NIfTI convention; DICOM, ITK and NRRD ``left-posterior-superior`` have +x Left and +y
            Posterior).
        source: the path the volume was read from (the folder for a DICOM series), ``""`` when built in
            memory.
        header: the nibabel header for a NIfTI source (so label maps can be written back with the same
            qform/sform codes), ``None`` otherwise.
        modality: the DICOM Modality (0008,0060) of a DICOM source ("CT", "MR", ...), ``None`` when unknown;
            the input guard (``inference.guard``) refuses a modality other than CT.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = ""
    header: object | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (I, J, K), got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be a (4, 4) matrix, got shape {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid size ``(I, J, K)``."""
        i, j, k = self.array.shape
        return int(i), int(j), int(k)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Millimetres between voxel centres along ``i``, ``j`` and ``k`` (norms of the affine's columns)."""
        sx, sy, sz = nib.affines.voxel_sizes(self.affine)
        return float(sx), float(sy), float(sz)

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Where the axes ``i``, ``j``, ``k`` point, e.g. ``("R", "A", "S")`` or ``("L", "P", "S")``."""
        codes = nib.orientations.aff2axcodes(self.affine)
        return str(codes[0]), str(codes[1]), str(codes[2])
