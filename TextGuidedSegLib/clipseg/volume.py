"""The 2D->3D engine: a CLIPSeg bundle segments CT volumes through the same ``Segmenter`` as the 3D models.

:class:`CLIPSegVolumeModel` answers the library's one model call, ``model(image (B, 1, X, Y, Z), text
(B, Q, E), class_indices) -> logits (B, Q, X, Y, Z)``: it takes the model-space volume the ``Segmenter``
prepared (RAS, the bundle's spacing and HU window), cuts it into axial slices, runs each batch of slices
through exactly the slice set's steps (``data.prepare_slices``: radiological view, intensity, resize to
``S``, uint8), CLIPSeg's vision tower once per slice and its decoder once per (slice, query), resizes the
logits back onto the slice grid and stacks them along ``z``. ``text`` holds CLIPSeg conditional embeddings,
which the bundle's embedding cache provides per prompt. The model sets ``predicts_volume = True``:
``Segmenter.predict_logits`` then calls it once on the whole volume instead of sliding a 3D window, so the
rest (back to the input grid, threshold, label map, sidecar) is the 3D models' path, unchanged.

A CLIPSeg bundle is a normal bundle folder (or .zip)::

    config.json            model: {"architecture": "clipseg", strategy, base_model, image_size, intensity,
                           ...}; taxonomy with CLIPSeg's prompts ("liver"); preprocessing: spacing and the
                           HU window of the slice set (a wide window for minmax); inference.roi_size is a
                           ceiling (4096^3) since the volume is segmented whole; checksums of every file
    clipseg/               CLIPSegForImageSegmentation.save_pretrained + processor (for lora: the base)
    lora/                  PeftModel.save_pretrained (lora only)
    adapters.safetensors   bottleneck adapters (adapter only)
    clipseg_net.json       strategy, options, pixel spec, source
    text_cache/            conditional embeddings of the taxonomy's prompts
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from TextGuidedSegLib.bundle import (
    CONFIG_FILE,
    BundleConfig,
    BundleError,
    InferenceConfig,
    PreprocessConfig,
    save_bundle,
)
from TextGuidedSegLib.configs import dataclass_from_dict, to_jsonable
from TextGuidedSegLib.taxonomy import Taxonomy, get_taxonomy
from TextGuidedSegLib.text import EmbeddingCache

from .data import TAXONOMY, SliceConfig, prepare_slices, slice_back
from .model import DEFAULT_CLIPSEG, NET_FILE, CLIPSegNet, CLIPSegUnavailableError

__all__ = [
    "CLIPSEG_ARCHITECTURE",
    "CLIPSegModelConfig",
    "CLIPSegVolumeModel",
    "clipseg_taxonomy",
    "load_bundle_model",
    "model_config_from_dict",
    "save_clipseg_bundle",
]

logger = logging.getLogger(__name__)

CLIPSEG_ARCHITECTURE = "clipseg"
#: ``inference.roi_size`` of CLIPSeg bundles: the volume is segmented whole, so one "window" covers it.
WHOLE_VOLUME_ROI = (4096, 4096, 4096)


@dataclass
class CLIPSegModelConfig:
    """The ``model`` section of a CLIPSeg bundle's ``config.json``.

    Args:
        architecture: always ``"clipseg"``.
        strategy: how it was fine-tuned (``full``, ``decoder``, ``adapter``, ``lora``; ``none`` = base).
        base_model: the CLIPSeg it was fine-tuned from (hub id or folder; informative, weights are in the
            bundle).
        image_size: side ``S`` of CLIPSeg's input.
        intensity: the slice set's intensity step, ``minmax`` or ``window``.
        text_dim: conditional embedding size ``E`` (CLIPSeg's ``projection_dim``).
        reduce_dim: the decoder's width (CLIPSeg's ``reduce_dim``, 64 for rd64).
        slice_batch_size: slices per forward pass.
        options: the strategy's options (``StrategyOptions.to_dict()``).
    """

    architecture: str = CLIPSEG_ARCHITECTURE
    strategy: str = "decoder"
    base_model: str = DEFAULT_CLIPSEG
    image_size: int = 352
    intensity: str = "minmax"
    text_dim: int = 512
    reduce_dim: int = 64
    slice_batch_size: int = 16
    options: dict[str, Any] = field(default_factory=dict)

    mode = "query"
    output = "query"
    uses_text = True

    def __post_init__(self) -> None:
        if self.architecture != CLIPSEG_ARCHITECTURE:
            raise ValueError(f"CLIPSegModelConfig.architecture must be 'clipseg', got {self.architecture!r}")
        if self.intensity not in ("minmax", "window"):
            raise ValueError(f"model.intensity must be minmax or window, got {self.intensity!r}")
        if self.slice_batch_size < 1:
            raise ValueError(f"model.slice_batch_size must be >= 1, got {self.slice_batch_size}")

    @property
    def feature_size(self) -> int:
        """The decoder's width (shown by ``textguidedseg info`` as the feature size)."""
        return self.reduce_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return to_jsonable(self)


def model_config_from_dict(data: dict[str, Any]) -> CLIPSegModelConfig:
    """``config.json``'s ``model`` section -> :class:`CLIPSegModelConfig`; unknown keys raise naming them."""
    return dataclass_from_dict(CLIPSegModelConfig, data, where=CONFIG_FILE, what="model", error=BundleError)


class CLIPSegVolumeModel(nn.Module):
    """A CLIPSeg net behind the 3D models' call (a ``models.BundleModel``); see the module docstring.

    Args:
        net: the (fine-tuned) net.
        config: its bundle model config (``intensity``, ``slice_batch_size`` are used here).

    Attributes:
        predicts_volume: True: call it on the whole model-space volume (``Segmenter.predict_logits``).
        progress: show a progress bar over the slice batches.
    """

    architecture = CLIPSEG_ARCHITECTURE
    uses_text = True  # every query is a conditional embedding
    predicts_volume = True

    def __init__(self, net: CLIPSegNet, config: CLIPSegModelConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.progress = True

    @property
    def output(self) -> str:
        """``"query"``: one logits map per embedding."""
        return "query"

    def forward(
        self, image: torch.Tensor, text: torch.Tensor | None = None, class_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Segment whole volumes slice by slice.

        Args:
            image: ``(B, 1, X, Y, Z)`` float32, the model-space CT after the bundle's HU window, in [0, 1].
            text: ``(B, Q, E)`` conditional embeddings (the bundle's embedding cache).
            class_indices: ignored (query output).

        Returns:
            logits ``(B, Q, X, Y, Z)`` float32 on the image's device.
        """
        if image.ndim != 5 or image.shape[1] != 1:
            raise ValueError(f"CLIPSegVolumeModel expects image (B, 1, X, Y, Z), got {tuple(image.shape)}")
        if text is None or text.ndim != 3 or text.shape[0] != image.shape[0]:
            shape = None if text is None else tuple(text.shape)
            raise ValueError(
                f"CLIPSegVolumeModel expects text (B, Q, {self.config.text_dim}) conditional embeddings, "
                f"one row per image; got {shape}"
            )
        if text.shape[2] != self.config.text_dim:
            raise ValueError(
                f"CLIPSegVolumeModel: embedding size {text.shape[2]} != {self.config.text_dim}; use the "
                "bundle's own embedding cache (CLIPSeg conditional embeddings)"
            )
        batch, _, x, y, z = image.shape
        queries = text.shape[1]
        size = self.net.pixel.image_size
        step = self.config.slice_batch_size
        out = torch.empty((batch, queries, x, y, z), dtype=torch.float32, device=image.device)
        for b in range(batch):
            slices = image[b, 0].permute(2, 0, 1)  # (Z, X, Y)
            conditional = text[b].float()
            starts = range(0, z, step)
            for start in tqdm(starts, desc="CLIPSeg slices", unit="batch", disable=not self.progress or None):
                images = prepare_slices(slices[start : start + step], self.config.intensity, size)
                logits = self.net.predict_slices(images, conditional, batch_size=step, to_cpu=False)
                back = slice_back(logits.float(), (x, y))  # (n, Q, X, Y)
                out[b, :, :, :, start : start + back.shape[0]] = back.permute(1, 2, 3, 0).to(out.device)
        return out

    def save_bundle_weights(self, folder: Path) -> None:
        """Write the weights into a bundle folder the transformers / PEFT way (``CLIPSegNet.save``)."""
        self.net.save(folder)


def clipseg_taxonomy(slicing: SliceConfig) -> Taxonomy:
    """The taxonomy of a CLIPSeg bundle: the slice set's structures, with CLIPSeg's prompts (``"liver"``)."""
    base = get_taxonomy(TAXONOMY).subset(slicing.structures, name="clipseg")
    structures = tuple(dataclasses.replace(s, prompt=slicing.prompts(s.class_name)[0]) for s in base)
    return Taxonomy(name=base.name, structures=structures, description=base.description)


@torch.no_grad()
def save_clipseg_bundle(
    path: str | Path,
    net: CLIPSegNet,
    slicing: SliceConfig,
    name: str = "clipseg",
    description: str = "",
    version: str = "0.1.0",
    license: str = "",
    overwrite: bool = False,
    slice_batch_size: int = 16,
) -> Path:
    """Save a (fine-tuned) net as a bundle that ``Segmenter`` and ``textguidedseg segment`` run.

    Args:
        path: bundle folder or ``.zip``.
        net: the net (any strategy).
        slicing: the slice config it was trained with (structures, spacing, intensity, prompts).
        name, description, version, license: the bundle's metadata.
        overwrite: replace an existing bundle.
        slice_batch_size: slices per forward pass at inference.

    Returns:
        The path written.
    """
    if net.pixel.image_size != slicing.image_size:
        raise ValueError(
            f"the net's input size {net.pixel.image_size} differs from the slice set's {slicing.image_size}"
        )
    config = CLIPSegModelConfig(
        strategy=net.strategy,
        base_model=net.source or DEFAULT_CLIPSEG,
        image_size=slicing.image_size,
        intensity=slicing.intensity,
        text_dim=net.projection_dim,
        reduce_dim=int(net.hf.config.reduce_dim),
        slice_batch_size=slice_batch_size,
        options=net.options.to_dict(),
    )
    taxonomy = clipseg_taxonomy(slicing)
    was_training = net.training
    net.eval()
    embeddings = net.encode_prompts(taxonomy.prompts).float().cpu()
    net.train(was_training)
    cache = EmbeddingCache(f"clipseg:{config.base_model}:{net.strategy}", config.text_dim)
    cache.add(taxonomy.prompts, embeddings)
    bundle_config = BundleConfig(
        name=name,
        model=config,  # type: ignore[arg-type]
        taxonomy=taxonomy,
        text_encoder=None,
        version=version,
        description=description
        or f"CLIPSeg ({config.base_model}) fine-tuned with the {net.strategy} strategy on axial CT slices",
        license=license,
        preprocessing=PreprocessConfig(
            spacing=slicing.spacing, hu_window=slicing.model_hu_window, crop_foreground=False
        ),
        inference=InferenceConfig(roi_size=WHOLE_VOLUME_ROI, overlap=0.0, blend_mode="constant"),
        intended_use="research",  # fine-tuned here, not a published model
    )
    model = CLIPSegVolumeModel(net, config)
    return save_bundle(path, model, bundle_config, cache, overwrite=overwrite)  # type: ignore[arg-type]


def load_bundle_model(folder: Path, config: CLIPSegModelConfig, source: Path) -> CLIPSegVolumeModel:
    """Build a bundle's :class:`CLIPSegVolumeModel` from its folder (``load_bundle`` calls this).

    Raises:
        BundleError: the weights are missing, do not load, or disagree with ``config.json``.
    """
    if not (folder / NET_FILE).is_file():
        raise BundleError(f"{source}: no {NET_FILE}; is this a CLIPSeg bundle?")
    try:
        net = CLIPSegNet.load(folder)
    except (CLIPSegUnavailableError, OSError, ValueError) as err:
        raise BundleError(f"{source}: cannot load the CLIPSeg weights ({err})") from err
    if net.strategy != config.strategy or net.pixel.image_size != config.image_size:
        raise BundleError(
            f"{source}: {NET_FILE} (strategy {net.strategy}, {net.pixel.image_size} px) disagrees with "
            f"config.json (strategy {config.strategy}, {config.image_size} px)"
        )
    if net.projection_dim != config.text_dim:
        raise BundleError(
            f"{source}: the weights' projection_dim {net.projection_dim} != model.text_dim {config.text_dim}"
        )
    return CLIPSegVolumeModel(net, config)
