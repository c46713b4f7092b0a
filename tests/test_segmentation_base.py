"""segmentation.base (spec parsing, registry, mask hygiene, IoU) and segmentation.data (pairs, split, loading)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.registry import UnknownNameError
from segmentation.base import (
    DEFAULT_MIN_FRACTION,
    build_segmenter,
    check_mask,
    iou,
    parse_spec,
)
from segmentation.data import (
    MaskedImage,
    find_pairs,
    load_mask,
    load_pair,
    paired_files,
    split_pairs,
)


def test_parse_spec() -> None:
    assert parse_spec("grabcut") == ("grabcut", None)
    assert parse_spec("unet:model.pt") == ("unet", "model.pt")
    assert parse_spec(" DeepLab :C:/w/x.pth") == ("deeplab", "C:/w/x.pth")  # only the first ':' splits
    assert parse_spec("grabcut:") == ("grabcut", "")


def test_unknown_segmenter_names_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="known: .*grabcut"):
        build_segmenter("no_such_segmenter")


def test_check_mask_thresholds() -> None:
    mask = np.zeros((10, 10), bool)
    assert check_mask(mask) == check_mask(mask, DEFAULT_MIN_FRACTION)
    assert check_mask(mask).reason == "empty" and not check_mask(mask).usable
    mask[0, :2] = True  # 2% exactly: usable at the default threshold
    assert check_mask(mask).usable and check_mask(mask).fraction == pytest.approx(0.02)
    assert check_mask(mask, min_fraction=0.03).reason == "empty"
    full = np.ones((10, 10), bool)
    assert check_mask(full).reason == "full"
    full[0, :2] = False  # 98%: still usable
    assert check_mask(full).usable
    full[0, 2] = False  # 97%
    assert check_mask(full, min_fraction=0.04).reason == "full"
    assert check_mask(np.zeros((0, 0), bool)).reason == "empty"


def test_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert iou(a, b) == 1.0  # both empty
    a[:2] = True
    assert iou(a, b) == 0.0
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(a.astype(np.uint8), b.astype(np.uint8) * 255) == pytest.approx(4 / 12)
    assert iou(a, a) == 1.0


def _dataset(
    root: Path,
    n: int,
    images: str = "rgb",
    masks: str = "figure_ground",
    image_size: tuple[int, int] = (40, 30),
    mask_size: tuple[int, int] = (20, 15),
) -> None:
    (root / images).mkdir(parents=True)
    (root / masks).mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", image_size, (i * 20 % 256, 0, 0)).save(root / images / f"horse{i:03d}.jpg")
        m = Image.new("L", mask_size, 0)
        m.paste(255, (0, 0, mask_size[0] // 2, mask_size[1]))  # left half = object
        m.save(root / masks / f"horse{i:03d}.png")


def test_find_pairs_weizmann_and_generic_layouts(tmp_path: Path) -> None:
    _dataset(tmp_path / "w", 5)
    (tmp_path / "w" / "rgb" / "extra.jpg").write_bytes(b"")  # no mask: not paired
    pairs = find_pairs(tmp_path / "w")
    assert [p.image.stem for p in pairs] == [f"horse{i:03d}" for i in range(5)]
    assert all(p.mask.parent.name == "figure_ground" for p in pairs)
    _dataset(tmp_path / "g", 2, images="images", masks="masks")
    assert len(find_pairs(tmp_path / "g")) == 2
    with pytest.raises(FileNotFoundError, match="neither"):
        find_pairs(tmp_path)
    (tmp_path / "e" / "a").mkdir(parents=True)
    (tmp_path / "e" / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="no image"):
        paired_files(tmp_path / "e" / "a", tmp_path / "e" / "b")


def test_split_pairs_is_fixed_every_fourth_held_out() -> None:
    pairs = [MaskedImage(Path(f"rgb/horse{i:03d}.jpg"), Path(f"fg/horse{i:03d}.jpg")) for i in range(1, 329)]
    shuffled = list(reversed(pairs))
    train, test = split_pairs(shuffled)
    assert (len(train), len(test)) == (246, 82)
    assert split_pairs(pairs) == (train, test)  # order of the input does not matter
    assert [p.image.stem for p in test[:3]] == ["horse001", "horse005", "horse009"]
    assert not {p.image for p in train} & {p.image for p in test}
    assert len(split_pairs(pairs, test_every=2)[1]) == 164


def test_load_mask_resizes_to_image_and_binarises(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    m = np.zeros((15, 20), np.uint8)
    m[:, :10] = 255
    m[0, 19] = 100  # grey below the threshold: background
    Image.fromarray(m).save(path)
    same = load_mask(path, (20, 15))
    assert same.shape == (15, 20) and same.dtype == bool
    assert same[:, :10].all() and not same[:, 10:].any()
    big = load_mask(path, (40, 30))  # size is (width, height)
    assert big.shape == (30, 40)
    assert big[:, :19].all() and not big[:, 21:].any()


def test_load_pair_aligns_mask_with_pixels(tmp_path: Path) -> None:
    _dataset(tmp_path, 1)
    pixels, mask = load_pair(find_pairs(tmp_path)[0])
    assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8
    assert mask.shape == (30, 40) and mask[:, :19].all() and not mask[:, 21:].any()
