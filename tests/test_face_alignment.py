"""Face alignment: the similarity fit on synthetic points, and warped crops of drawn patterns and faces."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from retrieval.faces import Face, HaarDetector
from retrieval.faces.alignment import (
    CANONICAL_FACE,
    align_face,
    alignment_matrix,
    apply_transform,
    box_matrix,
    crop_box,
    estimate_similarity,
    invert_transform,
    template_points,
    warp,
)
from tests.test_face_detection import DRAWN_EYES, draw_face


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), shift[0]], [scale * np.sin(a), scale * np.cos(a), shift[1]]]
    )


# --- estimate_similarity --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 40])
@pytest.mark.parametrize(
    "angle,scale,shift",
    [(0.0, 1.0, (0.0, 0.0)), (37.0, 2.5, (-14.0, 3.0)), (-170.0, 0.3, (100.0, -250.0)), (90.0, 1.0, (5.0, 5.0))],
)
def test_recovers_a_known_similarity_exactly(n, angle, scale, shift):
    rng = np.random.default_rng(n)
    src = rng.uniform(-50, 200, (n, 2))
    true = similarity(angle, scale, shift)
    est = estimate_similarity(src, apply_transform(true, src))
    np.testing.assert_allclose(est, true, atol=1e-9 * max(1.0, abs(shift[0]) + abs(shift[1])))


def test_two_points_are_mapped_exactly_onto_their_targets():
    src = np.array([[104.0, 114.0], [145.0, 109.0]])
    dst = np.array([[46.0, 56.0], [113.0, 56.0]])
    np.testing.assert_allclose(apply_transform(estimate_similarity(src, dst), src), dst, atol=1e-9)


def test_noisy_fit_is_the_least_squares_optimum():
    """No nearby similarity transform has a smaller squared error than the estimate."""
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (6, 2))
    dst = apply_transform(similarity(20, 1.3, (10, -4)), src) + rng.normal(0, 2.0, (6, 2))
    est = estimate_similarity(src, dst)
    err = np.sum((apply_transform(est, src) - dst) ** 2)
    # Parameterise as (a, b, tx, ty) with M = [[a, -b, tx], [b, a, ty]] and perturb each direction.
    a, b, tx, ty = est[0, 0], est[1, 0], est[0, 2], est[1, 2]
    for delta in np.vstack([np.eye(4), -np.eye(4), rng.normal(0, 1, (20, 4))]) * 1e-3:
        da, db, dx, dy = delta
        m = np.array([[a + da, -(b + db), tx + dx], [b + db, a + da, ty + dy]])
        assert np.sum((apply_transform(m, src) - dst) ** 2) > err


def test_mirrored_points_give_a_rotation_not_a_reflection():
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 20.0]])
    dst = src * [-1.0, 1.0]  # a reflection: the best similarity must still be proper
    est = estimate_similarity(src, dst)
    assert np.linalg.det(est[:, :2]) > 0
    assert est[0, 0] == pytest.approx(est[1, 1]) and est[0, 1] == pytest.approx(-est[1, 0])


@pytest.mark.parametrize(
    "src,dst",
    [
        (np.zeros((1, 2)), np.zeros((1, 2))),  # one point
        (np.ones((3, 2)), np.zeros((3, 2))),  # coincident source points
        (np.zeros((3, 2)), np.zeros((4, 2))),  # shape mismatch
        (np.zeros((3, 3)), np.zeros((3, 3))),  # not 2-D points
        (np.array([[0, 0], [1, np.nan]]), np.zeros((2, 2))),
    ],
)
def test_degenerate_inputs_are_refused(src, dst):
    with pytest.raises(ValueError):
        estimate_similarity(src, dst)


def test_invert_transform_round_trips():
    m = similarity(33, 0.7, (12, -9))
    pts = np.random.default_rng(2).uniform(-10, 10, (5, 2))
    np.testing.assert_allclose(apply_transform(invert_transform(m), apply_transform(m, pts)), pts, atol=1e-9)


# --- the template ---------------------------------------------------------------------------------


def test_template_is_symmetric_with_level_eyes():
    t = CANONICAL_FACE
    assert t[0, 1] == t[1, 1] and t[3, 1] == t[4, 1]
    np.testing.assert_allclose(t[[0, 3], 0] + t[[1, 4], 0], 1.0)
    assert t[2, 0] == 0.5 and t[0, 1] < t[2, 1] < t[3, 1]  # eyes above nose above mouth


def test_margin_shrinks_the_face_in_the_crop():
    tight, loose = template_points(160, 0.0, 2), template_points(160, 0.5, 2)
    assert np.ptp(loose[:, 0]) == pytest.approx(np.ptp(tight[:, 0]) / 2)
    # The crop's centre is a fixed point of the margin change.
    np.testing.assert_allclose((tight - 79.5) / 2, loose - 79.5)
    with pytest.raises(ValueError):
        template_points(160, 0.2, 6)


# --- warping images -------------------------------------------------------------------------------


def cross_pattern(size: int = 240) -> tuple[Image.Image, np.ndarray]:
    """A white cross on black, with two 'eye' dots on its bar: the dots' centres are returned."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    d = ImageDraw.Draw(img)
    c = size / 2
    d.rectangle([c - 60, c - 4, c + 60, c + 4], fill=(255, 255, 255))  # horizontal bar
    d.rectangle([c - 4, c - 4, c + 4, c + 70], fill=(255, 255, 255))  # stem downwards
    eyes = np.array([[c - 40, c - 20], [c + 40, c - 20]])
    for x, y in eyes:
        d.ellipse([x - 6, y - 6, x + 6, y + 6], fill=(255, 0, 0))
    return img, eyes


def rotate_points(pts: np.ndarray, angle_deg: float, centre: tuple[float, float]) -> np.ndarray:
    """Where PIL's ``Image.rotate(angle_deg)`` (counter-clockwise on screen) moves ``pts``."""
    a = np.deg2rad(angle_deg)
    # On screen (y down), a counter-clockwise rotation by a maps (dx, dy) -> (dx cos a + dy sin a, -dx sin a + dy cos a).
    d = pts - centre
    return np.stack([d[:, 0] * np.cos(a) + d[:, 1] * np.sin(a), -d[:, 0] * np.sin(a) + d[:, 1] * np.cos(a)], 1) + centre


@pytest.mark.parametrize("angle", [25.0, -40.0, 90.0, 180.0])
def test_a_rotated_pattern_comes_out_upright(angle):
    img, eyes = cross_pattern()
    upright = align_face(np.asarray(img), Face(0, 0, 240, 240, landmarks=eyes), size=96)
    turned = img.rotate(angle, resample=Image.Resampling.BILINEAR, center=(img.width / 2, img.height / 2))
    turned_eyes = rotate_points(eyes, angle, (img.width / 2, img.height / 2))
    aligned = align_face(np.asarray(turned), Face(0, 0, 240, 240, landmarks=turned_eyes), size=96)
    assert aligned.shape == (96, 96, 3) and aligned.dtype == np.uint8
    # Same crop as from the upright pattern, and very different from the rotated input's own centre crop.
    diff = np.abs(aligned.astype(int) - upright.astype(int)).mean()
    assert diff < 6, diff
    assert np.abs(np.asarray(turned)[60:180, 60:180].astype(int) - np.asarray(img)[60:180, 60:180]).mean() > 20
    # The red dots are level and where the template puts the eyes.
    red = (aligned[..., 0] > 150) & (aligned[..., 1] < 100)
    ys, xs = np.nonzero(red)
    target = template_points(96, 0.2, 2)
    left, right = xs < 47.5, xs >= 47.5
    np.testing.assert_allclose([xs[left].mean(), ys[left].mean()], target[0], atol=1.5)
    np.testing.assert_allclose([xs[right].mean(), ys[right].mean()], target[1], atol=1.5)
    # The bar is horizontal: the white rows below the eyes span most of the crop's width on a single band.
    white = aligned.min(axis=2) > 200
    rows = np.nonzero(white.sum(axis=1) > 40)[0]
    assert 0 < rows.size <= 8


def test_upright_input_is_unrotated_by_alignment():
    _, eyes = cross_pattern()
    m = alignment_matrix(eyes, 96)
    assert abs(m[1, 0]) < 1e-12 and m[0, 0] > 0  # no rotation for level eyes


def test_three_landmarks_use_the_nose_too():
    eyes_only = alignment_matrix(np.array([[100.0, 100.0], [140.0, 100.0]]), 160)
    with_nose = alignment_matrix(np.array([[100.0, 100.0], [140.0, 100.0], [120.0, 160.0]]), 160)
    assert not np.allclose(eyes_only, with_nose)  # a long face is scaled down to fit the template
    assert with_nose[0, 0] < eyes_only[0, 0]


def test_large_faces_are_shrunk_without_aliasing():
    """A face 8x larger than the crop is area-averaged first: its crop matches that of a small copy."""
    big = draw_face(1200)
    small = big.resize((150, 150), Image.Resampling.BOX)
    eyes_big, eyes_small = DRAWN_EYES * 1200 - 0.5, DRAWN_EYES * 150 - 0.5
    a = align_face(np.asarray(big), Face(0, 0, 1200, 1200, landmarks=eyes_big), size=64)
    b = align_face(np.asarray(small), Face(0, 0, 150, 150, landmarks=eyes_small), size=64)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3
    # A stripe pattern finer than the crop's pixels averages to grey instead of aliasing into stripes.
    stripes = np.zeros((800, 800, 3), np.uint8)
    stripes[:, ::2] = 255
    crop = warp(stripes, np.array([[0.1, 0, 0], [0, 0.1, 0]]), 64)
    assert np.abs(crop.astype(int) - 127).max() < 40  # plain bilinear sampling would give 0s and 255s


def test_drawn_face_detected_and_aligned_puts_eyes_on_the_template():
    img = Image.new("RGB", (400, 300), (90, 90, 90))
    img.paste(draw_face(180).rotate(12, resample=Image.Resampling.BILINEAR, fillcolor=(90, 90, 90)), (150, 60))
    faces = HaarDetector().detect(np.asarray(img))
    assert faces, "the drawn face should be found at 12 degrees"
    crop = align_face(np.asarray(img), faces[0], size=128)
    # The dark eye blobs sit near the template's eye positions.
    dark = crop.mean(axis=2) < 70
    target = template_points(128, 0.2, 2)
    for t in target:
        x, y = np.round(t).astype(int)
        assert dark[y - 6 : y + 7, x - 6 : x + 7].any()


def test_faces_without_landmarks_are_cropped_from_the_box():
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 140:160] = 255  # a white square: the "face" box
    crop = align_face(img, Face(140, 40, 160, 60), size=30, margin=0.0)
    assert crop.shape == (30, 30, 3) and crop[1:-1, 1:-1].min() == 255  # the box fills the crop
    assert crop.min() > 150  # edge pixels straddle the box's border
    np.testing.assert_array_equal(crop, crop_box(img, (140, 40, 160, 60), 30, 0.0))
    with_margin = align_face(img, Face(140, 40, 160, 60), size=40, margin=0.25)
    assert with_margin[20, 20].min() > 200 and with_margin[2, 2].max() == 0
    np.testing.assert_allclose(
        apply_transform(box_matrix((140, 40, 160, 60), 30, 0.0), [[149.5, 49.5]]), [[14.5, 14.5]]
    )


def test_grey_pixels_and_border_modes():
    grey = np.full((50, 50), 200, np.uint8)
    m = np.array([[1.0, 0, 30], [0, 1.0, 30]])  # the image lands in the crop's bottom-right corner
    constant = warp(grey, m, 100, border="constant")
    replicate = warp(grey, m, 100, border="replicate")
    assert constant.shape == (100, 100, 3) and constant[0, 0].max() == 0 and replicate[0, 0].min() == 200
    with pytest.raises(ValueError):
        warp(grey, m, 100, border="wrap")
