"""Masking images before embedding: which segmenter, how its mask is used, and what happens when it fails.

A collection records its :class:`MaskSettings` next to its model, so queries are always masked the way the
database was. A :class:`Masker` turns decoded pixels into a :class:`MaskOutcome`: the foreground mask, or
``None`` (whole image) with the reason when the mask was degenerate (empty, covering everything) or the
segmenter failed. How a mask is used (``apply``):

- ``"pool"``: the mask weighs the feature map inside pooling (masked GeM / MAC / SPoC, R-MAC regions weighted
  by their foreground share), so the network still sees the whole image but only the object is pooled;
- ``"pixels"``: background pixels are replaced by the mean colour before the network sees them;
- ``"both"``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from segmentation import DEFAULT_SEGMENTER, Segmenter, build_segmenter, check_mask
from segmentation.base import DEFAULT_MIN_FRACTION

log = logging.getLogger(__name__)

MASK_APPLY = ("pool", "pixels", "both")
__all__ = ["DEFAULT_SEGMENTER", "MASK_APPLY", "FILL_COLOUR", "MaskOutcome", "MaskSettings", "Masker"]
#: The colour background pixels become under ``apply="pixels"``: ImageNet's mean, i.e. zero after normalisation.
FILL_COLOUR = np.array([124, 116, 104], dtype=np.uint8)


@dataclass(frozen=True)
class MaskSettings:
    #: Segmenter spec (``grabcut``, ``unet:model.pt``, ``deeplab``, ...); ``None``: embed whole images.
    segmenter: str | None = None
    #: "both" measured best with imperfect masks, "pixels" with perfect ones, "pool" worst
    #: (benchmarks/bench_masked_retrieval.py; README).
    apply: str = "both"
    #: Masks covering less than this share of the image, or more than 1 minus it, fall back to the whole image.
    min_fraction: float = DEFAULT_MIN_FRACTION

    def __post_init__(self) -> None:
        if self.apply not in MASK_APPLY:
            raise ValueError(f"mask apply must be one of {', '.join(MASK_APPLY)}, got {self.apply!r}")
        if not 0.0 <= self.min_fraction < 0.5:
            raise ValueError(f"min_fraction must be in [0, 0.5), got {self.min_fraction}")

    @property
    def enabled(self) -> bool:
        return self.segmenter is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskSettings:
        return cls(**d)

    def describe(self) -> str:
        return "whole images" if self.segmenter is None else f"{self.segmenter} masks ({self.apply})"


@dataclass(frozen=True)
class MaskOutcome:
    """``mask (H, W) bool`` or ``None`` (whole image); ``fraction`` of the image it covers; ``fallback`` says
    why the whole image was used instead (``"empty mask"``, ``"full mask"``, ``"segmenter failed: ..."``)."""

    mask: np.ndarray | None
    fraction: float | None = None
    fallback: str | None = None


class Masker:
    """Runs the collection's segmenter on decoded pixels. Thread-safe when the segmenter is."""

    def __init__(self, settings: MaskSettings, segmenter: Segmenter | None = None) -> None:
        if not settings.enabled:
            raise ValueError("no segmenter configured")
        self.settings = settings
        self.segmenter = segmenter if segmenter is not None else build_segmenter(settings.segmenter or "")

    def __call__(self, pixels: np.ndarray) -> MaskOutcome:
        try:
            mask = np.asarray(self.segmenter(pixels), dtype=bool)
        except Exception as exc:  # one odd image must not stop a long run: embed it whole and say why
            log.warning(
                "segmenter %s failed (%s: %s); using the whole image",
                self.settings.segmenter,
                exc.__class__.__name__,
                exc,
            )
            return MaskOutcome(None, None, f"segmenter failed: {exc.__class__.__name__}: {exc}")
        if mask.shape != pixels.shape[:2]:
            return MaskOutcome(None, None, f"segmenter returned a {mask.shape} mask for a {pixels.shape[:2]} image")
        check = check_mask(mask, self.settings.min_fraction)
        if not check.usable:
            return MaskOutcome(None, check.fraction, f"{check.reason} mask")
        return MaskOutcome(mask, check.fraction)

    def network_inputs(
        self, pixels: np.ndarray, masks: list[np.ndarray | None]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch ``(N, H, W, 3)`` and each image's mask (or ``None``) -> the pixels and the pooling masks
        ``(N, H, W)`` to hand the network, as ``apply`` says; ``None`` when no image of the batch has a mask."""
        if all(m is None for m in masks):
            return pixels, None
        full = np.ones(pixels.shape[1:3], dtype=bool)
        stacked = np.stack([full if m is None else m for m in masks])
        if self.settings.apply in ("pixels", "both"):
            pixels = np.where(stacked[..., None], pixels, FILL_COLOUR)
        return pixels, (stacked if self.settings.apply in ("pool", "both") else None)
