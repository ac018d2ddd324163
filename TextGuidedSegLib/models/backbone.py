"""The shared MONAI ``SwinUNETR`` backbone, split into an encoder pass and a decoder pass.

MONAI's ``SwinUNETR.forward`` runs the whole U in one call. The text-conditioned models need to stop
between the encoder and the decoder (to run the encoder once per image and the decoder once per query, and to
insert FiLM), so ``SwinUNETRModel`` holds a MONAI ``SwinUNETR`` as ``backbone`` and spells out the same data
flow with its submodules (``swinViT``, ``encoder1..4``, ``encoder10``, ``decoder1..5``, ``out``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from monai.networks.nets import SwinUNETR

from .base import TextSegModel
from .config import ModelConfig

__all__ = ["SwinFeatures", "SwinUNETRModel", "build_swinunetr"]


def build_swinunetr(config: ModelConfig, out_channels: int) -> SwinUNETR:
    """Build MONAI's ``SwinUNETR`` from a config.

    Args:
        config: hyper-parameters (feature_size, in_channels, depths, num_heads, dropout rates, use_checkpoint,
            use_v2).
        out_channels: channels of the output head ``out`` (1 for query mode, ``num_classes`` otherwise).
    """
    return SwinUNETR(
        in_channels=config.in_channels,
        out_channels=out_channels,
        feature_size=config.feature_size,
        depths=config.depths,
        num_heads=config.num_heads,
        drop_rate=config.drop_rate,
        attn_drop_rate=config.attn_drop_rate,
        dropout_path_rate=config.dropout_path_rate,
        use_checkpoint=config.use_checkpoint,
        use_v2=config.use_v2,
        normalize=True,
    )


@dataclass
class SwinFeatures:
    """What the SwinUNETR decoder consumes, named as in MONAI's ``SwinUNETR.forward`` (``fs`` = feature_size).

    Attributes:
        enc0: ``encoder1(image)``, ``(N, fs, D, H, W)``.
        enc1: ``encoder2(hidden_states_out[0])``, ``(N, fs, D/2, H/2, W/2)``.
        enc2: ``encoder3(hidden_states_out[1])``, ``(N, 2fs, D/4, ...)``.
        enc3: ``encoder4(hidden_states_out[2])``, ``(N, 4fs, D/8, ...)``.
        hs3: ``hidden_states_out[3]`` (skip of decoder5), ``(N, 8fs, D/16, ...)``.
        dec4: ``encoder10(hidden_states_out[4])``, ``(N, 16fs, D/32, ...)``.
    """

    enc0: torch.Tensor
    enc1: torch.Tensor
    enc2: torch.Tensor
    enc3: torch.Tensor
    hs3: torch.Tensor
    dec4: torch.Tensor

    def repeat_per_query(self, num_queries: int) -> SwinFeatures:
        """Repeat each map ``num_queries`` times on the batch axis: ``(B, ...)`` -> ``(B * Q, ...)``."""
        if num_queries == 1:
            return self
        return SwinFeatures(
            **{f.name: getattr(self, f.name).repeat_interleave(num_queries, dim=0) for f in fields(self)}
        )


class SwinUNETRModel(TextSegModel):
    """A ``TextSegModel`` around a MONAI ``SwinUNETR`` held as ``backbone``.

    Args:
        config: the model's hyper-parameters.
        out_channels: channels of the backbone's output head ``out``.
    """

    swin_backbone = True

    def __init__(self, config: ModelConfig, out_channels: int) -> None:
        super().__init__(config)
        self.backbone = build_swinunetr(config, out_channels)

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """feature_size divisible by 12, and each stage's width ``feature_size * 2**i`` by its heads."""
        if config.feature_size % 12 != 0:
            raise ValueError(
                f"ModelConfig.feature_size={config.feature_size} must be divisible by 12 for the "
                f"SwinUNETR-based architecture {config.architecture!r} (e.g. 12, 24, 48)."
            )
        for stage, heads in enumerate(config.num_heads):
            dim = config.feature_size * 2**stage
            if dim % heads:
                raise ValueError(
                    f"ModelConfig.num_heads[{stage}]={heads} does not divide the stage-{stage} width "
                    f"feature_size * 2**{stage} = {dim}; choose num_heads that divide it."
                )

    def encode(self, image: torch.Tensor) -> SwinFeatures:
        """Run the Swin transformer and the encoder blocks once.

        Args:
            image: ``(B, in_channels, D, H, W)``, sides divisible by 32.

        Returns:
            the skip and bottleneck features, batch ``B``.
        """
        net = self.backbone
        hidden_states_out = net.swinViT(image, net.normalize)
        return SwinFeatures(
            enc0=self.encode_full_resolution(image),
            enc1=net.encoder2(hidden_states_out[0]),
            enc2=net.encoder3(hidden_states_out[1]),
            enc3=net.encoder4(hidden_states_out[2]),
            hs3=hidden_states_out[3],
            dec4=net.encoder10(hidden_states_out[4]),
        )

    def encode_full_resolution(self, image: torch.Tensor) -> torch.Tensor:
        """``enc0 = encoder1(image)``: ``(B, fs, D, H, W)``, the one full-resolution encoder map (cheap to
        recompute, the largest to keep: the feature cache recomputes it per window)."""
        return self.backbone.encoder1(image)

    def decode(self, features: SwinFeatures) -> torch.Tensor:
        """Run decoder5 ... decoder1 (no output head).

        Args:
            features: encoder features, batch ``N``.

        Returns:
            ``out``: ``(N, fs, D, H, W)``, the input of the output head.
        """
        net = self.backbone
        dec3 = net.decoder5(features.dec4, features.hs3)
        dec2 = net.decoder4(dec3, features.enc3)
        dec1 = net.decoder3(dec2, features.enc2)
        dec0 = net.decoder2(dec1, features.enc1)
        return net.decoder1(dec0, features.enc0)
