"""Thumbnails: made once and cached by content, EXIF orientation followed, never upscaled, clear errors."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.thumbnails import ThumbnailError, Thumbnails

from .conftest import draw_image


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(path: Path, orientation: int = 6) -> None:
    """A 120x60 JPEG, red on the left half and blue on the right, tagged with EXIF ``orientation`` (6: show it
    turned 90 degrees clockwise, so the left half, red, is on top)."""
    img = Image.new("RGB", (120, 60), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 60, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)


def mean_colour(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), np.float32).reshape(-1, 3).mean(0)


@pytest.fixture
def cache(tmp_path: Path) -> Thumbnails:
    return Thumbnails(tmp_path / "thumbs")


def test_a_thumbnail_is_made_once_then_served_from_the_cache(tmp_path, cache):
    src = tmp_path / "a.png"
    draw_image(1, (400, 300)).save(src)
    first = cache.get(src, 128)
    again = cache.get(src, 128)
    assert first.made and not again.made and again.path == first.path
    with Image.open(first.path) as t:
        assert t.format == "JPEG" and t.size == (128, 96)
    assert cache.get(src, 256).path != first.path  # each size is its own file


def test_a_changed_file_gets_a_new_thumbnail(tmp_path, cache):
    src = tmp_path / "a.png"
    Image.new("RGB", (200, 100), (255, 0, 0)).save(src)
    before = cache.get(src, 64)
    Image.new("RGB", (200, 100), (0, 255, 0)).save(src)
    os.utime(src, ns=(1, 1))  # a new mtime, as any editor leaves
    after = cache.get(src, 64)
    assert after.made and after.path != before.path and after.content_hash != before.content_hash
    with Image.open(after.path) as t:
        assert mean_colour(t)[1] > 200 and mean_colour(t)[0] < 50


def test_identical_files_share_one_thumbnail(tmp_path, cache):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    draw_image(3).save(a)
    b.write_bytes(a.read_bytes())
    assert cache.get(a, 64).made
    shared = cache.get(b, 64)
    assert not shared.made and shared.path == cache.get(a, 64).path


def test_exif_orientation_is_followed(tmp_path, cache):
    src = tmp_path / "rotated.jpg"
    exif_rotated_jpeg(src)
    with Image.open(cache.get(src, 64).path) as t:
        assert t.size == (32, 64)  # shown portrait
        top, bottom = mean_colour(t.crop((0, 0, 32, 24))), mean_colour(t.crop((0, 40, 32, 64)))
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_large_jpegs_are_decoded_at_a_reduced_scale_with_the_same_picture(tmp_path, cache):
    src = tmp_path / "big.jpg"
    draw_image(7, (2400, 1600)).save(src, quality=92)
    with Image.open(cache.get(src, 200).path) as t:
        fast = np.asarray(t, np.float32)
    reference = draw_image(7, (2400, 1600))
    reference.thumbnail((200, 200), Image.Resampling.LANCZOS)
    assert fast.shape == (133, 200, 3)
    assert np.abs(fast - np.asarray(reference, np.float32)).mean() < 6


def test_small_pictures_are_not_upscaled(tmp_path, cache):
    src = tmp_path / "small.png"
    draw_image(2, (50, 40)).save(src)
    with Image.open(cache.get(src, 512).path) as t:
        assert t.size == (50, 40)


def test_a_face_crop_is_the_box_with_a_margin(tmp_path, cache):
    src = tmp_path / "face.jpg"
    img = Image.new("RGB", (800, 600), (0, 0, 255))
    img.paste((0, 255, 0), (500, 100, 600, 220))  # the "face": 100 x 120 at (500, 100)
    img.save(src, quality=95)
    thumb = cache.get(src, 64, box=(500, 100, 100, 120))
    with Image.open(thumb.path) as t:
        assert max(t.size) == 64 and t.size[1] > t.size[0]
        centre = mean_colour(t.crop((t.size[0] // 3, t.size[1] // 3, 2 * t.size[0] // 3, 2 * t.size[1] // 3)))
    assert centre[1] > 200 and centre[2] < 60
    assert thumb.path != cache.get(src, 64).path


def test_a_missing_file_is_gone(tmp_path, cache):
    with pytest.raises(ThumbnailError, match="no longer on disk") as err:
        cache.get(tmp_path / "nothing.jpg", 64)
    assert err.value.gone


def test_a_text_file_named_jpg_is_not_an_image(tmp_path, cache):
    src = tmp_path / "notes.jpg"
    src.write_text("not a picture\n")
    with pytest.raises(ThumbnailError, match="not an image") as err:
        cache.get(src, 64)
    assert not err.value.gone


def test_a_decompression_bomb_is_refused_without_decoding_it(tmp_path, cache):
    src = tmp_path / "bomb.png"
    src.write_bytes(bomb_png())
    with pytest.raises(ThumbnailError, match="decompression bomb guard"):
        cache.get(src, 64)


def test_sizes_outside_the_range_are_refused(tmp_path, cache):
    src = tmp_path / "a.png"
    draw_image(1).save(src)
    for size in (63, 1025):
        with pytest.raises(ValueError, match="64..1024"):
            cache.get(src, size)
