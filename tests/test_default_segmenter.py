"""The default segmenter: the copy-paste composite generator, the packaged checkpoint, GrabCut refinement,
``--mask`` alone, and what a missing or damaged checkpoint says.

Synthetic data: COIL-like grey objects on black (PNG files named ``obj<O>__<P>.png``) and drawn scenes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from benchmarks.composites import CompositeConfig as SetConfig
from benchmarks.composites import load_backgrounds
from indexer.cli import main
from indexer.engine import Collection
from indexer.errors import SettingsError
from indexer.masking import MaskSettings
from indexer.settings import build_masker
from segmentation import DEFAULT_SEGMENTER, build_segmenter, iou
from segmentation import foreground as fg
from segmentation.composites import (
    Background,
    CompositeConfig,
    CompositeSet,
    Cutout,
    coil_cutouts,
    compose,
    crop_to_mask,
)
from segmentation.data import MaskedImage, split_pairs

#: Composites with every random change of colour turned off: pasted pixels keep their exact values.
PLAIN = CompositeConfig(size=64, tint=0.0, jitter=0.0, greyscale=0.0, soften=0.0, photo_alone=0.0)
BLUE = (0, 0, 255)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def coil_folder(root: Path, objects: range, poses: range = range(3)) -> Path:
    """COIL-like files: object ``o`` is a grey ellipse of level ``20 * o + 40`` on black, pose ``p`` its width."""
    root.mkdir(parents=True, exist_ok=True)
    for o in objects:
        for p in poses:
            img = Image.new("L", (48, 48), 0)
            ImageDraw.Draw(img).ellipse([8, 10 - p, 30 + 4 * p, 38], fill=20 * o + 40)
            img.save(root / f"obj{o}__{p}.png")
    return root


def uniform_background(colour=BLUE, size: int = 80) -> Background:
    return Background(np.full((size, size, 3), colour, np.uint8), "plain")


def block(colour: tuple[int, int, int], size: int = 12) -> Cutout:
    cut = crop_to_mask(np.full((size, size, 3), colour, np.uint8), np.ones((size, size), bool), f"block:{colour}")
    assert cut is not None
    return cut


# --------------------------------------------------------------------------------------------- the generator


@pytest.mark.parametrize("seed", range(6))
def test_a_composites_mask_is_exactly_the_pasted_pixels(seed):
    rng = np.random.default_rng(seed)
    pixels, mask = compose(rng, uniform_background(), [block((250, 10, 10)), block((10, 250, 10))], PLAIN)
    changed = np.any(pixels != np.array(BLUE, np.uint8), axis=2)
    assert mask.any()
    np.testing.assert_array_equal(changed, mask)


def test_a_backgrounds_own_object_is_background_when_kept_and_the_target_when_alone():
    thing = np.zeros((80, 80), bool)
    thing[20:60, 20:60] = True
    photo = np.where(thing[..., None], np.uint8(200), np.uint8(30)).repeat(3, axis=2)
    bg = Background(photo, "photo", thing)
    keep = CompositeConfig(
        size=80, keep_thing=1.0, photo_alone=0.0, min_crop=1.0, jitter=0.0, greyscale=0.0, max_cover=0.05, soften=0.0
    )
    for seed in range(4):
        pixels, mask = compose(np.random.default_rng(seed), bg, [block((255, 0, 0), 6)], keep)
        kept = np.all(pixels == 200, axis=2)  # the photo's own object, still visible
        assert kept.sum() > thing.sum() / 2 and not (mask & kept).any()
        np.testing.assert_array_equal(mask, np.all(pixels == (255, 0, 0), axis=2))
    alone = CompositeConfig(size=80, photo_alone=1.0, min_crop=1.0, jitter=0.0)
    _, mask = compose(np.random.default_rng(0), bg, [block((255, 0, 0), 6)], alone)
    assert iou(mask, thing) > 0.9


def test_composite_sets_are_seeded_and_new_every_epoch():
    cuts = [block((250, 10, 10)), block((10, 250, 10))]
    a = CompositeSet(cuts, [uniform_background()], 4, PLAIN, seed=1)
    b = CompositeSet(cuts, [uniform_background()], 4, PLAIN, seed=1)
    for i in range(4):
        np.testing.assert_array_equal(a.load(i)[0], b.load(i)[0])
        np.testing.assert_array_equal(a.load(i)[1], b.load(i)[1])
    first = a.load(0)[1]
    a.set_epoch(1)
    assert not np.array_equal(a.load(0)[1], first)
    assert not np.array_equal(CompositeSet(cuts, [uniform_background()], 4, PLAIN, seed=2).load(0)[1], first)


def test_coil_cutouts_are_cut_from_black_and_only_of_the_objects_asked_for(tmp_path):
    folder = coil_folder(tmp_path / "coil", range(1, 5))
    cuts = coil_cutouts(folder, [1, 2])
    assert {c.label for c in cuts} == {"coil:1", "coil:2"} and len(cuts) == 6
    for c in cuts:
        assert c.grey and c.mask.all(axis=0).any()  # cropped to the object's box
        assert (c.pixels[c.mask] > 12).all()


def test_held_out_objects_never_appear_in_training_composites(tmp_path):
    folder = coil_folder(tmp_path / "coil", range(1, 5))
    train = CompositeSet(coil_cutouts(folder, [1, 2]), [uniform_background()], 40, PLAIN, seed=0)
    seen: set[int] = set()
    for i in range(len(train)):
        pixels, mask = train.load(i)
        grey = pixels[mask]
        levels = grey[(grey[:, 0] == grey[:, 1]) & (grey[:, 1] == grey[:, 2])][:, 0]
        seen |= set(np.unique(levels).tolist())
    assert {60, 80} <= seen  # objects 1 and 2 (levels 20 * o + 40) were pasted
    assert not {100, 120} & seen  # objects 3 and 4 never


def test_held_out_backgrounds_come_only_from_the_test_photos_and_hold_their_horse(tmp_path):
    photos, masks = tmp_path / "rgb", tmp_path / "figure_ground"
    photos.mkdir()
    masks.mkdir()
    for i in range(12):
        Image.new("RGB", (160, 160), (i * 20, 90, 40)).save(photos / f"horse{i:03d}.jpg")
        m = Image.new("L", (160, 160), 0)
        ImageDraw.Draw(m).rectangle([40, 40, 110, 110], fill=255)
        m.save(masks / f"horse{i:03d}.jpg")
    config = SetConfig(backgrounds=3, photos="test", min_horse=0.1, max_horse=0.6, min_patch_side=64)
    patches, _ = load_backgrounds(np.random.default_rng(0), photos, masks, config)
    _, test = split_pairs([MaskedImage(p, p) for p in sorted(photos.iterdir())])
    assert {p.source for p in patches} <= {t.image.name for t in test}
    assert all(0.1 <= (p.horse_fraction or 0) <= 0.6 for p in patches)


# --------------------------------------------------------------------------------------------- the packaged network


def drawn_scene(seed: int, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A shaded object (an ellipse with a highlight) on a smooth, textured photo-like background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(60, 180, 3)
    bg = base + 50 * np.stack([np.sin(3 * x + c) * np.cos(2 * y - c) for c in range(3)], -1)
    bg += rng.normal(0, 6, bg.shape)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    rx, ry = rng.uniform(0.15, 0.25, 2) * size
    box = [cx - rx, cy - ry, cx + rx, cy + ry]
    colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
    ImageDraw.Draw(img).ellipse(box, fill=colour)
    ImageDraw.Draw(img).ellipse([cx - rx / 2, cy - ry / 2, cx, cy], fill=tuple(min(255, c + 60) for c in colour))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return np.asarray(img), np.asarray(mask) > 127


@pytest.fixture(scope="module")
def default_segmenter():
    return build_segmenter(DEFAULT_SEGMENTER)


def test_the_packaged_checkpoint_is_fp16_small_and_loads_as_a_unet():
    path = fg.PACKAGED_WEIGHTS
    assert path.is_file() and path.stat().st_size < 10_500_000
    net = fg.load_foreground()
    assert net.config.encoder == "efficientnet_lite0"
    assert all(p.dtype == torch.float32 for p in net.parameters())  # fp16 on disk, fp32 to run


def test_the_default_segmenter_finds_a_drawn_object_it_never_saw(default_segmenter):
    scores = []
    for seed in range(4):
        pixels, truth = drawn_scene(seed)
        mask = default_segmenter(pixels)
        assert mask.shape == truth.shape and mask.dtype == bool
        scores.append(iou(mask, truth))
    assert np.mean(scores) > 0.75, scores  # 0.91 with the packaged checkpoint


def test_grabcut_refinement_tightens_a_loose_mask():
    pixels, truth = drawn_scene(1)
    loose = np.asarray(Image.fromarray(truth).resize((40, 40)).resize((160, 160), Image.Resampling.NEAREST))
    loose = np.asarray(Image.fromarray(loose.astype(np.uint8) * 255).filter(_max_filter(9))) > 0
    assert iou(fg.refine_with_grabcut(pixels, loose), truth) > iou(loose, truth) + 0.05


def _max_filter(size: int):
    from PIL import ImageFilter

    return ImageFilter.MaxFilter(size)


def test_refinement_leaves_empty_and_full_masks_alone():
    pixels, _ = drawn_scene(2)
    for mask in (np.zeros(pixels.shape[:2], bool), np.ones(pixels.shape[:2], bool)):
        np.testing.assert_array_equal(fg.refine_with_grabcut(pixels, mask), mask)


def test_specs_name_the_network_alone_or_refined_and_refuse_other_options(default_segmenter):
    assert default_segmenter.spec == "foreground"
    assert build_segmenter("foreground:grabcut").spec == "foreground:grabcut"
    with pytest.raises(ValueError, match="known: foreground"):
        build_segmenter("foreground:crf")


# --------------------------------------------------------------------------------------------- CLI and errors


def scenes_folder(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(drawn_scene(10 + i, 96)[0]).save(root / f"{i}.png")
    return root


def test_mask_alone_selects_the_default_segmenter_and_the_collection_records_it(tmp_path):
    folder = scenes_folder(tmp_path / "photos")
    home = tmp_path / "home"
    runner = CliRunner()
    base = ["--home", str(home), "--workers", "0", "--device", "cpu"]
    res = runner.invoke(main, [*base, "index", str(folder), "--image-size", "64", "--mask"])
    assert res.exit_code == 0, res.output
    assert Collection(home).mask_settings.segmenter == DEFAULT_SEGMENTER
    assert "masking:   foreground masks (both)" in runner.invoke(main, [*base, "stats"]).output
    res = runner.invoke(main, [*base, "index", str(folder), "--mask", "grabcut"])  # a named one still works
    assert res.exit_code == 1 and "--reembed" in res.output


def test_a_missing_packaged_checkpoint_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(fg, "WEIGHTS_RESOURCE", "weights/no-such-file.pt")
    with pytest.raises(SettingsError, match="checkpoint is missing .*reinstall lookalike"):
        build_masker(MaskSettings(segmenter=DEFAULT_SEGMENTER))
    folder = scenes_folder(tmp_path / "photos", 1)
    res = CliRunner().invoke(main, ["--home", str(tmp_path / "h"), "index", str(folder), "--mask"])
    assert res.exit_code == 1 and "reinstall lookalike" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04 truncated zip"])
def test_a_damaged_checkpoint_is_said_to_be_unreadable(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="cannot be read .*reinstall lookalike"):
        fg.ForegroundSegmenter(weights=bad)
