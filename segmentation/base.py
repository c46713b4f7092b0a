"""The segmenter protocol: an RGB image in, a foreground mask out; plus the registry and mask hygiene.

A segmenter is any callable ``(H, W, 3) uint8 RGB -> (H, W) bool`` (True = object). Segmenters are built
from a *spec* string, ``NAME`` or ``NAME:ARG`` (``grabcut``, ``unet:model.pt``, ``deeplab``), so a collection
can record how its images were masked and mask queries the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from retrieval.registry import Registry

# A mask covering less than this share of the image, or more than 1 - this share, is degenerate.
DEFAULT_MIN_FRACTION = 0.02


class Segmenter(Protocol):
    """``(H, W, 3) uint8 RGB -> (H, W) bool`` foreground mask. ``spec`` names it, e.g. ``"grabcut"``."""

    spec: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


# name -> factory(arg) where arg is the part after ':' in the spec, or None.
SEGMENTERS: Registry[Callable[[str | None], Segmenter]] = Registry("segmenter")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"unet:model.pt"`` -> ``("unet", "model.pt")``; ``"grabcut"`` -> ``("grabcut", None)``."""
    name, sep, arg = spec.partition(":")
    return name.strip().lower(), (arg if sep else None)


def build_segmenter(spec: str) -> Segmenter:
    """Build the segmenter a spec names; unknown names raise :class:`retrieval.registry.UnknownNameError`.

    The built-in segmenters are registered by the package's ``__init__``, which imports their modules.
    """
    name, arg = parse_spec(spec)
    return SEGMENTERS.get(name)(arg)


@dataclass(frozen=True)
class MaskCheck:
    """Whether a mask is usable; ``reason`` says why not (``"empty"`` / ``"full"``), ``fraction`` its area share."""

    usable: bool
    fraction: float
    reason: str | None = None


def check_mask(mask: np.ndarray, min_fraction: float = DEFAULT_MIN_FRACTION) -> MaskCheck:
    """A mask that is (nearly) empty or covers (nearly) everything is degenerate: use the whole image."""
    fraction = float(np.count_nonzero(mask)) / max(1, mask.size)
    if fraction < min_fraction:
        return MaskCheck(False, fraction, "empty")
    if fraction > 1.0 - min_fraction:
        return MaskCheck(False, fraction, "full")
    return MaskCheck(True, fraction)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape; 1.0 when both are empty."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else float(np.count_nonzero(pred & truth)) / union
