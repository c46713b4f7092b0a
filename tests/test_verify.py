"""Geometric verification: an edited copy (crop, rotation, resize, JPEG) or a mirror image shares many
inliers with its original; another picture few."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from indexer.verify import Verifier

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


def test_an_unreadable_file_verifies_nothing(tmp_path: Path):
    textured(1).save(tmp_path / "a.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert Verifier().inliers(str(tmp_path / "a.png"), str(tmp_path / "bad.jpg")) == 0
