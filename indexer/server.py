"""``lookalike serve``: the HTTP API and the web app over a :class:`~indexer.engine.Collection`.

:func:`create_app` builds a FastAPI application from a collection and :class:`ServeSettings`; it calls the same
Python API the CLI does (``Collection``, ``DuplicateFinder``, ``FaceClusters``), plus four small read-only queries
through ``Store.session()`` (the folder shared by all paths, ids by path, a face's box, the vector version). The
contract of every endpoint: README, "Server"; the schema: ``/docs``.

- **Off the event loop.** Endpoints that read the database, search the index or make thumbnails run in the
  framework's worker threads; embedding uploaded images runs in one worker thread of its own, behind a bounded
  queue: when ``embed_queue`` searches are already waiting, a new one is answered 503 with ``Retry-After``.
  Nothing takes the collection's write lock, so an ``index`` run in another process does not block searches
  (they see its batches as they are committed: when the index file is behind the database, one search rebuilds
  the index in memory from the database while the others wait for it).
- **Safe by default.** Files are served only by collection id, never from a path in a request. Request bodies are
  limited in bytes (refused on ``Content-Length`` before reading, and while reading when it is absent or wrong);
  uploads are decoded by content with the collection's pixel limit (decompression bombs: 413, not an image: 415).
  With a token every ``/api/`` request needs ``Authorization: Bearer TOKEN`` (401 otherwise); without one only
  loopback host names are accepted (so a web page cannot reach the API through DNS rebinding). Read-only unless
  ``allow_changes``: the server writes nothing but caches in the collection's home (thumbnails, the duplicates
  graph) and, only then, the changes the API asks for (naming people; duplicates actions and their undo, through
  the CLI's journal).
- **JSON errors everywhere**, also for the framework's own 404 / 405 / 422: ``{"error": {"status", "message"}}``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import Body, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import db
from .db import FaceRecord, ImageRecord
from .duplicates import DuplicateFinder
from .engine import Collection, ImageInfo, QueryResult
from .errors import CollectionBusyError, LookalikeError
from .face_clusters import FaceClusters
from .faces import INDEX, FaceGallery
from .file_actions import apply_actions, undo
from .imageio import Box
from .thumbnails import MAX_SIZE, MIN_SIZE, THUMBNAIL_DIR, ThumbnailError, Thumbnails

log = logging.getLogger(__name__)

API = "/api/v1"
#: The web app's files, shipped inside the package.
WEBAPP_DIR = Path(__file__).resolve().parent / "webapp"
#: Multipart headers and boundaries allowed on top of the upload limit.
FORM_OVERHEAD = 64 * 1024
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
#: The web app's pages load nothing from elsewhere, and images only from the server or blob: URLs.
APP_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

T = TypeVar("T")


@dataclass(frozen=True)
class ServeSettings:
    """How ``lookalike serve`` serves a collection."""

    host: str = "127.0.0.1"
    port: int = 8765
    #: every ``/api/`` request must carry ``Authorization: Bearer TOKEN`` (``None``: no token)
    token: str | None = None
    #: the API may change the collection (name people) and act on duplicates (trash, hard links, moves to
    #: ``move_to``, undo: the CLI's journal); otherwise nothing but caches is written
    allow_changes: bool = False
    #: where duplicates actions move copies (set by whoever starts the server; never a path from a client)
    move_to: Path | None = None
    #: largest upload, in bytes (a search request's files together)
    max_upload_bytes: int = 25 * 1024 * 1024
    #: most images in one search request
    max_files: int = 16
    #: largest ``k`` a search may ask for
    max_k: int = 200
    #: searches by upload that may wait for the embedding thread before new ones are refused (503)
    embed_queue: int = 8
    #: the web app's folder (default: the package's ``webapp``)
    webapp: Path | None = None
    #: the thumbnail cache (default: ``thumbnails`` in the collection's home)
    thumbnails: Path | None = None
    #: load the index and the network when the server starts, not at the first search
    warm_up: bool = True
    #: ``Host`` header values accepted (``None``: loopback names without a token, any with one)
    allowed_hosts: tuple[str, ...] | None = None
    #: extra response headers on every response
    headers: dict[str, str] = field(
        default_factory=lambda: {
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        }
    )

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_files < 1 or self.max_k < 1 or self.embed_queue < 1:
            raise ValueError("max_upload_bytes, max_files, max_k and embed_queue must be at least 1")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token must not be empty")

    @property
    def hosts(self) -> tuple[str, ...] | None:
        """The accepted ``Host`` names (``None``: any)."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return None if self.token else LOOPBACK_NAMES


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost`` or a loopback address)."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``0``: a free port), for ``uvicorn.Server.run(sockets=[...])``.
    Raises :class:`LookalikeError` when the address cannot be used."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on sockets that say they are TCP (with
    # it on, every keep-alive response waited ~40 ms for the client's delayed ACK); accepted sockets inherit it
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise LookalikeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def new_token() -> str:
    """A random token for a server bound beyond loopback."""
    return secrets.token_urlsafe(24)


# --------------------------------------------------------------------------------------------- response shapes


class ErrorDetail(BaseModel):
    status: int
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class ImageOut(BaseModel):
    id: int
    path: str = Field(description="relative to the folder it was indexed from when known, else absolute")
    name: str
    width: int | None
    height: int | None
    thumbnail: str
    file: str


class HitOut(ImageOut):
    score: float
    rank: int = Field(description="1-based")
    box: list[int] | None = Field(
        None, description="objects collections: the part that matched, x, y, w, h in pixels; null: the whole image"
    )


class QueryOut(BaseModel):
    query: str
    error: str | None
    hits: list[HitOut]


class SearchOut(BaseModel):
    results: list[QueryOut]


class SimilarOut(BaseModel):
    query: ImageOut
    hits: list[HitOut]


class FeaturesOut(BaseModel):
    search: bool
    box: bool
    duplicates: bool
    people: bool
    changes: bool


class StatsOut(BaseModel):
    images: int
    indexed: int
    model: str | None
    mask: str
    whitening: str | None
    features: FeaturesOut


class DuplicateFileOut(BaseModel):
    image: ImageOut
    score: float
    keep: bool


class DuplicateGroupOut(BaseModel):
    tier: Literal["exact", "copies"]
    files: list[DuplicateFileOut]


class DuplicatesOut(BaseModel):
    threshold: float | None
    groups: list[DuplicateGroupOut]


class FaceOut(BaseModel):
    face: int
    image: ImageOut | None
    box: list[float]
    thumbnail: str


class PersonOut(BaseModel):
    cluster: int
    name: str | None
    faces: list[FaceOut]


class PeopleOut(BaseModel):
    people: list[PersonOut]


class ActionIn(BaseModel):
    action: Literal["trash", "hardlink", "move"]
    #: say what would be done and change nothing (the default: a person confirms with ``dry_run: false``)
    dry_run: bool = True
    #: the groups at this cosine (default: the calibrated threshold, as GET duplicates)
    threshold: float | None = Field(None, ge=-1.0, le=1.0)


class NameIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class NameOut(BaseModel):
    cluster: int
    name: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        401: "missing or wrong token",
        404: "no such image, face, cluster or endpoint",
        422: "a parameter out of range",
    }.items()
}


# --------------------------------------------------------------------------------------------- errors


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error every failure is answered with."""
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form")]
        parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _http_message(exc: HTTPException, request: Request) -> str:
    if isinstance(exc.detail, str) and exc.detail not in ("Not Found", "Method Not Allowed"):
        return exc.detail
    if exc.status_code == 404:
        return f"nothing at {request.url.path}; the API is under {API} (see /docs)"
    if exc.status_code == 405:
        return f"{request.method} is not allowed on {request.url.path} (see /docs)"
    return str(exc.detail)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, _http_message(exc, request), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc))

    @app.exception_handler(ThumbnailError)
    async def thumbnail_error(request: Request, exc: ThumbnailError) -> JSONResponse:
        return error_response(410 if exc.gone else 404, str(exc))

    @app.exception_handler(CollectionBusyError)
    async def busy(request: Request, exc: CollectionBusyError) -> JSONResponse:
        return error_response(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(LookalikeError)
    async def library_error(request: Request, exc: LookalikeError) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error ({exc.__class__.__name__}); the server log has the details")


# --------------------------------------------------------------------------------------------- the guard


class Guard:
    """Pure ASGI middleware in front of everything: the ``Host`` check, the token on ``/api/``, the request body
    limit (on ``Content-Length`` before reading, then while reading) and the security headers."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings
        self.limit = settings.max_upload_bytes + FORM_OVERHEAD
        self.hosts = None if settings.hosts is None else {h.lower() for h in settings.hosts}
        self.expected = f"Bearer {settings.token}".encode() if settings.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await self._send_with_headers(refusal, scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._too_large())  # FastAPI passes it on as it is
            return message

        await self._send_with_headers(self.app, scope, counted, send)

    def _extra_headers(self, scope: Scope) -> dict[str, str]:
        path = scope["path"]
        if path == "/" or path.startswith("/app/"):
            return {**self.settings.headers, "Content-Security-Policy": APP_CSP}
        return self.settings.headers

    def _refusal(self, scope: Scope, headers: Headers) -> ASGIApp | None:
        if self.hosts is not None:
            host = headers.get("host", "").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.hosts:
                return error_response(
                    400,
                    f"this server answers only to {', '.join(sorted(self.hosts))} (Host was {host or 'missing'}); "
                    "to serve other names, start it with --token",
                )
        path = scope["path"]
        if self.expected is not None and (path == "/api" or path.startswith("/api/")):
            given = headers.get("authorization", "").encode()
            if not secrets.compare_digest(given, self.expected):
                return error_response(
                    401,
                    "this server needs its token: send the header 'Authorization: Bearer TOKEN' (the token was "
                    "printed when the server started; open the page with ?token=TOKEN)",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self.limit
            except ValueError:
                return error_response(400, "the Content-Length header is not a number")
            if too_large:
                return error_response(413, self._too_large())
        return None

    def _too_large(self) -> str:
        mb = self.settings.max_upload_bytes / (1024 * 1024)
        return f"the upload is larger than the server's limit of {mb:g} MB (lookalike serve --max-upload-mb)"

    async def _send_with_headers(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        extra = self._extra_headers(scope)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await app(scope, receive, with_headers)


# --------------------------------------------------------------------------------------------- the service


class EmbeddingQueue:
    """One worker thread for the network, and a bound on the searches waiting for it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.waiting = 0
        self.mean_seconds = 1.0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lookalike-embed")

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the embedding thread; 503 with ``Retry-After`` when the queue is full. (Called on the event
        loop only, so ``waiting`` needs no lock.)"""
        if self.waiting >= self.size:
            retry = max(1, math.ceil(self.mean_seconds * self.waiting))
            raise HTTPException(
                503,
                f"the server is busy embedding {self.waiting} other searches; try again in {retry} s",
                headers={"Retry-After": str(retry)},
            )
        self.waiting += 1
        started = time.perf_counter()
        try:
            return await asyncio.wrap_future(self._executor.submit(fn))
        finally:
            self.waiting -= 1
            self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * (time.perf_counter() - started)

    def background(self, fn: Callable[[], object]) -> None:
        """``fn()`` in the embedding thread, ahead of any search, not counted in the queue."""
        self._executor.submit(fn)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Service:
    """What the endpoints share: the collection, the thumbnail cache, the embedding queue, the face gallery
    (opened on first use) and the duplicate groups of the collection's current version."""

    def __init__(self, collection: Collection, settings: ServeSettings) -> None:
        self.coll, self.settings = collection, settings
        self.thumbs = Thumbnails(settings.thumbnails or collection.home / THUMBNAIL_DIR, collection.max_pixels)
        self.queue = EmbeddingQueue(settings.embed_queue)
        self._gallery: FaceGallery | None = None
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._duplicates: dict[tuple[int, float | None], DuplicatesOut] = {}

    # ------------------------------------------------------------------ images
    def common_folder(self) -> str:
        """The deepest folder holding every image of the collection, with a trailing separator ("" when empty):
        image paths are shown relative to it. (The first and last paths in sort order share the prefix that all
        paths share, so two index look-ups find it; asked together, SQLite would scan the table instead.)"""
        with self.coll.session() as s:
            lo = s.scalar(select(func.min(ImageRecord.path)))
            hi = s.scalar(select(func.max(ImageRecord.path)))
        if lo is None:
            return ""
        prefix = os.path.commonprefix([lo, hi])
        folder = prefix[: prefix.rfind(os.sep) + 1]
        return "" if folder == os.sep else folder  # nothing shared but the root: absolute paths

    def image_out(self, id: int, path: str, width: int | None, height: int | None, folder: str) -> ImageOut:
        return ImageOut(
            id=id,
            path=path[len(folder) :] if folder and path.startswith(folder) else path,
            name=os.path.basename(path),
            width=width,
            height=height,
            thumbnail=f"{API}/images/{id}/thumbnail",
            file=f"{API}/images/{id}/file",
        )

    def images(self, ids: Sequence[int]) -> dict[int, ImageOut]:
        """``ids`` as the API shows them (unknown ids left out)."""
        infos = self.coll.images(ids)
        folder = self.common_folder() if infos else ""
        return {i: self.image_out(i, r.path, r.width, r.height, folder) for i, r in infos.items()}

    def image_info(self, image_id: int) -> ImageInfo:
        """The collection's record of one image; 404 when there is none."""
        info = self.coll.images([image_id]).get(image_id)
        if info is None:
            raise HTTPException(404, f"no image {image_id} in the collection")
        return info

    def hits_out(self, result: QueryResult, folder: str) -> list[HitOut]:
        return [
            HitOut(
                **self.image_out(h.id, h.path, h.width, h.height, folder).model_dump(),
                score=h.score,
                rank=n,
                box=list(h.box) if h.box is not None else None,
            )
            for n, h in enumerate(result.hits, 1)
        ]

    def ids_at(self, paths: Sequence[str]) -> dict[str, int]:
        """The ids of the images at ``paths`` (paths the collection does not hold left out)."""
        out: dict[str, int] = {}
        with self.coll.session() as s:
            for n in range(0, len(paths), 500):
                q = select(ImageRecord.path, ImageRecord.id).where(ImageRecord.path.in_(paths[n : n + 500]))
                out.update({p: int(i) for p, i in s.execute(q)})
        return out

    def current_index(self) -> None:
        """Bring the collection's index in memory up to date, one thread at a time: when another process has
        committed vectors, one search rebuilds the index (from the database) and the others wait for it, rather
        than each rebuilding its own."""
        with self._index_lock:
            self.coll.index()

    def warm_up(self) -> None:
        """Load the index and the network before the first search needs them (seconds for a large collection or
        a network read from disk), in the embedding thread. A failure is logged; the search that needs the
        part will report it."""
        try:
            self.current_index()
            if self.coll.model_config is not None:
                list(self.coll.embed_paths([]))  # builds the network (and the segmenter of a masked collection)
        except (LookalikeError, OSError, RuntimeError, ValueError) as exc:
            log.warning("could not load the collection's index or network ahead of searches: %s", exc)

    def vector_version(self) -> int:
        """Changes whenever the collection's indexed vectors change."""
        with self.coll.session() as s:
            return int(db.get_setting(s, db.VECTOR_VERSION, 0))

    # ------------------------------------------------------------------ faces
    def gallery(self) -> FaceGallery:
        with self._lock:
            if self._gallery is None:
                self._gallery = FaceGallery(self.coll.home, self.coll.db_url, self.coll.runtime, create=False)
            return self._gallery

    def clusters(self) -> FaceClusters:
        return FaceClusters(self.gallery())

    def indexed_face(self, face_id: int) -> tuple[str, Box] | None:
        """The photo and box ``(x, y, w, h)`` of an indexed face (``None``: no such face)."""
        with self.gallery().session() as s:
            r = s.execute(
                select(FaceRecord.path, FaceRecord.x0, FaceRecord.y0, FaceRecord.x1, FaceRecord.y1).where(
                    FaceRecord.id == face_id, FaceRecord.source == INDEX
                )
            ).one_or_none()
        return None if r is None else (r.path, (r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0))

    # ------------------------------------------------------------------ duplicates
    def duplicates(self, threshold: float | None) -> DuplicatesOut:
        finder = DuplicateFinder(self.coll)
        if threshold is None and finder.stored_calibration() is None:
            raise HTTPException(
                404,
                "this collection has no duplicates calibration: run `lookalike duplicates` once to calibrate, "
                "or ask with ?threshold=0.95",
            )
        key = (self.vector_version(), threshold)
        with self._lock:
            cached = self._duplicates.get(key)
        if cached is not None:
            return cached
        report = finder.find(threshold=threshold)
        folder = self.common_folder()
        groups = [
            DuplicateGroupOut(
                tier="exact" if g.tier == "exact" else "copies",
                files=[
                    DuplicateFileOut(
                        image=self.image_out(f.id, f.path, f.width, f.height, folder),
                        score=round(f.score, 6),
                        keep=f.keep,
                    )
                    for f in g.files
                ],
            )
            for g in report.groups
        ]
        out = DuplicatesOut(threshold=report.threshold, groups=groups)
        with self._lock:
            self._duplicates = {key: out}
        return out

    def close(self) -> None:
        self.queue.close()


def _parse_box(box: str | None) -> tuple[float, float, float, float] | None:
    if box is None or not box.strip():
        return None
    try:
        x, y, w, h = (float(v) for v in box.split(","))
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("form", "box"), "msg": f"expected x,y,w,h in pixels, got {box!r}", "type": "value_error"}]
        ) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0:
        raise RequestValidationError(
            [{"loc": ("form", "box"), "msg": "x and y must be >= 0, w and h > 0", "type": "value_error"}]
        )
    return x, y, w, h


def _upload_status(error: str) -> int:
    """The status of an upload that could not be used: 413 over the pixel limit (the decompression-bomb guard),
    422 for a box outside the picture, else 415 (not an image, or one the decoder cannot read)."""
    if "decompression bomb" in error:
        return 413
    return 422 if error.startswith("the box") else 415


def _media_type(path: str) -> str:
    """The MIME type of an image file, from its content."""
    try:
        with Image.open(path) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except Exception:  # a file Pillow cannot identify (or too large to open) is served as bytes
        return "application/octet-stream"


# --------------------------------------------------------------------------------------------- the app


def create_app(collection: Collection, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``collection`` (API under ``/api/v1``, the web app at ``/``)."""
    settings = settings or ServeSettings()
    service = Service(collection, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if settings.warm_up:
            service.queue.background(service.warm_up)
        yield
        service.close()

    app = FastAPI(
        title="lookalike",
        summary="Image similarity search over one collection",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.service = service
    app.add_middleware(Guard, settings=settings)
    _install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="the token `lookalike serve` printed (when it has one)")
    auth = [Depends(bearer)]  # documents the header; the Guard checks it
    max_k = settings.max_k

    def k_query(default: int = 20) -> Any:
        return Query(default, ge=1, le=max_k, description=f"results per query, 1..{max_k}")

    threshold_query = Query(None, ge=-1.0, le=1.0, description="leave out results scoring below this cosine")

    # ------------------------------------------------------------------ stats
    @app.get(f"{API}/stats", response_model=StatsOut, dependencies=auth, tags=["collection"])
    def stats() -> StatsOut:
        """What the collection holds, and which pages the web app shows."""
        st = collection.stats()
        try:
            people = bool(service.clusters().listing().clusters)
        except LookalikeError:
            people = False
        return StatsOut(
            images=st.images,
            indexed=st.indexed,
            model=st.model,
            mask=st.mask,
            whitening=st.whitening,
            features=FeaturesOut(
                search=st.indexed > 0,
                box=True,
                duplicates=st.indexed > 0 and DuplicateFinder(collection).stored_calibration() is not None,
                people=people,
                changes=settings.allow_changes,
            ),
        )

    # ------------------------------------------------------------------ search
    @app.post(f"{API}/search", response_model=SearchOut, dependencies=auth, tags=["search"])
    async def search(
        file: list[UploadFile] = File(..., description="one or more images (checked by content, not by name)"),
        k: int = Form(20, ge=1, le=max_k, description=f"results per query, 1..{max_k}"),
        threshold: float | None = Form(None, ge=-1.0, le=1.0, description="leave out results below this cosine"),
        box: str | None = Form(None, description="x,y,w,h: search by this region (pixels of the uploaded image)"),
    ) -> SearchOut:
        """Search by uploaded images: the ``k`` indexed images most like each, best first."""
        region = _parse_box(box)
        if len(file) > settings.max_files:
            raise HTTPException(413, f"at most {settings.max_files} images per search, got {len(file)}")
        datas = [await f.read() for f in file]
        names = [f.filename or f"upload {i + 1}" for i, f in enumerate(file)]

        def embed_and_search() -> list[QueryResult]:
            service.current_index()
            return collection.search_images(datas, k=k, threshold=threshold, box=region, names=names)

        results = await service.queue.run(embed_and_search)
        failed = [r for r in results if r.error is not None]
        if failed and len(failed) == len(results):
            first = failed[0]
            message = "; ".join(f"{r.query}: {r.error}" for r in failed)
            raise HTTPException(_upload_status(first.error or ""), message)
        folder = await asyncio.to_thread(service.common_folder)
        return SearchOut(
            results=[QueryOut(query=r.query, error=r.error, hits=service.hits_out(r, folder)) for r in results]
        )

    @app.get(f"{API}/images/{{image_id}}/similar", response_model=SimilarOut, dependencies=auth, tags=["search"])
    def similar(image_id: int, k: int = k_query(), threshold: float | None = threshold_query) -> SimilarOut:
        """More like this: the ``k`` indexed images most like image ``image_id`` (itself left out)."""
        query = service.images([image_id]).get(image_id)
        if query is None:
            raise HTTPException(404, f"no image {image_id} in the collection")
        service.current_index()
        [result] = collection.search_ids([image_id], k=k, threshold=threshold)
        if result.error is not None:  # in the collection, but not indexed (unreadable, or not embedded yet)
            raise HTTPException(404, result.error)
        folder = service.common_folder()
        return SimilarOut(query=query, hits=service.hits_out(result, folder))

    # ------------------------------------------------------------------ images
    @app.get(f"{API}/images/{{image_id}}", response_model=ImageOut, dependencies=auth, tags=["images"])
    def image(image_id: int) -> ImageOut:
        """An indexed image's metadata."""
        image = service.images([image_id]).get(image_id)
        if image is None:
            raise HTTPException(404, f"no image {image_id} in the collection")
        return image

    @app.get(
        f"{API}/images/{{image_id}}/thumbnail",
        response_class=FileResponse,
        dependencies=auth,
        tags=["images"],
        responses={200: {"content": {"image/jpeg": {}}}, 410: {"model": ErrorOut, "description": "file gone"}},
    )
    def thumbnail(
        image_id: int, size: int = Query(256, ge=MIN_SIZE, le=MAX_SIZE, description="longest side, pixels")
    ) -> FileResponse:
        """A JPEG thumbnail (EXIF-rotated, longest side at most ``size``), made once and cached."""
        thumb = service.thumbs.get(service.image_info(image_id).path, size)
        return FileResponse(thumb.path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    @app.get(
        f"{API}/images/{{image_id}}/file",
        response_class=FileResponse,
        dependencies=auth,
        tags=["images"],
        responses={200: {"content": {"image/*": {}}}, 410: {"model": ErrorOut, "description": "file gone"}},
    )
    def original(image_id: int) -> FileResponse:
        """The original file, with its type read from its content."""
        path = service.image_info(image_id).path
        if not os.path.isfile(path):
            raise HTTPException(410, f"{path} is no longer on disk (lookalike index forgets it)")
        return FileResponse(
            path, media_type=_media_type(path), filename=os.path.basename(path), content_disposition_type="inline"
        )

    # ------------------------------------------------------------------ duplicates
    @app.get(f"{API}/duplicates", response_model=DuplicatesOut, dependencies=auth, tags=["duplicates"])
    def duplicates(
        threshold: float | None = Query(None, ge=-1.0, le=1.0, description="cosine (default: the calibrated one)"),
    ) -> DuplicatesOut:
        """Groups of copies of one picture, the suggested keeper first."""
        return service.duplicates(threshold)

    def changes_allowed(request: Request) -> None:
        """Changes need ``--allow-changes``, and a JSON body (which a form on another site cannot send)."""
        if not settings.allow_changes:
            raise HTTPException(403, "the server is read-only; restart with --allow-changes")
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(415, "send the request as JSON")

    @app.post(
        f"{API}/duplicates/actions",
        dependencies=auth,
        tags=["duplicates"],
        responses={403: {"model": ErrorOut, "description": "the server is read-only"}},
    )
    def duplicates_action(request: Request, body: ActionIn = Body(...)) -> dict[str, Any]:
        """Act on every copy of the duplicate groups (never the keeper, never a reference file), as `lookalike
        duplicates --trash / --hardlink / --move-to` does, written to the same journal (needs
        ``--allow-changes``; moves go to the server's ``--move-to`` folder). A dry run by default."""
        changes_allowed(request)
        if body.action == "move" and settings.move_to is None:
            raise HTTPException(409, "moving needs a folder: restart the server with --move-to DIR")
        service.duplicates(body.threshold)  # the same refusal as GET duplicates without a calibration
        groups = DuplicateFinder(collection).find(threshold=body.threshold).groups
        report = apply_actions(collection, groups, body.action, move_to=settings.move_to, dry_run=body.dry_run)
        return report.to_dict()

    @app.post(
        f"{API}/duplicates/undo",
        dependencies=auth,
        tags=["duplicates"],
        responses={403: {"model": ErrorOut, "description": "the server is read-only"}},
    )
    def duplicates_undo(request: Request) -> dict[str, Any]:
        """Replay the latest duplicates journal backwards (as `lookalike duplicates --undo`)."""
        changes_allowed(request)
        return undo(collection).to_dict()

    # ------------------------------------------------------------------ people
    @app.get(f"{API}/people", response_model=PeopleOut, dependencies=auth, tags=["people"])
    def people() -> PeopleOut:
        """The people found among the indexed faces (``lookalike faces cluster``), largest first."""
        listing = service.clusters().listing()
        ids = service.ids_at(sorted({f.path for c in listing.clusters for f in c.faces}))
        images = service.images(list(ids.values()))
        return PeopleOut(
            people=[
                PersonOut(
                    cluster=c.id,
                    name=c.name,
                    faces=[
                        FaceOut(
                            face=f.id,
                            image=images.get(ids.get(f.path, -1)),
                            box=list(f.box),
                            thumbnail=f"{API}/faces/{f.id}/thumbnail",
                        )
                        for f in c.faces
                    ],
                )
                for c in listing.clusters
            ]
        )

    @app.get(
        f"{API}/faces/{{face_id}}/thumbnail",
        response_class=FileResponse,
        dependencies=auth,
        tags=["people"],
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def face_thumbnail(
        face_id: int, size: int = Query(128, ge=MIN_SIZE, le=MAX_SIZE, description="longest side, pixels")
    ) -> FileResponse:
        """A JPEG crop of an indexed face, with a margin."""
        face = service.indexed_face(face_id)
        if face is None:
            raise HTTPException(404, f"no indexed face {face_id}")
        thumb = service.thumbs.get(face[0], size, box=face[1])
        return FileResponse(thumb.path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    @app.post(
        f"{API}/people/{{cluster_id}}/name",
        response_model=NameOut,
        dependencies=auth,
        tags=["people"],
        responses={403: {"model": ErrorOut, "description": "the server is read-only"}},
    )
    def name_person(cluster_id: int, request: Request, body: NameIn = Body(...)) -> NameOut:
        """Name a person (cluster): its faces are enrolled under the name (needs ``--allow-changes``)."""
        changes_allowed(request)
        clusters = service.clusters()
        if cluster_id not in {c.id for c in clusters.listing().clusters}:
            raise HTTPException(404, f"no person (cluster) {cluster_id}")
        name = body.name.strip()
        if not name:
            raise HTTPException(422, "name: must not be blank")
        return NameOut(cluster=clusters.name(cluster_id, name), name=name)

    # ------------------------------------------------------------------ the web app and the docs
    webapp = settings.webapp or WEBAPP_DIR

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = webapp / "index.html"
        if not page.is_file():
            return PlainTextResponse(
                f"The web app's files are missing from this installation (expected {page}).\n"
                f"The HTTP API works: see /docs.\n",
                status_code=404,
            )
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})

    if webapp.is_dir():
        app.mount("/app", StaticFiles(directory=webapp), name="app")

    _mount_docs(app)
    return app


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from files installed with the package (``fastapi-offline``): no CDN."""
    app.mount("/docs-assets", StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="lookalike API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )


__all__ = ["ServeSettings", "create_app", "bind_socket", "is_loopback", "new_token", "Guard", "WEBAPP_DIR", "API"]
