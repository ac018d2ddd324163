"""The CLIP-Driven Universal Model head (Liu et al., ICCV 2023) on the shared SwinUNETR backbone.

Liu J. et al., "CLIP-Driven Universal Model for Organ Segmentation and Tumor Detection",
https://arxiv.org/abs/2301.00785. Each query's text embedding, joined with a global image feature, is turned
by a controller into the weights of a small per-query segmentation head (three 1x1x1 convolutions).

The published model's Swin transformer (its copy of an early MONAI ``SwinUNETR``) concatenates the eight
voxels of each 2x2x2 patch-merging cell in its own order, two of them twice (:data:`UNIVERSAL_MERGE_OFFSETS`).
Its ``reduction`` weights were trained on that order, so ``UniversalModel`` merges patches the same way
(:class:`UniversalPatchMerging`; same parameters as MONAI's), and its published checkpoint gives the published
outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import PatchMergingV2
from torch import nn

from .backbone import SwinUNETRModel
from .config import ModelConfig

__all__ = ["UNIVERSAL_MERGE_OFFSETS", "UniversalModel", "UniversalPatchMerging"]

#: Channels of the text and image features fed to the controller (256 each in the paper).
CONDITION_DIM = 256
#: Channels of the dynamic head (8 -> 8 -> 8 -> 1 in the paper).
HEAD_CHANNELS = 8
#: GroupNorm groups in the paper; reduced to ``gcd(16, C)`` when ``C`` is not a multiple of 16 (small fs).
PAPER_GROUPS = 16


#: (d, h, w) offsets of the 2x2x2 cell's voxels in the order the Universal Model concatenates them: (0, 1, 0)
#: and (0, 0, 1) twice, (1, 1, 0) and (0, 1, 1) never (MONAI's order has each offset once).
UNIVERSAL_MERGE_OFFSETS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1),
)  # fmt: skip


def _groups(channels: int) -> int:
    return math.gcd(PAPER_GROUPS, channels)


class UniversalPatchMerging(PatchMergingV2):
    """MONAI's patch merging (LayerNorm(8C) -> Linear(8C -> 2C)) over :data:`UNIVERSAL_MERGE_OFFSETS`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W, C)`` -> ``(B, ceil(D/2), ceil(H/2), ceil(W/2), 2C)`` (odd sides zero-padded)."""
        if x.ndim != 5:
            raise ValueError(f"UniversalPatchMerging expects (B, D, H, W, C), got shape {tuple(x.shape)}")
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in UNIVERSAL_MERGE_OFFSETS], dim=-1)
        return self.reduction(self.norm(x))


class UniversalModel(SwinUNETRModel):
    """CLIP-Driven Universal Model: per-query dynamic convolution heads on a SwinUNETR decoder.

    Data flow (``fs`` = feature_size, ``E`` = text_dim, ``N = B * Q``):

    - backbone encoder and decoder once per image -> ``dec4`` ``(B, 16fs, D/32, ...)`` and ``out``
      ``(B, fs, D, H, W)`` (decoder1's output; the backbone's own output head is removed, ``backbone.out`` is
      ``nn.Identity``).
    - ``text_to_vision``: ``ReLU(Linear(E -> 256))`` on the embeddings, ``(B, Q, 256)``.
    - ``image_pool``: GroupNorm -> ReLU -> global average pool -> Conv3d(16fs -> 256, 1x1x1) on ``dec4``,
      ``(B, 256)``.
    - ``controller``: Conv3d(512 -> 153, 1x1x1) on ``concat[image feature, text feature]`` gives, per query,
      the weights and biases of three 1x1x1 convs 8->8, 8->8, 8->1 (64 + 64 + 8 weights, 8 + 8 + 1 biases).
    - ``precls_conv``: GroupNorm -> ReLU -> Conv3d(fs -> 8, 1x1x1) on ``out``; the dynamic head (ReLU between
      its convs) maps these 8 channels to one logits map per query, computed for all queries at once.

    Patch merging in the Swin transformer follows the published model (:class:`UniversalPatchMerging`).
    GroupNorm uses 16 groups as in the paper, or ``gcd(16, C)`` groups when ``C`` is not a multiple of 16
    (fs = 12 or 24: ``fs`` channels get 4 or 8 groups).

    Args:
        config: ``architecture="universal"``, ``mode="query"``.

    Examples::

        >>> model = UniversalModel(ModelConfig(architecture="universal", feature_size=12))
        >>> model(torch.rand(1, 1, 64, 64, 64), torch.rand(1, 4, 512)).shape
        torch.Size([1, 4, 64, 64, 64])
    """

    architecture = "universal"
    uses_text = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, out_channels=1)
        self.backbone.out = nn.Identity()  # the dynamic head replaces the fixed output head
        for stage in range(1, len(config.depths) + 1):
            merging = getattr(self.backbone.swinViT, f"layers{stage}")[0].downsample
            assert isinstance(merging, PatchMergingV2), type(merging)
            merging.__class__ = UniversalPatchMerging  # same parameters (and seeded values), published order
        fs = config.feature_size
        h = HEAD_CHANNELS
        self.weight_nums = (h * h, h * h, h * 1)
        self.bias_nums = (h, h, 1)
        self.text_to_vision = nn.Linear(config.text_dim, CONDITION_DIM)
        self.image_pool = nn.Sequential(
            nn.GroupNorm(_groups(16 * fs), 16 * fs),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(16 * fs, CONDITION_DIM, kernel_size=1),
        )
        self.controller = nn.Conv3d(2 * CONDITION_DIM, sum(self.weight_nums + self.bias_nums), kernel_size=1)
        self.precls_conv = nn.Sequential(
            nn.GroupNorm(_groups(fs), fs),
            nn.ReLU(inplace=True),
            nn.Conv3d(fs, h, kernel_size=1),
        )

    def dynamic_head(self, head_input: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Apply each query's three 1x1x1 convs (8->8, ReLU, 8->8, ReLU, 8->1) to its image's 8-channel map.

        Args:
            head_input: ``(B, 8, D, H, W)``.
            params: ``(B, Q, 153)`` controller output: weights (64, 64, 8) then biases (8, 8, 1); each weight
                block is the ``(out, in)`` matrix in row-major order, as in the paper's grouped convolution.

        Returns:
            ``(B, Q, D, H, W)`` logits.
        """
        batch, num_queries, _ = params.shape
        h = HEAD_CHANNELS
        w1, w2, w3, b1, b2, b3 = torch.split(params, self.weight_nums + self.bias_nums, dim=-1)
        x = head_input.flatten(2)  # (B, 8, S)
        x = torch.einsum("bqoi,bis->bqos", w1.reshape(batch, num_queries, h, h), x) + b1[..., None]
        x = torch.einsum("bqoi,bqis->bqos", w2.reshape(batch, num_queries, h, h), F.relu(x)) + b2[..., None]
        x = torch.einsum("bqoi,bqis->bqos", w3.reshape(batch, num_queries, 1, h), F.relu(x)) + b3[..., None]
        return x.reshape(batch, num_queries, *head_input.shape[2:])

    def compute_logits(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Backbone once per image, controller and dynamic head for all queries in one batch.

        Args:
            image: ``(B, in_channels, D, H, W)``.
            text: ``(B, Q, E)``.

        Returns:
            ``(B, Q, D, H, W)`` logits.
        """
        assert text is not None  # checked by TextSegModel.check_inputs
        batch, num_queries, _ = text.shape
        features = self.encode(image)
        out = self.decode(features)
        image_feature = self.image_pool(features.dec4).flatten(1)  # (B, 256)
        text_feature = F.relu(self.text_to_vision(text))  # (B, Q, 256)
        condition = torch.cat([image_feature[:, None].expand(-1, num_queries, -1), text_feature], dim=-1)
        params = self.controller(condition.reshape(batch * num_queries, -1, 1, 1, 1))
        params = params.reshape(batch, num_queries, -1)
        return self.dynamic_head(self.precls_conv(out), params)
