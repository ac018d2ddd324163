"""CLIPSeg for abdominal CT: 2D axial slice data, four fine-tuning strategies, a frozen-encoder cache, a
benchmark that explains its numbers, and a 2D->3D engine that makes a CLIPSeg bundle segment volumes.

- ``model``: :class:`CLIPSegNet` (CLIPSeg as vision / text / decoder stages), :func:`load_clipseg` (hub id or
  folder, offline-safe errors), the strategies ``full``, ``decoder``, ``adapter``, ``lora``
  (:data:`STRATEGIES`).
- ``data``: 3D CT + label maps -> 2D axial samples, one per (slice, structure), in a memory-mappable slice
  set (``images.npy``, ``masks.npy``, ``samples.npy``, ``metadata.json``) built once and reused.
- ``cache``: vision activations per slice and text features per prompt of a frozen encoder.
- ``train``: the training loop (AdamW, cosine schedule, BCE (+ Dice), early stopping, DDP, checkpoints).
- ``bench``: ``textguidedseg clipseg-bench``: every strategy on the same split; Markdown table and plot.
- ``volume``: the 2D->3D engine (:class:`CLIPSegVolumeModel`) and CLIPSeg bundles.

Vocabulary: a *sample* is one (slice, structure) pair with its mask; its *prompt* is the text CLIPSeg's text
tower reads (the structure's name, or a synonym); a *conditional embedding* ``(E,)`` is what the decoder is
conditioned on (CLIPSeg's projected text feature).
"""

from __future__ import annotations

from TextGuidedSegLib._lazy import lazy_getattr

__all__ = [
    "DEFAULT_CLIPSEG",
    "STRATEGIES",
    "CLIPSegNet",
    "CLIPSegUnavailableError",
    "PixelSpec",
    "SliceConfig",
    "SliceSet",
    "StrategyOptions",
    "apply_strategy",
    "build_slice_set",
    "load_clipseg",
    "make_tiny_clipseg",
]

_WHERE = {
    "DEFAULT_CLIPSEG": "model",
    "STRATEGIES": "model",
    "CLIPSegNet": "model",
    "CLIPSegUnavailableError": "model",
    "PixelSpec": "model",
    "StrategyOptions": "model",
    "apply_strategy": "model",
    "load_clipseg": "model",
    "SliceConfig": "data",
    "SliceSet": "data",
    "build_slice_set": "data",
    "make_tiny_clipseg": "testing",
}

__getattr__ = lazy_getattr(__name__, _WHERE)
