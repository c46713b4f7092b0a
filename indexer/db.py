"""SQLite (or any SQLAlchemy database) metadata of a collection: images, their vectors, and settings.

The database is the source of truth: every image's raw descriptor is kept in ``images.vector``, so the
FAISS index file can always be rebuilt from it. ``Image.id`` is the id the FAISS index uses.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import DamagedDatabaseError

PENDING = "pending"
INDEXED = "indexed"
ERROR = "error"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class TrackedFile:
    """The columns of a file on disk that incremental sync follows (``indexer/scan.py: plan_sync``):
    where it is, its size and mtime, its content hash, and whether it was processed or why it could not be.
    (``sort_order``: these come first in the tables.)"""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-1)
    path: Mapped[str] = mapped_column(String(4096), unique=True, sort_order=-1)
    size: Mapped[int] = mapped_column(BigInteger, sort_order=-1)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, sort_order=-1)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True, sort_order=-1)
    width: Mapped[int | None] = mapped_column(Integer, sort_order=-1)
    height: Mapped[int | None] = mapped_column(Integer, sort_order=-1)
    status: Mapped[str] = mapped_column(String(16), default=PENDING, index=True, sort_order=-1)
    error: Mapped[str | None] = mapped_column(Text, sort_order=-1)


class ImageRecord(TrackedFile, Base):
    __tablename__ = "images"

    #: Raw (un-whitened) float32 descriptor bytes.
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    embed_seconds: Mapped[float | None] = mapped_column(Float)
    #: Masked collections: share of the image the foreground mask covered, and why the whole image was
    #: embedded instead when the mask was unusable (empty, covering everything, segmenter failure).
    mask_fraction: Mapped[float | None] = mapped_column(Float)
    mask_fallback: Mapped[str | None] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)

    __table_args__ = (Index("ix_images_size", "size"),)


class Setting(Base):
    """Key -> JSON value: model config, index config, whitening settings, vector version."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Blob(Base):
    """Named binary artefacts kept with the collection (e.g. the learned whitening)."""

    __tablename__ = "blobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Identity(Base):
    """A person enrolled in the face gallery."""

    __tablename__ = "identities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class FacePhoto(TrackedFile, Base):
    """A photo seen by ``lookalike faces index``: how many faces it held, or why it could not be read.

    Its faces are the :class:`FaceRecord` rows with this ``photo_id``; a photo without faces has none.
    """

    __tablename__ = "face_photos"

    faces: Mapped[int | None] = mapped_column(Integer)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class FaceRecord(Base):
    """One face: where it is (photo, box, landmarks in the photo's original pixels), its vector, and either
    the identity it was enrolled for (``source == "enrol"``) or the indexed photo it was found in
    (``source == "index"``). ``id`` is the id the face indexes use."""

    __tablename__ = "faces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(8), index=True)
    identity_id: Mapped[int | None] = mapped_column(ForeignKey("identities.id"), index=True)
    photo_id: Mapped[int | None] = mapped_column(ForeignKey("face_photos.id"), index=True)
    path: Mapped[str] = mapped_column(String(4096))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    x0: Mapped[float] = mapped_column(Float)
    y0: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    #: JSON list of ``[x, y]`` rows (``retrieval.faces.types.LANDMARK_NAMES`` order), or null.
    landmarks: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    #: Unit-length float32 descriptor bytes.
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
    #: An indexed face: the :class:`FaceCluster` (person) it was grouped into, or null (unclustered).
    cluster_id: Mapped[int | None] = mapped_column(Integer, index=True)
    #: An enrolled face copied from an indexed face when its cluster was named: that face's id.
    from_face_id: Mapped[int | None] = mapped_column(Integer)


class FaceCluster(Base):
    """A person found by ``lookalike faces cluster``: its faces are the :class:`FaceRecord` rows with this
    ``cluster_id``. ``identity_id``: the :class:`Identity` it was named as (``faces name``), or null. Plain
    integers, no foreign keys: forgetting an identity leaves the cluster, unnamed."""

    __tablename__ = "face_clusters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity_id: Mapped[int | None] = mapped_column(Integer, index=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    #: Made by the user (``faces split``): kept even when smaller than the clustering's ``min_size``.
    by_user: Mapped[bool | None] = mapped_column(Boolean)


#: What to do with a damaged database: the images on disk are the originals, the database is rebuilt from them.
RECOVERY = "move {url} aside and index your folders again (lookalike index DIR): the images on disk are untouched"


def database_location(url: str) -> str:
    """Where a database is, for a person: the file of a SQLite URL, else the URL without its password."""
    return url.split(":///", 1)[1] if url.startswith("sqlite:///") else redact_url(url)


def redact_url(url: str) -> str:
    """Hide a password in a database URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def make_engine(url: str) -> Engine:
    """Create the engine and the tables. SQLite gets WAL mode and a busy timeout. A damaged SQLite file
    (cut short by a full disk, overwritten) raises :class:`~indexer.errors.DamagedDatabaseError`, whenever
    it is noticed, with what to do about it."""
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
    if is_sqlite:

        @event.listens_for(engine, "handle_error")
        def _damaged(context: Any) -> None:
            message = str(context.original_exception)
            if isinstance(context.original_exception, sqlite3.DatabaseError) and any(
                sign in message for sign in ("malformed", "not a database", "disk image")
            ):
                raise DamagedDatabaseError(
                    f"the database is damaged ({message}); {RECOVERY.format(url=database_location(url))}"
                ) from None

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Bring a database made by an older version up to date: add the nullable columns it lacks.

    Every column added after the first release is nullable, so ``ALTER TABLE ... ADD COLUMN`` is all a
    migration needs; existing rows read ``NULL`` there.
    """
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"the database lacks the required column {table.name}.{column.name}")
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def get_setting(session: Session, key: str, default: Any = None) -> Any:
    row = session.get(Setting, key)
    return default if row is None else json.loads(row.value)


def set_setting(session: Session, key: str, value: Any) -> None:
    row = session.get(Setting, key)
    text = json.dumps(value, sort_keys=True)
    if row is None:
        session.add(Setting(key=key, value=text))
    else:
        row.value = text


def get_blob(session: Session, name: str) -> bytes | None:
    row = session.get(Blob, name)
    return None if row is None else row.data


def set_blob(session: Session, name: str, data: bytes | None) -> None:
    row = session.get(Blob, name)
    if data is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(Blob(name=name, data=data))
    else:
        row.data = data


VECTOR_VERSION = "vector_version"


def bump_vector_version(session: Session, key: str = VECTOR_VERSION) -> int:
    """Increment, in the caller's transaction, the counter that changes whenever indexed vectors change
    (``key``: the image index's counter by default; the face indexes keep their own)."""
    version = int(get_setting(session, key, 0)) + 1
    set_setting(session, key, version)
    return version


__all__ = [
    "Base",
    "ImageRecord",
    "Setting",
    "Blob",
    "Identity",
    "FacePhoto",
    "FaceRecord",
    "FaceCluster",
    "make_engine",
    "get_setting",
    "set_setting",
    "get_blob",
    "set_blob",
    "bump_vector_version",
    "VECTOR_VERSION",
    "PENDING",
    "INDEXED",
    "ERROR",
    "select",
]
