"""Why a hit matched: windows of the hit scored against the query find where the query's content is, and the
picture is written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer.explain import heat_map, windows
from retrieval.config import ModelConfig

from .conftest import draw_image
from .test_engine import open_collection
from .test_verify import textured

MODEL = ModelConfig(image_size=160)


def test_windows_cover_the_picture_at_each_share_with_half_overlap():
    boxes = windows(300, 200, shares=(0.5,))
    assert boxes == [(x, y, 150, 100) for y in (0, 50, 100) for x in (0, 75, 150)]
    covered = np.zeros((200, 300), bool)
    for x, y, w, h in windows(301, 199):
        assert 0 <= x and 0 <= y and x + w <= 301 and y + h <= 199
        covered[y : y + h, x : x + w] = True
    assert covered[:199, :300].all()


def test_heat_is_each_pixels_best_covering_window_scaled_to_0_1():
    heat = heat_map((4, 6), [(0, 0, 3, 4), (3, 0, 3, 4), (2, 1, 2, 2)], np.array([0.2, 0.4, 0.9]))
    assert heat[0, 0] == 0.0 and heat[0, 5] == pytest.approx(2 / 7) and heat[1, 2] == 1.0 and heat[2, 3] == 1.0
    assert heat_map((2, 2), [(0, 0, 2, 2)], np.array([0.5])).tolist() == [[0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("corner", [(0, 0), (200, 150), (100, 60)])
def test_the_explained_box_lies_over_the_part_of_the_hit_that_holds_the_query(tmp_path, corner):
    """A textured picture pasted into a larger drawn scene: the best window of the scene is over the paste."""
    folder = tmp_path / "photos"
    folder.mkdir()
    picture = textured(11, size=(120, 100))
    scene = draw_image(40, size=(320, 250))
    scene.paste(picture, corner)
    scene.save(folder / "scene.png")
    draw_image(12, size=(120, 100)).save(folder / "other.png")
    coll = open_collection(tmp_path / "home", model=MODEL)
    coll.index_folder(folder)
    query = tmp_path / "query.png"
    picture.save(query)
    [res] = coll.search([query], k=2)
    out = coll.explain(query, res.hits, tmp_path / "why")
    assert [e.hit_path for e in out] == [h.path for h in res.hits]
    scene_exp = next(e for e in out if e.hit_path.endswith("scene.png"))
    x, y, w, h = scene_exp.box
    px, py = corner
    # measured: the box's centre inside the paste and 0.69-1.0 of the paste covered, for all three corners
    assert px <= x + w / 2 <= px + 120 and py <= y + h / 2 <= py + 100
    inter = max(0, min(x + w, px + 120) - max(x, px)) * max(0, min(y + h, py + 100) - max(y, py))
    assert inter / (120 * 100) > 0.5
    hh, hw = scene_exp.heat.shape
    assert abs(hh / hw - 250 / 320) < 0.05 and scene_exp.heat.max() == 1.0
    with Image.open(scene_exp.picture) as pic:
        assert pic.height > 300 and pic.width > 600  # the query beside the hit
    assert sorted(p.name for p in (tmp_path / "why").iterdir()) == sorted(e.picture.name for e in out)


def test_an_unreadable_hit_is_reported_and_the_others_explained(tmp_path, image_folder):
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    query = image_folder / "img_0002.png"
    [res] = coll.search([query], k=3)
    (image_folder / res.hits[1].path.rsplit("/", 1)[1]).write_bytes(b"no longer a picture")
    out = coll.explain(query, res.hits, tmp_path / "why")
    assert out[1].picture is None and "not an image" in out[1].error
    assert out[0].picture.exists() and out[2].picture.exists()


def test_cli_search_explain_writes_a_picture_per_hit(tmp_path, image_folder):
    from click.testing import CliRunner

    from indexer.cli import main

    home = tmp_path / "home"
    open_collection(home).index_folder(image_folder)
    why = tmp_path / "why"
    args = ["--home", str(home), "search", str(image_folder / "img_0004.png"), "-k", "3", "--explain", str(why)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    pictures = sorted(p.name for p in why.iterdir())
    assert len(pictures) == 3 and pictures[0].startswith("01-img_0004")
    assert "explained 3 hits" in result.output
