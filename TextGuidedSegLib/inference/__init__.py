"""Inference: geometry (model space <-> input grid), post-processing, and the sliding-window ``Segmenter``.

``Segmenter`` and friends are imported on first access, so ``inference.geometry`` and
``inference.postprocess`` stay importable without the model stack.
"""

from __future__ import annotations

from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in __all__:
        from TextGuidedSegLib.inference import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
