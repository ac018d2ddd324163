"""Post-processing bounded in memory: the separable resampler against MONAI, and the label map decided in
model space against the whole-array reference (all structures resampled by MONAI's ``SpatialResample``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import StandInModel, shared_path

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.inference import Segmenter
from TextGuidedSegLib.inference.geometry import to_model_space, to_original_space
from TextGuidedSegLib.inference.postprocess import body_mask, keep_largest_component, split_by_laterality
from TextGuidedSegLib.inference.resample import InputGridResampler, ProbabilityMaps
from TextGuidedSegLib.io import Volume, load_volume

# MONAI's sampling grid is float32 (positions ~1e-5 voxel off at a few hundred voxels); ours is float64
TOLERANCE = 1e-4


def _volumes() -> dict[str, Volume]:
    ct = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    lps = load_volume(shared_path("dcmqi_ct3slice", "ct.nii.gz"))
    # the same voxels on an anisotropic, flipped (LPI-like) grid
    affine = np.diag([-2.1, -0.9, -4.2, 1.0])
    affine[:3, 3] = (40.0, -20.0, 300.0)
    anisotropic = Volume(ct.array, affine, source="anisotropic")
    return {"ras": ct, "lps": lps, "anisotropic": anisotropic}


@pytest.mark.parametrize("name", ["ras", "lps", "anisotropic"])
def test_resampler_matches_monai_spatial_resample(name: str) -> None:
    volume = _volumes()[name]
    model = to_model_space(volume, (1.5, 1.5, 1.5))
    grid = tuple(model.shape[1:])
    crop = tuple(slice(n // 5, n - n // 7) for n in grid)
    values = torch.rand(tuple(s.stop - s.start for s in crop), generator=torch.Generator().manual_seed(0))
    resampler = InputGridResampler(np.asarray(model.affine), grid, crop, volume)
    assert resampler.separable
    full = torch.zeros(grid)
    full[crop] = values
    reference = to_original_space(full[None], volume, affine=np.asarray(model.affine))[0]
    ours = resampler.resample(values)
    assert ours.shape == volume.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE)


def test_oblique_transforms_fall_back_to_monai() -> None:
    volume = _volumes()["ras"]
    model = to_model_space(volume, (3.0, 3.0, 3.0))
    rotated = np.asarray(model.affine).copy()
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotated[:3, :3] = rotation @ rotated[:3, :3]
    grid = tuple(model.shape[1:])
    resampler = InputGridResampler(rotated, grid, tuple(slice(0, n) for n in grid), volume)
    assert not resampler.separable
    values = torch.rand(grid)
    np.testing.assert_array_equal(
        resampler.resample(values), to_original_space(values[None], volume, affine=rotated)[0]
    )


class QueryOracle(StandInModel, torch.nn.Module):
    """Soft logits of the windowed intensity with a per-query offset (from the embedding): overlapping masks
    with different probabilities, so the competition between queries matters."""

    def forward(self, image, text=None, class_indices=None):
        offset = 0.45 + 0.1 * torch.tanh(text[..., 0])[..., None, None, None]  # (B, Q, 1, 1, 1)
        phase = 3.0 * text[..., 1][..., None, None, None]
        ramp = torch.arange(image.shape[2], dtype=image.dtype).view(1, 1, -1, 1, 1)
        return 12.0 * (image - offset) + 3.0 * torch.sin(0.2 * ramp + phase)


def _reference_labels(segmenter: Segmenter, volume: Volume, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole-array path: all probabilities on the input grid by MONAI, threshold, post-process, argmax."""
    queries = segmenter.queries(prompt)
    text, indices = segmenter.conditioning(queries)
    prepared = segmenter.prepare(volume)
    probabilities, _ = segmenter.predict_probabilities(prepared.image, text, indices)
    maps = to_original_space(prepared.uncrop(probabilities), volume, affine=prepared.affine)
    masks = maps >= segmenter.threshold
    winner = np.where(masks, maps, -1.0).argmax(axis=0)
    labels = np.where(masks.any(axis=0), winner + 1, 0).astype(np.uint8)
    body = body_mask(volume)
    for q, query in enumerate(queries):  # post-processing acts on each label's region of the label map
        keep = labels == q + 1
        side = query.structure.laterality
        if segmenter.split_laterality and side is not None:
            keep = split_by_laterality(keep, side, volume.affine, body)
        if segmenter.largest_component and keep.any():
            keep = keep_largest_component(keep)
        labels[(labels == q + 1) & ~keep] = 0
    return labels, maps


@pytest.mark.parametrize("name", ["ras", "lps", "anisotropic"])
@pytest.mark.parametrize("postprocess", [False, True])
def test_label_map_equals_the_whole_array_reference(make_bundle, name: str, postprocess: bool) -> None:
    """Labels identical voxel for voxel, except where a probability lies within float rounding of the
    threshold or of another query's (and those must be a handful); post-processing on the label map."""
    volume = _volumes()[name]
    bundle = load_bundle(make_bundle(spacing=3.0))
    bundle.model = QueryOracle(bundle.model.config)
    segmenter = Segmenter(
        bundle,
        device="cpu",
        progress=False,
        largest_component=postprocess,
        split_laterality=postprocess,
        probabilities=True,
    )
    prompt = "liver, spleen, right kidney and left kidney"
    result = segmenter.segment(volume, prompt)
    reference, maps = _reference_labels(segmenter, volume, prompt)
    assert result.labels.dtype == np.uint8 and result.labels.shape == volume.shape
    assert len(np.unique(reference)) >= 3, "the oracle must give several competing structures"
    differ = result.labels != reference
    near = (np.abs(maps - segmenter.threshold) < TOLERANCE).any(0)
    ordered = np.sort(maps, axis=0)
    near |= (ordered[-1] - ordered[-2]) < TOLERANCE
    assert not (differ & ~near).any(), f"{int((differ & ~near).sum())} voxels differ away from any tie"
    assert differ.sum() <= 1e-4 * differ.size
    assert isinstance(result.probabilities, ProbabilityMaps)
    assert result.probabilities.shape == (4, *volume.shape)
    np.testing.assert_allclose(result.probabilities[2], maps[2], atol=TOLERANCE)
    np.testing.assert_allclose(np.asarray(result.probabilities), maps, atol=TOLERANCE)
