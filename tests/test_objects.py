"""The per-object index: objects found, stored and searched with their image, on the shared sync machinery."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from indexer.cli import main
from indexer.engine import Collection, ModelMismatchError, WhiteningSettings
from indexer.errors import Interrupted
from indexer.masking import Masker, MaskOutcome, MaskSettings
from indexer.objects import GRID, MASK, ObjectRecord, ObjectSettings, find_objects, grid_boxes, instances
from retrieval.model import Embedder

from .conftest import FAST_RUNTIME, SMALL_MODEL

_EMBEDDER: list[Embedder] = []
#: one row per drawn object (the default ``split`` also adds the pieces of a part that erodes apart, see below)
OBJECTS = ObjectSettings(enabled=True, split=0.0)
SIZE = (240, 160)
#: where the three objects of a scene go: (x, y, side)
SLOTS = [(14, 20, 60), (92, 70, 64), (170, 24, 56)]


def real_embedder() -> Embedder:
    if not _EMBEDDER:
        _EMBEDDER.append(Embedder(SMALL_MODEL, FAST_RUNTIME))
    return _EMBEDDER[0]


class CountingEmbedder:
    """The real embedder, counting the pictures it embeds; raises KeyboardInterrupt rather than go past
    ``fail_after`` of them."""

    def __init__(self, counter: list[int], fail_after: int | None = None) -> None:
        self.inner = real_embedder()
        self.config, self.dim = self.inner.config, self.inner.dim
        self.counter, self.fail_after = counter, fail_after

    def embed_batch(self, pixels, mask=None):
        if self.fail_after is not None and self.counter[0] + len(pixels) > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.counter[0] += len(pixels)
        return self.inner.embed_batch(pixels, mask)


def saturated(pixels: np.ndarray) -> np.ndarray:
    """A fake segmenter for the drawn scenes: objects are the colourful pixels (the background is grey)."""
    p = pixels.astype(int)
    return (p.max(axis=2) - p.min(axis=2)) > 90


saturated.spec = "fake"  # type: ignore[attr-defined]


def draw_object(d: ImageDraw.ImageDraw, kind: int, x: int, y: int, s: int) -> None:
    """Object ``kind`` (0-8): a shape and colours of its own, in the square ``(x, y, s)``."""
    red, green, blue, yellow, magenta, cyan = (
        (230, 30, 30),
        (30, 200, 40),
        (40, 60, 230),
        (240, 210, 0),
        (220, 0, 220),
        (0, 210, 210),
    )
    pairs = [(red, green), (green, blue), (blue, yellow), (yellow, magenta), (magenta, cyan), (cyan, red)]
    a, b = [*pairs, (blue, cyan), (red, yellow), (green, magenta)][kind]
    if kind % 3 == 0:
        d.ellipse([x, y, x + s, y + s], fill=a)
        d.ellipse([x + s // 4, y + s // 4, x + 3 * s // 4, y + 3 * s // 4], fill=b)
    elif kind % 3 == 1:
        d.rectangle([x, y, x + s, y + s], fill=a)
        for i in range(0, s, max(4, s // 6)):
            d.line([x + i, y, x + i, y + s], fill=b, width=3)
    else:
        d.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=a)
        d.rectangle([x + s // 3, y + s // 2, x + 2 * s // 3, y + s], fill=b)


def scene(kinds: tuple[int, ...]) -> Image.Image:
    img = Image.new("RGB", SIZE, (128, 128, 128))
    d = ImageDraw.Draw(img)
    for kind, (x, y, s) in zip(kinds, SLOTS):
        draw_object(d, kind, x, y, s)
    return img


SCENES = {"a.png": (0, 1, 2), "b.png": (3, 4, 5), "c.png": (6, 7, 8), "d.png": (1, 5, 6)}


def make_scenes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, kinds in SCENES.items():
        scene(kinds).save(folder / name)
    return folder


def collection(
    home: Path, embedder=None, objects: ObjectSettings | None = OBJECTS, db_url: str | None = None
) -> Collection:
    coll = Collection(
        home,
        db_url=db_url,
        runtime=FAST_RUNTIME,
        embedder_factory=lambda c, r: embedder or real_embedder(),
        masker_factory=lambda s: Masker(s, segmenter=saturated),
    )
    coll.configure(model=SMALL_MODEL, mask=MaskSettings(segmenter="fake"), objects=objects)
    return coll


def object_rows(coll: Collection) -> dict[str, list[ObjectRecord]]:
    """Each image's object rows, by file name."""
    ids = {info.id: Path(info.path).name for info in coll.images(range(1, 1000)).values()}
    out: dict[str, list[ObjectRecord]] = {}
    with coll.session() as s:
        for r in s.scalars(select(ObjectRecord).order_by(ObjectRecord.id)):
            out.setdefault(ids.get(r.image_id, f"gone {r.image_id}"), []).append(r)
    return out


def box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Collection, Path]:
    root = tmp_path_factory.mktemp("objects")
    folder = make_scenes(root / "photos")
    coll = collection(root / "home")
    coll.index_folder(folder)
    return coll, folder


def test_instances_are_the_connected_parts_above_the_minimum_area():
    mask = np.zeros((40, 60), bool)
    mask[2:12, 3:13] = True  # 100 px
    mask[20:36, 30:50] = True  # 320 px
    mask[38, 0] = True  # a speck
    parts = instances(mask, min_area=0.01, max_objects=8)
    assert [box for _, box in parts] == [(30, 20, 20, 16), (3, 2, 10, 10)]
    assert len(instances(mask, min_area=0.01, max_objects=1)) == 1


def test_touching_objects_come_apart_when_splitting_by_erosion():
    mask = np.zeros((100, 100), bool)
    mask[10:40, 10:40] = True
    mask[10:40, 45:75] = True
    mask[24:26, 40:45] = True  # a thin bridge joins the two
    assert [box for _, box in instances(mask, 0.01, 8)] == [(10, 10, 65, 30)]
    split = [box for _, box in instances(mask, 0.01, 8, split=0.06)]
    assert split[0] == (10, 10, 65, 30) and sorted(split[1:]) == [(10, 10, 30, 30), (45, 10, 30, 30)]


def test_objects_are_boxed_in_pixels_of_the_image_as_shown_and_nothing_found_falls_back_to_a_grid():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 10:20] = True
    (obj,) = find_objects(MaskOutcome(mask, 0.08), 300, 200, ObjectSettings(enabled=True, pad=0.0))
    assert obj.box == (100, 50, 100, 50) and obj.source == MASK and obj.area == pytest.approx(50 / 600)
    grid = find_objects(MaskOutcome(None, 0.0, "empty mask"), 300, 200, OBJECTS)
    assert [o.box for o in grid] == grid_boxes(300, 200) and len(grid) == 9 and {o.source for o in grid} == {GRID}
    assert find_objects(None, 300, 200, ObjectSettings(enabled=True, fallback="none")) == []


def test_each_drawn_object_gets_one_row_with_a_box_around_it(indexed):
    coll, _ = indexed
    rows = object_rows(coll)
    assert sorted(rows) == sorted(SCENES)
    for name, objs in rows.items():
        assert len(objs) == 3 and {o.source for o in objs} == {MASK}
        for x, y, s in SLOTS:
            assert max(box_iou((o.x, o.y, o.w, o.h), (x, y, s + 1, s + 1)) for o in objs) > 0.7, name
    st = coll.stats()
    assert st.object_vectors == 12 and st.object_fallbacks == 0 and st.objects.startswith("objects")
    assert coll.doctor().ok


def test_by_default_touching_parts_add_their_pieces_inside_the_objects_boxes(tmp_path):
    folder = make_scenes(tmp_path / "photos")
    coll = collection(tmp_path / "home", objects=ObjectSettings(enabled=True))
    coll.index_folder(folder)
    for name, objs in object_rows(coll).items():
        assert len(objs) >= 3 and {o.source for o in objs} == {MASK}
        slots = [(x, y, s + 1, s + 1) for x, y, s in SLOTS]
        assert all(max(box_iou((o.x, o.y, o.w, o.h), slot) for o in objs) > 0.7 for slot in slots), name
        for o in objs:  # every row lies within one object
            assert any(box_iou((o.x, o.y, o.w, o.h), (x - 4, y - 4, w + 8, h + 8)) > 0 for x, y, w, h in slots)


def test_a_search_for_one_object_ranks_the_image_holding_it_first_with_that_objects_box(indexed, tmp_path):
    coll, _ = indexed
    for kind, name, slot in [(4, "b.png", 1), (8, "c.png", 2), (0, "a.png", 0)]:
        query = Image.new("RGB", (90, 90), (128, 128, 128))
        draw_object(ImageDraw.Draw(query), kind, 10, 10, 70)
        path = tmp_path / f"query_{kind}.png"
        query.save(path)
        (result,) = coll.search([path], k=4)
        top = result.hits[0]
        assert Path(top.path).name == name and top.box is not None
        x, y, s = SLOTS[slot]
        assert box_iou(top.box, (x, y, s + 1, s + 1)) > 0.7
        assert len({h.id for h in result.hits}) == len(result.hits)  # an image once, by its best part


def test_a_float16_collection_keeps_its_objects_at_half_the_size_and_finds_them_alike(tmp_path):
    folder = make_scenes(tmp_path / "photos")
    coll = collection(tmp_path / "home")
    coll.configure(vector_dtype="float16")
    coll.index_folder(folder)
    dim = real_embedder().dim
    rows = [r for found in object_rows(coll).values() for r in found]
    assert rows and all(len(r.vector) == 2 * dim for r in rows)
    query = Image.new("RGB", (90, 90), (128, 128, 128))
    draw_object(ImageDraw.Draw(query), 8, 10, 10, 70)
    query.save(tmp_path / "query.png")
    top = coll.search([tmp_path / "query.png"], k=4)[0].hits[0]
    x, y, size = SLOTS[2]
    assert Path(top.path).name == "c.png" and box_iou(top.box, (x, y, size + 1, size + 1)) > 0.7
    assert coll.doctor().ok


def test_reindexing_an_unchanged_folder_embeds_nothing_and_keeps_the_objects(indexed):
    coll, folder = indexed
    before = {n: [o.id for o in objs] for n, objs in object_rows(coll).items()}
    report = coll.index_folder(folder)
    assert report.embedded == 0 and report.unchanged == len(SCENES)
    assert {n: [o.id for o in objs] for n, objs in object_rows(coll).items()} == before


def test_a_removed_image_removes_its_objects(tmp_path, db_url):
    folder = make_scenes(tmp_path / "photos")
    coll = collection(tmp_path / "home", db_url=db_url)
    coll.index_folder(folder)
    (folder / "a.png").unlink()
    coll.index_folder(folder)
    assert sorted(object_rows(coll)) == ["b.png", "c.png", "d.png"]
    assert len(coll._objects.current()) == 9 and coll.doctor().ok
    assert coll.remove(folder / "b.png") == 1
    assert sorted(object_rows(coll)) == ["c.png", "d.png"] and len(coll._objects.current()) == 6
    assert coll.doctor().ok


def test_a_changed_image_has_its_objects_found_again(tmp_path, db_url):
    folder = make_scenes(tmp_path / "photos")
    coll = collection(tmp_path / "home", db_url=db_url)
    coll.index_folder(folder)
    old = {o.id for o in object_rows(coll)["a.png"]}
    Image.new("RGB", SIZE, (128, 128, 128)).save(folder / "a.png")  # nothing in it any more
    report = coll.index_folder(folder)
    assert report.changed == 1 and report.embedded == 1
    now = object_rows(coll)["a.png"]
    assert not old & {o.id for o in now} and {o.source for o in now} == {GRID}
    assert coll.doctor().ok


def test_an_interrupted_run_resumes_and_every_kept_image_has_all_its_objects(tmp_path, db_url):
    folder = make_scenes(tmp_path / "photos")
    counter = [0]
    with pytest.raises(Interrupted):  # the 4 whole images in one batch, then 3 objects each: stops in the third
        collection(tmp_path / "home", CountingEmbedder(counter, fail_after=4 + 3 * 2), db_url=db_url).index_folder(
            folder
        )
    coll = collection(tmp_path / "home", db_url=db_url)
    st = coll.stats()
    assert st.indexed == 2 and st.pending == 2 and st.object_vectors == 6
    assert all(len(objs) == 3 for objs in object_rows(coll).values())
    report = coll.index_folder(folder)
    assert report.resumed == 2 and report.embedded == 2
    assert coll.stats().object_vectors == 12 and coll.doctor().ok


def test_an_image_where_nothing_is_found_keeps_its_whole_vector_and_records_the_fallback(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", SIZE, (128, 128, 128)).save(folder / "plain.png")
    scene((0, 1, 2)).save(folder / "a.png")
    coll = collection(tmp_path / "home")
    coll.index_folder(folder)
    st = coll.stats()
    assert st.indexed == 2 and st.object_fallbacks == 1 and st.mask_fallbacks == 1
    assert {o.source for o in object_rows(coll)["plain.png"]} == {GRID}
    none = collection(tmp_path / "none", objects=ObjectSettings(enabled=True, fallback="none"))
    none.index_folder(folder)
    assert none.stats().indexed == 2 and sorted(object_rows(none)) == ["a.png"]
    (hit,) = none.search_ids([none.images(range(1, 3)).popitem()[0]], k=1)[0].hits  # searches still work
    assert hit.score > 0


def test_switching_objects_on_is_refused_unless_reembedding_and_then_reembeds(tmp_path, db_url):
    folder = make_scenes(tmp_path / "photos")
    counter = [0]
    coll = collection(tmp_path / "home", CountingEmbedder(counter), objects=None, db_url=db_url)
    coll.index_folder(folder)
    assert coll.stats().object_vectors == 0 and counter[0] == len(SCENES)  # whole images only
    assert coll.search([folder / "a.png"], k=1)[0].hits[0].box is None  # whole images only: no box
    with pytest.raises(ModelMismatchError, match="--reembed"):
        coll.configure(objects=OBJECTS)
    coll.configure(objects=OBJECTS, reembed=True)
    report = coll.index_folder(folder)
    assert report.embedded == len(SCENES) and coll.stats().object_vectors == 12
    with coll.session() as s:
        assert s.scalar(select(func.count()).select_from(ObjectRecord)) == 12
    coll.configure(objects=ObjectSettings(), reembed=True)  # and off again: the objects go
    coll.index_folder(folder)
    assert coll.stats().object_vectors == 0


def test_doctor_finds_and_rebuilds_a_lost_object_index(tmp_path):
    folder = make_scenes(tmp_path / "photos")
    coll = collection(tmp_path / "home")
    coll.index_folder(folder)
    (Path(coll.home) / "objects.faiss").unlink()
    report = coll.doctor()
    assert not report.ok and any("object index" in p for p in report.problems)
    repaired = coll.doctor(repair=True)
    assert any("object index" in r for r in repaired.repaired)
    assert coll.doctor().ok


def test_cli_index_objects_search_json_box_and_stats(tmp_path, monkeypatch):
    folder = make_scenes(tmp_path / "photos")
    home = tmp_path / "home"
    collection(home, objects=None)  # the fake segmenter recorded as the collection's mask

    def with_fakes(*args, **kwargs) -> Collection:
        fakes = dict(embedder_factory=lambda c, r: real_embedder(), masker_factory=lambda s: Masker(s, saturated))
        return Collection(*args, **kwargs, **fakes)

    monkeypatch.setattr("indexer.cli_common.Collection", with_fakes)
    query = Image.new("RGB", (90, 90), (128, 128, 128))
    draw_object(ImageDraw.Draw(query), 4, 10, 10, 70)
    query.save(tmp_path / "query.png")
    runner = CliRunner()
    out = runner.invoke(main, ["--home", str(home), "index", str(folder), "--objects"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["--home", str(home), "search", str(tmp_path / "query.png"), "--json", "-k", "2"])
    assert out.exit_code == 0, out.output
    top = json.loads(out.output)[0]["results"][0]
    assert Path(top["path"]).name == "b.png" and len(top["box"]) == 4
    out = runner.invoke(main, ["--home", str(home), "stats"])
    line = next(x for x in out.output.splitlines() if x.startswith("objects:"))
    assert "mask instances" in line and int(line.split(", ")[-1].split()[0]) >= 12  # N object vectors


def test_the_objects_pass_reuses_the_mask_the_pipeline_computed(tmp_path):
    folder = make_scenes(tmp_path / "photos")
    calls = [0]

    def counting(pixels: np.ndarray) -> np.ndarray:
        calls[0] += 1
        return saturated(pixels)

    coll = Collection(
        tmp_path / "home",
        runtime=FAST_RUNTIME,
        embedder_factory=lambda c, r: real_embedder(),
        masker_factory=lambda s: Masker(s, segmenter=counting),
    )
    coll.configure(model=SMALL_MODEL, mask=MaskSettings(segmenter="fake"), objects=OBJECTS)
    coll.index_folder(folder)
    assert calls[0] == len(SCENES) and coll.stats().object_vectors == 12  # one segmentation per image


def test_the_http_api_hits_carry_the_matching_box(indexed):
    from fastapi.testclient import TestClient

    from indexer.server import ServeSettings, create_app

    coll, _ = indexed
    query = Image.new("RGB", (90, 90), (128, 128, 128))
    draw_object(ImageDraw.Draw(query), 8, 10, 10, 70)
    buf = io.BytesIO()
    query.save(buf, format="PNG")
    client = TestClient(create_app(coll, ServeSettings()), base_url="http://127.0.0.1")
    r = client.post("/api/v1/search", files={"file": ("q.png", buf.getvalue(), "image/png")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]["hits"][0]
    x, y, s = SLOTS[2]
    assert top["name"] == "c.png" and box_iou(top["box"], (x, y, s + 1, s + 1)) > 0.7


def test_object_vectors_are_whitened_like_the_images_when_the_collection_whitens(tmp_path):
    folder = make_scenes(tmp_path / "photos")
    coll = collection(tmp_path / "home")
    coll.configure(whitening=WhiteningSettings(enabled=True, dim=3, min_vectors_per_dim=1.0))
    coll.index_folder(folder)
    assert coll.stats().whitening is not None
    assert coll._objects.current().dim == coll.index().dim == 3
    (result,) = coll.search_ids([next(iter(coll.images(range(1, 10))))], k=3)
    assert result.error is None and len(result.hits) == 3
    assert coll.doctor().ok
