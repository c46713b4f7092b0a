"""Foreground masks: an image in, a boolean mask of the object out, so that queries match objects, not backgrounds.

``build_segmenter("grabcut")`` returns a callable ``(H, W, 3) uint8 -> (H, W) bool``; see :mod:`segmentation.base`.

Importing the package registers the built-in segmenters: each implementation module registers its names in
:data:`segmentation.base.SEGMENTERS` when it is imported here (the registry module imports no implementation).
"""

from . import (
    classical,  # noqa: F401  (grabcut, grabcut_rect, lab_kmeans, border_saliency)
    torchvision_models,  # noqa: F401  (deeplab, deeplab_mobilenet, fcn, maskrcnn [:WEIGHTS])
    unet,  # noqa: F401  (unet:PATH)
)
from .base import (
    DEFAULT_MIN_FRACTION,
    SEGMENTERS,
    MaskCheck,
    Segmenter,
    build_segmenter,
    check_mask,
    iou,
    parse_spec,
)

__all__ = [
    "DEFAULT_MIN_FRACTION",
    "SEGMENTERS",
    "MaskCheck",
    "Segmenter",
    "build_segmenter",
    "check_mask",
    "iou",
    "parse_spec",
]
