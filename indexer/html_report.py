"""A self-contained HTML page of search results (``lookalike search ... --html report.html``).

The page holds everything it shows: the query and hit thumbnails are embedded as ``data:`` URIs, the style is
inline, there is no script, and a Content-Security-Policy forbids loading anything else, so it opens offline, can
be mailed or archived, and never reaches the network. Links to the original files are ``file:`` URIs.
"""

from __future__ import annotations

import base64
import html
import logging
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from indexer.engine import QueryResult, SearchHit
from indexer.thumbnails import ThumbnailError, Thumbnails

log = logging.getLogger(__name__)

#: Longest side of the embedded thumbnails, in pixels (shown at half that on high-density screens).
DEFAULT_THUMBNAIL_SIZE = 256

_STYLE = """
:root { color-scheme: light dark; --bg: #f6f7f9; --card: #fff; --fg: #1d2330; --muted: #5b6475; --line: #dde1e8;
  --accent: #2456c7; --bad: #b3261e; }
@media (prefers-color-scheme: dark) { :root { --bg: #15181e; --card: #1f232b; --fg: #e6e8ec; --muted: #9aa3b2;
  --line: #323844; --accent: #8fb0ff; --bad: #ff8a80; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; }
header { margin-bottom: 20px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0; word-break: break-all; }
.muted { color: var(--muted); font-size: 13px; }
section.query { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px;
  margin-bottom: 24px; }
.query-head { display: flex; gap: 16px; align-items: flex-start; }
.query-head + ol.hits { margin-top: 14px; }
.query-head p { margin: 6px 0 0; }
.query-head img { max-width: 160px; max-height: 160px; border-radius: 6px; border: 1px solid var(--line); }
.error { color: var(--bad); font-weight: 600; }
ol.hits { list-style: none; margin: 0; padding: 0; display: grid; gap: 12px;
  grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
ol.hits li { border: 1px solid var(--line); border-radius: 8px; overflow: hidden; background: var(--bg); }
.thumb { display: flex; align-items: center; justify-content: center; aspect-ratio: 1; background: #0001; }
.thumb a { display: block; width: 100%; height: 100%; }
.thumb img { width: 100%; height: 100%; object-fit: contain; display: block; }
.thumb .missing { padding: 8px; font-size: 12px; color: var(--bad); text-align: center; }
.meta { padding: 6px 8px 8px; font-size: 12px; }
.meta .score { font-weight: 600; font-variant-numeric: tabular-nums; }
.meta .rank { color: var(--muted); float: right; }
.meta .name { display: block; word-break: break-all; margin-top: 2px; }
.meta .path { display: block; color: var(--muted); word-break: break-all; font-size: 11px; }
a { color: var(--accent); }
"""


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class _Thumbs:
    """Thumbnails as data URIs, each file's made once however often it appears; failures give their reason."""

    def __init__(self, cache: Thumbnails, size: int) -> None:
        self.cache, self.size = cache, size
        self.done: dict[str, tuple[str | None, str | None]] = {}

    def get(self, path: str) -> tuple[str | None, str | None]:
        """``(data_uri, None)`` or ``(None, reason)``."""
        if path not in self.done:
            try:
                self.done[path] = (_data_uri(self.cache.get(path, self.size).path.read_bytes()), None)
            except ThumbnailError as exc:
                self.done[path] = (None, str(exc))
            except OSError as exc:  # the cached file vanished under us (another process cleaning the cache)
                self.done[path] = (None, f"cannot read the thumbnail ({exc.strerror or exc})")
            if self.done[path][1] is not None:
                log.info("no thumbnail for %s: %s", path, self.done[path][1])
        return self.done[path]


def _file_link(path: str) -> str | None:
    try:
        return Path(path).as_uri()
    except ValueError:  # a relative path (as stored by some databases): no link
        return None


def _image(thumbs: _Thumbs, path: str, alt: str) -> str:
    uri, reason = thumbs.get(path)
    if uri is None:
        return f'<div class="missing" role="img" aria-label="{html.escape(alt)}">no preview: {html.escape(reason or "")}</div>'
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _hit(thumbs: _Thumbs, rank: int, hit: SearchHit) -> str:
    name = Path(hit.path).name
    link = _file_link(hit.path)
    picture = _image(thumbs, hit.path, f"result {rank}: {name}")
    if link is not None:
        picture = f'<a href="{html.escape(link)}" title="open {html.escape(name)}">{picture}</a>'
    size = f" · {hit.width}×{hit.height}" if hit.width and hit.height else ""
    return (
        f'<li data-rank="{rank}" data-score="{hit.score:.6f}">'
        f'<div class="thumb">{picture}</div>'
        f'<div class="meta"><span class="score" title="cosine similarity">{hit.score:.3f}</span>'
        f'<span class="rank">#{rank}</span>'
        f'<span class="name">{html.escape(name)}</span>'
        f'<span class="path">{html.escape(hit.path)}{size}</span></div></li>'
    )


def _query(thumbs: _Thumbs, result: QueryResult) -> str:
    name = Path(result.query).name
    head = [f'<div class="query-head">{_image(thumbs, result.query, f"query: {name}") if not result.error else ""}']
    head.append(f"<div><h2>{html.escape(result.query)}</h2>")
    if result.error:
        head.append(f'<p class="error" role="alert">cannot read the query: {html.escape(result.error)}</p>')
    elif not result.hits:
        head.append('<p class="muted">no results (none above the threshold)</p>')
    else:
        head.append(f'<p class="muted">{len(result.hits)} results, best first</p>')
    head.append("</div></div>")
    hits = "".join(_hit(thumbs, rank, hit) for rank, hit in enumerate(result.hits, start=1))
    body = f'<ol class="hits">{hits}</ol>' if hits else ""
    return f'<section class="query">{"".join(head)}{body}</section>'


def render_report(
    results: Sequence[QueryResult],
    *,
    title: str = "lookalike search results",
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    thumbnails: Thumbnails | None = None,
) -> str:
    """The HTML page (a string) of ``results`` as :meth:`Collection.search` returns them: per query its thumbnail
    (or its error), then every hit with rank, score, path and an embedded thumbnail (longest side at most
    ``thumbnail_size``, 64..1024). ``thumbnails``: the cache to make them with (the collection's, so that they
    are made once); without one they are made in a temporary folder, removed afterwards."""
    if thumbnails is None:
        with tempfile.TemporaryDirectory(prefix="lookalike-report-") as tmp:
            return render_report(results, title=title, thumbnail_size=thumbnail_size, thumbnails=Thumbnails(tmp))
    thumbs = _Thumbs(thumbnails, thumbnail_size)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    failed = sum(1 for r in results if r.error)
    summary = f"{len(results)} {'query' if len(results) == 1 else 'queries'}"
    if failed:
        summary += f", {failed} could not be read"
    sections = "\n".join(_query(thumbs, r) for r in results)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header><h1>{html.escape(title)}</h1><p class="muted">{summary} · written {when} by lookalike</p></header>
<main>
{sections}
</main>
</body>
</html>
"""


def write_report(
    results: Sequence[QueryResult],
    out: str | Path,
    *,
    title: str = "lookalike search results",
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    thumbnails: Thumbnails | None = None,
) -> Path:
    """Write :func:`render_report` of ``results`` to ``out`` (UTF-8); returns the path written."""
    out = Path(out).expanduser()
    page = render_report(results, title=title, thumbnail_size=thumbnail_size, thumbnails=thumbnails)
    out.write_text(page, encoding="utf-8")
    log.info("wrote %s (%d queries)", out, len(results))
    return out
