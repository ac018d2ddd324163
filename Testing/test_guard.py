"""The input guard's memory estimate and geometry warnings for whole-volume (CLIPSeg) bundles."""

from __future__ import annotations

import numpy as np

from TextGuidedSegLib.clipseg.volume import WHOLE_VOLUME_ROI
from TextGuidedSegLib.inference.guard import _geometry_warnings, estimate_memory
from TextGuidedSegLib.io import Volume


def _volume(shape: tuple[int, int, int], spacing: float) -> Volume:
    return Volume(np.zeros(shape, np.float32), np.diag([spacing, spacing, spacing, 1.0]))


def test_whole_volume_bundles_are_not_padded_to_their_window() -> None:
    volume = _volume((100, 80, 30), 3.0)
    exact = estimate_memory(volume, (3, 3, 3), (100, 80, 30), channels=1)  # the window equals the grid
    assert estimate_memory(volume, (3, 3, 3), WHOLE_VOLUME_ROI, channels=1) == exact
    assert estimate_memory(volume, (3, 3, 3), (96, 96, 96), channels=1) > exact  # padded to 96 along k


def test_small_volume_warning_only_for_sliding_window_bundles() -> None:
    volume = _volume((100, 80, 4), 3.0)  # 12 mm thick
    assert any("quarter of one model window" in w for w in _geometry_warnings(volume, (1.5,) * 3, (96,) * 3))
    assert not any("quarter" in w for w in _geometry_warnings(volume, (3.0,) * 3, WHOLE_VOLUME_ROI))
