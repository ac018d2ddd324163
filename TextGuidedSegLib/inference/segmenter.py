"""CT + prompt -> label map on the input grid: the inference path shared by the CLI and the Slicer module.

The steps, each in one place:

1. the prompt is parsed into structure queries against the bundle's taxonomy (``taxonomy.parse_prompt``);
2. each query gets its conditioning: a text embedding from the bundle's cache (or its text encoder), or a
   channel index for channel-output models (global mode, text-free baselines);
3. the volume goes to model space (RAS, bundle spacing) and through the bundle's HU window
   (``inference.geometry``), and is cropped to the body's bounding box as in training (bundles may opt out);
4. MONAI's ``sliding_window_inference`` runs the model over ROI windows with Gaussian blending;
5. the label map on the input's own grid is what thresholding the sigmoid probabilities interpolated there
   gives, overlapping structures going to the more probable one; it is decided in model space wherever that
   is exact and interpolated only at boundaries (``inference.resample``), then each label's region is
   optionally post-processed (largest component, left/right split). No (Q, I, J, K) float array is ever
   made: probability and uncertainty maps are computed one at a time when asked for. When the queried
   structures may overlap (a tumour and its organ, ``taxonomy.overlap``), each query's own thresholded mask
   is kept as well (``result.masks``, (Q, I, J, K) bool, post-processed alike) and a warning names the pairs.
   Softmax ("classes") models - MONAI model-zoo bundles - answer as their own pipeline does: softmax and
   argmax over all channels, inverted onto the input grid as MONAI's ``Invertd`` does (the label map by
   nearest neighbour, or the probabilities bilinearly and then the argmax, as the bundle says); the requested
   structures' labels then become query labels. That full label map is kept with the ``PreparedVolume``
   (and the last volumes a ``Segmenter`` saw), so re-prompting the same volume runs no network again.

Step 3 is ``Segmenter.prepare``: its ``PreparedVolume`` can be kept and passed to later ``segment`` calls, so
re-prompting the same volume does not resample it again. ``segment`` reports progress per window batch and
stops with ``SegmentationCancelled`` when its cancel event is set (the Slicer module runs it in a worker
thread). With ``flip_tta`` the model also sees the volume mirrored along each axis; the probabilities are
averaged and their standard deviation is returned as a per-voxel uncertainty.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import TraceKeys
from scipy import ndimage

from TextGuidedSegLib.bundle import Bundle
from TextGuidedSegLib.inference.feature_cache import (
    DEFAULT_FEATURE_CACHE_BYTES,
    FeatureCache,
    supports_feature_cache,
    window_features,
    window_position,
)
from TextGuidedSegLib.inference.geometry import to_model_space, window_intensity
from TextGuidedSegLib.inference.guard import InputCheck, check_memory, check_volume
from TextGuidedSegLib.inference.monai_pipeline import apply_intensity_steps, class_label_map
from TextGuidedSegLib.inference.options import PRECISIONS, SegmentationOptions
from TextGuidedSegLib.inference.postprocess import (
    body_mask,
    keep_largest_component,
    midline_x,
    split_by_laterality,
    threshold_maps,
)
from TextGuidedSegLib.inference.prepared import PreparedVolume, count_windows, intensity_key
from TextGuidedSegLib.inference.provenance import fitness_warnings, provenance
from TextGuidedSegLib.inference.resample import InputGridResampler, ProbabilityMaps
from TextGuidedSegLib.inference.result import SegmentationResult, segment_infos
from TextGuidedSegLib.io import Volume
from TextGuidedSegLib.taxonomy import PromptError, StructureQuery, parse_prompt
from TextGuidedSegLib.taxonomy.overlap import describe_pairs, overlapping_pairs
from TextGuidedSegLib.text import CLIPTextEncoder, EmbeddingCacheError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``callback(done, total)`` with the number of sliding windows run so far and in all."""

# Test-time flips: none, then each spatial axis of a (B, C, X, Y, Z) tensor.
_TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))
# Full class label maps kept per PreparedVolume (one per model / settings), and volumes kept per Segmenter.
_CACHED_LABEL_MAPS = 2
_CACHED_VOLUMES = 2


class SegmentationCancelled(RuntimeError):
    """Raised by ``Segmenter.segment`` when its ``cancel`` event was set; nothing was returned or written."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" / "cpu" / "cuda" / "cuda:N" into a device; "auto" picks CUDA when present."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: CUDA is not available on this machine; use --device cpu or auto"
        )
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from err


__all__ = [
    "PRECISIONS",
    "ProgressCallback",
    "SegmentationCancelled",
    "SegmentationOptions",
    "Segmenter",
    "resolve_device",
]


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain float32)."""
    if precision not in PRECISIONS:  # SegmentationOptions refuses it first; this guards direct calls
        raise ValueError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        return torch.float16 if cuda else None
    if precision == "float16" and not cuda:
        raise ValueError("--precision float16 needs a CUDA device; on the CPU use bfloat16 or float32")
    if precision == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bfloat16: {device} does not support bfloat16; use float16 or float32")
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]


class Segmenter:
    """Runs a bundle's model on CT volumes for text prompts.

    Args:
        bundle: a loaded bundle (``TextGuidedSegLib.bundle.load_bundle``).
        options: how to segment (device, precision, overlap, threshold, post-processing, flips,
            probabilities); None: ``SegmentationOptions()``. ``None`` fields take the bundle's values.
        progress: show a progress bar over the sliding windows.
        text_encoder: an already loaded encoder for prompts the cache lacks; by default the bundle's own
            encoder is loaded on first need (bundles without one answer only their cached vocabulary).
        feature_cache_bytes: byte limit of the encoder features kept with a ``PreparedVolume`` passed to
            ``segment`` (models that offer it: film_v1, film_v2); 0 disables the cache.
        **changes: option fields applied on top of ``options`` (``Segmenter(bundle, device="cpu")``); an
            unknown name raises ``ValueError`` listing the valid ones.

    The result carries its input volume and provenance (``result.provenance``, ``result.warnings``: a bundle
    not validated on real CT, see ``BundleConfig.intended_use``, is logged as a WARNING and kept there), so
    ``result.save`` writes the label map and its sidecar alone.

    Example::

        from TextGuidedSegLib.bundle import load_bundle
        from TextGuidedSegLib.io import load_volume
        from TextGuidedSegLib.inference import Segmenter

        bundle = load_bundle("demo_phantom_film_v1")  # a registry name, an installed bundle or a path
        result = Segmenter(bundle, device="cpu").segment(load_volume("ct.nii.gz"), "liver and both kidneys")
        result.save("ct_seg.nii.gz")  # and ct_seg.json, the sidecar
    """

    def __init__(
        self,
        bundle: Bundle,
        options: SegmentationOptions | None = None,
        *,
        progress: bool = True,
        text_encoder: CLIPTextEncoder | None = None,
        feature_cache_bytes: int = DEFAULT_FEATURE_CACHE_BYTES,
        **changes: Any,
    ) -> None:
        options = SegmentationOptions() if options is None else options
        if not isinstance(options, SegmentationOptions):
            raise TypeError(f"options must be a SegmentationOptions, got {type(options).__name__}")
        self.options = options.replace(**changes) if changes else options
        self.bundle = bundle
        self.device = resolve_device(self.options.device)
        # the bundle's sliding-window settings with the options' overrides: what this Segmenter runs with
        overrides = {
            name: getattr(self.options, name)
            for name in ("overlap", "threshold", "sw_batch_size")
            if getattr(self.options, name) is not None
        }
        self.settings = dataclasses.replace(bundle.config.inference, **overrides)
        self.progress = progress
        self._encoder = text_encoder
        self.autocast_dtype = _autocast_dtype(self.options.precision, self.device)
        if feature_cache_bytes < 0:
            raise ValueError(
                f"feature_cache_bytes must be >= 0 (0 disables the cache), got {feature_cache_bytes}"
            )
        self.feature_cache_bytes = int(feature_cache_bytes)
        self.model = bundle.model.to(self.device).train(False)  # inference mode, as BundleModel declares it
        self._volumes: OrderedDict[tuple, PreparedVolume] = OrderedDict()  # softmax models: recent volumes
        self._midline: tuple[Volume, float] | None = None  # the last volume's mid-sagittal plane (RAS x)
        self._checked: tuple[Volume, InputCheck] | None = None  # the last volume the input guard passed

    # -- the resolved options (read by the CLI, evaluation and tests) -----------------------------------

    @property
    def overlap(self) -> float:
        """Sliding-window overlap in use (the option's, else the bundle's)."""
        return self.settings.overlap

    @property
    def threshold(self) -> float:
        """Probability threshold in use (the option's, else the bundle's)."""
        return self.settings.threshold

    @property
    def sw_batch_size(self) -> int:
        """Windows per forward pass in use (the option's, else the bundle's)."""
        return self.settings.sw_batch_size

    @property
    def largest_component(self) -> bool:
        """The ``largest_component`` option."""
        return self.options.largest_component

    @property
    def split_laterality(self) -> bool:
        """The ``split_laterality`` option."""
        return self.options.split_laterality

    # -- prompts -> conditioning ------------------------------------------------------------------------

    @property
    def understands_free_text(self) -> bool:
        """True when free text can be encoded: a query-mode model with a text encoder."""
        model = self.bundle.model
        return (
            model.uses_text
            and model.output == "query"
            and (self._encoder is not None or self.bundle.config.text_encoder is not None)
        )

    def queries(self, prompt: str) -> list[StructureQuery]:
        """Parse a prompt against the bundle's taxonomy.

        A channel-output model in global mode answers an empty prompt with every structure it knows.
        """
        config = self.bundle.config
        if not prompt.strip() and self.bundle.model.config.mode == "global":
            return [StructureQuery(text="", prompt=s.prompt, structure=s) for s in config.taxonomy]
        return parse_prompt(prompt, config.taxonomy, allow_free_text=self.understands_free_text)

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings (N, E) for prompts, from the cache or, for the missing ones, the text encoder."""
        cache = self.bundle.cache
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            if self._encoder is None and self.bundle.config.text_encoder is None:
                raise EmbeddingCacheError(
                    f"bundle {self.bundle.config.name!r} has no text encoder and its embedding cache lacks "
                    f"{missing}; it understands: {', '.join(self.bundle.vocabulary)}"
                )
            if self._encoder is None:
                self._encoder = CLIPTextEncoder(self.bundle.config.text_encoder, device=self.device)
            cache.build(missing, self._encoder, progress=False)
        return cache.get(prompts)

    def conditioning(
        self, queries: Sequence[StructureQuery]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The model inputs for ``queries``: text (1, Q, E) or (1, 1, E), and class indices (1, Q) or None.

        Query-mode models get one embedding per query. Channel-output models get class indices (plus, in
        global mode, the bundle's conditioning: its global prompt, or its dataset key's prompts, see
        ``BundleConfig.conditioning_prompts``); they cannot answer free text.
        """
        model = self.bundle.model
        taxonomy = self.bundle.config.taxonomy
        if model.output == "query":
            return self._embed([q.prompt for q in queries])[None].to(self.device), None
        free = [q.text for q in queries if q.structure is None]
        if free:
            raise PromptError(
                f"{model.config.architecture} ({model.config.mode} mode) predicts a fixed set of structures "
                f"and cannot segment free text {free}; it understands: {', '.join(self.bundle.vocabulary)}"
            )
        indices = torch.tensor(
            [[taxonomy.index(q.structure.class_name) for q in queries]], device=self.device
        )
        text = None
        if model.uses_text:  # global mode: the mean embedding of the bundle's (dataset) conditioning prompts
            prompts = self.bundle.config.conditioning_prompts()
            text = self._embed(prompts).mean(0, keepdim=True)[None].to(self.device)
        return text, indices

    # -- the volume -------------------------------------------------------------------------------------

    def check_input(self, volume: Volume, queries: int = 1) -> InputCheck:
        """The input guard (``inference.guard``) on ``volume`` (once per volume object) and the memory
        estimate for ``queries``; raises ``ImplausibleInputError`` unless ``options.force``."""
        preprocessing, force = self.bundle.config.preprocessing, self.options.force
        if self._checked is None or self._checked[0] is not volume:
            check = check_volume(
                volume, force=force, model_spacing=preprocessing.spacing, roi_size=self.settings.roi_size
            )
            self._checked = (volume, check)
        check = self._checked[1]
        classes = self.model.output == "classes"
        memory = check_memory(
            check.volume,
            model_spacing=preprocessing.spacing,
            roi_size=self.settings.roi_size,
            channels=getattr(self.model.config, "num_classes", queries) if classes else queries,
            passes=len(_TTA_FLIPS) if self.options.flip_tta else 1,
            device=str(self.device),
            force=force,
        )
        return dataclasses.replace(check, warnings=[*check.warnings, *memory]) if memory else check

    def prepare(self, volume: Volume) -> PreparedVolume:
        """The model input for ``volume``: RAS, the bundle's spacing and intensity (keep it to re-prompt).
        The input guard runs first (``check_input``): non-finite voxels replaced, implausible input refused.
        """
        volume = self.check_input(volume).volume
        preprocessing = self.bundle.config.preprocessing
        image = to_model_space(volume, preprocessing.spacing, mode=preprocessing.interpolation)
        operations = copy.deepcopy(list(image.applied_operations))
        for operation in operations:  # let this library's Spacing / Orientation instances invert them
            operation[TraceKeys.ID] = TraceKeys.NONE
        if preprocessing.intensity is None:
            windowed = window_intensity(image, preprocessing.hu_window).as_tensor()
        else:
            windowed = apply_intensity_steps(image.as_tensor(), preprocessing.intensity_steps())
        grid_shape = tuple(windowed.shape[1:])
        crop = tuple(slice(0, n) for n in grid_shape)
        if preprocessing.crop_foreground:
            start, end = generate_spatial_bounding_box(windowed)  # voxels above the window's low end
            if all(e > s for s, e in zip(start, end, strict=True)):
                crop = tuple(slice(s, e) for s, e in zip(start, end, strict=True))
                windowed = windowed[(slice(None), *crop)]
        return PreparedVolume(
            image=windowed[None].contiguous(),
            affine=np.asarray(image.affine, dtype=np.float64),
            grid_shape=grid_shape,
            crop=crop,
            source_shape=tuple(volume.shape),
            source_affine=np.asarray(volume.affine, dtype=np.float64).copy(),
            spacing=tuple(preprocessing.spacing),
            hu_window=tuple(preprocessing.hu_window),
            intensity=intensity_key(preprocessing),
            interpolation=preprocessing.interpolation,
            operations=tuple(operations),
        )

    def predict_logits(
        self,
        image: torch.Tensor,
        text: torch.Tensor | None,
        class_indices: torch.Tensor | None,
        step: Callable[[int], None] | None = None,
        *,
        features: FeatureCache | None = None,
        view: tuple[int, ...] = (),
    ) -> torch.Tensor:
        """Sliding-window logits (1, Q, X, Y, Z) for a windowed model-space image (1, 1, X, Y, Z).

        ``step(n)`` is called before each batch of ``n`` windows runs (progress and cancellation).
        ``features``: the encoder-feature cache of the image's ``PreparedVolume`` (used when the model offers
        it, see ``feature_cache``); ``view``: the axes ``image`` was flipped along (part of the cache key).
        """
        settings = self.settings
        cached = features is not None and text is not None and supports_feature_cache(self.model)
        context = (view, tuple(image.shape[2:]), settings.padding_mode, self.autocast_dtype, str(self.device))

        def predictor(window: torch.Tensor, coords: Sequence[Sequence[slice]] | None = None) -> torch.Tensor:
            n = window.shape[0]
            if step is not None:
                step(n)
            batch_text = None if text is None else text.expand(n, -1, -1)
            if cached and coords is not None:
                keys = [(context, window_position(c)) for c in coords]
                encoded = window_features(self.model, window, keys, features)
                return self.model.logits_from_features(encoded, batch_text.to(encoded.dec4.dtype))
            batch_indices = None if class_indices is None else class_indices.expand(n, -1)
            return self.model(window, batch_text, batch_indices)

        amp = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        if self.model.predicts_volume:
            # 2D models (CLIPSeg bundles) segment the whole volume, slice by slice, in one call
            with torch.inference_mode(), amp:
                return predictor(image.to(self.device)).float()
        if cached:
            features.bind(self.model)
            held = features.nbytes
        with torch.inference_mode(), amp:
            logits = sliding_window_inference(
                image.to(self.device),
                roi_size=settings.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=predictor,
                overlap=self.overlap,
                mode=settings.blend_mode,
                padding_mode=settings.padding_mode,
                progress=self.progress,
                with_coord=cached,
            )
        if cached:
            logger.log(
                logging.INFO if features.nbytes != held else logging.DEBUG,
                "encoder feature cache: %s (%d hits, %d misses, %d evicted so far)",
                features,
                features.hits,
                features.misses,
                features.evictions,
            )
        return logits.float()

    def feature_cache(self, prepared: PreparedVolume) -> FeatureCache | None:
        """``prepared``'s encoder-feature cache, limited to ``feature_cache_bytes``, opened for a new
        request; None when the cache is disabled or the model does not offer it."""
        if not self.feature_cache_bytes or not supports_feature_cache(self.model):
            return None
        cache = prepared.features
        cache.max_bytes = self.feature_cache_bytes
        cache.new_request()
        return cache

    def predict_probabilities(
        self,
        image: torch.Tensor,
        text: torch.Tensor | None,
        class_indices: torch.Tensor | None,
        step: Callable[[int], None] | None = None,
        *,
        features: FeatureCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-space probabilities (Q, X, Y, Z) and, with ``flip_tta``, their std over flips (else None).

        ``features``: see ``predict_logits`` (each flip is cached apart).
        """
        if not self.options.flip_tta:
            logits = self.predict_logits(image, text, class_indices, step, features=features)
            with torch.inference_mode():  # in place: one (Q, X, Y, Z) array, not two
                return logits[0].cpu().sigmoid_(), None
        passes = []
        for dims in _TTA_FLIPS:
            flipped = torch.flip(image, dims) if dims else image
            logits = self.predict_logits(flipped, text, class_indices, step, features=features, view=dims)
            passes.append(torch.sigmoid(torch.flip(logits, dims) if dims else logits)[0].cpu())
        stacked = torch.stack(passes)
        return stacked.mean(0), stacked.std(0, unbiased=False)

    def segment(
        self,
        volume: Volume,
        prompt: str | Sequence[StructureQuery],
        *,
        prepared: PreparedVolume | None = None,
        progress_callback: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> SegmentationResult:
        """Segment ``volume`` for ``prompt``; the label map lies voxel for voxel on ``volume``'s grid.

        With ``options.probabilities`` the result also holds (Q, I, J, K) probabilities on the input grid;
        with ``options.flip_tta``, their standard deviation over the flips (``result.uncertainty``). The
        result keeps ``volume`` and its provenance (``inference.provenance``), any caveat in ``warnings``.

        Args:
            volume: the CT, (I, J, K) HU with its voxel-to-RAS affine; it is not modified.
            prompt: free text ("liver and both kidneys") or already parsed queries.
            prepared: ``self.prepare(volume)`` from an earlier call, to skip resampling the volume again.
            progress_callback: ``callback(done, total)`` over the sliding windows (all flips included).
            cancel: when this event is set, the run stops before its next window batch and raises
                ``SegmentationCancelled``.
        """
        queries = self.queries(prompt) if isinstance(prompt, str) else list(prompt)
        if not queries:
            raise PromptError("no structure to segment: the prompt produced no query")
        config = self.bundle.config
        check = self.check_input(volume, len(queries))  # refuses implausible input; logs its warnings
        warnings = fitness_warnings(config.name, config.intended_use, volume)
        for warning in warnings:
            logger.warning("%s", warning)
        warnings += check.warnings
        result = self._segment(check.volume, queries, prepared, progress_callback, cancel)
        result.volume = volume
        pairs = overlapping_pairs(queries) if result.masks is not None else []
        if pairs:
            warnings = [*warnings, _overlap_warning(queries, pairs)]
            logger.warning("%s", warnings[-1])
        result.provenance = provenance(
            self, volume, prompt if isinstance(prompt, str) else None, queries, warnings
        )
        if pairs:
            result.provenance["overlapping_segments"] = [[i + 1, j + 1] for i, j in pairs]
        return result

    def _segment(
        self,
        volume: Volume,
        queries: list[StructureQuery],
        prepared: PreparedVolume | None,
        progress_callback: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> SegmentationResult:
        """``segment`` after parsing the prompt: the label map and segment infos, without provenance."""
        text, class_indices = self.conditioning(queries)
        preprocessing = self.bundle.config.preprocessing
        classes = self.model.output == "classes"
        features = None if prepared is None else self.feature_cache(prepared)  # only a kept PreparedVolume
        if prepared is None:
            prepared = self._recent_prepared(volume) if classes else self.prepare(volume)
        elif not prepared.matches(volume, preprocessing):
            raise ValueError(
                "prepared: this PreparedVolume was made from another volume grid or other pre-processing; "
                "call Segmenter.prepare(volume) again"
            )
        logger.info(
            "segmenting %s (%s, spacing %s mm) for %s",
            volume.source,
            "x".join(map(str, volume.shape)),
            volume.spacing,
            [q.name for q in queries],
        )
        if classes:
            return self._segment_classes(volume, queries, prepared, progress_callback, cancel)
        roi_size = self.settings.roi_size
        whole_volume = self.model.predicts_volume  # one call for the whole volume
        total = 1 if whole_volume else count_windows(prepared.image.shape[2:], roi_size, self.overlap)
        total *= len(_TTA_FLIPS) if self.options.flip_tta else 1
        step = _WindowSteps(total, volume, progress_callback, cancel)
        probabilities, spread = self.predict_probabilities(
            prepared.image, text, class_indices, step, features=features
        )
        if progress_callback is not None:
            progress_callback(total, total)

        resampler = InputGridResampler(prepared.affine, prepared.grid_shape, prepared.crop, volume)
        labels = self._postprocess(resampler.labels(probabilities, self.threshold), queries, volume)
        maps = ProbabilityMaps(probabilities, resampler)
        masks = None
        if overlapping_pairs(queries):  # each query's own mask: a tumour stays part of its organ
            masks = self._postprocess_masks(threshold_maps(maps, self.threshold), queries, volume)
        return SegmentationResult(
            labels=labels,
            segments=segment_infos(labels, queries, volume, masks),
            queries=queries,
            probabilities=maps if self.options.probabilities else None,
            uncertainty=None if spread is None else ProbabilityMaps(spread, resampler),
            masks=masks,
        )

    def _recent_prepared(self, volume: Volume) -> PreparedVolume:
        """``prepare(volume)``, or the PreparedVolume of an identical volume (grid and voxels) seen lately."""
        array = np.ascontiguousarray(volume.array)
        key = (array.shape, str(array.dtype), np.asarray(volume.affine).tobytes(), zlib.crc32(array.data))
        prepared = self._volumes.get(key)
        if prepared is None or not prepared.matches(volume, self.bundle.config.preprocessing):
            prepared = self.prepare(volume)
        self._volumes[key] = prepared
        self._volumes.move_to_end(key)
        while len(self._volumes) > _CACHED_VOLUMES:
            self._volumes.popitem(last=False)
        return prepared

    def _segment_classes(
        self,
        volume: Volume,
        queries: Sequence[StructureQuery],
        prepared: PreparedVolume,
        progress_callback: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> SegmentationResult:
        """A softmax model: its full class label map (cached with ``prepared``), then the queried labels."""
        self.conditioning(queries)  # refuses free text, naming the vocabulary
        if self.options.flip_tta:
            raise ValueError(
                f"flip_tta (uncertainty) is not available for {self.bundle.config.name!r}, a softmax bundle; "
                "run it without"
            )
        taxonomy = self.bundle.config.taxonomy
        channels = [taxonomy.index(q.structure.class_name) + 1 for q in queries]
        key = (id(self.model), self.overlap, str(self.device))
        cached = prepared.label_maps.get(key)
        full = cached[1] if cached is not None and cached[0] is self.model else None
        probabilities = None
        if full is None or self.options.probabilities:
            total = count_windows(prepared.image.shape[2:], self.settings.roi_size, self.overlap)
            step = _WindowSteps(total, volume, progress_callback, cancel)
            wanted = channels if self.options.probabilities else []
            logits = self.predict_logits(prepared.image, None, None, step)[0].cpu()
            full, probabilities = class_label_map(logits, prepared, self.model.config.invert, wanted)
            del logits
            prepared.label_maps[key] = (self.model, full)
            prepared.label_maps.move_to_end(key)
            while len(prepared.label_maps) > _CACHED_LABEL_MAPS:
                prepared.label_maps.popitem(last=False)
            if progress_callback is not None:
                progress_callback(total, total)
        else:
            logger.info("re-using the label map of %s from an earlier prompt", volume.source or "the volume")
        dtype = np.uint8 if len(queries) < 256 else np.uint16
        lookup = np.zeros(self.model.config.num_classes, dtype=dtype)
        for q, channel in enumerate(channels):
            lookup[channel] = q + 1
        labels = self._postprocess(lookup[full], queries, volume)
        return SegmentationResult(
            labels=labels,
            segments=segment_infos(labels, queries, volume),
            queries=list(queries),
            probabilities=probabilities,
        )

    def _postprocess(
        self, labels: np.ndarray, queries: Sequence[StructureQuery], volume: Volume
    ) -> np.ndarray:
        """The optional left/right split and largest-component filter of each label's region, in place: the
        voxels a filter removes become background."""
        if not (self.largest_component or self.split_laterality):
            return labels
        boxes = ndimage.find_objects(labels, max_label=len(queries))
        for q, (query, box) in enumerate(zip(queries, boxes, strict=True)):
            if box is None:
                continue
            region = labels[box]  # a view
            mask = region == q + 1
            region[mask & ~self._kept(mask, query, box, volume)] = 0
        return labels

    def _postprocess_masks(
        self, masks: np.ndarray, queries: Sequence[StructureQuery], volume: Volume
    ) -> np.ndarray:
        """The same filters as ``_postprocess`` on each query's own (Q, I, J, K) mask, in place."""
        if not (self.largest_component or self.split_laterality):
            return masks
        for mask, query in zip(masks, queries, strict=True):
            box = ndimage.find_objects(mask.view(np.uint8))
            if box and box[0] is not None:
                region = mask[box[0]]  # a view
                region &= self._kept(region, query, box[0], volume)
        return masks

    def _kept(
        self, mask: np.ndarray, query: StructureQuery, box: tuple[slice, ...], volume: Volume
    ) -> np.ndarray:
        """What the left/right split and the largest-component filter keep of ``mask``, the ``box`` of
        ``volume``'s grid."""
        keep = mask
        side = query.structure.laterality if query.structure is not None else None
        if self.split_laterality and side is not None:
            if self._midline is None or self._midline[0] is not volume:
                self._midline = (volume, midline_x(volume.affine, body_mask(volume)))
            offset = np.eye(4)
            offset[:3, 3] = [s.start for s in box]
            keep = split_by_laterality(keep, side, volume.affine @ offset, midline=self._midline[1])
        if self.largest_component and keep.any():
            keep = keep_largest_component(keep)
        return keep


def _overlap_warning(queries: Sequence[StructureQuery], pairs: Sequence[tuple[int, int]]) -> str:
    """The warning of a run whose structures may overlap."""
    return (
        f"the structures {describe_pairs(queries, pairs)} may overlap: each keeps its own mask "
        "(result.masks; written as one mask per structure), the label map gives each voxel to one of them"
    )


class _WindowSteps:
    """``step(n)``, called before each batch of ``n`` windows: reports progress and stops on ``cancel``."""

    def __init__(
        self,
        total: int,
        volume: Volume,
        progress_callback: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> None:
        self.total, self.done = total, 0
        self.volume, self.progress_callback, self.cancel = volume, progress_callback, cancel

    def __call__(self, n: int) -> None:
        if self.progress_callback is not None:
            self.progress_callback(self.done, self.total)
        if self.cancel is not None and self.cancel.is_set():
            raise SegmentationCancelled(f"segmentation of {self.volume.source or 'the volume'} cancelled")
        self.done += n
