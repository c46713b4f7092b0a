"""The web app (indexer/webapp/) used as a person would, in a real headless Chromium driven by Playwright, against
the real server (:func:`indexer.server.create_app` on uvicorn, on a free loopback port) over a small real
collection. Screenshots go to tests/results/ (look at them)."""

from __future__ import annotations

import base64
import io
import math
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from indexer.duplicates import DuplicateFinder
from indexer.engine import Collection

from .browser import RESULTS, chromium_or_skip
from .conftest import FAST_RUNTIME, SMALL_MODEL, draw_image

uvicorn = pytest.importorskip("uvicorn")
server_module = pytest.importorskip("indexer.server")

TOKEN = "s3cret-token"
SIZE = (160, 120)  # pictures of the collection
TIMEOUT = 15_000  # ms, for anything the page waits on


@dataclass
class Served:
    url: str
    collection: Collection
    folder: Path
    queries: Path


class _Server:
    """uvicorn serving ``app`` in a thread, on a socket bound here (a free loopback port)."""

    def __init__(self, app) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def collection_home(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A collection of 8 drawn pictures, a byte-identical copy of one (a duplicates group), and queries kept
    outside it: two pictures side by side (for the box), a text file named .jpg."""
    root = tmp_path_factory.mktemp("webapp")
    folder, queries = root / "photos", root / "queries"
    folder.mkdir()
    queries.mkdir()
    for i in range(8):  # photo 7 upright
        draw_image(i, SIZE if i < 7 else SIZE[::-1]).save(folder / f"photo_{i}.png")
    shutil.copyfile(folder / "photo_0.png", folder / "photo_0 copy.png")
    pair = Image.new("RGB", (SIZE[0] * 2, SIZE[1]))
    pair.paste(draw_image(3, SIZE), (0, 0))
    pair.paste(draw_image(5, SIZE), (SIZE[0], 0))
    pair.save(queries / "three_and_five.png")
    (queries / "notes.jpg").write_text("not a picture at all\n")
    draw_image(6, SIZE).save(queries / "like_six.jpg", quality=80)
    coll = Collection(root / "home", runtime=FAST_RUNTIME)
    coll.configure(model=SMALL_MODEL)
    coll.index_folder(folder)
    # a small calibration, so that the duplicates page exists
    DuplicateFinder(coll).calibrate(samples=4, copies_per_image=3, seed=0)
    return root / "home", folder, queries


@pytest.fixture(scope="module")
def served(collection_home) -> Iterator[Served]:
    home, folder, queries = collection_home
    coll = Collection(home, runtime=FAST_RUNTIME, create=False)
    with _Server(server_module.create_app(coll, server_module.ServeSettings())) as url:
        yield Served(url, coll, folder, queries)


@pytest.fixture(scope="module")
def served_with_token(collection_home) -> Iterator[Served]:
    home, folder, queries = collection_home
    coll = Collection(home, runtime=FAST_RUNTIME, create=False)
    with _Server(server_module.create_app(coll, server_module.ServeSettings(token=TOKEN))) as url:
        yield Served(url, coll, folder, queries)


@pytest.fixture(scope="module")
def browser():
    with chromium_or_skip() as b:
        yield b


@pytest.fixture
def page(browser, served):
    """A fresh tab (1366 x 860, a laptop screen) that records every request and every script error."""
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    context.set_default_timeout(TIMEOUT)
    tab = context.new_page()
    tab.requests = []
    tab.errors = []
    tab.on("request", lambda r: tab.requests.append(r.url))
    tab.on("pageerror", lambda e: tab.errors.append(str(e)))
    tab.on("console", lambda m: "Content Security Policy" in m.text and tab.errors.append(m.text))
    yield tab
    context.close()
    assert tab.errors == [], "the page threw"


def shot(page, name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / f"webapp_{name}.png"), full_page=True)


def cards(page) -> list[dict]:
    """The visible result tiles in page order: id, rank, score, name, whether the thumbnail is shown."""
    return page.eval_on_selector_all(
        "#results li.card:not([hidden])",
        """els => els.map(e => {
            const img = e.querySelector('img');
            return {id: +e.dataset.id, rank: +e.dataset.rank, score: +e.dataset.score,
                    name: e.querySelector('.name').textContent,
                    shown: img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:')};
        })""",
    )


def wait_for_thumbnails(page, n: int) -> None:
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('#results li.card:not([hidden]) img')];
                  return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=n,
    )


def upload(page, path: Path) -> None:
    page.locator("#file").set_input_files(str(path))


def open_app(page, served: Served, query: str = "") -> None:
    page.goto(served.url + "/" + query)
    page.wait_for_selector("main > section.page:not([hidden])")


# --------------------------------------------------------------------------------------------- the tests


def test_an_uploaded_query_shows_result_thumbnails_in_score_order(page, served):
    open_app(page, served)
    assert page.locator("#stats").inner_text().startswith("9 images searchable")
    upload(page, served.folder / "photo_4.png")
    wait_for_thumbnails(page, 9)
    hits = cards(page)
    assert [h["rank"] for h in hits] == list(range(1, 10))
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(h["shown"] for h in hits)
    # every tile is square, whatever the picture's shape (photo 7 is upright)
    sizes = page.eval_on_selector_all("#results .thumb", "els => els.map(e => [e.offsetWidth, e.offsetHeight])")
    assert all(abs(w - h) <= 1 for w, h in sizes), sizes
    assert hits[0]["name"] == "photo_4.png" and hits[0]["score"] > 0.99
    # the page shows what the API answers for the same upload
    expected = served.collection.search_images([(served.folder / "photo_4.png").read_bytes()], k=9)[0].hits
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert page.locator("#results-status").inner_text().startswith("9 results, best first")
    assert page.locator("#results-title").inner_text() == "Like photo_4.png"
    # everything came from the server (nothing from the internet)
    assert [u for u in page.requests if not u.startswith((served.url, "blob:", "data:"))] == []
    shot(page, "search")
    page.emulate_media(color_scheme="dark")
    page.wait_for_timeout(300)  # the drop zone's colour transition
    shot(page, "search_dark")


def test_clicking_a_result_searches_from_it_and_back_returns(page, served):
    open_app(page, served)
    upload(page, served.folder / "photo_4.png")
    wait_for_thumbnails(page, 9)
    second = cards(page)[1]
    page.locator("#results li.card").nth(1).locator("button.thumb").click()
    page.wait_for_function(
        "name => document.querySelector('#results-title').textContent === 'Like ' + name", arg=second["name"]
    )
    assert page.url.endswith(f"#search/similar/{second['id']}")
    wait_for_thumbnails(page, 8)
    hits = cards(page)
    expected = served.collection.search_ids([second["id"]], k=20)[0].hits
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert second["id"] not in [h["id"] for h in hits]  # an image is not among its own hits
    assert page.locator("#query-name").inner_text() == second["name"]
    shot(page, "more_like_this")
    page.go_back()
    page.wait_for_function("() => document.querySelector('#results-title').textContent === 'Like photo_4.png'")
    wait_for_thumbnails(page, 9)


def test_the_score_filter_hides_results_below_it(page, served):
    open_app(page, served)
    upload(page, served.folder / "photo_1.png")
    wait_for_thumbnails(page, 9)
    scores = [h["score"] for h in cards(page)]
    # a slider step (0.01) that falls between two results, past the first
    steps = [(i + 1, math.floor(scores[i] * 100) / 100) for i in range(1, 8)]
    kept, cut = next((n, c) for n, c in steps if c > scores[n])
    page.locator("#min-score").fill(str(cut))
    page.wait_for_function("n => document.querySelectorAll('#results li.card:not([hidden])').length === n", arg=kept)
    assert [h["score"] for h in cards(page)] == scores[:kept]
    assert page.locator("#min-score-value").inner_text() == f"{cut:.2f}"
    assert page.locator("#results-status").inner_text().startswith(f"{kept} of 9 results with a score of {cut:.2f}")
    shot(page, "score_filter")
    page.locator("#min-score").fill("0")
    page.wait_for_function("() => document.querySelectorAll('#results li.card:not([hidden])').length === 9")


def test_a_box_drawn_on_the_query_searches_that_region(page, served):
    open_app(page, served)
    assert page.locator("#region").is_hidden()  # until there is a query
    upload(page, served.queries / "three_and_five.png")
    wait_for_thumbnails(page, 9)
    assert page.locator("#region").is_visible()  # the server has the region feature
    img = page.locator("#query-img").bounding_box()
    assert img is not None

    def drag(start: tuple[float, float], end: tuple[float, float]) -> None:
        """Press at ``start`` and release at ``end`` (fractions of the picture; outside it clamps to its edge)."""
        at = lambda f: (img["x"] + f[0] * img["width"], img["y"] + f[1] * img["height"])
        with page.expect_request(lambda r: r.url.endswith("/api/v1/search") and r.method == "POST"):
            page.mouse.move(*at(start))
            page.mouse.down()
            page.mouse.move(*at(((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)), steps=3)
            page.mouse.move(*at(end), steps=3)
            page.mouse.up()
        page.wait_for_function("() => document.querySelector('#results-title').textContent.endsWith('(region)')")
        wait_for_thumbnails(page, 9)

    drag((0.5, 0.985), (-0.1, -0.1))  # the left half (edges snap to the picture's): photo 3 exactly
    assert cards(page)[0]["name"] == "photo_3.png" and cards(page)[0]["score"] > 0.98
    assert page.locator("#box").is_visible()
    assert int(page.locator("#region-x").input_value()) in (0, 1, 2)
    region = [int(page.locator(f"#region-{c}").input_value()) for c in "xywh"]
    assert region == [0, 0, 50, 100]
    shot(page, "box")
    # the same with the keyboard: the region fields
    page.locator("#region-x").fill("50")
    page.locator("#region-y").fill("0")
    page.locator("#region-w").fill("50")
    page.locator("#region-h").fill("100")
    page.locator("#region-search").press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#results li.card .name')?.textContent === 'photo_5.png' && "
        "document.querySelector('#results-title').textContent.endsWith('(region)')"
    )
    page.locator("#region-clear").click()
    page.wait_for_function("() => document.querySelector('#results-title').textContent === 'Like three_and_five.png'")
    assert page.locator("#box").is_hidden()
    # a region of an indexed picture (after "more like this"): its original file is uploaded with the box
    page.locator("#results li.card").first.locator("button.thumb").click()
    page.wait_for_function("() => location.hash.startsWith('#search/similar/')")
    wait_for_thumbnails(page, 8)
    for field, value in zip("xywh", ("0", "0", "50", "100")):
        page.locator(f"#region-{field}").fill(value)
    with (
        page.expect_request(lambda r: r.url.endswith("/file")),
        page.expect_request(lambda r: r.url.endswith("/api/v1/search") and r.method == "POST"),
    ):
        page.locator("#region-search").click()
    page.wait_for_function("() => document.querySelector('#results-title').textContent.endsWith('(region)')")
    wait_for_thumbnails(page, 9)


def test_the_full_image_opens_in_a_viewer(page, served):
    open_app(page, served)
    upload(page, served.queries / "like_six.jpg")
    wait_for_thumbnails(page, 9)
    assert cards(page)[0]["name"] == "photo_6.png"
    first = page.locator("#results li.card").first
    first.hover()
    first.get_by_role("button", name="View photo_6.png full size").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    page.wait_for_function(
        "() => { const i = document.querySelector('#viewer-img'); "
        "return i.complete && i.naturalWidth === 160 && i.src.startsWith('blob:'); }"
    )
    assert "photo_6.png" in dialog.inner_text()
    shot(page, "viewer")
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")


def test_an_upload_that_is_not_an_image_shows_the_servers_reason(page, served):
    open_app(page, served)
    upload(page, served.queries / "notes.jpg")
    error = page.locator("#results-error")
    error.wait_for()
    assert "not an image" in error.inner_text()
    assert cards(page) == []
    shot(page, "not_an_image")


def test_the_duplicates_page_shows_groups_with_the_keeper_marked(page, served):
    open_app(page, served)
    page.get_by_role("link", name="Duplicates").click()
    page.wait_for_selector("#dup-groups .group")
    page.wait_for_function("() => [...document.querySelectorAll('#dup-groups img')].every(i => i.naturalWidth > 0)")
    shot(page, "duplicates")
    groups = page.locator("#dup-groups .group")
    n = groups.count()
    assert page.locator("#dup-status").inner_text().startswith(f"{n} group")
    for i in range(n):  # one suggested keeper per group, marked
        assert groups.nth(i).locator(".card.keep").count() == 1
        assert groups.nth(i).locator(".card.keep .badge").inner_text().lower() == "keep"
    exact = groups.filter(has_text="identical files")
    assert exact.count() == 1
    assert "2 files · identical files" in exact.locator("h2").inner_text()
    assert sorted(exact.locator(".card .name").all_inner_texts()) == ["photo_0 copy.png", "photo_0.png"]
    # another threshold: the server's answer replaces the groups (a very low one groups more files)
    before = page.locator("#dup-groups .card").count()
    page.locator("#dup-threshold").fill("0.2")
    page.locator("#dup-form button").click()
    page.wait_for_function("() => document.querySelector('#dup-status').textContent.includes('(threshold 0.2)')")
    assert page.locator("#dup-groups .card").count() > before
    assert page.locator("#dup-actions").is_hidden()  # a read-only server offers no actions


def test_duplicates_actions_preview_apply_and_undo_when_changes_are_allowed(browser, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        draw_image(i, SIZE).save(folder / f"photo_{i}.png")
    shutil.copyfile(folder / "photo_1.png", folder / "photo_1 copy.png")
    coll = Collection(tmp_path / "home", runtime=FAST_RUNTIME)
    coll.configure(model=SMALL_MODEL)
    coll.index_folder(folder)
    DuplicateFinder(coll).calibrate(samples=3, copies_per_image=2, seed=0)  # the page exists once calibrated
    aside = tmp_path / "aside"
    settings = server_module.ServeSettings(allow_changes=True, move_to=aside)
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    context.set_default_timeout(TIMEOUT)
    try:
        with _Server(server_module.create_app(coll, settings)) as url:
            page = context.new_page()
            page.on("dialog", lambda dialog: dialog.accept())  # "Apply to every copy...?"
            page.goto(url + "/#duplicates")
            page.locator("#dup-threshold").fill("0.999")
            page.locator("#dup-form button").click()
            page.wait_for_function("() => document.querySelector('#dup-status').textContent.includes('0.999')")
            assert page.locator("#dup-groups .group").count() == 1  # the answer to the first load is not added
            page.locator("#dup-action").select_option("move")
            assert page.locator("#dup-apply").is_disabled()  # nothing to apply before a preview
            page.get_by_role("button", name="Preview").click()
            status = page.locator("#dup-action-status")
            page.wait_for_function(
                "() => document.querySelector('#dup-action-status').textContent.startsWith('Preview')"
            )
            assert "1 to do" in status.inner_text() and (folder / "photo_1 copy.png").exists()
            shot(page, "duplicates_preview")
            page.locator("#dup-apply").click()
            page.wait_for_function("() => document.querySelector('#dup-action-status').textContent.startsWith('Done')")
            assert "1 done" in status.inner_text()
            assert not (folder / "photo_1 copy.png").exists() and (folder / "photo_1.png").exists()
            assert [p.name for p in aside.rglob("*.png")] == ["photo_1 copy.png"]
            page.get_by_role("button", name="Undo the last action").click()
            page.wait_for_function(
                "() => document.querySelector('#dup-action-status').textContent.startsWith('Undone')"
            )
            assert (folder / "photo_1 copy.png").exists() and not list(aside.rglob("*.png"))
    finally:
        context.close()


def test_pages_without_their_feature_are_absent(page, served):
    open_app(page, served)
    assert page.get_by_role("link", name="Search").is_visible()
    assert page.get_by_role("link", name="Duplicates").is_visible()
    assert page.get_by_role("link", name="People").count() == 0 or page.get_by_role("link", name="People").is_hidden()
    page.goto(served.url + "/#people")  # asked for anyway: the first page that exists is shown
    page.wait_for_selector("#page-search:not([hidden])")
    assert page.locator("#page-people").is_hidden()


def test_controls_have_labels_and_pictures_alt_text(page, served):
    open_app(page, served)
    upload(page, served.folder / "photo_2.png")
    wait_for_thumbnails(page, 9)
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, button, a[href]')]
            .filter(e => e.offsetParent !== null || e.id === 'file')
            .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim()))
            .map(e => e.outerHTML)"""
    )
    assert unnamed == []
    assert page.evaluate("[...document.querySelectorAll('img')].filter(i => i.src && !i.alt).length") == 0
    # keyboard: Enter on a result searches from it
    page.locator("#results li.card").nth(2).locator("button.thumb").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => location.hash.startsWith('#search/similar/')")


def test_the_file_picker_is_reached_and_opened_with_the_keyboard(page, served):
    open_app(page, served)
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "file":
            break
    assert page.evaluate("document.activeElement.id") == "file"
    shot(page, "keyboard_focus")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(served.folder / "photo_2.png"))
    wait_for_thumbnails(page, 9)
    assert cards(page)[0]["name"] == "photo_2.png"


def test_a_server_with_a_token_needs_it_and_the_app_keeps_it(browser, served_with_token):
    served = served_with_token
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    context.set_default_timeout(TIMEOUT)
    try:
        page = context.new_page()
        page.goto(served.url + "/")
        banner = page.locator("#banner")
        banner.wait_for()
        assert "this server needs its token" in banner.inner_text()
        assert page.locator("#page-token").is_visible()
        shot(page, "token_missing")

        page.goto(served.url + f"/?token={TOKEN}")
        page.wait_for_selector("#page-search:not([hidden])")
        assert "token" not in page.url  # taken out of the address bar
        assert page.evaluate("sessionStorage.getItem('lookalike.token')") == TOKEN
        upload(page, served.folder / "photo_7.png")
        wait_for_thumbnails(page, 9)
        assert cards(page)[0]["name"] == "photo_7.png"
        # images come through blob: URLs: no image URL carries the token
        assert not [u for u in page.evaluate("[...document.images].map(i => i.src)") if TOKEN in u]
        page.reload()  # the tab keeps the token
        page.wait_for_selector("#page-search:not([hidden])")
        assert page.locator("#banner").is_hidden()

        # a wrong token typed into the form: the server's message again
        page.evaluate("sessionStorage.setItem('lookalike.token', 'wrong')")
        page.reload()
        banner.wait_for()
        page.locator("#token-input").fill(TOKEN)
        page.get_by_role("button", name="Use this token").click()
        page.wait_for_selector("#page-search:not([hidden])")
    finally:
        context.close()


def test_a_pasted_or_dropped_picture_is_searched(page, served):
    open_app(page, served)
    data = base64.b64encode((served.folder / "photo_5.png").read_bytes()).decode()
    send = """([kind, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], kind + '.png', {type: 'image/png'}));
        const target = kind === 'pasted' ? document.body : document.getElementById('drop');
        target.dispatchEvent(kind === 'pasted'
            ? new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true})
            : new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
    }"""
    for kind in ("pasted", "dropped"):
        page.evaluate(send, [kind, data])
        page.wait_for_function(
            "n => document.querySelector('#results-title').textContent === n", arg=f"Like {kind}.png"
        )
        wait_for_thumbnails(page, 9)
        assert cards(page)[0]["name"] == "photo_5.png"


def _fake_people(route, changes: bool) -> None:
    """The real stats with the people page (and, or not, changes) switched on."""
    response = route.fetch()
    stats = response.json()
    stats["features"].update(people=True, changes=changes)
    route.fulfill(response=response, json=stats)


PEOPLE = {
    "people": [
        {
            "cluster": 3,
            "name": None,
            "faces": [
                {"face": 10 + i, "image": None, "box": [4, 4, 40, 40], "thumbnail": f"/api/v1/faces/{10 + i}/thumbnail"}
                for i in range(14)
            ],
        },
        {
            "cluster": 7,
            "name": "alice",
            "faces": [{"face": 30, "image": None, "box": [0, 0, 30, 30], "thumbnail": "/api/v1/faces/30/thumbnail"}],
        },
    ]
}


def _route_people(page, served: Served, changes: bool, named: list) -> None:
    """The people endpoints as the contract describes them (the test collection has no faces): two people, face
    crops drawn here; naming answers 200 or, read-only, the server's 403."""
    crop = io.BytesIO()
    draw_image(42, (64, 64)).save(crop, "JPEG")
    page.route("**/api/v1/stats", lambda route: _fake_people(route, changes))
    page.route("**/api/v1/people", lambda route: route.fulfill(json=PEOPLE))
    page.route(
        "**/api/v1/faces/*/thumbnail", lambda route: route.fulfill(body=crop.getvalue(), content_type="image/jpeg")
    )

    def name(route) -> None:
        body = route.request.post_data_json
        named.append((route.request.url, body, route.request.headers.get("content-type")))
        if changes:
            route.fulfill(json={"cluster": 3, "name": body["name"]})
        else:
            message = "the server is read-only; restart with --allow-changes"
            route.fulfill(status=403, json={"error": {"status": 403, "message": message}})

    page.route("**/api/v1/people/*/name", name)


def test_the_people_page_shows_faces_and_names_a_person(page, served):
    named: list = []
    _route_people(page, served, changes=True, named=named)
    open_app(page, served)
    page.get_by_role("link", name="People").click()
    page.wait_for_selector("#people-list .person")
    persons = page.locator("#people-list .person")
    assert persons.count() == 2
    first = persons.first
    assert first.locator("h2").inner_text() == "Person 3"
    assert first.locator(".faces img").count() == 12  # the first faces, then a button for the rest
    first.get_by_role("button", name="Show 2 more faces").click()
    assert first.locator(".faces img").count() == 14
    assert persons.nth(1).locator("h2").inner_text() == "alice"
    page.wait_for_function("() => [...document.querySelectorAll('#people-list img')].every(i => i.naturalWidth > 0)")
    first.get_by_label("Name").fill("bob")
    first.get_by_role("button", name="Save").click()
    page.wait_for_function("() => document.querySelector('#people-list .person h2').textContent === 'bob'")
    assert named[0][0].endswith("/api/v1/people/3/name") and named[0][1] == {"name": "bob"}
    assert named[0][2] == "application/json"
    assert page.locator("#people-status").inner_text().startswith("2 people (2 named), 15 faces")
    shot(page, "people")


def test_people_are_named_only_when_the_server_allows_changes(page, served):
    named: list = []
    _route_people(page, served, changes=False, named=named)
    open_app(page, served, "#people")
    page.wait_for_selector("#people-list .person")
    assert page.locator("#people-list form").count() == 0
    assert "read-only" in page.locator("#people-status").inner_text()


def test_a_result_whose_picture_cannot_be_shown_says_why(page, served):
    infos = served.collection.images(range(1, 50))
    gone = next(i for i, info in infos.items() if info.path.endswith("photo_3.png"))
    message = "photo_3.png is no longer on disk (lookalike index forgets it)"
    page.route(
        re.compile(rf"/api/v1/images/{gone}/(thumbnail|file)"),
        lambda route: route.fulfill(status=410, json={"error": {"status": 410, "message": message}}),
    )
    open_app(page, served)
    upload(page, served.folder / "photo_2.png")
    error = page.locator(f'#results li.card[data-id="{gone}"] .thumb-error')
    error.wait_for()
    assert error.inner_text() == f"no preview: {message}"
    assert len(cards(page)) == 9  # the result is listed all the same
    card = page.locator(f'#results li.card[data-id="{gone}"]')
    card.hover()
    card.get_by_role("button", name="View photo_3.png full size").click()
    page.locator("#viewer-error").wait_for()
    assert page.locator("#viewer-error").inner_text() == message
    assert page.locator("#viewer-img").is_hidden()


def test_without_the_region_feature_the_box_control_is_absent(page, served):
    def no_box(route) -> None:
        response = route.fetch()
        stats = response.json()
        stats["features"]["box"] = False
        route.fulfill(response=response, json=stats)

    page.route("**/api/v1/stats", no_box)
    open_app(page, served)
    upload(page, served.folder / "photo_2.png")
    wait_for_thumbnails(page, 9)
    assert page.locator("#region").is_hidden()
    searches = [u for u in page.requests if u.endswith("/api/v1/search")]
    img = page.locator("#query-img").bounding_box()
    page.mouse.move(img["x"] + 5, img["y"] + 5)
    page.mouse.down()
    page.mouse.move(img["x"] + img["width"] / 2, img["y"] + img["height"] / 2, steps=3)
    page.mouse.up()
    page.wait_for_timeout(300)
    assert page.locator("#box").is_hidden()
    assert [u for u in page.requests if u.endswith("/api/v1/search")] == searches
