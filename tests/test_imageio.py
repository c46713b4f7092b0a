import io

import numpy as np
import pytest
from PIL import Image

from indexer.imageio import ImageLoadError, decode_image, load_image, target_size

from .conftest import draw_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_target_size_keeps_aspect_and_bounds_the_longest_side():
    assert target_size(640, 480, 224) == (224, 160)
    assert target_size(480, 640, 224) == (160, 224)
    assert target_size(128, 128, 224) == (224, 224)  # small images are scaled up
    assert target_size(5000, 10, 224) == (224, 32)  # never thinner than the stride


def test_exif_orientation_is_applied():
    img = draw_image(1, (120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pixels, w, h = decode_image(encode(img, "JPEG", exif=exif.tobytes()), max_side=None)
    assert (w, h) == (60, 120) and pixels.shape == (120, 60, 3)
    resized, _, _ = decode_image(encode(img, "JPEG", exif=exif.tobytes()), max_side=64)
    assert resized.shape == (64, 32, 3)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "I;16"])
def test_every_common_mode_becomes_rgb(mode):
    img = draw_image(2, (40, 30))
    if mode == "I;16":
        arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(arr)
        assert img.mode.startswith("I;16")
    else:
        img = img.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "LA" else "PNG"
    pixels, w, h = decode_image(encode(img, fmt), max_side=None)
    assert pixels.dtype == np.uint8 and pixels.shape == (30, 40, 3) and (w, h) == (40, 30)


def test_sixteen_bit_images_use_their_full_range():
    arr = np.tile(np.linspace(0, 4095, 32, dtype=np.uint16), (8, 1))  # 12-bit data in a 16-bit PNG
    pixels, _, _ = decode_image(encode(Image.fromarray(arr), "PNG"), max_side=None)
    assert pixels.min() == 0 and pixels.max() == 255


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    pixels, _, _ = decode_image(encode(img, "PNG"), max_side=None)
    assert (pixels == 255).all()


def test_jpeg_reduced_decode_gives_the_exact_target_size():
    img = draw_image(3, (1600, 1200))
    pixels, w, h = decode_image(encode(img, "JPEG"), max_side=224)
    assert pixels.shape == (160, 224, 3) and (w, h) == (1600, 1200)
    full, _, _ = decode_image(encode(img, "PNG"), max_side=224)
    # draft decoding must not change the picture much compared to a full decode
    assert np.abs(full.astype(int) - pixels.astype(int)).mean() < 12


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image"),
    ],
)
def test_empty_and_non_image_files_are_refused_with_a_reason(data, reason):
    with pytest.raises(ImageLoadError, match=reason):
        decode_image(data, 224)


def test_truncated_image_is_refused():
    data = encode(draw_image(4, (300, 300)), "JPEG")
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 3], 224)


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")  # compresses to a few kB
    assert len(data) < 50_000
    with pytest.raises(ImageLoadError, match="too large"):
        decode_image(data, 224, max_pixels=1_000_000)


def test_load_image_hashes_content_and_reports_unreadable_files(tmp_path):
    p = tmp_path / "a.png"
    draw_image(5).save(p)
    q = tmp_path / "b.png"
    q.write_bytes(p.read_bytes())
    a, b = load_image(p, 64), load_image(q, 64)
    assert a.content_hash == b.content_hash and len(a.content_hash) == 32
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(tmp_path / "missing.png", 64)
