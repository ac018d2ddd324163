"""CT + prompt -> label map on the input grid: the inference path shared by the CLI and the Slicer module.

The steps, each in one place:

1. the prompt is parsed into structure queries against the bundle's taxonomy (``taxonomy.parse_prompt``);
2. each query gets its conditioning: a text embedding from the bundle's cache (or its text encoder), or a
   channel index for channel-output models (global mode, text-free baselines);
3. the volume goes to model space (RAS, bundle spacing) and through the bundle's HU window
   (``inference.geometry``), and is cropped to the body's bounding box as in training (bundles may opt out);
4. MONAI's ``sliding_window_inference`` runs the model over ROI windows with Gaussian blending;
5. sigmoid probabilities are resampled back onto the input's own grid, thresholded and optionally
   post-processed (largest component, left/right split); overlapping structures go to the more probable one.
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
import json
import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.transforms import Orientation, Spacing
from monai.transforms.utils import convert_applied_interp_mode, generate_spatial_bounding_box
from monai.utils import TraceKeys

from TextGuidedSegLib.bundle import Bundle, PreprocessConfig
from TextGuidedSegLib.inference.geometry import to_model_space, to_original_space, window_intensity
from TextGuidedSegLib.inference.monai_pipeline import apply_intensity_steps, class_label_map
from TextGuidedSegLib.inference.postprocess import body_mask, keep_largest_component, split_by_laterality
from TextGuidedSegLib.io import Volume
from TextGuidedSegLib.taxonomy import PromptError, StructureQuery, parse_prompt
from TextGuidedSegLib.text import CLIPTextEncoder, EmbeddingCacheError

logger = logging.getLogger(__name__)

SIDECAR_FORMAT_VERSION = 1

ProgressCallback = Callable[[int, int], None]
"""Called as ``callback(done, total)`` with the number of sliding windows run so far and in all."""

# Test-time flips: none, then each spatial axis of a (B, C, X, Y, Z) tensor.
_TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))
# Full class label maps kept per PreparedVolume (one per model / settings), and volumes kept per Segmenter.
_CACHED_LABEL_MAPS = 2
_CACHED_VOLUMES = 2
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


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


@dataclass
class SegmentInfo:
    """One segment of a segmentation result: what it is and how large it came out.

    Attributes:
        label_id: value of this segment in the label map (1 = first query).
        name: display name ("Right Kidney", or the free text).
        class_name: taxonomy key, None for a free-text query.
        prompt: text the model was conditioned on.
        text: the words the user typed for it.
        color: recommended display colour, RGB 0-255.
        terminology: Slicer terminology entry string, None for free text.
        voxels: number of voxels in the label map.
        volume_ml: volume in millilitres.
    """

    label_id: int
    name: str
    class_name: str | None
    prompt: str
    text: str
    color: tuple[int, int, int]
    terminology: str | None
    voxels: int
    volume_ml: float


@dataclass
class SegmentationResult:
    """Output of ``Segmenter.segment``: a label map on the input grid plus what each label means.

    Attributes:
        labels: (I, J, K) uint8 (uint16 beyond 255 queries) label map on the input volume's grid; 0 is
            background, ``q + 1`` is query ``q``.
        segments: one entry per query, in label order.
        queries: the structure queries, in label order.
        probabilities: (Q, I, J, K) float32 sigmoid probabilities on the input grid, when requested.
        uncertainty: (Q, I, J, K) float32 standard deviation of the probabilities over the test-time flips,
            when the segmenter ran with ``flip_tta``.
    """

    labels: np.ndarray
    segments: list[SegmentInfo]
    queries: list[StructureQuery]
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None

    def sidecar(self, **extra: Any) -> dict[str, Any]:
        """The JSON sidecar written beside a label map: segment names, codes, colours, volumes."""
        return {
            "format_version": SIDECAR_FORMAT_VERSION,
            **extra,
            "segments": [
                {
                    "label_id": s.label_id,
                    "name": s.name,
                    "class_name": s.class_name,
                    "prompt": s.prompt,
                    "text": s.text,
                    "color": list(s.color),
                    "terminology": s.terminology,
                    "voxels": s.voxels,
                    "volume_ml": round(s.volume_ml, 3),
                }
                for s in self.segments
            ],
        }


@dataclass(frozen=True)
class PreparedVolume:
    """A volume in model space and windowed: the model's input, reusable for any prompt on that volume.

    Attributes:
        image: ``(1, 1, x, y, z)`` float32 tensor (RAS, the bundle's spacing, HU window or intensity steps),
            cropped to the foreground box ``crop`` of the model-space grid.
        affine: ``(4, 4)`` voxel-to-RAS affine of the whole model-space grid.
        grid_shape: ``(X, Y, Z)`` of the whole model-space grid.
        crop: where ``image`` lies in that grid (three slices; the whole grid without cropping).
        source_shape: ``(I, J, K)`` of the volume it was made from.
        source_affine: ``(4, 4)`` voxel-to-RAS affine of that volume.
        spacing: model spacing (mm) it was resampled to.
        hu_window: HU window it was mapped through (when ``intensity`` is the default).
        intensity: the intensity steps it went through (JSON text), and ``interpolation`` the resampling mode.
        operations: MONAI's trace of the Orientation and Spacing it went through (``Invertd`` undoes these).
        label_maps: full class label maps on the input grid already computed from it (softmax models).
    """

    image: torch.Tensor
    affine: np.ndarray
    grid_shape: tuple[int, int, int]
    crop: tuple[slice, slice, slice]
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    spacing: tuple[float, float, float]
    hu_window: tuple[float, float]
    intensity: str = ""
    interpolation: str = "bilinear"
    operations: tuple[dict[str, Any], ...] = ()
    label_maps: OrderedDict = field(default_factory=OrderedDict, compare=False, repr=False)

    def matches(self, volume: Volume, preprocessing: PreprocessConfig) -> bool:
        """True when this was made from ``volume``'s grid with the given pre-processing."""
        return (
            tuple(self.source_shape) == tuple(volume.shape)
            and np.allclose(self.source_affine, volume.affine, atol=1e-6)
            and np.allclose(self.spacing, preprocessing.spacing)
            and np.allclose(self.hu_window, preprocessing.hu_window)
            and self.intensity == _intensity_key(preprocessing)
            and self.interpolation == preprocessing.interpolation
        )

    def to_input_grid(self, data: torch.Tensor, nearest: bool) -> torch.Tensor:
        """``(C, X, Y, Z)`` on the whole model grid -> ``(C, I, J, K)`` on the input grid.

        MONAI's own inverse of the traced Spacing and Orientation (what ``Invertd`` runs), by nearest
        neighbour or with the forward interpolation, computed in ``Spacing``'s default float64.
        """
        operations = copy.deepcopy(list(self.operations))
        if nearest:
            operations = convert_applied_interp_mode(operations, mode="nearest", align_corners=None)
        plain = data.as_tensor() if isinstance(data, MetaTensor) else data
        meta = MetaTensor(plain, affine=torch.as_tensor(self.affine), applied_operations=operations)
        meta = Spacing(pixdim=self.spacing).inverse(meta)
        meta = Orientation(axcodes="RAS", labels=_RAS_LABELS).inverse(meta)
        return meta.as_tensor()

    def uncrop(self, data: torch.Tensor) -> torch.Tensor:
        """``(C, x, y, z)`` values on the crop -> ``(C, X, Y, Z)`` on the whole model grid, 0 outside."""
        if tuple(data.shape[1:]) == tuple(self.grid_shape):
            return data
        full = data.new_zeros((data.shape[0], *self.grid_shape))
        full[(slice(None), *self.crop)] = data
        return full


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of windows ``sliding_window_inference`` runs over an image of ``image_size`` (spatial dims).

    MONAI pads an image smaller than the ROI up to it, then steps ``int(roi * (1 - overlap))`` (at least 1)
    along each axis, or one ROI where the axis equals it.
    """
    padded = [max(int(i), int(r)) for i, r in zip(image_size, roi_size, strict=True)]
    interval = [
        int(r) if p == int(r) else max(int(int(r) * (1.0 - overlap)), 1)
        for p, r in zip(padded, roi_size, strict=True)
    ]
    return len(dense_patch_slices(padded, [int(r) for r in roi_size], interval))


# Colours for free-text segments, which have no terminology entry.
_FREE_TEXT_COLORS = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
]


class Segmenter:
    """Runs a bundle's model on CT volumes for text prompts.

    Args:
        bundle: a loaded bundle (``TextGuidedSegLib.bundle.load_bundle``).
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        overlap: sliding-window overlap in [0, 1); None takes the bundle's.
        threshold: probability threshold in (0, 1); None takes the bundle's.
        sw_batch_size: windows per forward pass; None takes the bundle's.
        largest_component: keep only the largest connected component of each structure.
        split_laterality: for left/right structures, drop voxels on the wrong side of the body midline.
        progress: show a progress bar over the sliding windows.
        text_encoder: an already loaded encoder for prompts the cache lacks; by default the bundle's own
            encoder is loaded on first need (bundles without one answer only their cached vocabulary).
        flip_tta: test-time augmentation by flips: also run the volume mirrored along each axis (4 passes),
            average the probabilities and return their standard deviation as ``result.uncertainty``.

    Example::

        bundle = load_bundle("demo_bundle")
        result = Segmenter(bundle).segment(load_volume("ct.nii.gz"), "liver and both kidneys")
        save_label_map("ct_seg.nii.gz", result.labels, reference=volume)
    """

    def __init__(
        self,
        bundle: Bundle,
        device: str | torch.device = "auto",
        overlap: float | None = None,
        threshold: float | None = None,
        sw_batch_size: int | None = None,
        largest_component: bool = False,
        split_laterality: bool = False,
        progress: bool = True,
        text_encoder: CLIPTextEncoder | None = None,
        flip_tta: bool = False,
    ) -> None:
        settings = bundle.config.inference
        self.bundle = bundle
        self.device = resolve_device(device)
        self.overlap = settings.overlap if overlap is None else float(overlap)
        self.threshold = settings.threshold if threshold is None else float(threshold)
        self.sw_batch_size = settings.sw_batch_size if sw_batch_size is None else int(sw_batch_size)
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {self.sw_batch_size}")
        self.largest_component = largest_component
        self.split_laterality = split_laterality
        self.progress = progress
        self._encoder = text_encoder
        self.flip_tta = flip_tta
        self.model = bundle.model.to(self.device).eval()
        self._volumes: OrderedDict[tuple, PreparedVolume] = OrderedDict()  # softmax models: recent volumes

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
        global mode, the embedding of the bundle's global prompt); they cannot answer free text.
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
        text = (
            self._embed([self.bundle.config.global_prompt])[None].to(self.device) if model.uses_text else None
        )
        return text, indices

    # -- the volume -------------------------------------------------------------------------------------

    def prepare(self, volume: Volume) -> PreparedVolume:
        """The model input for ``volume``: RAS, the bundle's spacing and intensity (keep it to re-prompt)."""
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
            intensity=_intensity_key(preprocessing),
            interpolation=preprocessing.interpolation,
            operations=tuple(operations),
        )

    def predict_logits(
        self,
        image: torch.Tensor,
        text: torch.Tensor | None,
        class_indices: torch.Tensor | None,
        step: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Sliding-window logits (1, Q, X, Y, Z) for a windowed model-space image (1, 1, X, Y, Z).

        ``step(n)`` is called before each batch of ``n`` windows runs (progress and cancellation).
        """
        settings = self.bundle.config.inference

        def predictor(window: torch.Tensor) -> torch.Tensor:
            n = window.shape[0]
            if step is not None:
                step(n)
            batch_text = None if text is None else text.expand(n, -1, -1)
            batch_indices = None if class_indices is None else class_indices.expand(n, -1)
            return self.model(window, batch_text, batch_indices)

        amp = torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()
        if getattr(self.model, "predicts_volume", False):
            # 2D models (CLIPSeg bundles) segment the whole volume, slice by slice, in one call
            with torch.inference_mode(), amp:
                return predictor(image.to(self.device)).float()
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
            )
        return logits.float()

    def predict_probabilities(
        self,
        image: torch.Tensor,
        text: torch.Tensor | None,
        class_indices: torch.Tensor | None,
        step: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-space probabilities (Q, X, Y, Z) and, with ``flip_tta``, their std over flips (else None)."""
        if not self.flip_tta:
            return torch.sigmoid(self.predict_logits(image, text, class_indices, step)[0]).cpu(), None
        passes = []
        for dims in _TTA_FLIPS:
            flipped = torch.flip(image, dims) if dims else image
            logits = self.predict_logits(flipped, text, class_indices, step)
            passes.append(torch.sigmoid(torch.flip(logits, dims) if dims else logits)[0].cpu())
        stacked = torch.stack(passes)
        return stacked.mean(0), stacked.std(0, unbiased=False)

    def segment(
        self,
        volume: Volume,
        prompt: str | Sequence[StructureQuery],
        return_probabilities: bool = False,
        *,
        prepared: PreparedVolume | None = None,
        progress_callback: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> SegmentationResult:
        """Segment ``volume`` for ``prompt``; the label map lies voxel for voxel on ``volume``'s grid.

        Args:
            volume: the CT, (I, J, K) HU with its voxel-to-RAS affine; it is not modified.
            prompt: free text ("liver and both kidneys") or already parsed queries.
            return_probabilities: also return (Q, I, J, K) probabilities on the input grid.
            prepared: ``self.prepare(volume)`` from an earlier call, to skip resampling the volume again.
            progress_callback: ``callback(done, total)`` over the sliding windows (all flips included).
            cancel: when this event is set, the run stops before its next window batch and raises
                ``SegmentationCancelled``.
        """
        queries = self.queries(prompt) if isinstance(prompt, str) else list(prompt)
        if not queries:
            raise PromptError("no structure to segment: the prompt produced no query")
        text, class_indices = self.conditioning(queries)
        preprocessing = self.bundle.config.preprocessing
        classes = self.model.output == "classes"
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
            return self._segment_classes(
                volume, queries, prepared, return_probabilities, progress_callback, cancel
            )
        roi_size = self.bundle.config.inference.roi_size
        whole_volume = getattr(self.model, "predicts_volume", False)  # one call for the whole volume
        total = 1 if whole_volume else count_windows(prepared.image.shape[2:], roi_size, self.overlap)
        total *= len(_TTA_FLIPS) if self.flip_tta else 1
        step = _WindowSteps(total, volume, progress_callback, cancel)
        probabilities, spread = self.predict_probabilities(prepared.image, text, class_indices, step)
        if progress_callback is not None:
            progress_callback(total, total)

        def back(values: torch.Tensor) -> np.ndarray:
            return to_original_space(prepared.uncrop(values), volume, mode="bilinear", affine=prepared.affine)

        probabilities = back(probabilities)
        spread = None if spread is None else back(spread)
        masks = probabilities >= self.threshold
        masks = self._postprocess(masks, queries, volume)
        labels = _label_map(probabilities, masks)
        segments = _segment_infos(labels, queries, volume)
        return SegmentationResult(
            labels=labels,
            segments=segments,
            queries=queries,
            probabilities=probabilities if return_probabilities else None,
            uncertainty=spread,
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
        return_probabilities: bool,
        progress_callback: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> SegmentationResult:
        """A softmax model: its full class label map (cached with ``prepared``), then the queried labels."""
        self.conditioning(queries)  # refuses free text, naming the vocabulary
        if self.flip_tta:
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
        if full is None or return_probabilities:
            total = count_windows(
                prepared.image.shape[2:], self.bundle.config.inference.roi_size, self.overlap
            )
            step = _WindowSteps(total, volume, progress_callback, cancel)
            wanted = channels if return_probabilities else []
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
        labels = lookup[full]
        if self.largest_component or self.split_laterality:
            ids = np.arange(1, len(queries) + 1)[:, None, None, None]
            masks = self._postprocess(labels[None] == ids, queries, volume)
            labels = np.where(masks.any(0), masks.argmax(0) + 1, 0).astype(dtype)
        return SegmentationResult(
            labels=labels,
            segments=_segment_infos(labels, queries, volume),
            queries=list(queries),
            probabilities=probabilities,
        )

    def _postprocess(
        self, masks: np.ndarray, queries: Sequence[StructureQuery], volume: Volume
    ) -> np.ndarray:
        """Apply the optional left/right split and largest-component filter to (Q, I, J, K) masks."""
        body = None
        for q, query in enumerate(queries):
            side = query.structure.laterality if query.structure is not None else None
            if self.split_laterality and side is not None:
                if body is None:
                    body = body_mask(volume)
                masks[q] = split_by_laterality(masks[q], side, volume.affine, body)
            if self.largest_component and masks[q].any():
                masks[q] = keep_largest_component(masks[q])
        return masks


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


def _intensity_key(preprocessing: PreprocessConfig) -> str:
    """The intensity steps of ``preprocessing`` as canonical JSON text."""
    return json.dumps(preprocessing.intensity_steps(), sort_keys=True)


def _label_map(probabilities: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Label map (I, J, K): for each voxel in any mask, 1 + the index of its most probable query."""
    n_queries = masks.shape[0]
    dtype = np.uint8 if n_queries < 256 else np.uint16
    winner = np.where(masks, probabilities, -1.0).argmax(axis=0)
    return np.where(masks.any(axis=0), winner + 1, 0).astype(dtype)


def _segment_infos(
    labels: np.ndarray, queries: Sequence[StructureQuery], volume: Volume
) -> list[SegmentInfo]:
    """Names, codes, colours and volumes of the segments in ``labels``."""
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=len(queries) + 1)
    infos = []
    for q, query in enumerate(queries):
        structure = query.structure
        if structure is not None:
            color = tuple(structure.terminology.color)
            terminology = structure.terminology.slicer_entry()
        else:
            color = _FREE_TEXT_COLORS[q % len(_FREE_TEXT_COLORS)]
            terminology = None
        voxels = int(counts[q + 1])
        infos.append(
            SegmentInfo(
                label_id=q + 1,
                name=query.name,
                class_name=query.class_name,
                prompt=query.prompt,
                text=query.text,
                color=color,
                terminology=terminology,
                voxels=voxels,
                volume_ml=voxels * voxel_ml,
            )
        )
    return infos
