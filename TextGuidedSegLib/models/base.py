"""``TextSegModel``: the one call every segmentation model answers, and the input checks behind it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .config import ModelConfig
from .weights import WEIGHTS_FILE, save_state_dict

__all__ = ["TextSegModel", "select_channels"]

_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def select_channels(logits: torch.Tensor, class_indices: torch.Tensor) -> torch.Tensor:
    """Gather the channels named by ``class_indices`` from per-class logits.

    Args:
        logits: ``(B, K, D, H, W)``, one channel per class in taxonomy order.
        class_indices: integer ``(B, Q)``, 0-based channel indices in ``[0, K)``.

    Returns:
        ``(B, Q, D, H, W)``: ``out[b, q] = logits[b, class_indices[b, q]]``.
    """
    batch = torch.arange(logits.shape[0], device=logits.device)[:, None]
    return logits[batch, class_indices.to(logits.device)]


class TextSegModel(nn.Module):
    """Base class of every segmentation model: one ``forward(image, text, class_indices)`` call.

    Subclasses are built from a ``ModelConfig`` only and implement ``compute_logits``; ``forward`` checks the
    inputs, calls it, and (for channel outputs) gathers the requested classes. Each declares what it is as
    class attributes (``architecture``, ``uses_text``, ``modes``, ``swin_backbone``); ``models.factory``
    derives the registry and the capability tuples from them, and ``check_config`` holds its own checks.

    Output kinds (``output``):

    - ``"query"``: one logits map per text embedding; ``text`` ``(B, Q, E)`` -> logits ``(B, Q, D, H, W)``.
    - ``"channels"``: ``num_classes`` logits maps in taxonomy order (global-mode FiLM models and the text-free
      baselines); ``class_indices`` ``(B, Q)`` picks ``Q`` of them, else all ``num_classes`` are returned.

    Args:
        config: the model's hyper-parameters.
    """

    #: ``ModelConfig.architecture`` of this class (the registry's key; spelt here only).
    architecture: ClassVar[str] = ""
    #: Conditioned on text embeddings; False for the text-free baselines (``text`` is ignored there).
    uses_text: ClassVar[bool] = False
    #: The ``ModelConfig.mode`` values it accepts (``"global"``: one embedding, ``num_classes`` channels).
    modes: ClassVar[tuple[str, ...]] = ("query",)
    #: Built on MONAI's ``SwinUNETR`` (feature_size divisible by 12, heads dividing each stage's width).
    swin_backbone: ClassVar[bool] = False
    #: True: the ``Segmenter`` calls the model once on the whole volume; False: it slides a window.
    predicts_volume: ClassVar[bool] = False
    #: Input sides must be multiples of this (SwinUNETR: patch size 2, then 4 halvings -> 32).
    spatial_multiple: int = 32

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(
                f"{type(self).__name__} is built from a ModelConfig, got {type(config).__name__}."
            )
        if config.architecture != self.architecture:
            raise ValueError(
                f"{type(self).__name__} builds architecture {self.architecture!r}, got config.architecture="
                f"{config.architecture!r}; use build_model(config) to pick the class."
            )
        self.config = config

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """The architecture's own checks of a config (``ModelConfig`` calls it); raise ValueError naming the
        field and the cure."""

    def save_bundle_weights(self, folder: Path) -> None:
        """Write the state dict, without the buffers the model derives from its config, as
        ``model.safetensors`` in ``folder`` (``save_bundle`` calls this)."""
        save_state_dict(self, Path(folder) / WEIGHTS_FILE, {"architecture": self.architecture})

    @property
    def output(self) -> str:
        """``"query"`` (one mask per text embedding) or ``"channels"`` (``num_classes`` masks)."""
        return self.config.output

    def compute_logits(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Run the network on checked inputs.

        Args:
            image: ``(B, in_channels, D, H, W)``.
            text: ``(B, Q, E)`` embeddings (``Q = 1`` in global mode), or None for the text-free baselines.

        Returns:
            ``(B, Q, D, H, W)`` for query outputs, ``(B, num_classes, D, H, W)`` for channel outputs.
        """
        raise NotImplementedError

    def check_spatial_size(self, spatial: tuple[int, ...]) -> None:
        """Raise a ValueError when the image's ``(D, H, W)`` does not fit the network."""
        m = self.spatial_multiple
        bad = [f"{axis}={size}" for axis, size in zip("DHW", spatial, strict=True) if size % m]
        if bad:
            raise ValueError(
                f"{type(self).__name__}: image spatial size (D, H, W)={tuple(spatial)} must be divisible "
                f"by {m} on every axis (SwinUNETR: patch size 2, then 4 downsamplings); "
                f"{', '.join(bad)} is not. "
                f"Pad or crop the image, e.g. monai.transforms.DivisiblePad(k={m}), or use a sliding window "
                f"with roi_size a multiple of {m}."
            )
        if all(size == m for size in spatial):
            raise ValueError(
                f"{type(self).__name__}: image spatial size (D, H, W)={tuple(spatial)} leaves a 1-voxel "
                "bottleneck that instance normalisation cannot normalise; use at least "
                f"{2 * m} voxels on one axis (e.g. 64x64x64 or 96x96x96)."
            )

    def check_inputs(
        self, image: torch.Tensor, text: torch.Tensor | None, class_indices: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Validate a ``forward`` call; return ``text`` cast to the image dtype (None for text-free models).

        Raises:
            ValueError: wrong image rank/channels/size, missing or mis-shaped text, bad class indices.
            TypeError: non-integer ``class_indices``.
        """
        cfg = self.config
        name = type(self).__name__
        if not isinstance(image, torch.Tensor) or image.ndim != 5:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"{name} expects image (B, {cfg.in_channels}, D, H, W), got {shape}.")
        if image.shape[1] != cfg.in_channels:
            raise ValueError(
                f"{name} expects image (B, {cfg.in_channels}, D, H, W) with {cfg.in_channels} channel(s), "
                f"got {image.shape[1]} channels (shape {tuple(image.shape)}); add a channel axis with "
                f"image[:, None] or set ModelConfig.in_channels."
            )
        self.check_spatial_size(tuple(image.shape[2:]))
        batch = image.shape[0]

        if self.uses_text:
            if text is None:
                raise ValueError(
                    f"{name} ({cfg.architecture}) is text-conditioned: pass text embeddings "
                    f"(B, Q, {cfg.text_dim})."
                )
            if not isinstance(text, torch.Tensor) or text.ndim != 3:
                shape = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
                raise ValueError(
                    f"{name} expects text (B, Q, {cfg.text_dim}), got {shape}; add a query axis with "
                    "text[:, None] for one embedding per image."
                )
            if text.shape[0] != batch:
                raise ValueError(
                    f"{name}: text batch {text.shape[0]} != image batch {batch}; pass one row of embeddings "
                    f"(Q, {cfg.text_dim}) per image."
                )
            if text.shape[2] != cfg.text_dim:
                raise ValueError(
                    f"{name}: text embedding size {text.shape[2]} != ModelConfig.text_dim {cfg.text_dim}; "
                    "encode prompts with the text encoder the model was trained with."
                )
            if text.shape[1] < 1:
                raise ValueError(f"{name}: text has no queries (Q=0); pass at least one embedding per image.")
            if cfg.mode == "global" and text.shape[1] != 1:
                raise ValueError(
                    f"{name} in global mode is conditioned by one embedding per image: text must be "
                    f"(B, 1, {cfg.text_dim}), got Q={text.shape[1]}; select classes with class_indices "
                    "instead."
                )
            text = text.to(dtype=image.dtype)
        else:
            text = None

        if class_indices is not None and self.output == "channels":
            if not isinstance(class_indices, torch.Tensor) or class_indices.dtype not in _INTEGER_DTYPES:
                raise TypeError(
                    f"{name}: class_indices must be an integer tensor (B, Q), got {class_indices!r}."
                )
            if class_indices.ndim != 2 or class_indices.shape[0] != batch:
                raise ValueError(
                    f"{name}: class_indices must be (B, Q) with B = image batch {batch}, "
                    f"got {tuple(class_indices.shape)}."
                )
            if class_indices.numel() and (
                int(class_indices.min()) < 0 or int(class_indices.max()) >= cfg.num_classes
            ):
                raise ValueError(
                    f"{name}: class index out of range [0, {cfg.num_classes}) (got min "
                    f"{int(class_indices.min())}, max {int(class_indices.max())}); indices are 0-based "
                    "channels in taxonomy order (label_id - 1)."
                )
        return text

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor | None = None,
        class_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Segment ``image`` for the given queries.

        Args:
            image: ``(B, in_channels, D, H, W)`` float, intensity-windowed CT.
            text: ``(B, Q, E)`` text embeddings. Query mode: one output mask per embedding. Global mode:
                ``(B, 1, E)``, one embedding conditions the whole network. Ignored (may be None) by the
                text-free baselines.
            class_indices: integer ``(B, Q)`` 0-based channels to return, for channel outputs (global mode and
                the baselines); None returns all ``num_classes`` channels. Ignored in query mode.

        Returns:
            logits ``(B, Q, D, H, W)`` (``Q = num_classes`` for channel outputs without ``class_indices``).
        """
        text = self.check_inputs(image, text, class_indices)
        logits = self.compute_logits(image, text)
        if self.output == "channels" and class_indices is not None:
            logits = select_channels(logits, class_indices)
        return logits
