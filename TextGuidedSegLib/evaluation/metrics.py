"""Overlap and boundary metrics of one predicted mask against its reference: Dice and surface Dice (NSD).

Both come from MONAI (``monai.metrics.compute_dice`` and ``compute_surface_dice``); this module fixes how
they are called and what an empty mask scores.

Empty-reference policy (the reference mask holds no voxel, e.g. a structure outside the field of view, or a
kidney after nephrectomy):

====================  =====================  ======  ======
reference             prediction             Dice    NSD
====================  =====================  ======  ======
empty                 empty                  1.0     1.0
empty                 not empty              0.0     0.0
not empty             empty                  0.0     0.0
====================  =====================  ======  ======

An empty prediction of an absent structure is a correct answer and scores 1; a prediction where the
reference has nothing is a false positive and scores 0. Dice follows MONAI's ``ignore_empty=False``; MONAI's
surface Dice returns NaN for two empty masks, which is mapped to 1.0 for the same reason. No metric is ever
NaN, so every (case, structure) pair counts in the means. The reference volume is reported beside the scores
(``reference_ml``), so empty-reference rows can be filtered out afterwards.

The surface Dice uses a tolerance in millimetres and the voxel spacing of the grid the masks lie on (the
CT's original grid): a boundary voxel counts as correct when the other boundary is at most ``tolerance_mm``
away. The default, :data:`DEFAULT_NSD_TOLERANCE_MM` = 3 mm, is TotalSegmentator's (Wasserthal et al., 2023)
and one voxel of a 3 mm CT.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_dice, compute_surface_dice

#: Default surface Dice tolerance in mm.
DEFAULT_NSD_TOLERANCE_MM = 3.0


@dataclass(frozen=True)
class MaskScores:
    """The scores of one predicted mask against its reference.

    Attributes:
        dice: Dice coefficient in [0, 1] (empty-reference policy in the module docstring).
        nsd: normalised surface Dice in [0, 1] at the given tolerance.
        reference_voxels: voxels in the reference mask.
        predicted_voxels: voxels in the predicted mask.
    """

    dice: float
    nsd: float
    reference_voxels: int
    predicted_voxels: int


def _as_masks(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check two masks of the same 2D/3D shape; return them as bool arrays."""
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction {prediction.shape} and reference {reference.shape} must lie on the same grid"
        )
    if prediction.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D (I, J[, K]), got shape {prediction.shape}")
    return prediction.astype(bool, copy=False), reference.astype(bool, copy=False)


def _batched(mask: np.ndarray) -> torch.Tensor:
    """``(I, J[, K])`` bool -> ``(1, 1, I, J[, K])`` float32 tensor (MONAI's one-hot, batch-first layout)."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice ``2 |P ∩ R| / (|P| + |R|)`` of two masks.

    Args:
        prediction: ``(I, J, K)`` (or 2D) bool or {0, 1} predicted mask.
        reference: the reference mask on the same grid.

    Returns:
        The Dice coefficient in [0, 1]; 1.0 when both masks are empty (MONAI ``ignore_empty=False``).

    Example:
        >>> a = np.array([[1, 1, 1, 0]]); b = np.array([[0, 1, 1, 1]])
        >>> round(dice_score(a, b), 4)  # 2 * 2 / (3 + 3)
        0.6667
    """
    prediction, reference = _as_masks(prediction, reference)
    score = compute_dice(
        _batched(prediction), _batched(reference), include_background=True, ignore_empty=False
    )
    return float(score.item())


def surface_dice(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice (NSD): the fraction of both boundaries within ``tolerance_mm`` of the other.

    Boundaries are the masks' edge voxels (MONAI ``use_subvoxels=False``); distances are Euclidean in mm.

    Args:
        prediction: ``(I, J, K)`` (or 2D) bool or {0, 1} predicted mask.
        reference: the reference mask on the same grid.
        spacing: voxel size in mm along each array axis (``Volume.spacing``).
        tolerance_mm: the largest boundary distance that still counts as correct, >= 0.

    Returns:
        The NSD in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    prediction, reference = _as_masks(prediction, reference)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != prediction.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must be {prediction.ndim} positive voxel sizes in mm, got {spacing}")
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a non-negative distance in mm, got {tolerance_mm}")
    has_prediction, has_reference = bool(prediction.any()), bool(reference.any())
    if not has_prediction or not has_reference:
        return 1.0 if has_prediction == has_reference else 0.0
    with warnings.catch_warnings():  # MONAI's deprecation notices from its own internal calls
        warnings.simplefilter("ignore", FutureWarning)
        score = compute_surface_dice(
            _batched(prediction),
            _batched(reference),
            class_thresholds=[float(tolerance_mm)],
            include_background=True,
            spacing=spacing,
        )
    return float(score.item())


def score_masks(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> MaskScores:
    """Dice, NSD and voxel counts of one predicted mask against its reference (see the module docstring)."""
    prediction, reference = _as_masks(prediction, reference)
    return MaskScores(
        dice=dice_score(prediction, reference),
        nsd=surface_dice(prediction, reference, spacing, tolerance_mm),
        reference_voxels=int(np.count_nonzero(reference)),
        predicted_voxels=int(np.count_nonzero(prediction)),
    )
