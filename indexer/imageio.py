"""Reading image files into RGB pixels a network can take, whatever the file holds.

Handles EXIF orientation, palette / alpha / CMYK / greyscale / 16-bit modes, decompression bombs, and
reduced-size JPEG decoding when the target size allows it. Errors are :class:`ImageLoadError` with a short
reason a person can read ("truncated file", "not an image", ...).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.resize import target_size

#: File name extensions scanned as images (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
#: A region of an image: ``(x, y, width, height)`` in pixels.
Box = tuple[float, float, float, float]
#: Default refusal limit for decompression bombs (width x height); a 12,000 x 10,000 photo still passes.
DEFAULT_MAX_PIXELS = 120_000_000


class ImageLoadError(Exception):
    """An image file could not be used; ``reason`` is short and human-readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LoadedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, resized
    width: int  # original, after EXIF rotation
    height: int
    content_hash: str


def content_hash(data: bytes) -> str:
    """Hex digest identifying a file's content (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / integer / float greyscale: scale the actual range to 0..255.
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white, as a viewer would show them on a page.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def check_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A region ``(x, y, w, h)`` in pixels of a ``width`` x ``height`` image -> ``(left, top, right, bottom)``
    clipped to the image. Raises :class:`ImageLoadError` for a box of no size or one outside the image."""
    x, y, w, h = (int(round(float(v))) for v in box)
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"the box {x},{y},{w},{h} has no area (width and height must be positive)")
    left, top, right, bottom = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if right - left < 2 or bottom - top < 2:
        raise ImageLoadError(f"the box {x},{y},{w},{h} lies outside the {width}x{height} image")
    return left, top, right, bottom


def decode_image(
    data: bytes, max_side: int | None, max_pixels: int = DEFAULT_MAX_PIXELS, box: Box | None = None
) -> tuple[np.ndarray, int, int]:
    """Decode encoded bytes to ``(H, W, 3)`` uint8 RGB resized to ``max_side`` (if given), plus original size.
    ``box`` ``(x, y, w, h)``, in pixels of the image as shown (after EXIF rotation), keeps only that region
    (before resizing).

    Raises :class:`ImageLoadError` for empty, truncated, unidentifiable or oversized images, and boxes outside.
    """
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels check decides
            img = Image.open(io.BytesIO(data))
            w0, h0 = img.size
            if w0 * h0 > max_pixels:
                raise ImageLoadError(
                    f"too large: {w0}x{h0} pixels exceeds the limit of {max_pixels:,} (decompression bomb guard)"
                )
            getattr(img, "seek", lambda _: None)(0)  # first frame of animations / multi-page TIFF
            orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
            swapped = orientation in (5, 6, 7, 8)
            ow, oh = (h0, w0) if swapped else (w0, h0)
            if max_side is not None and img.format == "JPEG" and box is None:
                tw, th = target_size(ow, oh, max_side)
                img.draft("RGB", (th, tw) if swapped else (tw, th))  # decode at 1/2, 1/4, 1/8 when that suffices
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            shown = (ow, oh)  # the size the image is resized from (a JPEG draft may have decoded it smaller)
            if box is not None:
                img = img.crop(check_box(box, *img.size))
                shown = img.size
            if max_side is not None:
                size = target_size(*shown, max_side)
                if img.size != size:
                    img = img.resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"too large: over {max_pixels:,} pixels (decompression bomb guard)") from exc
    except UnidentifiedImageError:
        raise ImageLoadError("not an image, or a format Pillow cannot read") from None
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg or "broken data stream" in msg or "image file is truncated" in msg:
            raise ImageLoadError(f"truncated or corrupt image data ({msg})") from exc
        raise ImageLoadError(f"cannot decode image ({msg})") from exc
    except (ValueError, SyntaxError, MemoryError, IndexError, TypeError) as exc:  # malformed headers surface as these
        raise ImageLoadError(f"corrupt image ({exc.__class__.__name__}: {exc})") from exc
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageLoadError(f"unexpected pixel layout {pixels.shape}")
    return pixels, ow, oh


def load_image(
    source: str | Path | bytes, max_side: int | None, max_pixels: int = DEFAULT_MAX_PIXELS, box: Box | None = None
) -> LoadedImage:
    """Read, hash and decode one file (a path), or encoded bytes already in memory (an upload). Raises
    :class:`ImageLoadError` (including for unreadable files)."""
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageLoadError(f"cannot read file ({exc.strerror or exc})") from exc
    pixels, w, h = decode_image(data, max_side, max_pixels, box)
    return LoadedImage(pixels=pixels, width=w, height=h, content_hash=content_hash(data))
