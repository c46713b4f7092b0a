"""The weight-free segmenters: accuracy on a drawn object, determinism, odd inputs, spec options, registry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segmentation import build_segmenter, check_mask, iou
from segmentation.base import SEGMENTERS
from segmentation.classical import (
    ClassicalSegmenter,
    GrabCutConfig,
    as_rgb_uint8,
    border_strip,
    clean_mask,
    fill_holes,
    grabcut_mask,
    otsu_threshold,
    parse_options,
    prior_score,
)

CLASSICAL = ("grabcut", "grabcut_rect", "lab_kmeans", "border_saliency")


def drawn_object(seed: int, size: tuple[int, int] = (160, 120)) -> tuple[np.ndarray, np.ndarray]:
    """A red-orange blob (ellipse + a 'neck' polygon) on a noisy, shaded green-grey background.
    Returns ``(H, W, 3) uint8`` pixels and the ``(H, W) bool`` truth."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([90 + 30 * xx / w, 120 + 20 * yy / h, 80 + 0 * xx], axis=2)
    background += rng.normal(0, 12, (h, w, 3))
    for _ in range(12):  # darker and lighter patches: texture the object must not be confused with
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, 10)
        background[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.normal(0, 25)
    mask_img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask_img)
    ox, oy = rng.integers(-10, 11), rng.integers(-8, 9)
    draw.ellipse([w * 0.28 + ox, h * 0.32 + oy, w * 0.72 + ox, h * 0.72 + oy], fill=255)
    draw.polygon(
        [
            (w * 0.62 + ox, h * 0.45 + oy),
            (w * 0.78 + ox, h * 0.2 + oy),
            (w * 0.84 + ox, h * 0.26 + oy),
            (w * 0.7 + ox, h * 0.55 + oy),
        ],
        fill=255,
    )
    truth = np.asarray(mask_img) > 127
    colour = np.array([200, 90, 40]) + rng.normal(0, 10, (h, w, 3))
    pixels = np.where(truth[:, :, None], colour, background)
    return np.clip(pixels, 0, 255).astype(np.uint8), truth


@pytest.mark.parametrize("name", CLASSICAL)
def test_segmenter_finds_drawn_object(name: str) -> None:
    seg = build_segmenter(name)
    scores = []
    for seed in range(2):
        pixels, truth = drawn_object(seed)
        mask = seg(pixels)
        assert mask.shape == truth.shape and mask.dtype == bool
        scores.append(iou(mask, truth))
    assert min(scores) > 0.8, scores


@pytest.mark.parametrize("name", ["grabcut", "lab_kmeans"])
def test_segmenter_is_deterministic(name: str) -> None:
    pixels, _ = drawn_object(3)
    seg = build_segmenter(name)
    assert np.array_equal(seg(pixels), seg(pixels))


def test_large_image_is_segmented_on_a_small_copy_and_mask_fits_input() -> None:
    pixels, truth = drawn_object(4, size=(640, 480))
    mask = build_segmenter("grabcut")(pixels)
    assert mask.shape == (480, 640)
    assert iou(mask, truth) > 0.8


@pytest.mark.parametrize("name", CLASSICAL)
@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 50, 3), (50, 1, 3), (3, 4, 3), (9, 9, 3), (0, 5, 3)])
def test_tiny_images_give_a_mask_of_their_shape(name: str, shape: tuple[int, int, int]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    mask = build_segmenter(name)(pixels)
    assert mask.shape == shape[:2] and mask.dtype == bool


@pytest.mark.parametrize("name", CLASSICAL)
def test_uniform_image_gives_whole_image_which_check_mask_rejects(name: str) -> None:
    pixels = np.full((60, 80, 3), 128, np.uint8)
    mask = build_segmenter(name)(pixels)
    assert mask.shape == (60, 80) and mask.all()
    assert check_mask(mask).reason == "full"


@pytest.mark.parametrize("name", CLASSICAL)
def test_noise_and_stripes_do_not_crash(name: str) -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    stripes = np.zeros((40, 70, 3), np.uint8)
    stripes[:, ::2] = 255
    for pixels in (noise, stripes):
        assert build_segmenter(name)(pixels).shape == (40, 70)


@pytest.mark.parametrize("name", CLASSICAL)
def test_single_odd_pixel_does_not_crash(name: str) -> None:
    pixels = np.full((60, 80, 3), 128, np.uint8)
    pixels[30, 40] = 255
    pixels[0, 0] = 0
    assert build_segmenter(name)(pixels).shape == (60, 80)


def test_grey_rgba_and_float_inputs_are_accepted() -> None:
    pixels, truth = drawn_object(5)
    seg = build_segmenter("grabcut")
    rgba = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(seg(rgba), seg(pixels))
    assert np.array_equal(seg(pixels.astype(np.float32) / 255.0), seg(pixels))
    assert seg(pixels.mean(axis=2).astype(np.uint8)).shape == truth.shape
    with pytest.raises(ValueError, match="expected an"):
        as_rgb_uint8(np.zeros((4, 4, 2), np.uint8))


def test_rect_init_with_tiny_margin_still_returns_mask() -> None:
    pixels, _ = drawn_object(6, size=(20, 12))
    mask = grabcut_mask(pixels, GrabCutConfig(init="rect", margin=0.0))
    assert mask.shape == (12, 20)


def test_unknown_grabcut_init_is_refused() -> None:
    pixels, _ = drawn_object(0)
    with pytest.raises(ValueError, match="unknown GrabCut init"):
        grabcut_mask(pixels, GrabCutConfig(init="nope"))


def test_spec_round_trip_and_options() -> None:
    seg = build_segmenter("grabcut:max_side=96,iterations=2,border=0.1,keep_largest=false")
    assert isinstance(seg, ClassicalSegmenter)
    assert seg.config.max_side == 96 and seg.config.iterations == 2 and seg.config.keep_largest is False
    assert seg.config.prior.border == 0.1
    again = build_segmenter(seg.spec)
    assert again.spec == seg.spec and again.config == seg.config
    assert build_segmenter("GrabCut").spec == "grabcut"


def test_bad_options_name_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: .*iterations"):
        build_segmenter("grabcut:iteration=3")
    with pytest.raises(ValueError, match="expected int"):
        parse_options(GrabCutConfig(), "iterations=many")
    with pytest.raises(ValueError, match="true/false"):
        parse_options(GrabCutConfig(), "keep_largest=maybe")
    with pytest.raises(ValueError, match="key=value"):
        parse_options(GrabCutConfig(), "iterations")


def test_every_classical_segmenter_is_registered() -> None:
    build_segmenter("grabcut")  # imports the built-in modules
    for name in CLASSICAL:
        assert name in SEGMENTERS


def test_prior_scores_object_above_background() -> None:
    pixels, truth = drawn_object(7)
    from segmentation.classical import PriorConfig

    score = prior_score(pixels, PriorConfig())
    assert score.shape == truth.shape
    assert np.median(score[truth]) > 3 * np.median(score[~truth])
    assert np.mean((score > otsu_threshold(score)) == truth) > 0.85


def test_mask_helpers() -> None:
    ring = np.zeros((20, 20), bool)
    ring[4:16, 4:16] = True
    ring[8:12, 8:12] = False
    assert fill_holes(ring)[10, 10] and fill_holes(ring).sum() == 144
    two = np.zeros((30, 30), bool)
    two[2:20, 2:20] = True  # big
    two[24:27, 24:27] = True  # small: dropped (below 20% of the largest)
    cleaned = clean_mask(two)
    assert cleaned[10, 10] and not cleaned[25, 25]
    strip = border_strip((10, 12), 0.2)
    assert strip[0].all() and strip[:, -1].all() and not strip[5, 6]
