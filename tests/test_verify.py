"""Geometric verification: an edited copy (crop, rotation, resize, JPEG) or a mirror image shares many
inliers with its original; another picture few."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from indexer.verify import Verifier, VerifySettings

from .conftest import draw_image


def textured(seed: int, size: tuple[int, int] = (240, 180)) -> Image.Image:
    """A drawn picture over a seeded block texture (corners for the keypoint detector)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(draw_image(seed, size)).astype(np.int16)
    blocks = rng.integers(0, 256, (size[1] // 12 + 1, size[0] // 12 + 1, 3))
    tex = np.kron(blocks, np.ones((12, 12, 1)))[: size[1], : size[0]]
    return Image.fromarray(((base + tex) // 2).astype(np.uint8))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_copies_share_many_inliers_and_other_pictures_few(tmp_path: Path, seed: int):
    original = textured(seed)
    original.save(tmp_path / "a.png")
    original.crop((20, 10, 220, 170)).rotate(5).resize((150, 120)).save(tmp_path / "edited.jpg", quality=60)
    ImageOps.mirror(original).save(tmp_path / "mirror.png")
    textured(seed + 10).save(tmp_path / "other.png")
    v = Verifier()
    a = str(tmp_path / "a.png")
    edited = v.inliers(a, str(tmp_path / "edited.jpg"))
    mirror = v.inliers(a, str(tmp_path / "mirror.png"))
    other = v.inliers(a, str(tmp_path / "other.png"))
    # measured on seeds 1-3: edited 120-180, mirror > 500, other < 12
    assert edited >= 60 and mirror >= 200 and other < 30
    assert v.inliers(str(tmp_path / "edited.jpg"), a) == edited  # symmetric, cached


def test_features_held_stay_bounded_and_the_counts_do_not_change(tmp_path: Path):
    paths = []
    for seed in range(4):
        textured(seed).save(tmp_path / f"{seed}.png")
        textured(seed).rotate(4).save(tmp_path / f"{seed}_copy.jpg", quality=70)
        paths += [str(tmp_path / f"{seed}.png"), str(tmp_path / f"{seed}_copy.jpg")]
    pairs = [(a, b) for a in paths for b in paths if a < b]
    small = Verifier()
    small.max_cached = 3
    counts = [small.inliers(a, b) for a, b in pairs]
    assert small.features_held == 3
    assert counts == [Verifier().inliers(a, b) for a, b in pairs]


def test_an_unreadable_file_verifies_nothing(tmp_path: Path):
    textured(1).save(tmp_path / "a.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert Verifier().inliers(str(tmp_path / "a.png"), str(tmp_path / "bad.jpg")) == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_crowded_into_a_small_part_count_less_than_a_whole_copy(tmp_path: Path, seed: int):
    """The same label on another box: a shared patch matches, but only over a small part of the picture."""
    original = textured(seed)
    original.save(tmp_path / "a.png")
    other = textured(seed + 20)
    other.paste(original.crop((90, 60, 150, 105)), (90, 60))  # 1/16 of the picture, in place
    other.save(tmp_path / "patch.png")
    original.save(tmp_path / "copy.jpg", quality=85)
    a = str(tmp_path / "a.png")
    patch = Verifier().inliers(a, str(tmp_path / "patch.png"))
    whole = Verifier().inliers(a, str(tmp_path / "copy.jpg"))
    raw_patch = Verifier(VerifySettings(full_spread=0.0)).inliers(a, str(tmp_path / "patch.png"))
    # measured on seeds 1-3: patch 2-8 of raw 18-20 (a few stray inliers outside the patch widen the hull);
    # the whole copy ~700-800
    assert raw_patch >= 10  # the patch itself does match
    assert patch <= 0.6 * raw_patch and whole >= 20 * max(patch, 1)


def test_many_points_matched_to_one_point_count_once():
    """A picture with few keypoints (soft, low-contrast) finds each of them at several pyramid levels; matches
    onto one point of the other picture are one piece of evidence, not many."""
    rng = np.random.default_rng(0)
    desc = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    pts = rng.uniform(0, 200, (5, 2)).astype(np.float32)
    repeated = (np.repeat(pts, 8, axis=0), np.repeat(desc, 8, axis=0))  # each point 8 times
    v = Verifier(VerifySettings(full_spread=0.0))
    assert v._inliers(repeated, (pts, desc)) <= 5
    assert v._inliers((pts, desc), (pts, desc)) == 5  # distinct points still count, one each


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("side", [50, 64])
def test_a_copy_shrunk_to_a_thumbnail_is_matched_at_its_own_size(tmp_path: Path, seed: int, side: int):
    """A soft 250-px picture cropped and saved at 50-64 px: enlarged back, the copy is blurred and the original
    sharp; the original shrunk to the copy's size is as blurred as it, and matches far better."""
    original = textured(seed, (250, 250)).filter(ImageFilter.GaussianBlur(1.5))
    original.save(tmp_path / "a.png")
    original.crop((10, 10, 240, 240)).resize((side, side), Image.Resampling.BICUBIC).save(
        tmp_path / "s.jpg", quality=60
    )
    other = textured(seed + 10, (250, 250)).filter(ImageFilter.GaussianBlur(1.5))
    other.resize((side, side), Image.Resampling.BICUBIC).save(tmp_path / "o.jpg", quality=60)
    a, small, smaller_other = str(tmp_path / "a.png"), str(tmp_path / "s.jpg"), str(tmp_path / "o.jpg")
    enlarged_only = Verifier(VerifySettings(rescale_factors=()))
    v = Verifier()
    # measured on seeds 1-3: 97-178 inliers, 40-49 enlarged only; the other picture 0-2 either way
    assert v.inliers(a, small) >= max(70, 1.5 * enlarged_only.inliers(a, small))
    assert v.inliers(small, a) == v.inliers(a, small)
    assert v.inliers(a, smaller_other) < 10
    assert "shrunk" in v.settings.describe() and v.settings.describe() != enlarged_only.settings.describe()


def test_pairs_checked_on_threads_count_as_one_at_a_time(tmp_path: Path):
    """One verifier shared by the check's threads (its caches evicting under them) gives the same counts as one
    pair at a time, and OpenCV's own thread count is given back afterwards."""
    import cv2

    from indexer.verify import check_pool

    paths = []
    for seed in range(4):
        textured(seed).save(tmp_path / f"{seed}.png")
        textured(seed).rotate(4).resize((90, 70)).save(tmp_path / f"{seed}_small.jpg", quality=70)
        paths += [str(tmp_path / f"{seed}.png"), str(tmp_path / f"{seed}_small.jpg")]
    pairs = [(a, b) for a in paths for b in paths if a < b]
    serial = [Verifier().inliers(a, b) for a, b in pairs]
    shared = Verifier()
    shared.max_cached = 3
    before = cv2.getNumThreads()
    with check_pool(3) as pool:
        threaded = list(pool.map(lambda q: shared.inliers(*q), pairs))
    assert threaded == serial and shared.features_held <= 3
    assert cv2.getNumThreads() == before
    # the copies share many inliers (the copy is 90 px, the original 240: the small look)
    counts = dict(zip(pairs, serial))
    assert min(counts[(str(tmp_path / f"{s}.png"), str(tmp_path / f"{s}_small.jpg"))] for s in range(4)) >= 20
