"""Geometry between a volume's own grid and the model's grid, and CT intensity windowing.

Model space is the volume reoriented to the closest RAS axes (MONAI ``Orientation(axcodes="RAS")``:
axis 0 points to the patient's Right, 1 Anterior, 2 Superior) and resampled to a fixed spacing (MONAI
``Spacing``). All grids follow the nibabel/MONAI convention: an affine maps voxel *centres* ``(i, j, k)``
(0-based) to RAS mm, and resampling uses ``align_corners=False``, under which MONAI converts between two grids
through their affines so that a field linear in world coordinates is reproduced exactly at every voxel centre
inside the source grid (``Testing/test_io_geometry.py`` checks this both ways). ``Spacing`` puts the first
model voxel centre on the first original voxel centre (after reorientation) and covers the original extent to
within one model voxel, so :func:`to_original_space` (MONAI ``SpatialResample`` onto ``volume.affine`` and
``volume.shape``) undoes :func:`to_model_space` up to interpolation error. Original voxels beyond the last
model voxel centre take the nearest model value (``padding_mode="border"``), e.g. the third slice of a
1 mm, 3-slice volume resampled to 1.5 mm.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, ScaleIntensityRange, Spacing, SpatialResample
from monai.utils import MetaKeys, SpaceKeys

from TextGuidedSegLib.io import Volume

logger = logging.getLogger(__name__)

#: MONAI axis labels for RAS+ (nibabel's convention: the second letter of a pair is the positive direction).
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_MODES = ("bilinear", "nearest")


def to_model_space(
    volume: Volume, spacing: Sequence[float] = (1.5, 1.5, 1.5), mode: str = "bilinear"
) -> MetaTensor:
    """Reorient a volume to RAS and resample it to the model's voxel spacing, keeping Hounsfield units.

    Args:
        volume: the input volume, ``(I, J, K)`` on any orientation (RAS, LPS, ...).
        spacing: model voxel size in mm along the RAS axes ``(X, Y, Z)``.
        mode: ``"bilinear"`` for images and probabilities, ``"nearest"`` for label maps.

    Returns:
        ``(1, X, Y, Z)`` float32 MetaTensor, channel first, values as in ``volume.array`` (no windowing);
        ``.affine`` is the ``(4, 4)`` model-space voxel-to-RAS affine. A volume thinner than the model's ROI
        (e.g. 3 slices) stays thin: padding to the ROI is the sliding-window predictor's job.

    Example:
        >>> image = to_model_space(load_volume("ct.nii.gz"))  # doctest: +SKIP
        >>> image.shape, image.affine  # doctest: +SKIP
    """
    mode = _check_mode(mode)
    pixdim = tuple(float(s) for s in spacing)
    if len(pixdim) != 3 or min(pixdim) <= 0:
        raise ValueError(f"spacing must be three positive millimetre values, got {tuple(spacing)}")
    image = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32)[None]),
        affine=torch.as_tensor(volume.affine, dtype=torch.float64),
        meta={"filename_or_obj": volume.source, MetaKeys.SPACE: SpaceKeys.RAS},
    )
    image = Orientation(axcodes="RAS", labels=_RAS_LABELS)(image)
    image = Spacing(pixdim=pixdim, mode=mode, padding_mode="border", align_corners=False)(image)
    image = image.to(torch.float32)
    logger.debug(
        "model space: %s %s -> %s at %s mm",
        volume.shape,
        "".join(volume.orientation),
        tuple(image.shape[1:]),
        pixdim,
    )
    return image


def to_original_space(
    data: torch.Tensor,
    volume: Volume,
    mode: str = "bilinear",
    affine: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Resample model-space channels back onto the volume's own grid, voxel for voxel.

    Args:
        data: ``(C, X, Y, Z)`` model-space values (probabilities, logits or label maps), a MetaTensor carrying
            its model-space affine, or a plain tensor with ``affine`` given.
        volume: the volume whose grid (``volume.shape``, ``volume.affine``) the result lies on.
        mode: ``"bilinear"`` for probabilities or logits, ``"nearest"`` for label maps.
        affine: ``(4, 4)`` model-space voxel-to-RAS affine; required for a plain tensor. For a MetaTensor it
            may be omitted, and if given it must equal the MetaTensor's affine.

    Returns:
        ``(C, I, J, K)`` float32 numpy array on the original grid (same orientation as ``volume.array``).

    Raises:
        ValueError: ``data`` is not 4D, no affine is known, or two different affines are given.
    """
    mode = _check_mode(mode)
    if data.ndim != 4:
        raise ValueError(f"expected model-space data of shape (C, X, Y, Z), got shape {tuple(data.shape)}")
    src_affine = _source_affine(data, affine)
    plain = data.as_tensor() if isinstance(data, MetaTensor) else data
    image = MetaTensor(plain.detach().to(torch.float32), affine=src_affine)
    dst_affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    resampled = SpatialResample(mode=mode, padding_mode="border", align_corners=False, dtype=torch.float32)(
        image, dst_affine=dst_affine, spatial_size=volume.shape
    )
    return np.ascontiguousarray(resampled.detach().cpu().numpy(), dtype=np.float32)


def window_intensity(image: torch.Tensor, hu_window: tuple[float, float] = (-175.0, 250.0)) -> torch.Tensor:
    """Map a Hounsfield-unit window linearly onto [0, 1], clipping values outside it.

    Args:
        image: any shape, e.g. ``(1, X, Y, Z)`` from :func:`to_model_space`, values in HU.
        hu_window: ``(low, high)`` HU mapped to 0 and 1 (default: the abdominal soft-tissue window).

    Returns:
        A float32 tensor of the same shape (a MetaTensor keeps its metadata), values in [0, 1].
    """
    low, high = float(hu_window[0]), float(hu_window[1])
    if not high > low:
        raise ValueError(f"hu_window must be (low, high) with high > low, got {hu_window}")
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True, dtype=torch.float32)
    return scale(image)


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return mode


def _source_affine(data: torch.Tensor, affine: np.ndarray | torch.Tensor | None) -> torch.Tensor:
    """The model-space affine: the explicit one, else the MetaTensor's; both must agree when both exist."""
    meta_affine = None
    if isinstance(data, MetaTensor):
        meta_affine = torch.as_tensor(data.affine, dtype=torch.float64).cpu()
        if meta_affine.ndim == 3 and meta_affine.shape[0] == 1:  # affine of a batch of one
            meta_affine = meta_affine[0]
    if affine is None:
        if meta_affine is None:
            raise ValueError("data is a plain tensor: pass its model-space affine with affine=...")
        explicit = meta_affine
    else:
        explicit = torch.as_tensor(affine, dtype=torch.float64).cpu()
        if meta_affine is not None and not torch.allclose(explicit, meta_affine, atol=1e-4):
            raise ValueError(
                f"the affine= argument\n{explicit.numpy()}\n"
                f"differs from the MetaTensor's affine\n{meta_affine.numpy()}"
            )
    if explicit.shape != (4, 4):
        raise ValueError(f"the model-space affine must be (4, 4), got shape {tuple(explicit.shape)}")
    return explicit
