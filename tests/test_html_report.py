"""``lookalike search ... --html``: a self-contained page of the results (indexer/html_report.py)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from indexer.cli import main
from indexer.engine import Collection, QueryResult, SearchHit
from indexer.html_report import render_report, write_report

from .browser import RESULTS, chromium_or_skip
from .conftest import FAST_RUNTIME, SMALL_MODEL, draw_image, make_folder


class _Page(HTMLParser):
    """Every element with its attributes, and the text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def images(self) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == "img"]

    def hit_items(self) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == "li" and "data-rank" in a]


def _decode_data_uri(uri: str) -> Image.Image:
    head, _, payload = uri.partition(",")
    assert head == "data:image/jpeg;base64"
    img = Image.open(io.BytesIO(base64.b64decode(payload)))
    img.load()
    return img


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    return make_folder(tmp_path / "pics", 5)


def _results(pictures: list[Path]) -> list[QueryResult]:
    hits = [SearchHit(id=i + 1, path=str(p), score=0.95 - 0.1 * i, width=96, height=80) for i, p in enumerate(pictures)]
    return [
        QueryResult(query=str(pictures[0]), hits=hits),
        QueryResult(query=str(pictures[0].parent / "gone.jpg"), error="cannot read file (No such file or directory)"),
        QueryResult(query=str(pictures[1]), hits=hits[1:3]),
    ]


def test_report_embeds_a_thumbnail_of_every_hit_and_of_each_readable_query(tmp_path, pictures):
    out = write_report(_results(pictures), tmp_path / "report.html", thumbnail_size=64)
    page = _Page(out.read_text(encoding="utf-8"))
    images = page.images()
    # 2 readable queries + 5 + 2 hits; the failed query has no picture
    assert len(images) == 2 + 5 + 2
    for attrs in images:
        thumb = _decode_data_uri(attrs["src"] or "")
        assert max(thumb.size) <= 64
        assert attrs["alt"]
    # the same picture as drawn, not just any JPEG: the thumbnail of hit 1 matches the file's colours
    first_hit = _decode_data_uri(next(a["src"] for a in images if (a["alt"] or "").startswith("result 1:")))
    original = draw_image(0).resize(first_hit.size)
    diff = sum(abs(a - b) for a, b in zip(first_hit.convert("RGB").tobytes(), original.tobytes())) / (
        first_hit.size[0] * first_hit.size[1] * 3
    )
    assert diff < 20


def test_report_lists_hits_in_rank_order_with_scores_and_paths(tmp_path, pictures):
    page = _Page(render_report(_results(pictures)[:1]))
    items = page.hit_items()
    assert [int(a["data-rank"] or 0) for a in items] == [1, 2, 3, 4, 5]
    scores = [float(a["data-score"] or 0) for a in items]
    assert scores == sorted(scores, reverse=True)
    text = " ".join(page.text)
    for p in pictures:
        assert str(p) in text
    assert "0.950" in text and "0.550" in text


def test_report_loads_nothing_from_outside_itself(pictures):
    page_text = render_report(_results(pictures))
    page = _Page(page_text)
    assert not [t for t, _ in page.elements if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in page.elements:
        for name in ("src", "srcset", "poster", "data"):
            value = attrs.get(name)
            assert value is None or value.startswith("data:"), (tag, name, value)
        href = attrs.get("href")
        assert href is None or href.startswith("file:"), (tag, href)
    assert "url(" not in page_text and "@import" not in page_text
    csp = [a for t, a in page.elements if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")


def test_a_failed_query_shows_its_error_and_the_others_their_hits(pictures):
    page = _Page(render_report(_results(pictures)))
    alerts = [a for t, a in page.elements if a.get("role") == "alert"]
    assert len(alerts) == 1
    text = " ".join(page.text)
    assert "gone.jpg" in text and "No such file or directory" in text
    assert len(page.hit_items()) == 5 + 2


def test_a_hit_whose_file_vanished_says_so_instead_of_a_picture(tmp_path, pictures):
    pictures[2].unlink()
    page = _Page(render_report(_results(pictures)[:1]))
    assert len(page.images()) == 1 + 4
    assert "no preview:" in " ".join(page.text) and "no longer on disk" in " ".join(page.text)


def test_paths_are_escaped_not_interpreted_as_markup(tmp_path):
    odd = tmp_path / "<b>bold & 'quoted'.png"
    draw_image(1).save(odd)
    page_text = render_report([QueryResult(query=str(odd), hits=[SearchHit(id=1, path=str(odd), score=1.0)])])
    assert "<b>bold" not in page_text
    assert "&lt;b&gt;bold &amp;" in page_text
    assert [t for t, _ in _Page(page_text).elements].count("b") == 0


def test_search_html_option_writes_the_report_of_a_real_search(tmp_path):
    folder = tmp_path / "photos"
    make_folder(folder, 6)
    coll = Collection(tmp_path / "home", runtime=FAST_RUNTIME)
    coll.configure(model=SMALL_MODEL)
    coll.index_folder(folder)
    del coll
    out = tmp_path / "report.html"
    query = folder / "img_0002.png"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(tmp_path / "home"),
            "search",
            str(query),
            str(tmp_path / "nope.png"),
            "-k",
            "3",
            "--html",
            str(out),
        ],
    )
    assert result.exit_code == 3, result.output  # one query could not be read
    page = _Page(out.read_text(encoding="utf-8"))
    assert len(page.hit_items()) == 3
    assert len(page.images()) == 1 + 3
    text = " ".join(page.text)
    assert "img_0002.png" in text and "nope.png" in text
    assert list((tmp_path / "home" / "thumbnails").rglob("*.jpg")), "made in the collection's cache, for `serve` too"
    assert f"report: {out}" in result.output or str(out) in result.output


def test_the_report_opens_in_a_browser_without_any_request(tmp_path, pictures):
    out = write_report(_results(pictures), tmp_path / "report.html")
    with chromium_or_skip() as browser:
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 800})
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(out.as_uri())
        loaded = page.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
        assert loaded and all(loaded)
        assert [u for u in requests if not u.startswith(("data:", "file:"))] == []
        assert page.get_by_role("alert").inner_text().startswith("cannot read the query")
        RESULTS.mkdir(exist_ok=True)
        page.screenshot(path=str(RESULTS / "html_report.png"), full_page=True)
        context.close()
