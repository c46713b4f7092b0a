"""The ways to ask a collection: by file, by an upload's bytes, by an indexed image's id, by a region (box)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from indexer.cli import main
from indexer.imageio import ImageLoadError, check_box, decode_image

from .conftest import draw_image
from .test_engine import open_collection


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_uploaded_bytes_search_exactly_like_the_same_file(tmp_path, image_folder):
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    query = image_folder / "img_0005.png"
    [by_file] = coll.search([query], k=6)
    [by_bytes] = coll.search_images([query.read_bytes()], k=6, names=["q.png"])
    assert by_bytes.query == "q.png" and by_bytes.error is None
    assert [h.id for h in by_bytes.hits] == [h.id for h in by_file.hits]
    assert [h.score for h in by_bytes.hits] == pytest.approx([h.score for h in by_file.hits], abs=1e-5)


def test_an_upload_that_is_not_an_image_is_answered_with_the_reason_and_the_others_searched(tmp_path, image_folder):
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    good = (image_folder / "img_0002.png").read_bytes()
    bad, good_res = coll.search_images([b"hello, I am text", good], k=3)
    assert bad.query == "upload 1" and bad.hits == [] and "not an image" in bad.error
    assert good_res.error is None and good_res.hits[0].path == str((image_folder / "img_0002.png").resolve())


def test_search_by_id_finds_neighbours_from_stored_vectors_without_the_image_itself(tmp_path, image_folder):
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    ids, vecs = coll.vectors()
    [res, missing] = coll.search_ids([int(ids[3]), 10_000], k=4)
    expected = [int(i) for i in ids[np.argsort(-(vecs @ vecs[3]))] if i != ids[3]][:4]
    assert [h.id for h in res.hits] == expected
    assert res.query == coll.images([int(ids[3])])[int(ids[3])].path
    assert missing.hits == [] and "no indexed image with id 10000" in missing.error


def test_images_describes_known_ids_and_leaves_out_unknown_ones(tmp_path, image_folder):
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    ids, _ = coll.vectors()
    info = coll.images([int(ids[0]), -5])
    assert list(info) == [int(ids[0])]
    record = info[int(ids[0])]
    assert record.width == 96 and record.height == 80 and record.status == "indexed" and len(record.content_hash) > 8


def test_a_box_query_matches_the_image_that_holds_only_that_region(tmp_path, image_folder):
    """Paste an indexed picture into the corner of a larger, different picture: the whole collage does not
    find it first, the box around the pasted part does."""
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    target = image_folder / "img_0007.png"
    collage = draw_image(500, size=(300, 260))
    collage.paste(Image.open(target), (190, 170))
    data = _png(collage)
    [whole] = coll.search_images([data], k=1)
    [region] = coll.search_images([data], k=1, box=(190, 170, 96, 80))
    assert region.hits[0].path == str(target.resolve())
    assert region.hits[0].score > 0.99
    assert whole.hits[0].score < region.hits[0].score


def test_a_box_of_no_size_or_outside_the_image_is_a_clear_error(tmp_path, image_folder):
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    data = (image_folder / "img_0001.png").read_bytes()
    [outside] = coll.search_images([data], box=(500, 500, 20, 20))
    assert outside.hits == [] and "outside the 96x80 image" in outside.error
    with pytest.raises(ImageLoadError, match="no area"):
        check_box((1, 1, 0, 5), 10, 10)
    assert check_box((-5, 2, 8, 100), 10, 10) == (0, 2, 3, 10)


def test_a_box_is_in_pixels_of_the_image_as_shown_after_exif_rotation():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the left strip becomes the top
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    top, w, h = decode_image(buf.getvalue(), None, box=(0, 0, 20, 10))
    assert (w, h) == (20, 40) and top.shape == (10, 20, 3)
    assert top[..., 2].mean() > 200 and top[..., 0].mean() < 60


def test_cli_search_box_option(tmp_path, image_folder, monkeypatch):
    home = tmp_path / "home"
    open_collection(home).index_folder(image_folder)
    runner = CliRunner()
    bad = runner.invoke(main, ["--home", str(home), "search", str(image_folder / "img_0001.png"), "--box", "1,2,3"])
    assert bad.exit_code == 2 and "X,Y,W,H" in bad.output
    zero = runner.invoke(main, ["--home", str(home), "search", str(image_folder / "img_0001.png"), "--box", "0,0,0,4"])
    assert zero.exit_code == 2 and "positive width" in zero.output
