"""Pure pooling and normalisation math for retrieval descriptors.

Every function takes a feature map ``x`` of shape ``(N, C, H, W)`` (non-negative, e.g. after a ReLU)
and an optional spatial weight ``mask`` of shape ``(N, 1, H, W)`` with values in ``[0, 1]``. A mask
restricts pooling to the foreground (segmentation) or to the valid part of a padded image; a sample
whose mask is all zero is pooled over the whole map instead, so a degenerate mask never yields NaNs.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

_EPS = 1e-6


def l2n(x: Tensor, eps: float = _EPS) -> Tensor:
    """L2-normalise along the last dimension: ``(..., D) -> (..., D)``."""
    return x / (x.norm(p=2, dim=-1, keepdim=True) + eps)


def _effective_mask(x: Tensor, mask: Tensor | None) -> Tensor | None:
    """Resize ``mask`` to ``x``'s spatial size; replace all-zero masks by ones. ``-> (N, 1, H, W)``."""
    if mask is None:
        return None
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0]:
        raise ValueError(f"mask must have shape (N, 1, H, W) with N={x.shape[0]}, got {tuple(mask.shape)}")
    mask = mask.to(dtype=x.dtype)
    if mask.shape[-2:] != x.shape[-2:]:
        mask = F.interpolate(mask, size=x.shape[-2:], mode="area")
    empty = mask.flatten(1).sum(dim=1) <= _EPS
    if bool(empty.any()):
        mask = mask.clone()
        mask[empty] = 1.0
    return mask


def mac(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Maximum activation of convolutions: ``(N, C, H, W) -> (N, C)``."""
    m = _effective_mask(x, mask)
    if m is not None:
        # Binary: a cell counts when its weight is at least half the sample's largest weight.
        x = x * (m >= 0.5 * m.amax(dim=(-2, -1), keepdim=True)).to(x.dtype)
    return x.amax(dim=(-2, -1))


def spoc(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sum-pooled convolutional features (the mean, which is the same after L2): ``(N, C, H, W) -> (N, C)``."""
    m = _effective_mask(x, mask)
    if m is None:
        return x.mean(dim=(-2, -1))
    return (x * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1))


def gem(x: Tensor, p: float | Tensor = 3.0, mask: Tensor | None = None, eps: float = _EPS) -> Tensor:
    """Generalised mean pooling ``(mean x^p)^(1/p)``: ``(N, C, H, W) -> (N, C)``.

    ``p = 1`` is average pooling, ``p -> inf`` approaches max pooling. ``p`` may be a learnable tensor.
    """
    xp = x.clamp(min=eps).pow(p)
    m = _effective_mask(x, mask)
    if m is None:
        pooled = xp.mean(dim=(-2, -1))
    else:
        pooled = (xp * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1))
    return pooled.pow(1.0 / p)


@lru_cache(maxsize=256)
def rmac_regions(
    height: int, width: int, levels: int = 3, overlap: float = 0.4
) -> tuple[tuple[int, int, int, int], ...]:
    """Square regions of the R-MAC multi-scale grid (Tolias et al. 2016) on an ``height x width`` map.

    At level ``l`` (1-based) the square side is ``floor(2 * min(H, W) / (l + 1))``; ``l`` regions are
    spread evenly along the short side and ``l + extra`` along the long side, where ``extra`` is chosen
    once so that consecutive regions along the long side overlap by about ``overlap``.
    Returns ``(y0, x0, h, w)`` tuples; always at least one region (the largest square).
    """
    if height < 1 or width < 1:
        raise ValueError(f"feature map must be at least 1x1, got {height}x{width}")
    short, long_ = min(height, width), max(height, width)
    extra = 0
    if long_ > short:
        # Level-1 square of side `short` slid along the long side: pick the step count whose overlap is nearest.
        best = math.inf
        for steps in range(1, 7):
            stride = (long_ - short) / steps
            err = abs((short - stride) / short - overlap)
            if err < best:
                best, extra = err, steps
    regions: list[tuple[int, int, int, int]] = []
    for level in range(1, levels + 1):
        side = max(1, int(2 * short / (level + 1)))
        n_short, n_long = level, level + extra
        n_h, n_w = (n_short, n_long) if height <= width else (n_long, n_short)
        for y0 in _positions(height, side, n_h):
            for x0 in _positions(width, side, n_w):
                regions.append((y0, x0, side, side))
    return tuple(dict.fromkeys(regions))  # drop duplicates, keep order


def _positions(length: int, side: int, count: int) -> list[int]:
    if count <= 1 or length <= side:
        return [max(0, (length - side) // 2)]
    step = (length - side) / (count - 1)
    return sorted({int(round(i * step)) for i in range(count)})


def rmac(
    x: Tensor,
    levels: int = 3,
    mask: Tensor | None = None,
    region_shift: Tensor | None = None,
    region_proj: Tensor | None = None,
) -> Tensor:
    """Regional MAC (Gordo et al. 2016): ``(N, C, H, W) -> (N, C)`` (or ``(N, D)`` with a projection).

    Each region is max-pooled and L2-normalised, optionally PCA-whitened as ``l2n(P (r - shift))``
    with ``region_shift: (C,)`` and ``region_proj: (D, C)``, then the regions are summed (weighted by the
    mask's mean over each region, so background regions count less) and the sum is L2-normalised.
    """
    h, w = x.shape[-2:]
    m = _effective_mask(x, mask)
    if m is not None:
        x = x * m
    boxes = rmac_regions(h, w, levels)
    regs = _region_macs(x, boxes)  # (N, R, C)
    if region_proj is not None:
        if region_shift is not None:
            regs = regs - region_shift
        regs = l2n(regs @ region_proj.t())
    if m is not None:
        weights = torch.stack(
            [m[:, 0, y0 : y0 + rh, x0 : x0 + rw].mean(dim=(-2, -1)) for y0, x0, rh, rw in boxes], dim=1
        )
        regs = regs * weights.unsqueeze(-1)
    return l2n(regs.sum(dim=1))


def rmac_region_descriptors(x: Tensor, levels: int = 3) -> Tensor:
    """The L2-normalised regional MAC vectors R-MAC sums: ``(N, C, H, W) -> (N, R, C)``.

    Used to learn the regional PCA-whitening (``region_shift``, ``region_proj``) of :func:`rmac`.
    """
    return _region_macs(x, rmac_regions(x.shape[-2], x.shape[-1], levels))


def _region_macs(x: Tensor, boxes: tuple[tuple[int, int, int, int], ...]) -> Tensor:
    """L2-normalised max over each ``(y0, x0, h, w)`` box: ``(N, C, H, W) -> (N, R, C)``."""
    return l2n(torch.stack([x[:, :, y0 : y0 + h, x0 : x0 + w].amax(dim=(-2, -1)) for y0, x0, h, w in boxes], dim=1))
