"""Text-free baselines: MONAI's ``SwinUNETR`` and ``UNETR`` with ``num_classes`` output channels.

They answer the same ``forward(image, text, class_indices)`` call as the text models: ``text`` is ignored and
``class_indices`` picks output channels (taxonomy order).
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNETR

from .backbone import SwinUNETRModel
from .base import TextSegModel
from .config import UNETR_PATCH_SIZE, ModelConfig

__all__ = ["SwinUNETRBaseline", "UNETRBaseline"]


class SwinUNETRBaseline(SwinUNETRModel):
    """MONAI ``SwinUNETR`` (held as ``backbone``) with ``num_classes`` output channels, no text.

    Args:
        config: ``architecture="swinunetr"``.

    Examples::

        >>> model = SwinUNETRBaseline(ModelConfig(architecture="swinunetr", feature_size=12, num_classes=4))
        >>> model(torch.rand(1, 1, 64, 64, 64)).shape
        torch.Size([1, 4, 64, 64, 64])
    """

    architecture = "swinunetr"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, out_channels=config.num_classes)

    def compute_logits(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """MONAI's own forward: ``(B, in_channels, D, H, W)`` -> ``(B, num_classes, D, H, W)``."""
        return self.backbone(image)


class UNETRBaseline(TextSegModel):
    """MONAI ``UNETR`` (held as ``net``) with ``num_classes`` output channels, no text.

    UNETR's position embeddings are sized to ``config.img_size``: inputs must have exactly that spatial
    size (use a sliding window with ``roi_size = img_size``). The ViT is MONAI's default (hidden size 768,
    12 layers, 12 heads, patch 16); ``feature_size`` and ``drop_rate`` come from the config.

    Args:
        config: ``architecture="unetr"``.

    Examples::

        >>> cfg = ModelConfig(architecture="unetr", feature_size=16, num_classes=3, img_size=(32, 32, 32))
        >>> UNETRBaseline(cfg)(torch.rand(1, 1, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])
    """

    architecture = "unetr"

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """``img_size`` in multiples of UNETR's ViT patch size."""
        if any(s % UNETR_PATCH_SIZE for s in config.img_size):
            raise ValueError(
                f"ModelConfig.img_size={config.img_size} must be multiples of {UNETR_PATCH_SIZE} for UNETR "
                "(its ViT patch size), e.g. (96, 96, 96)."
            )

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.net = UNETR(
            in_channels=config.in_channels,
            out_channels=config.num_classes,
            img_size=config.img_size,
            feature_size=config.feature_size,
            dropout_rate=config.drop_rate,
        )

    def check_spatial_size(self, spatial: tuple[int, ...]) -> None:
        """UNETR takes exactly ``config.img_size``."""
        if tuple(spatial) != tuple(self.config.img_size):
            raise ValueError(
                f"UNETRBaseline: image spatial size (D, H, W)={tuple(spatial)} must equal "
                f"ModelConfig.img_size={tuple(self.config.img_size)} (UNETR's position embeddings are fixed "
                "to it); crop or pad, or use a sliding window with roi_size=img_size."
            )

    def compute_logits(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """``(B, in_channels, *img_size)`` -> ``(B, num_classes, *img_size)``."""
        return self.net(image)
