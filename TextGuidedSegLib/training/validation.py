"""Validation: sliding-window inference on whole volumes, per-structure Dice on the annotated structures.

Each rank validates its share of the cases; the per-structure sums and counts are then summed over the ranks,
so every rank ends with the same numbers. A structure counts in a case when the case's dataset annotates it
and the case contains it (MONAI ``DiceMetric`` with ``ignore_empty=True``: an absent structure has no Dice).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["validate"]


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader | None,
    conditioning: Callable[[int, str], tuple[torch.Tensor | None, torch.Tensor | None]],
    num_structures: int,
    roi_size: tuple[int, int, int],
    overlap: float,
    sw_batch_size: int,
    device: torch.device,
    autocast: AbstractContextManager,
    distributed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-structure Dice sums and counts over the validation cases (of every rank when ``distributed``).

    Args:
        model: the segmentation model (put in eval mode here and back in train mode after).
        loader: this rank's validation cases (``image`` ``(1, 1, D, H, W)``, ``label`` ``(1, S, D, H, W)``,
            ``annotated`` ``(1, S)``), or None when the rank has none (it still joins the reduction).
        conditioning: ``(n, dataset) -> (text, class_indices)`` model inputs for ``n`` windows of a case of
            dataset ``dataset`` that ask for all ``S`` structures in order: ``(n, S, E)`` text for query
            models, ``(n, 1, E)`` (the case's dataset prompt, or the fixed one) and None in global mode,
            ``(None, None)`` for the text-free baselines.
        num_structures: ``S``.
        roi_size, overlap, sw_batch_size: the sliding window.
        device: where the model runs.
        autocast: the mixed-precision context (or a null context).
        distributed: sum the results over the ranks.

    Returns:
        ``(sums (S,), counts (S,))`` float64 on the CPU; ``sums / counts`` is the mean Dice per structure.
    """
    sums = torch.zeros(num_structures, dtype=torch.float64)
    counts = torch.zeros(num_structures, dtype=torch.float64)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    was_training = model.training
    model.eval()

    dataset = ""

    def predictor(window: torch.Tensor) -> torch.Tensor:
        text, class_indices = conditioning(window.shape[0], dataset)
        with autocast:
            return model(window, text, class_indices)

    for batch in loader if loader is not None else []:
        image = batch["image"].to(device)
        dataset = str(batch["dataset"][0])
        logits = sliding_window_inference(
            image, roi_size, sw_batch_size, predictor, overlap=overlap, mode="gaussian"
        )
        prediction = (logits.float().sigmoid() > 0.5).float().cpu()
        dice = metric(prediction, batch["label"].float()).double()[0]  # (S,), NaN where the case lacks it
        valid = batch["annotated"][0].bool() & ~torch.isnan(dice)
        sums += torch.where(valid, dice, torch.zeros_like(dice))
        counts += valid.double()
    if was_training:
        model.train()
    if distributed:
        packed = torch.stack([sums, counts]).to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        sums, counts = packed.cpu()
    return sums, counts
