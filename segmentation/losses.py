"""Losses for binary segmentation on logits: soft Dice, BCE, and their sum (pure functions + a module).

All take ``logits`` and ``target`` of the same shape ``(N, 1, H, W)`` (or ``(N, H, W)``); ``target`` is 0/1
(float or bool). Each returns a scalar, the mean over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """``1 - Dice(sigmoid(logits), target)`` per image, averaged over the batch: ``(N, ...) -> ()``.

    Dice = ``(2 |P ∩ T| + smooth) / (|P| + |T| + smooth)`` with soft (probability) areas; ``smooth`` keeps
    an image with an empty target and an empty prediction at loss 0 instead of 0/0.
    """
    probs = torch.sigmoid(logits.float()).flatten(1)
    truth = target.float().flatten(1)
    inter = (probs * truth).sum(1)
    dice = (2.0 * inter + smooth) / (probs.sum(1) + truth.sum(1) + smooth)
    return (1.0 - dice).mean()


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, averaged over every pixel: ``(N, ...) -> ()``."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def dice_bce_loss(
    logits: Tensor, target: Tensor, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0
) -> Tensor:
    """``dice_weight * soft_dice_loss + bce_weight * bce_loss``: ``(N, ...) -> ()``.

    BCE gives every pixel a gradient from the start; Dice counters the foreground/background imbalance.
    """
    return dice_weight * soft_dice_loss(logits, target, smooth) + bce_weight * bce_loss(logits, target)


class DiceBCELoss(nn.Module):
    """Module form of :func:`dice_bce_loss`: ``loss(logits, target) -> ()``."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_bce_loss(logits, target, self.dice_weight, self.bce_weight, self.smooth)

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, bce_weight={self.bce_weight}, smooth={self.smooth}"
