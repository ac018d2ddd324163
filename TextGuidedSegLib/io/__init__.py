"""Reading CT volumes (NIfTI, NRRD, DICOM series) and writing label maps on the input grid.

A :class:`Volume` is an ``(I, J, K)`` float32 array with a ``(4, 4)`` voxel-to-RAS millimetre affine.
SimpleITK's LPS geometry and ``(K, J, I)`` arrays are converted in :mod:`TextGuidedSegLib.io.itk_geometry`
only. :func:`save_seg_nrrd` writes 3D Slicer segmentation files (names, colours, terminology).
"""

from TextGuidedSegLib.io.readers import load_volume
from TextGuidedSegLib.io.seg_nrrd import save_seg_nrrd
from TextGuidedSegLib.io.volume import READ_EXTENSIONS, WRITE_EXTENSIONS, Volume, VolumeReadError
from TextGuidedSegLib.io.writers import save_label_map, save_masks, save_volume

__all__ = [
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "Volume",
    "VolumeReadError",
    "load_volume",
    "save_label_map",
    "save_masks",
    "save_seg_nrrd",
    "save_volume",
]
