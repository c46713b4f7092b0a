"""Foreground masks: an image in, a boolean mask of the object out, so that queries match objects, not backgrounds.

``build_segmenter("grabcut")`` returns a callable ``(H, W, 3) uint8 -> (H, W) bool``; see :mod:`segmentation.base`.
"""

from .base import SEGMENTERS, MaskCheck, Segmenter, build_segmenter, check_mask, iou, parse_spec

__all__ = ["SEGMENTERS", "MaskCheck", "Segmenter", "build_segmenter", "check_mask", "iou", "parse_spec"]
