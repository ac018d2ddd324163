"""The inference path: prompts -> conditioning, sliding window, back onto the input grid, label maps."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import StandInModel, shared_path

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.inference import SegmentationCancelled, Segmenter, count_windows
from TextGuidedSegLib.inference.geometry import to_model_space
from TextGuidedSegLib.io import Volume, load_volume
from TextGuidedSegLib.taxonomy import PromptError
from TextGuidedSegLib.text import EmbeddingCacheError


class IntensityOracle(StandInModel, torch.nn.Module):
    """A stand-in model whose logits are a steep function of the windowed intensity, the same for every query.

    With the default HU window [-175, 250] its masks are exactly "HU above 37.5" in model space, so the
    Segmenter's output can be compared with thresholding the input on its own grid.
    """

    def forward(self, image, text=None, class_indices=None):
        self.calls += 1
        return 40.0 * (image - 0.5).expand(-1, text.shape[1], -1, -1, -1)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_segmenter_output_lies_on_the_input_grid(make_bundle) -> None:
    """End to end with a known model: the label map agrees with HU > 37.5 on the input grid."""
    volume = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    bundle = load_bundle(make_bundle(spacing=1.5))
    bundle.model = IntensityOracle(bundle.model.config)
    result = Segmenter(bundle, device="cpu", progress=False).segment(volume, "liver and spleen")
    assert result.labels.shape == volume.shape
    assert result.labels.dtype == np.uint8
    expected = volume.array > 37.5
    # Both queries get the same mask; ties go to the first query.
    assert set(np.unique(result.labels)) <= {0, 1}
    dice = _dice(result.labels == 1, expected)
    assert dice >= 0.95, f"Dice {dice:.3f} of the oracle mask against HU > 37.5 on the input grid"
    assert [s.name for s in result.segments] == ["Liver", "Spleen"]
    assert result.segments[1].voxels == 0
    voxel_ml = 27.0 / 1000.0  # 3 mm isotropic voxels
    assert result.segments[0].volume_ml == pytest.approx(result.segments[0].voxels * voxel_ml)


def test_queries_and_conditioning_for_a_cache_only_bundle(make_bundle) -> None:
    bundle = load_bundle(make_bundle())
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    assert not segmenter.understands_free_text
    queries = segmenter.queries("Segment liver and kidneys from abdominal CT")
    assert [q.class_name for q in queries] == ["liver", "right_kidney", "left_kidney"]
    text, indices = segmenter.conditioning(queries)
    assert indices is None
    assert text.shape == (1, 3, 16)
    assert torch.equal(text[0], bundle.cache.get([q.prompt for q in queries]))
    with pytest.raises(PromptError, match="pancreatic duct"):
        segmenter.queries("pancreatic duct")
    # A known structure outside the bundle's vocabulary is not silently mapped to another.
    with pytest.raises(PromptError, match="Liver"):
        segmenter.queries("prostate")


def test_missing_embedding_without_encoder_lists_the_vocabulary(make_bundle) -> None:
    from TextGuidedSegLib.taxonomy import StructureQuery

    bundle = load_bundle(make_bundle())
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    query = StructureQuery(text="hepatic cyst", prompt="hepatic cyst", structure=None)
    with pytest.raises(
        EmbeddingCacheError, match="no text encoder.*Liver, Spleen, Right Kidney, Left Kidney"
    ):
        segmenter.conditioning([query])


def test_channel_models_select_their_channels(make_bundle) -> None:
    bundle = load_bundle(make_bundle(architecture="film_v1", mode="global"))
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    queries = segmenter.queries("left kidney, liver")
    text, indices = segmenter.conditioning(queries)
    assert indices.tolist() == [[3, 0]]
    assert torch.equal(text[0], bundle.cache.get([bundle.config.global_prompt]))
    # Global mode answers an empty prompt with every structure it knows.
    assert [q.class_name for q in segmenter.queries("  ")] == [
        "liver",
        "spleen",
        "right_kidney",
        "left_kidney",
    ]

    baseline = Segmenter(load_bundle(make_bundle(architecture="swinunetr")), device="cpu", progress=False)
    text, indices = baseline.conditioning(baseline.queries("spleen"))
    assert text is None and indices.tolist() == [[1]]
    with pytest.raises(PromptError, match="empty"):
        baseline.queries("")


def test_free_text_with_a_text_encoder(tmp_path, make_bundle) -> None:
    from TextGuidedSegLib.text import CLIPTextEncoder, TextEncoderSpec
    from TextGuidedSegLib.text.testing import make_tiny_clip_text_model

    folder = make_tiny_clip_text_model(tmp_path / "clip")
    spec = TextEncoderSpec(str(folder))
    encoder = CLIPTextEncoder(spec)
    bundle = load_bundle(make_bundle(text_encoder=spec, encoder=encoder))
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    assert segmenter.understands_free_text
    queries = segmenter.queries("liver, hepatic cyst")
    assert [q.class_name for q in queries] == ["liver", None]
    text, _ = segmenter.conditioning(queries)
    assert torch.allclose(text[0, 1], encoder.encode([queries[1].prompt])[0], atol=1e-6)


def test_options_are_validated(make_bundle) -> None:
    bundle = load_bundle(make_bundle())
    with pytest.raises(ValueError, match="overlap must be in"):
        Segmenter(bundle, overlap=1.0)
    with pytest.raises(ValueError, match="threshold must be in"):
        Segmenter(bundle, threshold=0.0)
    with pytest.raises(ValueError, match="device must be .*, got 'tpu'"):
        Segmenter(bundle, device="tpu")


def test_prepared_volume_is_reused_and_checked(make_bundle) -> None:
    """A kept PreparedVolume gives the same labels as a fresh run; one from another grid is refused."""
    volume = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    bundle = load_bundle(make_bundle(spacing=3.0))
    bundle.model = IntensityOracle(bundle.model.config)
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    prepared = segmenter.prepare(volume)
    assert prepared.image.shape[:2] == (1, 1)
    assert prepared.image.min() >= 0.0 and prepared.image.max() <= 1.0
    fresh = segmenter.segment(volume, "liver")
    reused = segmenter.segment(volume, "spleen", prepared=prepared)
    np.testing.assert_array_equal(fresh.labels, reused.labels)
    affine = volume.affine.copy()
    affine[0, 3] += 3.0
    shifted = Volume(volume.array, affine)
    with pytest.raises(ValueError, match="prepared"):
        segmenter.segment(shifted, "liver", prepared=prepared)


def test_progress_reports_every_window_and_cancel_stops(make_bundle) -> None:
    """progress_callback counts the windows MONAI runs; a set cancel event stops before the next batch."""
    volume = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    bundle = load_bundle(make_bundle(spacing=3.0, roi_size=64))
    oracle = IntensityOracle(bundle.model.config)
    bundle.model = oracle
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    calls: list[tuple[int, int]] = []
    segmenter.segment(volume, "liver", progress_callback=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert calls[-1] == (total, total)
    assert total == oracle.calls > 1, "one window per model call at sw_batch_size 1"
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    image_size = segmenter.prepare(volume).image.shape[2:]
    assert count_windows(image_size, (64, 64, 64), 0.5) == total

    oracle.calls = 0
    cancel = threading.Event()

    def stop_after_two(done: int, total: int) -> None:
        if done >= 2:
            cancel.set()

    with pytest.raises(SegmentationCancelled):
        segmenter.segment(volume, "liver", progress_callback=stop_after_two, cancel=cancel)
    assert oracle.calls == 2


class RampModel(IntensityOracle):
    """Logits rising along the window's first axis: not flip-equivariant, so flips disagree."""

    def forward(self, image, text=None, class_indices=None):
        self.calls += 1
        ramp = torch.linspace(-3.0, 3.0, image.shape[2]).view(1, 1, -1, 1, 1)
        return (ramp + 0.0 * image).expand(-1, text.shape[1], -1, -1, -1)


def test_flip_tta_averages_four_passes_and_returns_uncertainty(make_bundle) -> None:
    """Flip TTA: a flip-equivariant model gives the plain result and ~zero spread; a ramp model does not."""
    volume = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    bundle = load_bundle(make_bundle(spacing=3.0))
    oracle = IntensityOracle(bundle.model.config)
    bundle.model = oracle
    segmenter = Segmenter(bundle, device="cpu", progress=False, probabilities=True)
    plain = segmenter.segment(volume, "liver")
    assert plain.uncertainty is None
    single_pass = oracle.calls
    oracle.calls = 0
    tta = Segmenter(bundle, device="cpu", progress=False, flip_tta=True, probabilities=True).segment(
        volume, "liver"
    )
    assert oracle.calls == 4 * single_pass
    assert tta.uncertainty.shape == (1, *volume.shape)
    np.testing.assert_allclose(tta.probabilities, plain.probabilities, atol=1e-5)
    assert float(np.asarray(tta.uncertainty).max()) < 1e-5

    bundle.model = RampModel(bundle.model.config)
    ramp = Segmenter(bundle, device="cpu", progress=False, flip_tta=True).segment(volume, "liver")
    assert float(ramp.uncertainty[0].max()) > 0.1


def test_model_runs_on_the_body_box_and_is_zero_outside(make_bundle) -> None:
    """As in training (CropForegroundd), the model sees the bounding box of voxels above the HU window's low
    end; outside it probabilities are exactly 0. A bundle can opt out (CLIPSeg bundles do)."""
    volume = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    bundle = load_bundle(make_bundle(spacing=3.0))
    bundle.model = IntensityOracle(bundle.model.config)
    segmenter = Segmenter(bundle, device="cpu", progress=False, probabilities=True)
    prepared = segmenter.prepare(volume)
    grid = to_model_space(volume, (3.0, 3.0, 3.0))
    body = (grid[0] > -175.0).numpy()
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(body))
    assert prepared.crop == box
    assert prepared.grid_shape == body.shape
    assert tuple(prepared.image.shape[2:]) == tuple(s.stop - s.start for s in box)
    assert prepared.image.shape[2:] != body.shape, "the example CT has air around the body"
    full = prepared.uncrop(torch.ones(1, *prepared.image.shape[2:]))
    assert full.sum() == prepared.image[0, 0].numel() and full[(0, *box)].all()

    cropped = segmenter.segment(volume, "liver", prepared=prepared)
    bundle.config.preprocessing.crop_foreground = False
    whole = segmenter.segment(volume, "liver")
    assert segmenter.prepare(volume).image.shape[2:] == body.shape
    outside = cropped.probabilities[0] == 0.0
    assert outside.any() and (whole.probabilities[0][outside] > 0.0).all()
    # the oracle is pointwise, so inside the box both runs agree
    np.testing.assert_array_equal(cropped.labels, whole.labels)
