"""Pieces of MONAI's bundle pipeline the Segmenter runs for ``monai`` bundles, with MONAI's own transforms:
the intensity steps of pre-processing, and the softmax label map taken back onto the input grid as the
bundle's ``Activationsd`` / ``AsDiscreted`` / ``Invertd`` do it (either order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRange

if TYPE_CHECKING:  # pragma: no cover - typing only
    from TextGuidedSegLib.inference.prepared import PreparedVolume

#: MONAI array transforms behind ``PreprocessConfig.intensity`` steps.
INTENSITY_TRANSFORMS = {
    "ScaleIntensityRange": ScaleIntensityRange,
    "NormalizeIntensity": NormalizeIntensity,
    "ScaleIntensity": ScaleIntensity,
}
# Channels resampled back onto the input grid at once (bounds the float64 resampling buffer).
_INVERT_SLAB = 4


def apply_intensity_steps(image: torch.Tensor, steps: Sequence[dict[str, Any]]) -> torch.Tensor:
    """Run ``PreprocessConfig.intensity_steps()`` on a ``(1, X, Y, Z)`` image -> plain float32 tensor."""
    for step in steps:
        args = {k: v for k, v in step.items() if k != "transform"}
        image = INTENSITY_TRANSFORMS[step["transform"]](**args)(image)
    image = torch.as_tensor(image, dtype=torch.float32)
    return image.as_tensor() if isinstance(image, MetaTensor) else image


def class_label_map(
    logits: torch.Tensor, prepared: PreparedVolume, invert: str, channels: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax and argmax of ``(C, x, y, z)`` model-space logits on the input grid, as the bundle does.

    Returns the ``(I, J, K)`` class label map (uint8; uint16 beyond 256 classes) and the ``(Q, I, J, K)``
    float32 probabilities of ``channels`` on the input grid (None when no channel is asked for).
    """
    num_classes = logits.shape[0]
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    wanted = {c: q for q, c in enumerate(channels)}
    probabilities = np.zeros((len(channels), *prepared.source_shape), np.float32) if channels else None
    if invert == "labels":  # argmax in model space, then nearest (AsDiscreted, Invertd)
        label = torch.empty(logits.shape[1:], dtype=torch.float32)
        for z in range(0, logits.shape[3], 16):  # softmax per slab: one (C, x, y, z) buffer, not two
            label[..., z : z + 16] = torch.softmax(logits[..., z : z + 16], dim=0).argmax(0).float()
        full = prepared.to_input_grid(prepared.uncrop(label[None]), nearest=True)[0]
        labels = full.round().numpy().astype(dtype)
        probability = torch.softmax(logits, dim=0) if wanted else None
        for channel, q in wanted.items():
            one = prepared.uncrop(probability[channel : channel + 1])
            probabilities[q] = prepared.to_input_grid(one, nearest=False)[0]
        return labels, probabilities
    # probabilities inverted bilinearly, then argmax (Invertd, AsDiscreted): a few channels at a time
    probability = torch.softmax(logits, dim=0)
    best_value = best_index = None
    for start in range(0, num_classes, _INVERT_SLAB):
        slab = prepared.uncrop(probability[start : start + _INVERT_SLAB])
        part = prepared.to_input_grid(slab, nearest=False)
        for channel in range(start, start + part.shape[0]):
            if channel in wanted:
                probabilities[wanted[channel]] = part[channel - start].numpy()
        value, index = part.max(0)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value  # ties keep the earlier channel, as argmax does
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + start, best_index)
    return best_index.numpy().astype(dtype), probabilities
