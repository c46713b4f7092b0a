"""Masking before embedding: mask hygiene, the pipeline, the collection's records, and the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw
from sqlalchemy import text

from indexer import db
from indexer.cli import main
from indexer.engine import Collection, ModelMismatchError
from indexer.masking import FILL_COLOUR, Masker, MaskSettings
from retrieval.config import ModelConfig
from retrieval.model import Embedder

from .conftest import FAST_RUNTIME, SMALL_MODEL

_EMBEDDER: list[Embedder] = []


def embedder(config, runtime) -> Embedder:
    for e in _EMBEDDER:
        if e.config == config:
            return e
    _EMBEDDER.append(Embedder(config, FAST_RUNTIME))
    return _EMBEDDER[-1]


def not_background(pixels: np.ndarray) -> np.ndarray:
    """A fake segmenter for the synthetic scenes below: objects are the saturated pixels."""
    p = pixels.astype(int)
    return (p.max(axis=2) - p.min(axis=2)) > 120


not_background.spec = "fake"  # type: ignore[attr-defined]


def scene(obj: int, background: int, jitter: int = 0, size: int = 96) -> Image.Image:
    """A grey textured background (seeded by ``background``) with object ``obj`` in saturated colours:
    a shape and colour of its own (``obj`` 0-3), or seeded random blobs (other values)."""
    rng = np.random.default_rng(background)
    grey = rng.integers(0, 256, size=(size // 12, size // 12), dtype=np.uint8)
    img = Image.fromarray(np.repeat(np.repeat(grey, 12, 0), 12, 1)).convert("RGB")
    d = ImageDraw.Draw(img)
    x0, y0, w = 34 + jitter, 34 + jitter // 2, 24
    box = [x0, y0, x0 + w, y0 + w]
    if obj == 0:
        d.ellipse(box, fill=(255, 0, 0))
    elif obj == 1:
        d.rectangle(box, fill=(0, 200, 0))
    elif obj == 2:
        d.polygon([(x0, y0 + w), (x0 + w, y0 + w), (x0 + w // 2, y0)], fill=(0, 0, 255))
    elif obj == 3:
        d.ellipse(box, outline=(255, 220, 0), width=8)
    else:
        r = random.Random(obj)
        for _ in range(4):
            a, b = r.randrange(0, 20), r.randrange(0, 20)
            colour = [(255, 0, 255), (0, 220, 220), (255, 128, 0)][r.randrange(3)]
            d.rectangle([x0 + a, y0 + b, x0 + a + 16, y0 + b + 16], fill=colour)
    return img


def masked_collection(home: Path, apply: str = "pool", model: ModelConfig = SMALL_MODEL) -> Collection:
    coll = Collection(
        home,
        runtime=FAST_RUNTIME,
        embedder_factory=embedder,
        masker_factory=lambda s: Masker(s, segmenter=not_background),
    )
    coll.configure(model=model, mask=MaskSettings(segmenter="fake", apply=apply))
    return coll


def test_degenerate_or_failing_masks_fall_back_to_the_whole_image():
    pixels = np.zeros((20, 30, 3), np.uint8)
    ok = Masker(MaskSettings("x"), segmenter=lambda p: np.arange(600).reshape(20, 30) % 2 == 0)(pixels)
    assert ok.mask is not None and ok.fallback is None and ok.fraction == pytest.approx(0.5)
    empty = Masker(MaskSettings("x"), segmenter=lambda p: np.zeros(p.shape[:2], bool))(pixels)
    assert empty.mask is None and empty.fallback == "empty mask" and empty.fraction == 0.0
    full = Masker(MaskSettings("x"), segmenter=lambda p: np.ones(p.shape[:2], bool))(pixels)
    assert full.mask is None and full.fallback == "full mask"

    def broken(p):
        raise RuntimeError("boom")

    failed = Masker(MaskSettings("x"), segmenter=broken)(pixels)
    assert failed.mask is None and failed.fallback == "segmenter failed: RuntimeError: boom"
    wrong = Masker(MaskSettings("x"), segmenter=lambda p: np.ones((5, 5), bool))(pixels)
    assert wrong.mask is None and "(5, 5)" in wrong.fallback


def test_network_inputs_follow_the_apply_setting():
    pixels = np.full((2, 4, 4, 3), 200, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    for apply in ("pool", "pixels", "both"):
        m = Masker(MaskSettings("x", apply=apply), segmenter=not_background)
        out, pool = m.network_inputs(pixels, [mask, None])
        if apply == "pool":
            assert out is pixels
        else:  # background of the first image filled, the unmasked second image untouched
            assert (out[0, 0, 0] == FILL_COLOUR).all() and (out[0, 1, 1] == 200).all() and (out[1] == 200).all()
        if apply == "pixels":
            assert pool is None
        else:
            assert pool.shape == (2, 4, 4) and pool[0].sum() == 4 and pool[1].all()
        assert m.network_inputs(pixels, [None, None]) == (pixels, None)


def test_masking_makes_queries_match_the_object_not_the_background(tmp_path):
    """Each query shows an object on background 2; the database has the same object on background 1 and
    other objects on background 2. Whole images match the background; masked images match the object."""
    db_dir, q_dir = tmp_path / "db", tmp_path / "q"
    db_dir.mkdir()
    q_dir.mkdir()
    objects = range(4)
    for o in objects:
        scene(o, background=1).save(db_dir / f"obj{o}_bg1.png")
        scene(o + 10, background=2).save(db_dir / f"other{o}_bg2.png")
        scene(o, background=2, jitter=8).save(q_dir / f"obj{o}.png")
    queries = sorted(q_dir.iterdir())

    def top_hits(coll: Collection) -> list[str]:
        coll.index_folder(db_dir)
        return [Path(r.hits[0].path).name for r in coll.search(queries, k=1)]

    model = ModelConfig(image_size=128)
    whole = Collection(tmp_path / "whole", runtime=FAST_RUNTIME, embedder_factory=embedder)
    whole.configure(model=model)
    want = [f"obj{o}_bg1.png" for o in objects]
    whole_right = sum(h == w for h, w in zip(top_hits(whole), want))
    masked_right = sum(h == w for h, w in zip(top_hits(masked_collection(tmp_path / "m", "pixels", model)), want))
    assert masked_right == len(want) and whole_right < masked_right


def test_collection_records_masks_fallbacks_and_refuses_a_different_masking(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for o in range(3):
        scene(o, background=o).save(folder / f"{o}.png")
    Image.new("RGB", (64, 64), (128, 128, 128)).save(folder / "plain.png")  # nothing saturated: empty mask
    coll = masked_collection(tmp_path / "home")
    report = coll.index_folder(folder)
    assert report.embedded == 4 and report.mask_fallbacks == 1
    st = coll.stats()
    assert st.mask == "fake masks (pool)" and st.mask_fallbacks == 1
    with coll.session() as s:
        rows = dict(s.execute(text("SELECT path, mask_fallback FROM images")).all())
        fractions = [f for (f,) in s.execute(text("SELECT mask_fraction FROM images"))]
    assert rows[str((folder / "plain.png").resolve())] == "empty mask"
    assert all(f is not None and 0.0 <= f < 1.0 for f in fractions)
    # The identical file as a query is masked the same way: it finds itself with score 1.
    hit = coll.search([folder / "1.png"], k=1)[0].hits[0]
    assert Path(hit.path).name == "1.png" and hit.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ModelMismatchError, match="--reembed"):
        coll.configure(mask=MaskSettings())
    coll.configure(mask=MaskSettings(segmenter="fake", apply="pixels"), reembed=True)
    assert coll.index_folder(folder).embedded == 4


def test_an_older_database_gains_the_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE images DROP COLUMN mask_fallback"))
        conn.execute(text("ALTER TABLE images DROP COLUMN mask_fraction"))
        conn.execute(
            text(
                "INSERT INTO images (path, size, mtime_ns, status, added_at, updated_at) "
                "VALUES ('a.png', 1, 1, 'pending', '2026-01-01', '2026-01-01')"
            )
        )
    engine.dispose()
    engine = db.make_engine(url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT path, mask_fraction, mask_fallback FROM images")).all() == [
            ("a.png", None, None)
        ]


def test_cli_index_with_a_mask_then_a_different_mask_needs_reembed(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for o in range(3):
        scene(o, background=o).save(folder / f"{o}.png")
    home = tmp_path / "home"
    runner = CliRunner()
    base = ["--home", str(home), "--workers", "0", "--device", "cpu"]
    res = runner.invoke(main, [*base, "index", str(folder), "--image-size", "64", "--mask", "grabcut"])
    assert res.exit_code == 0, res.output
    assert "masking:   grabcut masks (both)" in runner.invoke(main, [*base, "stats"]).output
    res = runner.invoke(main, [*base, "index", str(folder), "--mask", "none"])
    assert res.exit_code == 1 and "--reembed" in res.output
    res = runner.invoke(main, [*base, "index", str(folder), "--mask", "no-such-segmenter", "--reembed"])
    assert res.exit_code == 1 and "unknown segmenter 'no-such-segmenter'" in res.output
