"""Importing this module registers the built-in segmenters (each module registers itself on import)."""

from __future__ import annotations

from . import classical  # noqa: F401  (grabcut, grabcut_rect, lab_kmeans, border_saliency)
from . import torchvision_models  # noqa: F401  (deeplab, deeplab_mobilenet, fcn, maskrcnn [:WEIGHTS])
from . import unet  # noqa: F401  (unet:PATH)
