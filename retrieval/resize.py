"""The one resize rule shared by indexing, search, evaluation and training validation.

Images keep their aspect ratio: the longest side becomes ``max_side`` and both sides are rounded to a
multiple of the backbone's stride (32), which also keeps the number of distinct shapes small so that
images batch well.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Both sides of a resized image are a multiple of this (the backbone's stride).
SIZE_MULTIPLE = 32


def target_size(width: int, height: int, max_side: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Size ``(w, h)`` with the longest side ``max_side`` and the aspect ratio kept (sides rounded to ``multiple``)."""
    scale = max_side / max(width, height)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return min(w, max_side), min(h, max_side)


def resize_longest(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W, 3) uint8 -> (h, w, 3) uint8`` at :func:`target_size` (bilinear, as indexing does); no copy
    when the image already has that size."""
    h, w = pixels.shape[:2]
    size = target_size(w, h, max_side)
    if size == (w, h):
        return pixels
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize(size, Image.Resampling.BILINEAR))
