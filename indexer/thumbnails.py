"""Thumbnails of image files, made once and kept as JPEG files in the collection's home.

A thumbnail is named after the content hash of its source file and its size (``thumbnails/ab/ab12...-256.jpg``),
so a file whose content changes gets a new one, and copies of one picture share theirs. Hashing a file for every
request would read it whole, so the hash of each file is remembered (in memory) with the file's size, mtime and
inode: a request for a thumbnail already made costs one ``stat`` and one ``exists``. Thumbnails follow the file's
EXIF orientation and never upscale: the longest side is at most the size asked for. Face crops (a box in the
EXIF-rotated picture) are cached the same way, with the box in the name.

Decoding uses the library's rules (:mod:`indexer.imageio`): the same decompression-bomb limit and the same
reasons for files that cannot be read; JPEGs are decoded at a reduced scale when the thumbnail allows it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from .errors import LookalikeError
from .imageio import DEFAULT_MAX_PIXELS, Box, ImageLoadError, _to_rgb, content_hash, decode_image

log = logging.getLogger(__name__)

#: Folder of the cache inside the collection's home.
THUMBNAIL_DIR = "thumbnails"
#: Sizes (longest side, pixels) a thumbnail may be asked for.
MIN_SIZE, MAX_SIZE = 64, 1024
#: Share of a face box's longer side added around it in a face crop.
FACE_MARGIN = 0.25


class ThumbnailError(LookalikeError):
    """A thumbnail cannot be made. ``gone``: the source file no longer exists (else it cannot be read or decoded)."""

    def __init__(self, message: str, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


@dataclass(frozen=True)
class Thumbnail:
    """A cached thumbnail: the JPEG file, the source's content hash, and whether this call made it."""

    path: Path
    content_hash: str
    made: bool


class Thumbnails:
    """The thumbnail cache in ``folder``. Safe to use from several threads (and processes: files are written to
    a temporary name and renamed). ``remember``: how many files' hashes are kept in memory."""

    def __init__(
        self, folder: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, quality: int = 85, remember: int = 200_000
    ) -> None:
        self.folder = Path(folder)
        self.max_pixels, self.quality, self.remember = max_pixels, quality, remember
        self._hashes: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: str | Path, size: int, box: Box | None = None) -> Thumbnail:
        """The thumbnail of ``source`` with its longest side at most ``size`` (a crop around ``box`` when given),
        made now unless cached. Raises :class:`ThumbnailError` (``gone`` when the file no longer exists) and
        ``ValueError`` for a size outside ``MIN_SIZE..MAX_SIZE``."""
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"thumbnail size must be {MIN_SIZE}..{MAX_SIZE}, got {size}")
        source = str(source)
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise ThumbnailError(f"{source} is no longer on disk", gone=True) from None
        except OSError as exc:
            raise ThumbnailError(f"cannot read {source} ({exc.strerror or exc})") from None
        key = (source, st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            known = self._hashes.get(key)
            if known is not None:
                self._hashes.move_to_end(key)
        data: bytes | None = None
        if known is None:
            data = self._read(source)
            known = content_hash(data)
            self._remember(key, known)
        target = self._path(known, size, box)
        if target.exists():
            return Thumbnail(target, known, made=False)
        if data is None:
            data = self._read(source)
            if content_hash(data) != known:  # changed within one mtime tick: hash again
                known = content_hash(data)
                self._remember(key, known)
                target = self._path(known, size, box)
        self._write(target, self._make(data, size, box, source))
        return Thumbnail(target, known, made=True)

    # ------------------------------------------------------------------ internals
    def _path(self, digest: str, size: int, box: Box | None) -> Path:
        name = f"{digest}-{size}"
        if box is not None:
            name += "-face-" + "-".join(str(round(v)) for v in box)
        return self.folder / digest[:2] / f"{name}.jpg"

    def _remember(self, key: tuple[str, int, int, int], digest: str) -> None:
        with self._lock:
            self._hashes[key] = digest
            while len(self._hashes) > self.remember:
                self._hashes.popitem(last=False)

    @staticmethod
    def _read(source: str) -> bytes:
        try:
            return Path(source).read_bytes()
        except FileNotFoundError:
            raise ThumbnailError(f"{source} is no longer on disk", gone=True) from None
        except OSError as exc:
            raise ThumbnailError(f"cannot read {source} ({exc.strerror or exc})") from None

    def _make(self, data: bytes, size: int, box: Box | None, source: str) -> Image.Image:
        """``data`` decoded (EXIF-rotated, RGB), cropped to ``box`` with a margin, scaled to fit ``size``."""
        try:
            img, scale = self._open(data, size, box)
        except ImageLoadError as exc:
            raise ThumbnailError(f"cannot make a thumbnail of {source}: {exc.reason}") from None
        if box is not None:
            img = img.crop(_face_crop(box, img.size, scale))
        img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return img

    def _open(self, data: bytes, size: int, box: Box | None) -> tuple[Image.Image, float]:
        """``data`` decoded, and the scale it was decoded at: a reduced JPEG scale when the thumbnail allows it.
        Anything unusual (a bomb, a file Pillow cannot read, a corrupt one) goes through
        :func:`~indexer.imageio.decode_image`, which decodes it or raises
        :class:`~indexer.imageio.ImageLoadError` with the library's reason."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
                img = Image.open(io.BytesIO(data))
                w0, h0 = img.size
                if w0 * h0 > self.max_pixels:
                    raise _Fallback
                if img.format == "JPEG":
                    want = size
                    if box is not None:  # the crop, not the picture, must keep ``size`` pixels
                        want = int(size * max(w0, h0) / max(1.0, max(box[2], box[3]) * (1 + 2 * FACE_MARGIN)))
                    if want < min(w0, h0):
                        img.draft("RGB", (want, want))  # at least ``want`` pixels on both sides
                getattr(img, "seek", lambda _: None)(0)
                img.load()
                scale = img.size[0] / w0
                return _to_rgb(ImageOps.exif_transpose(img)), scale
        except Exception:  # decode_image gives the reason, or decodes what the fast path could not
            pixels, _, _ = decode_image(data, None, self.max_pixels)
            return Image.fromarray(pixels), 1.0

    def _write(self, target: Path, img: Image.Image) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".jpg")
        try:
            with os.fdopen(fd, "wb") as fh:
                img.save(fh, "JPEG", quality=self.quality, optimize=True)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class _Fallback(Exception):
    """Leave the fast path for :func:`~indexer.imageio.decode_image`."""


def _face_crop(box: Box, size: tuple[int, int], scale: float) -> tuple[int, int, int, int]:
    """The crop ``(left, top, right, bottom)`` around ``box`` (in full-size pixels) with :data:`FACE_MARGIN`, in an
    image of ``size`` decoded at ``scale``, kept inside the image."""
    x, y, w, h = (v * scale for v in box)
    m = FACE_MARGIN * max(w, h)
    left, top = max(0, int(x - m)), max(0, int(y - m))
    right, bottom = min(size[0], int(round(x + w + m))), min(size[1], int(round(y + h + m)))
    if right <= left or bottom <= top:
        raise ThumbnailError(f"the face box {box} lies outside the picture")
    return left, top, right, bottom


__all__ = ["Thumbnails", "Thumbnail", "ThumbnailError", "THUMBNAIL_DIR", "MIN_SIZE", "MAX_SIZE", "FACE_MARGIN"]
