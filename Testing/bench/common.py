"""Shared pieces of the benchmarks: bundles with random weights, test volumes, side-by-side timing, Dice.

Everything goes through the library's public API (``Segmenter``, ``load_bundle``, ``save_bundle``), so the
benchmarks measure whatever the library does by default; options a library version lacks (``precision``)
are dropped by :func:`segmenter` with a note rather than failing.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
SHARED = REPO.parent / "shared" / "data"
CT_SMALL = SHARED / "totalseg" / "example_ct_sm.nii.gz"
CT = SHARED / "totalseg" / "example_ct.nii.gz"
DEMO_BUNDLE = REPO / "TextGuidedSegLib" / "resources" / "demo_bundle"

logger = logging.getLogger("bench")

#: 25 structures of the Universal Model taxonomy (the first 25 classes are anatomy).
STRUCTURES_25 = 25


def film_bundle(
    folder: Path,
    structures: int | Sequence[str] = 4,
    feature_size: int = 12,
    roi: int = 96,
    spacing: float = 1.5,
    overlap: float = 0.5,
    seed: int = 0,
    architecture: str = "film_v1",
):
    """Save and load a query-mode bundle with seeded random weights (as ``Testing/conftest.make_bundle``).

    ``structures``: a count (the first ones of the taxonomy) or class names. Returns the loaded ``Bundle``.
    """
    import torch

    from TextGuidedSegLib.bundle import (
        BundleConfig,
        InferenceConfig,
        PreprocessConfig,
        load_bundle,
        save_bundle,
    )
    from TextGuidedSegLib.models import ModelConfig, build_model
    from TextGuidedSegLib.taxonomy import get_taxonomy
    from TextGuidedSegLib.text import EmbeddingCache

    full = get_taxonomy()
    names = full.class_names[:structures] if isinstance(structures, int) else list(structures)
    taxonomy = full.subset(list(names))
    model_config = ModelConfig(architecture=architecture, feature_size=feature_size, text_dim=512)
    torch.manual_seed(seed)
    model = build_model(model_config)
    prompts = taxonomy.prompts + ["A Computed Tomography of abdomen organ"]
    cache = EmbeddingCache("random-test-vectors", model_config.text_dim)
    cache.add(prompts, torch.randn(len(prompts), 512, generator=torch.Generator().manual_seed(seed)))
    config = BundleConfig(
        name=f"bench_{architecture}_fs{feature_size}",
        model=model_config,
        taxonomy=taxonomy,
        preprocessing=PreprocessConfig(spacing=(spacing,) * 3),
        inference=InferenceConfig(roi_size=(roi,) * 3, overlap=overlap),
    )
    return load_bundle(save_bundle(folder / config.name, model, config, cache))


def monai_bundle(folder: Path, entry: str = "spleen_ct", seed: int = 0):
    """A shipped MONAI model-zoo translation (``resources/monai/<entry>.json``) with seeded random weights."""
    import torch

    from TextGuidedSegLib.bundle import BundleConfig, load_bundle
    from TextGuidedSegLib.importers.monai_bundle import build_bundle_from_weights, shipped_translation
    from TextGuidedSegLib.models.monai_network import MonaiNetworkModel

    torch.manual_seed(seed)
    config = shipped_translation(entry)
    net = MonaiNetworkModel(BundleConfig.from_dict(config).model).net
    torch.save(net.state_dict(), folder / "model.pt")
    return load_bundle(build_bundle_from_weights(config, folder / "model.pt", folder / entry))


def load_ct(path: Path = CT):
    """A shared CT (``../shared/data``); a clear error when the folder is absent."""
    from TextGuidedSegLib.io import load_volume

    if not path.exists():
        raise FileNotFoundError(f"{path} is absent: the benchmarks need ../shared/data beside the checkout")
    return load_volume(path)


def resampled_ct(shape: Sequence[int], spacing: Sequence[float], path: Path = CT):
    """The shared CT resampled (trilinear) onto ``shape`` voxels of ``spacing`` mm, same centre and axes."""
    import torch
    import torch.nn.functional as F

    from TextGuidedSegLib.io import Volume

    source = load_ct(path)
    data = torch.from_numpy(source.array)[None, None]
    array = F.interpolate(data, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()
    directions = source.affine[:3, :3] / np.linalg.norm(source.affine[:3, :3], axis=0)
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(spacing, dtype=float)
    centre = source.affine @ np.append((np.asarray(source.shape) - 1) / 2.0, 1.0)
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return Volume(array=np.ascontiguousarray(array), affine=affine, source=f"{path.name} at {shape}")


def model_space_volume(shape: Sequence[int], spacing: float, path: Path = CT):
    """The shared CT resampled so that its model-space grid at ``spacing`` mm is about ``shape``."""
    return resampled_ct(shape, (spacing,) * 3, path)


def segmenter(bundle, **options: Any):
    """``Segmenter(bundle, device="cpu", progress=False, **options)``, dropping options it does not take."""
    from TextGuidedSegLib.inference import Segmenter

    accepted = inspect.signature(Segmenter.__init__).parameters
    missing = [k for k in options if k not in accepted]
    for key in missing:
        logger.warning("this Segmenter has no %r argument: measured without it", key)
        options.pop(key)
    return Segmenter(bundle, device="cpu", progress=False, **options)


def library_features() -> dict[str, bool]:
    """Which of this round's library changes are present (so a table says what it measured)."""
    from TextGuidedSegLib.inference import Segmenter

    text = (REPO / "TextGuidedSegLib" / "inference" / "segmenter.py").read_text()
    parameters = inspect.signature(Segmenter.__init__).parameters
    return {
        "precision": "precision" in parameters,
        "feature_cache": "feature_cache" in text,
        "bounded_postprocessing": "resample" in text and "to_original_space(prepared.uncrop" not in text,
    }


class ModelClock:
    """Wraps ``segmenter.predict_logits`` to add up the seconds spent in the network (sliding window)."""

    def __init__(self, seg) -> None:
        self.seconds = 0.0
        inner = seg.predict_logits

        def timed(*args: Any, **kwargs: Any):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        seg.predict_logits = timed


def alternate(
    calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Run ``calls`` round-robin (``warmup`` untimed rounds first); per call: wall and CPU seconds, medians.

    Round-robin so that a change in machine load affects every call alike; process CPU time (all threads)
    is the steadier figure on a shared machine, wall time is what a user waits.
    """
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    last: dict[str, Any] = {}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            last[name] = call()
            if round_index >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            logger.info("  %s: %.2f s", name, time.perf_counter() - start)
    return {
        name: {
            "wall": [round(s, 3) for s in wall[name]],
            "cpu": [round(s, 3) for s in cpu[name]],
            "median_s": statistics.median(wall[name]),
            "median_cpu_s": statistics.median(cpu[name]),
            "result": last[name],
        }
        for name in calls
    }


def dice_per_label(labels: np.ndarray, reference: np.ndarray, n_labels: int) -> list[float]:
    """Dice of label ``q + 1`` of ``labels`` vs ``reference``, for each ``q`` (1.0 when both are empty)."""
    scores = []
    for label in range(1, n_labels + 1):
        a, b = labels == label, reference == label
        total = int(a.sum()) + int(b.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((a & b).sum()) / total)
    return scores
