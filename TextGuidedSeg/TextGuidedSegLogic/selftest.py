"""Helpers of the in-Slicer self-tests (and the headless tests): the demo bundle, a phantom CT as a volume
node, and Dice.

The phantom is the library's procedural abdomen (:mod:`TextGuidedSegLib.data.phantom`), made on the demo
bundle's voxel spacing, so the demo bundle (trained on such phantoms) segments it well.
"""

from __future__ import annotations

import unittest
from pathlib import Path
from typing import Any

import numpy as np

from .nodes import add_volume_node

#: What a self-test says when Python packages are missing.
INSTALL_HINT = "install the Python packages first: open the module and press Apply once"

#: Minimum Dice the self-tests accept for the demo bundle on a phantom, per structure (the shipped demo
#: bundle must reach 0.90 liver and 0.85 spleen and each kidney on unseen phantoms; the margin covers
#: the smaller self-test phantom).
MIN_DICE = {"liver": 0.85, "spleen": 0.75, "right_kidney": 0.75, "left_kidney": 0.75}


def demo_bundle(store: Any = None) -> tuple[str, Path]:
    """The demo bundle's registry key and local path, for a self-test that segments with it.

    Args:
        store: the ``TextGuidedSegLib.registry.BundleStore`` to look in; default: the user's.

    Raises:
        AssertionError: Python packages the library needs are missing (the test fails, naming them).
        unittest.SkipTest: this build ships no demo bundle (the test is skipped).
    """
    from .dependencies import missing_requirements
    from .logic import DEFAULT_BUNDLE

    missing = [m.describe() for m in missing_requirements()]
    if missing:
        raise AssertionError(f"{INSTALL_HINT}; missing: {', '.join(missing)}")
    if store is None:
        from TextGuidedSegLib.registry import BundleStore

        store = BundleStore()
    entry = store.entry(DEFAULT_BUNDLE)
    path = store.path(entry)
    if path is None:
        raise unittest.SkipTest(f"the demo bundle {entry.key} is not installed with this build")
    return entry.key, path


def phantom_volume_node(
    seed: int = 300, spacing: tuple[float, float, float] = (3.0, 3.0, 3.0), name: str = "Phantom CT"
) -> tuple[Any, Any]:
    """Add a phantom CT to the scene as a scalar volume node; return (node, phantom with its labels).

    The grid is the demo's (:func:`TextGuidedSegLib.demo.demo_phantom_config`): 32 x 32 x 16 cm at
    ``spacing`` (pass the bundle's); seed 300 and up are the demo's unseen test phantoms.
    """
    from TextGuidedSegLib.data.phantom import make_phantom
    from TextGuidedSegLib.demo import demo_phantom_config

    phantom = make_phantom(demo_phantom_config(spacing, seed=seed))
    node = add_volume_node(phantom.image.astype(np.int16), phantom.affine, name)
    return node, phantom


def truth_mask(phantom: Any, class_name: str) -> np.ndarray:
    """The phantom's ``(I, J, K)`` boolean mask of one structure (by class name)."""
    label_ids = [label_id for label_id, name in phantom.label_names.items() if name == class_name]
    if not label_ids:
        raise KeyError(
            f"the phantom has no structure {class_name!r}; it has {sorted(phantom.label_names.values())}"
        )
    return np.isin(phantom.labels, label_ids)


def patient_right_half(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """``(I, J, K)`` bool mask of the voxels on the patient's right of the volume's centre.

    Computed from the voxel-to-RAS ``affine`` (in RAS, x grows towards the patient's right), so it holds for
    any orientation: a voxel is on the right when its RAS x is above the x of the volume's centre.
    """
    affine = np.asarray(affine, dtype=np.float64)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    x = affine[0, 0] * i + affine[0, 1] * j + affine[0, 2] * k
    return x > affine[0, :3] @ centre


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty): the library's ``dice_score``, imported
    when a self-test runs (the packages are installed by then)."""
    from TextGuidedSegLib.evaluation.metrics import dice_score

    return dice_score(a, b)
