"""The training loss: BCE-with-logits + Dice per query (or channel), averaged over the valid ones only.

Each (sample, query) pair gets ``bce = mean over voxels of BCEWithLogits(logits, target)`` and ``dice =
MONAI DiceLoss(sigmoid=True)`` (per sample and channel, smooth 1e-5); the loss is their unweighted sum (as the
seed). BCE is averaged over the pairs whose ``mask`` is True; Dice over the valid pairs whose target is not
empty. Masked pairs contribute nothing, to the value or to the gradient: padding query slots of query-mode
models, and for channel-output models (global mode and the text-free baselines) the channels of structures
the sample's dataset does not annotate.

Empty targets. With smooth 1e-5 the Dice loss of an empty target is ``1 - 1e-5 / (sum(p) + 1e-5)``, about 1
with almost no gradient, whatever the prediction (the seed's ``utils/loss.py``, smooth 1 in the denominator
only, gives exactly 1 and no gradient). Such a pair would only add a constant near 1 to the Dice mean and
dilute the other pairs' gradients, so it is left out of the Dice term: an empty target is learnt through the
BCE term alone (``dice_count`` says how many pairs the Dice mean covers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["LossOutput", "SegmentationLoss"]


@dataclass
class LossOutput:
    """The loss of one micro-batch.

    Attributes:
        loss: scalar, ``bce + dice`` (the one to back-propagate).
        bce: scalar, masked mean binary cross-entropy.
        dice: scalar, masked mean Dice loss.
        count: number of valid (sample, query) pairs the BCE mean covers.
        dice_count: number of those whose target is not empty (the pairs the Dice mean covers).
    """

    loss: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor
    count: int
    dice_count: int = 0


class SegmentationLoss(nn.Module):
    """BCE + Dice over the valid (sample, query) pairs.

    Examples::

        >>> criterion = SegmentationLoss()
        >>> logits, target = torch.zeros(1, 2, 4, 4, 4), torch.ones(1, 2, 4, 4, 4)
        >>> out = criterion(logits, target, torch.tensor([[True, False]]))
        >>> round(out.bce.item(), 4)   # log(2)
        0.6931
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice_loss = DiceLoss(sigmoid=True, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> LossOutput:
        """Compute the loss.

        Args:
            logits: ``(B, Q, D, H, W)`` raw network outputs (computed in float32 whatever their dtype).
            target: ``(B, Q, D, H, W)`` masks in {0, 1} (any dtype).
            mask: ``(B, Q)`` bool, True where the pair counts.

        Returns:
            a :class:`LossOutput`; with no valid pair every term is 0 (and still connected to ``logits``, so
            DDP sees a gradient for every parameter).
        """
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape"
            )
        if mask.shape != logits.shape[:2]:
            raise ValueError(f"mask must be (B, Q) = {tuple(logits.shape[:2])}, got {tuple(mask.shape)}")
        logits = logits.float()
        target = target.float()
        weight = mask.to(device=logits.device, dtype=torch.float32)
        count = weight.sum()
        denominator = count.clamp(min=1.0)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(2)
        dice = self.dice_loss(logits, target).reshape(logits.shape[:2])
        dice_weight = weight * (target.flatten(2).amax(2) > 0)
        dice_count = dice_weight.sum()
        bce = (bce * weight).sum() / denominator
        dice = (dice * dice_weight).sum() / dice_count.clamp(min=1.0)
        return LossOutput(
            loss=bce + dice,
            bce=bce,
            dice=dice,
            count=int(count.item()),
            dice_count=int(dice_count.item()),
        )
