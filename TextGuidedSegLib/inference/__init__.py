"""Inference: geometry (model space <-> input grid), post-processing, and the sliding-window ``Segmenter``.

``Segmenter`` and friends are imported on first access, so ``inference.geometry`` and
``inference.postprocess`` stay importable without the model stack.
"""

from __future__ import annotations

from TextGuidedSegLib._lazy import lazy_getattr

__all__ = [
    "PreparedVolume",
    "ProgressCallback",
    "SegmentInfo",
    "SegmentationCancelled",
    "SegmentationResult",
    "Segmenter",
    "count_windows",
    "resolve_device",
]

__getattr__ = lazy_getattr(__name__, dict.fromkeys(__all__, "segmenter"))
