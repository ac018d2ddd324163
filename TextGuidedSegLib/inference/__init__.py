"""Inference: geometry (model space <-> input grid), post-processing, and the sliding-window ``Segmenter``.

``Segmenter`` and friends are imported on first access, so ``inference.geometry`` and
``inference.postprocess`` stay importable without the model stack.
"""

from __future__ import annotations

from TextGuidedSegLib._lazy import lazy_getattr

_MODULES = {
    "ImplausibleInputError": "guard",
    "InputCheck": "guard",
    "check_volume": "guard",
    "SegmentationOptions": "options",
    "PreparedVolume": "prepared",
    "count_windows": "prepared",
    "ProbabilityMaps": "resample",
    "SegmentInfo": "result",
    "SegmentationResult": "result",
    "ProgressCallback": "segmenter",
    "SegmentationCancelled": "segmenter",
    "Segmenter": "segmenter",
    "resolve_device": "segmenter",
}
__all__ = sorted(_MODULES)

__getattr__ = lazy_getattr(__name__, _MODULES)
