"""Image + mask pairs on disk: the Weizmann horses layout (``rgb/`` + ``figure_ground/``) or any folder pair.

A dataset is a list of :class:`MaskedImage` (image path, mask path). :func:`load_pair` reads one as
``(H, W, 3) uint8`` pixels and an ``(H, W) bool`` mask resized to the image (Weizmann's masks are JPEGs whose
size may differ from the RGB photo's: binarise at > 127 after resizing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class MaskedImage:
    image: Path
    mask: Path


def paired_files(images_dir: str | Path, masks_dir: str | Path) -> list[MaskedImage]:
    """Pairs of files with the same stem in ``images_dir`` and ``masks_dir``, sorted by stem."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    pairs = [
        MaskedImage(p, masks[p.stem])
        for p in sorted(images_dir.iterdir())
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem in masks
    ]
    if not pairs:
        raise FileNotFoundError(f"no image in {images_dir} has a mask with the same name in {masks_dir}")
    return pairs


def find_pairs(root: str | Path) -> list[MaskedImage]:
    """Image/mask pairs under ``root``: ``rgb/`` + ``figure_ground/`` (Weizmann) or ``images/`` + ``masks/``."""
    root = Path(root)
    for images, masks in (("rgb", "figure_ground"), ("images", "masks")):
        if (root / images).is_dir() and (root / masks).is_dir():
            return paired_files(root / images, root / masks)
    raise FileNotFoundError(f"{root} has neither rgb/ + figure_ground/ nor images/ + masks/ sub-folders")


def split_pairs(pairs: list[MaskedImage], test_every: int = 4) -> tuple[list[MaskedImage], list[MaskedImage]]:
    """The fixed held-out split used by our benchmarks: every ``test_every``-th pair (by sorted stem,
    starting with the first) is held out for testing; the rest are for training.

    On the Weizmann horses (328 photos) this gives 246 training and 82 test images.
    """
    ordered = sorted(pairs, key=lambda p: p.image.stem)
    test = [p for i, p in enumerate(ordered) if i % test_every == 0]
    train = [p for i, p in enumerate(ordered) if i % test_every != 0]
    return train, test


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file as ``(H, W) bool`` for an image of ``size = (width, height)``: white (> 127) = object."""
    with Image.open(path) as im:
        gray = im.convert("L")
        if gray.size != size:
            gray = gray.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(gray) > 127


def load_pair(pair: MaskedImage) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 3) uint8`` pixels and the ``(H, W) bool`` mask aligned with them."""
    with Image.open(pair.image) as im:
        pixels = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
    return pixels, load_mask(pair.mask, (pixels.shape[1], pixels.shape[0]))
