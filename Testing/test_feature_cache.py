"""Re-prompting a PreparedVolume skips the encoder (inference.feature_cache), and the precision option.

Cached features are stored in bfloat16, so a re-prompt is compared with the uncached path by Dice per
structure (>= 0.99), not voxel equality; the first prompt, which computes the features, is voxel-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.cli import build_parser
from TextGuidedSegLib.inference import Segmenter, count_windows
from TextGuidedSegLib.inference.feature_cache import CACHED_FIELDS, FeatureCache, supports_feature_cache
from TextGuidedSegLib.io import Volume

SPACING = 3.0
ROI = 64


def _volume(shape: tuple[int, int, int] = (70, 60, 30)) -> Volume:
    """A soft-tissue ellipsoid with a brighter core in fat (-100 HU: no foreground crop), 3 mm voxels."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    noise = np.random.default_rng(0).normal(0.0, 20.0, shape)
    array = np.where(radius < 0.8, 40.0, -100.0) + np.where(radius < 0.4, 120.0, 0.0) + noise
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    return Volume(array.astype(np.float32), affine)


def _dice_per_label(a: np.ndarray, b: np.ndarray, n: int) -> list[float]:
    out = []
    for label in range(1, n + 1):
        x, y = a == label, b == label
        total = x.sum() + y.sum()
        out.append(1.0 if total == 0 else float(2.0 * np.logical_and(x, y).sum() / total))
    return out


class _EncoderCalls:
    """Counts windows through the Swin transformer (the text-independent encoder) with a forward hook."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.windows = 0
        model.backbone.swinViT.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.windows += args[0].shape[0]


def _segmenter(bundle, **kwargs) -> Segmenter:
    return Segmenter(bundle, device="cpu", progress=False, **kwargs)


@pytest.mark.parametrize("architecture", ["film_v1", pytest.param("film_v2", marks=pytest.mark.slow)])
def test_second_prompt_skips_the_encoder_and_agrees(make_bundle, architecture: str) -> None:
    """Prompt 1 fills the cache (identical labels); prompt 2 runs no encoder pass, Dice >= 0.99 per label."""
    bundle = load_bundle(make_bundle(architecture=architecture, spacing=SPACING, roi_size=ROI))
    volume = _volume((64, 60, 30))  # one window: kept short
    cached, plain = _segmenter(bundle), _segmenter(bundle, feature_cache_bytes=0)
    calls = _EncoderCalls(bundle.model)
    prepared = cached.prepare(volume)
    windows = count_windows(prepared.image.shape[2:], (ROI,) * 3, cached.overlap)
    assert windows == 1

    first = cached.segment(volume, "liver", prepared=prepared)
    assert calls.windows == windows and len(prepared.features) == windows
    per_window = sum(
        (ROI // 2 ** (i + 1)) ** 3 * bundle.model.config.feature_size * 2**i for i in range(5)
    )  # enc1 fs x (R/2)^3 ... dec4 16 fs x (R/32)^3, 2 bytes each
    assert prepared.features.nbytes == windows * per_window * 2
    np.testing.assert_array_equal(first.labels, plain.segment(volume, "liver", prepared=prepared).labels)

    calls.windows = 0
    second = cached.segment(volume, "spleen and liver", prepared=prepared)
    assert calls.windows == 0, "a re-prompt must not run the encoder"
    calls.windows = 0
    reference = plain.segment(volume, "spleen and liver", prepared=prepared)
    assert calls.windows == windows
    dice = _dice_per_label(second.labels, reference.labels, 2)
    assert min(dice) >= 0.99, dice
    assert all(s.voxels > 0 for s in reference.segments)  # the comparison is not between empty masks


def test_no_kept_prepared_volume_caches_nothing(make_bundle) -> None:
    """Without ``prepared=`` (a one-shot run) the features are not kept; channel models have no cache."""
    bundle = load_bundle(make_bundle(architecture="film_v1", spacing=SPACING, roi_size=ROI))
    segmenter = _segmenter(bundle)
    calls = _EncoderCalls(bundle.model)
    volume = _volume((64, 60, 30))  # one window: kept short
    segmenter.segment(volume, "liver")
    segmenter.segment(volume, "spleen")
    assert calls.windows == 2 * count_windows(volume.shape, (ROI,) * 3, segmenter.overlap)
    assert supports_feature_cache(bundle.model)
    baseline = load_bundle(make_bundle(architecture="swinunetr", spacing=SPACING, roi_size=ROI))
    assert not supports_feature_cache(baseline.model)
    assert _segmenter(baseline).feature_cache(segmenter.prepare(volume)) is None


@pytest.mark.slow
def test_byte_limit_is_honoured_and_output_stays_correct(make_bundle) -> None:
    """A limit of 1.5 windows keeps 1 and recomputes the other; a later request evicts older windows."""
    bundle = load_bundle(make_bundle(architecture="film_v1", spacing=SPACING, roi_size=ROI))
    volume = _volume()
    probe = _segmenter(bundle)
    prepared = probe.prepare(volume)
    probe.segment(volume, "liver", prepared=prepared)
    per_window = prepared.features.nbytes // len(prepared.features)
    limit = per_window + per_window // 2

    prepared = probe.prepare(volume)
    small = _segmenter(bundle, feature_cache_bytes=limit)
    calls = _EncoderCalls(bundle.model)
    small.segment(volume, "liver", prepared=prepared)
    assert len(prepared.features) == 1 and prepared.features.nbytes <= limit
    calls.windows = 0
    again = small.segment(volume, "spleen", prepared=prepared)
    assert calls.windows == 1  # the stored window is skipped, the other recomputed
    reference = _segmenter(bundle, feature_cache_bytes=0).segment(volume, "spleen")
    assert min(_dice_per_label(again.labels, reference.labels, 1)) >= 0.99

    other = _segmenter(bundle, feature_cache_bytes=limit, precision="bfloat16")  # other features
    calls.windows = 0
    other.segment(volume, "spleen", prepared=prepared)
    assert calls.windows == 2  # float32 features are not bfloat16-autocast ones
    assert prepared.features.evictions == 1 and prepared.features.nbytes <= limit
    calls.windows = 0
    shifted = other.segment(volume, "liver", prepared=prepared)
    assert calls.windows == 1
    expected = _segmenter(bundle, feature_cache_bytes=0, precision="bfloat16").segment(volume, "liver")
    assert min(_dice_per_label(shifted.labels, expected.labels, 1)) >= 0.99

    tiny = _segmenter(bundle, feature_cache_bytes=per_window - 1)  # no window fits: nothing kept
    tiny.segment(volume, "liver", prepared=(fresh := tiny.prepare(volume)))
    assert len(fresh.features) == 0 and fresh.features.nbytes == 0


@pytest.mark.slow
def test_flips_are_cached_apart(make_bundle) -> None:
    """flip_tta keeps each flipped view's windows under its own key; a re-prompt then runs no encoder."""
    bundle = load_bundle(make_bundle(architecture="film_v1", spacing=SPACING, roi_size=ROI))
    volume = _volume()
    segmenter = _segmenter(bundle, flip_tta=True)
    prepared = segmenter.prepare(volume)
    windows = count_windows(prepared.image.shape[2:], (ROI,) * 3, segmenter.overlap)
    segmenter.segment(volume, "liver", prepared=prepared)
    assert len(prepared.features) == 4 * windows
    views = {key[0][0] for key in prepared.features._entries}
    assert views == {(), (2,), (3,), (4,)}
    calls = _EncoderCalls(bundle.model)
    second = segmenter.segment(volume, "spleen", prepared=prepared)
    assert calls.windows == 0
    reference = _segmenter(bundle, flip_tta=True, feature_cache_bytes=0).segment(volume, "spleen")
    assert min(_dice_per_label(second.labels, reference.labels, 1)) >= 0.99
    assert np.abs(np.asarray(second.uncertainty) - np.asarray(reference.uncertainty)).max() < 0.02


def test_feature_cache_lru_and_model_binding() -> None:
    """Unit behaviour: bfloat16 copies, byte accounting, LRU among earlier requests, a new model clears."""
    cache = FeatureCache(max_bytes=3 * 8 * 2 * len(CACHED_FIELDS))  # three windows of 8 values per map
    maps = {name: torch.full((8,), float(i)) for i, name in enumerate(CACHED_FIELDS)}
    cache.bind(model := torch.nn.Linear(1, 1))
    cache.new_request()
    for key in "abc":
        assert cache.put(key, maps)
    assert cache.get("a")["hs3"].dtype == torch.bfloat16
    assert not cache.put("d", maps)  # all three are this request's: "d" is not stored
    cache.new_request()
    cache.get("a")
    assert cache.put("d", maps)  # evicts "b", the least recently used of an earlier request
    assert "b" not in cache and {"a", "c", "d"} <= set(cache._entries) and cache.evictions == 1
    cache.max_bytes = cache.max_bytes // 3
    assert len(cache) == 1 and "d" in cache
    cache.bind(model)
    assert len(cache) == 1
    cache.bind(torch.nn.Linear(1, 1))
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="byte limit"):
        FeatureCache(max_bytes=-1)


# -- precision --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bfloat16_agrees_with_float32() -> None:
    """bfloat16 autocast on the CPU changes the logits (it is on) but not the masks: Dice >= 0.99 per
    structure with the trained demo bundle (film_v1, fs 12) on part of its phantom."""
    from TextGuidedSegLib.data.phantom import make_phantom
    from TextGuidedSegLib.demo import DEFAULT_DEMO_BUNDLE, demo_phantom_config

    if not (DEFAULT_DEMO_BUNDLE / "config.json").is_file():
        pytest.skip(f"the demo bundle {DEFAULT_DEMO_BUNDLE} is absent")
    bundle = load_bundle(DEFAULT_DEMO_BUNDLE)
    phantom = make_phantom(demo_phantom_config(bundle.config.preprocessing.spacing, seed=0))
    box = (slice(40, 112), slice(30, 94), slice(0, 48))  # liver and right kidney, 2 windows of 64
    volume = Volume(np.ascontiguousarray(phantom.image[box], dtype=np.float32), phantom.affine)
    fp32, bf16 = _segmenter(bundle, precision="float32"), _segmenter(bundle, precision="bfloat16")
    assert fp32.autocast_dtype is None and bf16.autocast_dtype == torch.bfloat16
    prepared = fp32.prepare(volume)
    text, _ = fp32.conditioning(fp32.queries("liver and right kidney"))
    a = fp32.predict_logits(prepared.image, text, None)
    b = bf16.predict_logits(prepared.image, text, None)
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)
    masks_a, masks_b = (a[0] > 0).numpy(), (b[0] > 0).numpy()  # threshold 0.5 in model space
    dice = [2.0 * (x & y).sum() / (x.sum() + y.sum()) for x, y in zip(masks_a, masks_b, strict=True)]
    assert all(x.sum() > 1000 for x in masks_a), "both structures must be present"
    assert min(dice) >= 0.99, dice


def test_precision_is_checked_and_parsed() -> None:
    """Bad values fail naming --precision; every bundle-running command takes --precision."""
    parser = build_parser()
    args = parser.parse_args(
        ["segment", "ct.nii.gz", "-p", "liver", "-o", "x.nii.gz", "--precision", "bfloat16"]
    )
    assert args.precision == "bfloat16"
    assert parser.parse_args(["segment", "ct.nii.gz", "-p", "liver", "-o", "x.nii.gz"]).precision == "auto"
    assert parser.parse_args(
        ["evaluate", "-b", "b", "-l", "l.txt", "-o", "out", "--precision", "float32"]
    ).precision
    assert parser.parse_args(["demo", "--precision", "float32"]).precision == "float32"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--precision", "int8"])
    from TextGuidedSegLib.inference.segmenter import _autocast_dtype

    cpu = torch.device("cpu")
    assert _autocast_dtype("auto", cpu) is None and _autocast_dtype("float32", cpu) is None
    assert _autocast_dtype("auto", torch.device("cuda")) == torch.float16  # as before: float16 on CUDA
    with pytest.raises(ValueError, match="--precision float16 needs a CUDA device"):
        _autocast_dtype("float16", cpu)
    with pytest.raises(ValueError, match="--precision 'double'"):
        _autocast_dtype("double", cpu)
