"""Foreground masks: an image in, a boolean mask of the object out, so that queries match objects, not backgrounds.

``build_segmenter("grabcut")`` returns a callable ``(H, W, 3) uint8 -> (H, W) bool``; see :mod:`segmentation.base`.

Importing the package registers the built-in segmenters: each implementation module registers its names in
:data:`segmentation.base.SEGMENTERS` when it is imported (the registry module imports no implementation). The
weight-free ones are imported here; the torch ones are declared by name and imported on first use, so that
importing the package (e.g. for a command's ``--help``) does not load torch.
"""

from . import classical  # noqa: F401  (grabcut, grabcut_rect, lab_kmeans, border_saliency)
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

SEGMENTERS.register_lazily(["unet"], "segmentation.unet")  # unet:CHECKPOINT
SEGMENTERS.register_lazily(["foreground"], "segmentation.foreground")  # the packaged default; foreground:grabcut

#: The segmenter ``--mask`` means when given without a name: the packaged network of :mod:`segmentation.foreground`.
DEFAULT_SEGMENTER = "foreground"
SEGMENTERS.register_lazily(["deeplab", "deeplab_mobilenet", "fcn", "maskrcnn"], "segmentation.torchvision_models")

__all__ = [
    "DEFAULT_MIN_FRACTION",
    "DEFAULT_SEGMENTER",
    "SEGMENTERS",
    "MaskCheck",
    "Segmenter",
    "build_segmenter",
    "check_mask",
    "iou",
    "parse_spec",
]
