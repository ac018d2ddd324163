"""A volume made ready for the model (model space, intensity, foreground crop), kept to re-prompt it."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.transforms import Orientation, Spacing
from monai.transforms.utils import convert_applied_interp_mode

from TextGuidedSegLib.bundle import PreprocessConfig
from TextGuidedSegLib.inference.feature_cache import FeatureCache
from TextGuidedSegLib.inference.resample import uncrop
from TextGuidedSegLib.io import Volume

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class PreparedVolume:
    """A volume in model space and windowed: the model's input, reusable for any prompt on that volume.

    Attributes:
        image: ``(1, 1, x, y, z)`` float32 tensor (RAS, the bundle's spacing, HU window or intensity steps),
            cropped to the foreground box ``crop`` of the model-space grid.
        affine: ``(4, 4)`` voxel-to-RAS affine of the whole model-space grid.
        grid_shape: ``(X, Y, Z)`` of the whole model-space grid.
        crop: where ``image`` lies in that grid (three slices; the whole grid without cropping).
        source_shape: ``(I, J, K)`` of the volume it was made from.
        source_affine: ``(4, 4)`` voxel-to-RAS affine of that volume.
        spacing: model spacing (mm) it was resampled to.
        hu_window: HU window it was mapped through (when ``intensity`` is the default).
        intensity: the intensity steps it went through (JSON text), and ``interpolation`` the resampling mode.
        operations: MONAI's trace of the Orientation and Spacing it went through (``Invertd`` undoes these).
        label_maps: full class label maps on the input grid already computed from it (softmax models).
        features: encoder features of its sliding windows (FiLM models), so a new prompt skips the encoder.
    """

    image: torch.Tensor
    affine: np.ndarray
    grid_shape: tuple[int, int, int]
    crop: tuple[slice, slice, slice]
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    spacing: tuple[float, float, float]
    hu_window: tuple[float, float]
    intensity: str = ""
    interpolation: str = "bilinear"
    operations: tuple[dict[str, Any], ...] = ()
    label_maps: OrderedDict = field(default_factory=OrderedDict, compare=False, repr=False)
    features: FeatureCache = field(default_factory=FeatureCache, compare=False, repr=False)

    def matches(self, volume: Volume, preprocessing: PreprocessConfig) -> bool:
        """True when this was made from ``volume``'s grid with the given pre-processing."""
        return (
            tuple(self.source_shape) == tuple(volume.shape)
            and np.allclose(self.source_affine, volume.affine, atol=1e-6)
            and np.allclose(self.spacing, preprocessing.spacing)
            and np.allclose(self.hu_window, preprocessing.hu_window)
            and self.intensity == intensity_key(preprocessing)
            and self.interpolation == preprocessing.interpolation
        )

    def to_input_grid(self, data: torch.Tensor, nearest: bool) -> torch.Tensor:
        """``(C, X, Y, Z)`` on the whole model grid -> ``(C, I, J, K)`` on the input grid.

        MONAI's own inverse of the traced Spacing and Orientation (what ``Invertd`` runs), by nearest
        neighbour or with the forward interpolation, computed in ``Spacing``'s default float64.
        """
        operations = copy.deepcopy(list(self.operations))
        if nearest:
            operations = convert_applied_interp_mode(operations, mode="nearest", align_corners=None)
        plain = data.as_tensor() if isinstance(data, MetaTensor) else data
        meta = MetaTensor(plain, affine=torch.as_tensor(self.affine), applied_operations=operations)
        meta = Spacing(pixdim=self.spacing).inverse(meta)
        meta = Orientation(axcodes="RAS", labels=_RAS_LABELS).inverse(meta)
        return meta.as_tensor()

    def uncrop(self, data: torch.Tensor) -> torch.Tensor:
        """``(C, x, y, z)`` values on the crop -> ``(C, X, Y, Z)`` on the whole model grid, 0 outside."""
        return uncrop(data, self.grid_shape, self.crop)


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of windows ``sliding_window_inference`` runs over an image of ``image_size`` (spatial dims).

    MONAI pads an image smaller than the ROI up to it, then steps ``int(roi * (1 - overlap))`` (at least 1)
    along each axis, or one ROI where the axis equals it.
    """
    padded = [max(int(i), int(r)) for i, r in zip(image_size, roi_size, strict=True)]
    interval = [
        int(r) if p == int(r) else max(int(int(r) * (1.0 - overlap)), 1)
        for p, r in zip(padded, roi_size, strict=True)
    ]
    return len(dense_patch_slices(padded, [int(r) for r in roi_size], interval))


def intensity_key(preprocessing: PreprocessConfig) -> str:
    """The intensity steps of ``preprocessing`` as canonical JSON text."""
    return json.dumps(preprocessing.intensity_steps(), sort_keys=True)
