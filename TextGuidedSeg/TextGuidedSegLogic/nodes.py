"""The Slicer boundary: volume nodes and oriented images <-> ``(I, J, K)`` arrays with a voxel-to-RAS affine.

Slicer stores voxels ``k``-slowest: ``slicer.util.arrayFromVolume`` returns ``(K, J, I)`` arrays and a
``vtkImageData`` buffer is ``I``-fastest. The library works on ``(I, J, K)`` arrays. :func:`swap_ijk_kji` is
the one place that converts between the two orders (the transpose is its own inverse); every other function
here goes through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

if TYPE_CHECKING:
    from TextGuidedSegLib.io import Volume


def swap_ijk_kji(array: np.ndarray) -> np.ndarray:
    """``(I, J, K)`` <-> ``(K, J, I)``: reverse the three spatial axes (a view, not a copy)."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    return array.transpose(2, 1, 0)


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a ``(4, 4)`` float64 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A ``(4, 4)`` array as a ``vtkMatrix4x4``."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volume_node: Any) -> np.ndarray:
    """The volume node's ``(4, 4)`` voxel ``(i, j, k)`` -> RAS matrix (in the node's own coordinates)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


def check_scalar_volume(volume_node: Any) -> None:
    """Raise ValueError unless ``volume_node`` is a scalar volume node holding a single-component image."""
    if volume_node is None:
        raise ValueError("no input volume: select a CT volume")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"{volume_node.GetName()} is a {volume_node.GetClassName()}, not a scalar CT volume")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError(f"volume {volume_node.GetName()} holds no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"volume {volume_node.GetName()} has {image.GetNumberOfScalarComponents()} components per voxel; "
            "a CT has one (convert colour or vector volumes to scalar first)"
        )


def volume_from_node(volume_node: Any) -> Volume:
    """The node's voxels as a library ``Volume``: an ``(I, J, K)`` float32 copy and the IJK-to-RAS affine.

    The copy is the worker thread's own: the node is never modified and may change while a job runs.
    """
    from TextGuidedSegLib.io import Volume

    check_scalar_volume(volume_node)
    voxels = swap_ijk_kji(slicer.util.arrayFromVolume(volume_node))
    return Volume(
        array=np.array(voxels, dtype=np.float32, copy=True),
        affine=ijk_to_ras(volume_node),
        source=volume_node.GetName(),
    )


def volume_from_oriented_image(image: Any, name: str = "") -> Volume:
    """A ``vtkOrientedImageData`` (e.g. the Segment Editor's aligned source volume) as a library ``Volume``.

    The extent need not start at 0: the affine maps array index ``(0, 0, 0)`` to the extent's first voxel.
    """
    from TextGuidedSegLib.io import Volume

    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    shape_kji = (z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    if min(shape_kji) < 1 or image.GetPointData().GetScalars() is None:
        raise ValueError(f"{name or 'the source volume'} holds no image data")
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    voxels = swap_ijk_kji(scalars.reshape(shape_kji))
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    affine = matrix_to_numpy(matrix)
    affine[:3, 3] = affine[:3, :3] @ np.array([x0, y0, z0], dtype=np.float64) + affine[:3, 3]
    return Volume(array=np.array(voxels, dtype=np.float32, copy=True), affine=affine, source=name)


def oriented_labelmap(
    mask: np.ndarray, affine: np.ndarray, extent_start: tuple[int, int, int] = (0, 0, 0)
) -> Any:
    """A binary ``(I, J, K)`` mask as a ``vtkOrientedImageData`` (uint8, 0/1) on ``affine``'s grid.

    Args:
        mask: ``(I, J, K)`` array, non-zero inside.
        affine: voxel-to-RAS of ``mask[0, 0, 0]``-based indices (as :func:`volume_from_oriented_image` gives).
        extent_start: first voxel index of the image's extent; with the extent of the image the mask was
            computed from, the labelmap has exactly that image's geometry (no resampling when it is applied).
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be (I, J, K), got shape {mask.shape}")
    start = np.asarray(extent_start, dtype=int)
    image = slicer.vtkOrientedImageData()
    extent = [int(v) for pair in zip(start, start + np.asarray(mask.shape) - 1, strict=True) for v in pair]
    image.SetExtent(*extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    buffer = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    buffer[:] = np.ascontiguousarray(swap_ijk_kji(mask != 0), dtype=np.uint8).ravel()
    image_to_world = np.array(affine, dtype=np.float64)
    image_to_world[:3, 3] -= image_to_world[:3, :3] @ start
    image.SetImageToWorldMatrix(numpy_to_matrix(image_to_world))
    return image


def add_volume_node(
    array: np.ndarray, affine: np.ndarray, name: str, like: Any | None = None, scene: Any | None = None
) -> Any:
    """Add a scalar volume node holding an ``(I, J, K)`` array on ``affine``'s grid; return the node.

    ``like``: a volume node whose parent transform the new node shares.
    """
    scene = scene or slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(numpy_to_matrix(affine))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(swap_ijk_kji(array)))
    node.CreateDefaultDisplayNodes()
    if like is not None and like.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(like.GetTransformNodeID())
    return node


def volume_fingerprint(volume_node: Any) -> tuple:
    """What identifies a volume's content: node ID, image-data modification time and geometry.

    Two equal fingerprints mean the same voxels on the same grid, so an encoded volume can be reused.
    """
    image = volume_node.GetImageData()
    return (
        volume_node.GetID(),
        image.GetMTime() if image is not None else 0,
        tuple(np.round(ijk_to_ras(volume_node), 9).ravel()),
        tuple(image.GetDimensions()) if image is not None else (),
    )


def oriented_image_fingerprint(image: Any, source_node: Any | None = None) -> tuple:
    """Fingerprint of an oriented image (the editor's aligned source volume), like :func:`volume_fingerprint`.

    With its source volume node, the voxels are identified by that node's fingerprint (the aligned copy is
    regenerated by the editor without the content changing) and the geometry by the image's own matrix and
    extent; without one, the image's modification time stands for its voxels.
    """
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    content = volume_fingerprint(source_node) if source_node is not None else ("mtime", image.GetMTime())
    return (content, tuple(np.round(matrix_to_numpy(matrix), 9).ravel()), tuple(image.GetExtent()))
