"""`lookalike serve`: the HTTP API in-process (FastAPI's TestClient) over a small real collection, every endpoint
and every safety rule; then the real command on uvicorn in a subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from indexer import db
from indexer.cli import main
from indexer.engine import Collection
from indexer.errors import CollectionBusyError, LookalikeError
from indexer.face_clusters import FaceClusters
from indexer.server import Guard, ServeSettings, bind_socket, create_app
from indexer.store import write_lock
from retrieval.config import RuntimeOptions
from retrieval.faces.clustering import ClusterParams

from .conftest import FAST_RUNTIME, SMALL_MODEL, draw_image, make_folder
from .test_engine import open_collection, shared_embedder
from .test_faces_gallery import open_gallery, save_photo
from .test_thumbnails import bomb_png, exif_rotated_jpeg

LOCAL = "http://127.0.0.1"
TOKEN = "s3cret-token"


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_photos(folder: Path) -> Path:
    """8 drawn pictures, an EXIF-rotated JPEG and a PNG whose name says JPEG."""
    make_folder(folder, 8)
    exif_rotated_jpeg(folder / "rotated.jpg")
    draw_image(50).save(folder / "disguised.jpg", format="PNG")
    return folder


def client_for(coll: Collection, **settings) -> TestClient:
    return TestClient(create_app(coll, ServeSettings(**settings)), base_url=LOCAL)


def ids_by_name(coll: Collection) -> dict[str, int]:
    return {Path(info.path).name: i for i, info in coll.images(range(1, 1000)).items()}


def assert_json_error(r, status: int, words: str = "") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"]["status"] == status and body["error"]["message"]
    assert words.lower() in body["error"]["message"].lower(), body
    return body


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One indexed collection and a client on it, shared by the tests that only read."""
    root = tmp_path_factory.mktemp("served")
    photos = make_photos(root / "photos")
    coll = open_collection(root / "home")
    coll.index_folder(photos)
    with client_for(coll) as client:
        yield coll, photos, client


@pytest.fixture
def fresh(tmp_path):
    """A collection of its own, for tests that change files or the collection."""
    photos = make_photos(tmp_path / "photos")
    coll = open_collection(tmp_path / "home")
    coll.index_folder(photos)
    return coll, photos


# --------------------------------------------------------------------------------------------- endpoints


def test_stats_count_the_collection_and_say_which_pages_to_show(served):
    _, _, client = served
    body = client.get("/api/v1/stats").json()
    assert (body["images"], body["indexed"]) == (10, 10)
    assert "efficientnet_lite0" in body["model"] and body["mask"] and body["whitening"] is None
    assert body["features"] == {"search": True, "box": True, "duplicates": False, "people": False, "changes": False}


def test_search_by_upload_finds_the_picture_first_with_ranks_and_links(served):
    coll, photos, client = served
    data = (photos / "img_0003.png").read_bytes()
    r = client.post("/api/v1/search", files={"file": ("query.png", data, "image/png")}, data={"k": "5"})
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["query"] == "query.png" and result["error"] is None
    hits = result["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    top = hits[0]
    assert top["name"] == "img_0003.png" and top["path"] == "img_0003.png"  # relative to the photos folder
    assert top["score"] == pytest.approx(1.0, abs=1e-3) and top["id"] == ids_by_name(coll)["img_0003.png"]
    assert (top["width"], top["height"]) == (96, 80)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert client.get(top["thumbnail"]).headers["content-type"] == "image/jpeg"
    assert client.get(top["file"]).content == data


def test_search_answers_several_uploads_in_order_and_says_why_one_could_not_be_read(served):
    _, photos, client = served
    files = [
        ("file", ("a.png", (photos / "img_0001.png").read_bytes(), "image/png")),
        ("file", ("notes.jpg", b"just some text", "image/jpeg")),
        ("file", ("b.png", (photos / "img_0006.png").read_bytes(), "image/png")),
    ]
    r = client.post("/api/v1/search", files=files, data={"k": "2", "threshold": "0.5"})
    assert r.status_code == 200, r.text
    a, notes, b = r.json()["results"]
    assert (a["query"], notes["query"], b["query"]) == ("a.png", "notes.jpg", "b.png")
    assert a["hits"][0]["name"] == "img_0001.png" and b["hits"][0]["name"] == "img_0006.png"
    assert "not an image" in notes["error"] and notes["hits"] == []
    assert all(h["score"] >= 0.5 for h in a["hits"] + b["hits"])


def test_search_by_box_looks_only_at_the_region(served):
    _, photos, client = served
    pair = Image.new("RGB", (192, 80))
    pair.paste(Image.open(photos / "img_0001.png"), (0, 0))
    pair.paste(Image.open(photos / "img_0005.png"), (96, 0))
    upload = {"file": ("pair.png", png_bytes(pair), "image/png")}
    right = client.post("/api/v1/search", files=upload, data={"k": "1", "box": "96,0,96,80"}).json()
    left = client.post("/api/v1/search", files=upload, data={"k": "1", "box": "0,0,96,80"}).json()
    assert right["results"][0]["hits"][0]["name"] == "img_0005.png"
    assert left["results"][0]["hits"][0]["name"] == "img_0001.png"
    r = client.post("/api/v1/search", files=upload, data={"box": "500,500,10,10"})
    assert_json_error(r, 422, "outside")
    assert_json_error(client.post("/api/v1/search", files=upload, data={"box": "1,2,3"}), 422, "box")


def test_more_like_this_leaves_the_image_itself_out(served):
    coll, _, client = served
    ids = ids_by_name(coll)
    r = client.get(f"/api/v1/images/{ids['img_0002.png']}/similar", params={"k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["name"] == "img_0002.png"
    assert len(body["hits"]) == 4 and ids["img_0002.png"] not in [h["id"] for h in body["hits"]]
    [direct] = coll.search_ids([ids["img_0002.png"]], k=4)
    assert [h["id"] for h in body["hits"]] == [h.id for h in direct.hits]
    assert_json_error(client.get("/api/v1/images/9999/similar"), 404, "no image 9999")


def test_image_metadata_by_id_and_unknown_ids_are_404(served):
    coll, _, client = served
    image_id = ids_by_name(coll)["img_0004.png"]
    assert client.get(f"/api/v1/images/{image_id}").json() == {
        "id": image_id,
        "path": "img_0004.png",
        "name": "img_0004.png",
        "width": 96,
        "height": 80,
        "thumbnail": f"/api/v1/images/{image_id}/thumbnail",
        "file": f"/api/v1/images/{image_id}/file",
    }
    for url in ("/api/v1/images/4242", "/api/v1/images/4242/thumbnail", "/api/v1/images/4242/file"):
        assert_json_error(client.get(url), 404, "no image 4242")


def test_thumbnails_fit_the_size_asked_and_sizes_out_of_range_are_422(served):
    coll, _, client = served
    image_id = ids_by_name(coll)["img_0000.png"]
    r = client.get(f"/api/v1/images/{image_id}/thumbnail", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (64, 53)
    for size in (8, 63, 1025):
        assert_json_error(client.get(f"/api/v1/images/{image_id}/thumbnail", params={"size": size}), 422, "size")


def test_thumbnails_follow_exif_orientation(served):
    coll, _, client = served
    r = client.get(f"/api/v1/images/{ids_by_name(coll)['rotated.jpg']}/thumbnail", params={"size": 64})
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.size == (32, 64)
    top = np.asarray(thumb.convert("RGB"), np.float32)[:20].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # the red half is on top once turned as the camera said


def test_the_original_file_is_served_with_its_type_read_from_its_content(served):
    coll, photos, client = served
    r = client.get(f"/api/v1/images/{ids_by_name(coll)['disguised.jpg']}/file")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (photos / "disguised.jpg").read_bytes()


def test_duplicates_need_a_calibration_or_a_threshold_and_group_copies(fresh):
    coll, photos = fresh
    shutil.copy(photos / "img_0002.png", photos / "copy of img_0002.png")
    coll.index_folder(photos)
    with client_for(coll) as client:
        assert_json_error(client.get("/api/v1/duplicates"), 404, "run `lookalike duplicates` once to calibrate")
        body = client.get("/api/v1/duplicates", params={"threshold": 0.999}).json()
    assert body["threshold"] == pytest.approx(0.999)
    [group] = body["groups"]
    assert group["tier"] == "exact"
    assert sorted(f["image"]["name"] for f in group["files"]) == ["copy of img_0002.png", "img_0002.png"]
    assert [f["keep"] for f in group["files"]] == [True, False]


def test_duplicates_actions_need_allow_changes_run_dry_first_and_undo_through_the_journal(fresh, tmp_path):
    coll, photos = fresh
    shutil.copy(photos / "img_0002.png", photos / "copy of img_0002.png")
    coll.index_folder(photos)
    move = {"action": "move", "threshold": 0.999}
    with client_for(coll) as client:
        assert_json_error(client.post("/api/v1/duplicates/actions", json=move), 403, "--allow-changes")
        assert_json_error(client.post("/api/v1/duplicates/undo"), 403, "--allow-changes")
    with client_for(coll, allow_changes=True) as client:
        assert_json_error(client.post("/api/v1/duplicates/actions", json=move), 409, "--move-to")
    aside = tmp_path / "aside"
    with client_for(coll, allow_changes=True, move_to=aside) as client:
        dry = client.post("/api/v1/duplicates/actions", json=move)
        assert dry.status_code == 200, dry.text
        assert dry.json()["dry_run"] is True and (photos / "copy of img_0002.png").exists()
        done = client.post("/api/v1/duplicates/actions", json={**move, "dry_run": False})
        assert done.status_code == 200, done.text
        assert not (photos / "copy of img_0002.png").exists() and (photos / "img_0002.png").exists()
        assert len([p for p in aside.rglob("*") if p.is_file()]) == 1  # the copy, not the keeper
        back = client.post("/api/v1/duplicates/undo", json={})  # JSON only: a cross-site form cannot send it
        assert back.status_code == 200, back.text
    assert (photos / "copy of img_0002.png").exists() and not [p for p in aside.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------------------------- people


@pytest.fixture
def with_people(tmp_path):
    """A collection whose home also holds indexed, clustered faces (the fake detector and embedder of
    test_faces_gallery): alice in 3 photos, bob in 2."""
    photos = tmp_path / "people"
    for v in range(3):
        save_photo(photos / f"alice{v}.png", [1], v)
    for v in range(2):
        save_photo(photos / f"bob{v}.png", [2], v)
    coll = open_collection(tmp_path / "home")
    coll.index_folder(photos)
    gallery = open_gallery(tmp_path / "home")
    gallery.index_folder(photos)
    FaceClusters(gallery, ClusterParams(algorithm="agglomerative", threshold=0.6, min_size=2)).cluster()
    return coll


def test_people_are_listed_with_their_faces_and_named_only_when_changes_are_allowed(with_people):
    coll = with_people
    with client_for(coll) as client:
        assert client.get("/api/v1/stats").json()["features"]["people"] is True
        people = client.get("/api/v1/people").json()["people"]
        assert sorted(len(p["faces"]) for p in people) == [2, 3] and all(p["name"] is None for p in people)
        alice = next(p for p in people if len(p["faces"]) == 3)
        face = alice["faces"][0]
        assert face["image"]["name"].startswith("alice") and len(face["box"]) == 4
        crop = client.get(face["thumbnail"], params={"size": 64})
        assert crop.headers["content-type"] == "image/jpeg" and max(Image.open(io.BytesIO(crop.content)).size) == 64
        assert_json_error(client.get("/api/v1/faces/99999/thumbnail"), 404, "no indexed face")
        r = client.post(f"/api/v1/people/{alice['cluster']}/name", json={"name": "alice"})
        assert_json_error(r, 403, "the server is read-only; restart with --allow-changes")
    with client_for(coll, allow_changes=True) as client:
        assert client.get("/api/v1/stats").json()["features"]["changes"] is True
        r = client.post(f"/api/v1/people/{alice['cluster']}/name", json={"name": "alice"})
        assert r.status_code == 200 and r.json() == {"cluster": alice["cluster"], "name": "alice"}
        assert {p["cluster"]: p["name"] for p in client.get("/api/v1/people").json()["people"]}[
            alice["cluster"]
        ] == "alice"
        assert_json_error(client.post("/api/v1/people/424242/name", json={"name": "x"}), 404, "no person")
        form = client.post(
            f"/api/v1/people/{alice['cluster']}/name", content='{"name": "eve"}', headers={"content-type": "text/plain"}
        )
        assert form.status_code in (415, 422)  # a cross-site form cannot name anyone


# --------------------------------------------------------------------------------------------- safety


def test_with_a_token_every_api_request_needs_it_and_the_app_files_do_not(served, tmp_path):
    coll, _, _ = served
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "index.html").write_text("<!doctype html><title>lookalike</title>")
    (webapp / "app.js").write_text("console.log('hi')")
    with client_for(coll, token=TOKEN, webapp=webapp) as client:
        body = assert_json_error(client.get("/api/v1/stats"), 401, "Authorization: Bearer")
        assert "s3cret" not in json.dumps(body)
        assert client.get("/api/v1/stats").headers["www-authenticate"] == "Bearer"
        assert_json_error(client.get("/api/v1/stats", headers={"Authorization": "Bearer wrong"}), 401)
        assert_json_error(client.get("/api/v1/stats", headers={"Authorization": TOKEN}), 401)
        assert_json_error(client.get("/api/v1/no-such-thing"), 401)  # nothing is told without the token
        assert client.get("/api/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/").status_code == 200 and client.get("/app/app.js").status_code == 200
        # with a token, any Host name is served (the token is the guard)
        assert client.get("/", headers={"Host": "photos.example:8765"}).status_code == 200


def test_without_a_token_only_loopback_host_names_are_answered(served):
    _, _, client = served
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "localhost"):
        assert client.get("/api/v1/stats", headers={"Host": host}).status_code == 200, host
    assert_json_error(client.get("/api/v1/stats", headers={"Host": "evil.example"}), 400, "answers only to")


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/images/..%2f..%2f..%2fetc%2fpasswd",
        "/api/v1/images/..%2f..",
        "/api/v1/images/../../../etc/passwd",
        "/api/v1/images/%2e%2e/file",
        "/api/v1/images/1%2f..%2f..%2fserver.py/file",
        "/api/v1/images/-1/file",
        "/api/v1/images/1.5/file",
        "/app/..%2f..%2fserver.py",
        "/app/../server.py",
        "/app/%2e%2e/server.py",
    ],
)
def test_paths_from_the_client_never_reach_the_disk(served, url):
    _, _, client = served
    r = client.get(url)
    assert r.status_code in (400, 404, 422), (url, r.status_code)
    assert r.headers["content-type"].startswith("application/json") and "error" in r.json()
    assert b"root:" not in r.content and b"import" not in r.content


def test_an_upload_that_is_not_an_image_is_refused_by_its_content(served):
    _, _, client = served
    r = client.post("/api/v1/search", files={"file": ("holiday.jpg", b"I am a text file, honest", "image/jpeg")})
    assert_json_error(r, 415, "holiday.jpg: not an image")


def test_a_decompression_bomb_is_refused_with_the_reason(served):
    _, _, client = served
    r = client.post("/api/v1/search", files={"file": ("bomb.png", bomb_png(), "image/png")})
    assert_json_error(r, 413, "decompression bomb")


def test_an_upload_over_the_limit_is_refused(served):
    coll, _, _ = served
    big = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    with client_for(coll, max_upload_bytes=100_000) as client:
        r = client.post("/api/v1/search", files={"file": ("big.png", big, "image/png")})
        assert_json_error(r, 413, "larger than the server's limit")

        def chunks():  # no Content-Length: counted while reading
            for n in range(0, len(big), 16_384):
                yield big[n : n + 16_384]

        r = client.post("/api/v1/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
        assert_json_error(r, 413, "larger than the server's limit")
        small = client.post("/api/v1/search", files={"file": ("ok.png", png_bytes(draw_image(1)), "image/png")})
        assert small.status_code == 200


def test_a_declared_length_over_the_limit_is_refused_before_reading_the_body():
    sent: list[dict] = []

    async def app(scope, receive, send):  # pragma: no cover  (must not be reached)
        raise AssertionError("the application was called")

    async def receive():  # pragma: no cover  (must not be called)
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/search",
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(100 * 1024 * 1024).encode())],
    }
    import asyncio

    asyncio.run(Guard(app, ServeSettings())(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"25 MB" in sent[1]["body"]


def test_k_outside_1_to_200_is_422(served):
    coll, photos, client = served
    image_id = ids_by_name(coll)["img_0001.png"]
    for k in (0, 201, -3):
        assert_json_error(client.get(f"/api/v1/images/{image_id}/similar", params={"k": k}), 422, "k")
    upload = {"file": ("q.png", (photos / "img_0001.png").read_bytes(), "image/png")}
    assert_json_error(client.post("/api/v1/search", files=upload, data={"k": "500"}), 422, "k")
    assert_json_error(client.get(f"/api/v1/images/{image_id}/similar", params={"k": "many"}), 422, "k")
    assert client.get(f"/api/v1/images/{image_id}/similar", params={"k": 200}).status_code == 200


def test_the_frameworks_own_errors_are_json(served):
    _, _, client = served
    assert_json_error(client.get("/api/v1/nothing-here"), 404, "nothing at /api/v1/nothing-here")
    assert_json_error(client.delete("/api/v1/stats"), 405, "DELETE is not allowed")
    assert_json_error(client.post("/api/v1/search"), 422, "file")


def test_responses_carry_the_safety_headers(served):
    _, _, client = served
    r = client.get("/api/v1/stats")
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


# --------------------------------------------------------------------------------------------- files that change


def test_a_thumbnail_follows_its_file_and_a_gone_file_is_410(fresh):
    coll, photos = fresh
    image_id = ids_by_name(coll)["img_0003.png"]
    with client_for(coll) as client:
        before = client.get(f"/api/v1/images/{image_id}/thumbnail", params={"size": 64}).content
        assert client.get(f"/api/v1/images/{image_id}/thumbnail", params={"size": 64}).content == before
        Image.new("RGB", (96, 80), (0, 200, 0)).save(photos / "img_0003.png")
        os.utime(photos / "img_0003.png", ns=(1, 1))
        after = client.get(f"/api/v1/images/{image_id}/thumbnail", params={"size": 64})
        assert after.content != before
        green = np.asarray(Image.open(io.BytesIO(after.content)).convert("RGB"), np.float32).reshape(-1, 3).mean(0)
        assert green[1] > 150 and green[0] < 50
        assert len(list((coll.home / "thumbnails").rglob("*.jpg"))) == 2  # cached in the collection's home
        (photos / "img_0003.png").unlink()
        assert_json_error(client.get(f"/api/v1/images/{image_id}/thumbnail"), 410, "no longer on disk")
        assert_json_error(client.get(f"/api/v1/images/{image_id}/file"), 410, "no longer on disk")


def test_the_server_writes_nothing_but_caches(fresh):
    coll, photos = fresh
    files = {p: p.stat().st_mtime_ns for p in photos.iterdir()}
    db_before = (coll.home / "lookalike.db").read_bytes()
    with client_for(coll) as client:
        image_id = ids_by_name(coll)["img_0001.png"]
        client.get(f"/api/v1/images/{image_id}/thumbnail")
        client.get(f"/api/v1/images/{image_id}/similar")
        client.post("/api/v1/search", files={"file": ("q.png", (photos / "img_0001.png").read_bytes(), "image/png")})
        client.get("/api/v1/stats")
    assert {p: p.stat().st_mtime_ns for p in photos.iterdir()} == files
    assert (coll.home / "lookalike.db").read_bytes() == db_before


# --------------------------------------------------------------------------------------------- concurrency


def test_searches_by_upload_wait_in_a_bounded_queue_then_get_503(served, monkeypatch):
    coll, photos, _ = served
    release, started = threading.Event(), threading.Event()
    real = coll.search_images

    def slow(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(coll, "search_images", slow)
    upload = {"file": ("q.png", (photos / "img_0001.png").read_bytes(), "image/png")}
    with client_for(coll, embed_queue=1) as client:
        first: list = []
        worker = threading.Thread(target=lambda: first.append(client.post("/api/v1/search", files=upload)))
        worker.start()
        assert started.wait(30)
        busy = client.post("/api/v1/search", files=upload)
        assert_json_error(busy, 503, "busy")
        assert int(busy.headers["retry-after"]) >= 1
        image_id = ids_by_name(coll)["img_0001.png"]
        assert client.get(f"/api/v1/images/{image_id}/similar").status_code == 200  # no embedding: not queued
        release.set()
        worker.join(30)
        assert first[0].status_code == 200
        assert client.post("/api/v1/search", files=upload).status_code == 200


class GatedEmbedder:
    """The shared small network, which stops before its second batch until ``gate`` is set."""

    def __init__(self, config, gate: threading.Event, waiting: threading.Event) -> None:
        self.inner = shared_embedder(config)
        self.config, self.dim = config, self.inner.dim
        self.gate, self.waiting, self.batches = gate, waiting, 0

    def embed_batch(self, pixels, mask=None):
        self.batches += 1
        if self.batches == 2:
            self.waiting.set()
            assert self.gate.wait(60)
        return self.inner.embed_batch(pixels, mask)


def test_the_collection_stays_searchable_while_another_writer_indexes_it(fresh, tmp_path):
    coll, _ = fresh
    more = tmp_path / "more"
    make_folder(more, 3, start_seed=300)
    gate, waiting = threading.Event(), threading.Event()
    writer = Collection(
        coll.home,
        runtime=RuntimeOptions(device="cpu", batch_size=1, workers=0),
        embedder_factory=lambda cfg, rt: GatedEmbedder(cfg, gate, waiting),
    )
    writer.configure(model=SMALL_MODEL)
    indexing = threading.Thread(target=writer.index_folder, args=(more,))
    with client_for(coll) as client:
        indexing.start()
        try:
            assert waiting.wait(60)  # the first new image is committed, the run goes on holding the lock
            with pytest.raises(CollectionBusyError), write_lock(coll.home):
                pass
            stats = client.get("/api/v1/stats").json()
            assert stats["images"] == 13 and stats["indexed"] == 11
            new_id = ids_by_name(coll)["img_0300.png"]
            r = client.get(f"/api/v1/images/{new_id}/similar", params={"k": 3})
            assert r.status_code == 200 and len(r.json()["hits"]) == 3
            q = client.post("/api/v1/search", files={"file": ("q.png", (more / "img_0300.png").read_bytes())})
            assert q.json()["results"][0]["hits"][0]["id"] == new_id
        finally:
            gate.set()
            indexing.join(60)
    assert coll.stats().indexed == 13


def test_after_another_process_commits_one_search_rebuilds_the_index_and_the_others_wait(fresh, caplog):
    coll, _ = fresh
    ids = list(ids_by_name(coll).values())
    with client_for(coll) as client:
        assert client.get(f"/api/v1/images/{ids[0]}/similar").status_code == 200
        with coll.session() as s, s.begin():  # as a batch committed by an index run in another process
            db.bump_vector_version(s)
        caplog.clear()
        answers: list[int] = []
        threads = [
            threading.Thread(target=lambda i=i: answers.append(client.get(f"/api/v1/images/{i}/similar").status_code))
            for i in ids[:6]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert answers == [200] * 6
    assert sum("rebuilding it from the database" in r.getMessage() for r in caplog.records) == 1


def test_the_network_is_loaded_when_the_server_starts_not_at_the_first_search(served):
    coll, _, _ = served
    for warm_up in (True, False):
        built = threading.Event()

        def factory(cfg, rt, built=built):
            built.set()
            return shared_embedder(cfg)

        again = Collection(coll.home, runtime=FAST_RUNTIME, embedder_factory=factory, create=False)
        with client_for(again, warm_up=warm_up) as client:
            assert client.get("/api/v1/stats").status_code == 200
            assert built.wait(30 if warm_up else 1) is warm_up


# --------------------------------------------------------------------------------------------- docs and web app


def test_the_api_docs_are_served_without_the_internet(served):
    _, _, client = served
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/v1/search", "/api/v1/images/{image_id}/similar", "/api/v1/stats"} <= set(schema["paths"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_the_web_app_is_served_from_its_folder_and_a_missing_one_is_said_plainly(served, tmp_path):
    coll, _, _ = served
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "index.html").write_text("<!doctype html><title>lookalike</title>")
    (webapp / "style.css").write_text("body{}")
    with client_for(coll, webapp=webapp) as client:
        page = client.get("/")
        assert "<title>lookalike</title>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]  # nothing from the internet
        assert client.get("/app/style.css").headers["content-type"].startswith("text/css")
        assert_json_error(client.get("/app/missing.js"), 404)
    with client_for(coll, webapp=tmp_path / "nowhere") as client:
        r = client.get("/")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain")
        assert "web app's files are missing" in r.text and "/docs" in r.text


def test_the_package_ships_its_web_app_folder():
    from indexer.server import WEBAPP_DIR

    assert WEBAPP_DIR.name == "webapp" and WEBAPP_DIR.parent.name == "indexer"


# --------------------------------------------------------------------------------------------- the real command


def start_serve(home: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``lookalike --home HOME serve --port 0 ARGS`` in a subprocess -> the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "--home", str(home), "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+)", line)
    if m is None:
        proc.kill()
        raise AssertionError(f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return proc, m.group(1)


def fetch(url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    for _ in range(100):  # uvicorn may need a moment after printing the address
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except (ConnectionError, urllib.error.URLError):
            time.sleep(0.1)
    raise AssertionError(f"nothing answered at {url}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_lookalike_serve_answers_over_http(served):
    coll, _, _ = served
    proc, url = start_serve(coll.home)
    try:
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        status, body = fetch(url.rstrip("/") + "/api/v1/stats")
        assert status == 200 and body["images"] == 10
    finally:
        stop(proc)


def test_a_non_loopback_bind_without_a_token_generates_and_prints_one(served):
    coll, _, _ = served
    proc, url = start_serve(coll.home, "--host", "0.0.0.0")
    try:
        token = url.split("?token=", 1)[1]
        assert len(token) >= 24
        port = re.search(r":(\d+)/", url).group(1)
        status, body = fetch(f"http://127.0.0.1:{port}/api/v1/stats")
        assert status == 401 and "Authorization" in body["error"]["message"]
        assert fetch(f"http://127.0.0.1:{port}/api/v1/stats", token)[0] == 200
    finally:
        stop(proc)


def test_the_listening_socket_says_it_is_tcp_so_nagle_is_off():
    # asyncio disables Nagle's algorithm only on sockets created with proto IPPROTO_TCP; otherwise each response
    # on a kept-alive connection waits ~40 ms for the client's delayed ACK
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
    with pytest.raises(LookalikeError, match="cannot listen on 127.0.0.1"):
        busy = bind_socket("127.0.0.1", 0)
        busy.listen()
        try:
            bind_socket("127.0.0.1", busy.getsockname()[1]).close()
        finally:
            busy.close()


def test_a_collection_that_does_not_exist_is_one_clear_line(tmp_path):
    r = CliRunner().invoke(main, ["--home", str(tmp_path / "none"), "serve", "--port", "0"])
    assert r.exit_code == 1 and "no collection in" in r.output
    assert not (tmp_path / "none").exists()  # reading never creates
