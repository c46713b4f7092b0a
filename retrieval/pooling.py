"""``nn.Module`` wrappers around the pooling functions of :mod:`retrieval.functional`, and their registry.

Each module maps a feature map ``(N, C, H, W)`` (and an optional mask ``(N, 1, H, W)``) to ``(N, C)``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import functional as RF
from .registry import Registry

POOLINGS: Registry[type[nn.Module]] = Registry("pooling")


@POOLINGS.register("mac")
class MAC(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return RF.mac(x, mask)


@POOLINGS.register("spoc")
class SPoC(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return RF.spoc(x, mask)


@POOLINGS.register("gem")
class GeM(nn.Module):
    """GeM with a learnable exponent ``p`` (a buffer-free parameter, trained with the rest of the net)."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return RF.gem(x, self.p, mask)


@POOLINGS.register("rmac")
class RMAC(nn.Module):
    """R-MAC with an optional regional PCA-whitening (shift + linear map), learnable once set."""

    def __init__(self, levels: int = 3) -> None:
        super().__init__()
        self.levels = levels
        self.region_shift: nn.Parameter | None = None
        self.region_proj: nn.Parameter | None = None

    def set_region_whitening(self, shift: torch.Tensor, proj: torch.Tensor) -> None:
        """``shift: (C,)``, ``proj: (D, C)``; after this the output dimension is ``D``."""
        self.region_shift = nn.Parameter(shift.detach().clone().float())
        self.region_proj = nn.Parameter(proj.detach().clone().float())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return RF.rmac(x, self.levels, mask, self.region_shift, self.region_proj)


def build_pooling(name: str, gem_p: float = 3.0, rmac_levels: int = 3) -> nn.Module:
    cls = POOLINGS.get(name)
    if cls is GeM:
        return GeM(gem_p)
    if cls is RMAC:
        return RMAC(rmac_levels)
    return cls()
