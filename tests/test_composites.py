"""The composites benchmark builder, on tiny synthetic COIL-style objects and background photos."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from benchmarks.composites import (
    CompositeConfig,
    Manifest,
    build_composites,
    choose_poses,
    main,
    object_mask,
)

TINY = CompositeConfig(
    objects=(1, 2, 3),
    poses=3,
    query_poses=1,
    backgrounds=5,
    db_backgrounds_per_pose=2,
    query_backgrounds_per_pose=1,
    size=64,
    min_cover=0.15,
    max_cover=0.3,
    min_patch_side=32,
)


def make_coil(folder: Path, objects: tuple[int, ...] = (1, 2, 3), poses: int = 72, size: int = 32) -> Path:
    """Fake COIL-style PNGs: a grey shape (differing by object, shifting with the pose) on near-black noise."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for o in objects:
        for p in range(poses):
            img = Image.fromarray(rng.integers(0, 6, (size, size), dtype=np.uint8))
            d = ImageDraw.Draw(img)
            box = [6 + p % 3, 8, 24 + p % 3, 26 - o]
            (d.ellipse if o % 2 else d.rectangle)(box, fill=60 + 40 * o)
            img.save(folder / f"obj{o}__{p}.png")
    return folder


def make_backgrounds(folder: Path, masks: Path | None = None, n: int = 6, size: tuple[int, int] = (80, 60)) -> Path:
    """Fake colourful photos (one flat colour each plus stripes), with a 'horse' in the left third if ``masks``."""
    folder.mkdir(parents=True)
    if masks is not None:
        masks.mkdir(parents=True)
    for i in range(n):
        img = Image.new("RGB", size, (40 * i % 256, 255 - 30 * i, 90 + 25 * i))
        d = ImageDraw.Draw(img)
        for x in range(0, size[0], 10):
            d.line([x, 0, x + 20, size[1]], fill=(255 - 40 * i % 256, 30 * i % 256, 200), width=3)
        img.save(folder / f"photo{i:02d}.jpg", quality=90)
        if masks is not None:
            m = Image.new("L", size, 0)
            ImageDraw.Draw(m).rectangle([0, 0, size[0] // 3, size[1]], fill=255)
            m.save(masks / f"photo{i:02d}.jpg")
    return folder


@pytest.fixture()
def sources(tmp_path: Path) -> tuple[Path, Path, Path]:
    coil = make_coil(tmp_path / "coil")
    masks = tmp_path / "figure_ground"
    bgs = make_backgrounds(tmp_path / "rgb", masks)
    return coil, bgs, masks


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_object_mask_thresholds_noise_and_fills_dark_parts() -> None:
    gray = np.full((40, 40), 3, np.uint8)
    gray[10:30, 10:30] = 150
    gray[16:22, 16:22] = 4  # dark print inside the object: as black as the background
    gray[2, 2] = 200  # a speck
    mask = object_mask(gray)
    assert mask[10:30, 10:30].all()
    assert mask.sum() == 400


def test_choose_poses_splits_evenly_spread_poses() -> None:
    db, q = choose_poses(np.random.default_rng(0), 6, 2)
    assert len(db) == 4 and len(q) == 2 and not set(db) & set(q)
    steps = np.diff(sorted(db + q))
    assert set(steps.tolist()) == {12}


def test_build_writes_images_masks_and_manifest_by_label(tmp_path: Path, sources) -> None:
    coil, bgs, masks = sources
    out = tmp_path / "out"
    manifest = build_composites(out, 0, coil, bgs, masks, TINY)
    # 3 objects x (2 db poses x 2 backgrounds + 1 query pose x 1 background)
    assert len(manifest.records) == 15
    assert Counter(r.split for r in manifest.records) == {"database": 12, "queries": 3}
    for r in manifest.records:
        assert Path(r.image).parts[:3] == ("images", r.split, f"obj{r.object}")
        assert Path(r.mask).parts[:3] == ("masks", r.split, f"obj{r.object}")
        assert Path(r.mask).stem == Path(r.image).stem
        img = Image.open(out / r.image)
        assert img.mode == "RGB" and img.size == (64, 64)
        assert r.source == f"obj{r.object}__{r.pose}.png"
    on_disk = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*.jpg"))
    assert on_disk == sorted(r.image for r in manifest.records)
    assert Manifest.load(out / "manifest.json") == manifest


def test_masks_match_where_objects_were_pasted(tmp_path: Path, sources) -> None:
    coil, bgs, masks = sources
    out = tmp_path / "out"
    config = dataclasses.replace(TINY, image_format="png")  # lossless, to compare pixels exactly
    manifest = build_composites(out, 0, coil, bgs, masks, config)
    for r in manifest.records:
        mask = np.asarray(Image.open(out / r.mask)) > 127
        pixels = np.asarray(Image.open(out / r.image)).astype(int)
        ys, xs = np.nonzero(mask)
        assert ys.min() >= r.y and ys.max() < r.y + r.height and xs.min() >= r.x and xs.max() < r.x + r.width
        assert abs(mask.mean() - r.mask_cover) < 1e-4
        assert 0.15 * 0.8 <= r.bbox_cover <= 0.3 * 1.2  # the drawn share, up to rounding to whole pixels
        # inside: the grey object (R == G == B, bright); outside: the untouched background patch
        inside = pixels[mask]
        assert (inside[:, 0] == inside[:, 1]).all() and (inside[:, 1] == inside[:, 2]).all()
        assert inside.mean() > 50
        bg = np.asarray(
            Image.open(out / next(x.image for x in manifest.records if x.background == r.background and x is not r))
        ).astype(int)
        other = (
            np.asarray(
                Image.open(out / next(x.mask for x in manifest.records if x.background == r.background and x is not r))
            )
            > 127
        )
        both_bg = ~mask & ~other
        assert both_bg.any() and (pixels[both_bg] == bg[both_bg]).all()


def test_same_seed_gives_byte_identical_files(tmp_path: Path, sources) -> None:
    coil, bgs, masks = sources
    build_composites(tmp_path / "a", 3, coil, bgs, masks, TINY)
    build_composites(tmp_path / "b", 3, coil, bgs, masks, TINY)
    build_composites(tmp_path / "c", 4, coil, bgs, masks, TINY)
    a, b, c = (tree_hashes(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 31  # 15 images + 15 masks + manifest
    assert a != c


def test_distractors_share_backgrounds_but_true_matches_never_do(tmp_path: Path, sources) -> None:
    coil, bgs, masks = sources
    manifest = build_composites(tmp_path / "out", 0, coil, bgs, masks, TINY)
    db = [r for r in manifest.records if r.split == "database"]
    queries = [r for r in manifest.records if r.split == "queries"]
    for q in queries:
        same_bg = [r for r in db if r.background == q.background]
        assert same_bg, "every query's background is in the database"
        assert all(r.object != q.object for r in same_bg)  # ... only under other objects
        relevant = [r for r in db if r.object == q.object]
        assert relevant and all(r.pose != q.pose for r in relevant)
    # no object sits twice on one background, and each background carries several objects
    pairs = [(r.object, r.background) for r in manifest.records]
    assert len(pairs) == len(set(pairs))
    per_bg = Counter(r.background for r in manifest.records)
    assert len(per_bg) == 5 and min(per_bg.values()) >= 2


def test_backgrounds_avoid_the_masked_region(tmp_path: Path, sources) -> None:
    coil, bgs, masks = sources
    config = dataclasses.replace(TINY, max_horse=0.0)
    manifest = build_composites(tmp_path / "out", 0, coil, bgs, masks, config)
    assert len({b.source for b in manifest.backgrounds}) == 5
    for b in manifest.backgrounds:
        assert b.horse_fraction == 0.0 and b.x > 20 and b.side >= 32


def test_too_few_backgrounds_for_the_slots_is_refused(tmp_path: Path, sources) -> None:
    coil, bgs, masks = sources
    config = dataclasses.replace(TINY, backgrounds=4)
    with pytest.raises(ValueError, match="backgrounds"):
        build_composites(tmp_path / "out", 0, coil, bgs, masks, config)


def test_cli_builds_the_set(tmp_path: Path, sources, capsys) -> None:
    coil, bgs, masks = sources
    out = tmp_path / "out"
    main(
        [
            str(out),
            "--seed",
            "1",
            "--objects",
            "1-2",
            "--poses",
            "2",
            "--query-poses",
            "1",
            "--backgrounds",
            "4",
            "--db-backgrounds-per-pose",
            "2",
            "--query-backgrounds-per-pose",
            "1",
            "--size",
            "48",
            "--min-patch-side",
            "32",
            "--coil-dir",
            str(coil),
            "--background-dir",
            str(bgs),
            "--background-mask-dir",
            str(masks),
        ]
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"out_dir": str(out), "images": 6, "queries": 2, "database": 4, "backgrounds": 4}
    data = json.loads((out / "manifest.json").read_text())
    assert data["config"]["seed"] == 1 and data["config"]["objects"] == [1, 2]
