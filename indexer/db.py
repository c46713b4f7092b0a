"""SQLite (or any SQLAlchemy database) metadata of a collection: images, their vectors, and settings.

The database is the source of truth: every image's raw descriptor is kept in ``images.vector``, so the
FAISS index file can always be rebuilt from it. ``Image.id`` is the id the FAISS index uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
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
    make_url,
    select,
    text,
)
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, validates

from .errors import CollectionBusyError, DamagedDatabaseError, DatabaseUnavailableError, SettingsError

log = logging.getLogger(__name__)

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


#: The longest name of a person; checked here, as SQLite keeps longer strings but PostgreSQL refuses them.
NAME_LENGTH = 512


class Identity(Base):
    """A person enrolled in the face gallery."""

    __tablename__ = "identities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    @validates("name")
    def _fits(self, _key: str, name: str) -> str:
        if len(name) > NAME_LENGTH:
            raise SettingsError(f"a name may have at most {NAME_LENGTH} characters; this one has {len(name)}")
        return name


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


#: SQLAlchemy's driver for a bare ``postgresql://`` URL is psycopg2; the ``postgres`` extra installs psycopg 3.
POSTGRES_DRIVER = "postgresql+psycopg"
POSTGRES_EXTRA = 'pip install -e ".[postgres]"'
#: Seconds to wait for a database server to answer before saying it cannot be reached.
CONNECT_TIMEOUT = 10


def engine_url(url: str) -> URL:
    """The URL as SQLAlchemy is given it: ``postgresql://`` and ``postgres://`` without a driver mean psycopg 3
    (the ``postgres`` extra), not SQLAlchemy's default psycopg2. Raises :class:`sqlalchemy.exc.ArgumentError`
    for a string that is no URL."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=POSTGRES_DRIVER)
    return parsed


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def connect_problem(url: str, exc: BaseException) -> str:
    """What a failed connection to the database server at ``url`` means for a person, in one line
    (``exc``: the driver's error)."""
    where, reason = database_location(url), _one_line(exc)
    if "password authentication failed" in reason or "no password supplied" in reason:
        return f"the database server refused the login to {where}: wrong user name or password"
    if "does not exist" in reason and "database" in reason:
        name = make_url(url).database
        return f"there is no database {name} on the server of {where}; create it first (createdb {name})"
    reason = reason.removeprefix("connection failed: ")
    return f"cannot reach the database server of {where}: {reason}"


def make_engine(url: str) -> Engine:
    """Create the engine and the tables. SQLite gets WAL mode and a busy timeout. A damaged SQLite file
    (cut short by a full disk, overwritten) raises :class:`~indexer.errors.DamagedDatabaseError`, whenever
    it is noticed, with what to do about it. A database server (PostgreSQL, ...) that cannot be reached or
    refuses the login, a connection lost on the way, or a driver that is not installed raise
    :class:`~indexer.errors.DatabaseUnavailableError` naming the database (password hidden)."""
    is_sqlite = url.startswith("sqlite")
    target = engine_url(url)
    if is_sqlite:
        options: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:  # pre-ping: a server restarted between two commands of `serve` costs a reconnection, not an error
        timeout = {} if "connect_timeout" in target.query else {"connect_timeout": CONNECT_TIMEOUT}
        options = {"pool_pre_ping": True, "connect_args": timeout if target.drivername == POSTGRES_DRIVER else {}}
    try:
        engine = create_engine(target, **options)
    except ImportError as exc:  # the dialect is known, its driver is not installed
        if target.drivername == POSTGRES_DRIVER:
            hint = f"the PostgreSQL driver psycopg is not installed: {POSTGRES_EXTRA}"
        else:
            hint = f"its driver is not installed ({_one_line(exc)})"
        raise DatabaseUnavailableError(f"cannot open the database {database_location(url)}: {hint}") from None
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

    else:

        @event.listens_for(engine, "handle_error")
        def _unavailable(context: Any) -> None:
            if context.is_pre_ping:  # a pooled connection found dead before use: the pool replaces it
                return
            if context.connection is None and isinstance(context.sqlalchemy_exception, OperationalError):
                raise DatabaseUnavailableError(connect_problem(url, context.original_exception)) from None
            if context.is_disconnect:
                raise DatabaseUnavailableError(
                    f"lost the connection to the database server of {database_location(url)} "
                    f"({_one_line(context.original_exception)}); what was committed is kept: run the command again"
                ) from None

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


@dataclass(frozen=True)
class _SessionLock:
    """How one kind of database server takes a named lock that belongs to a session (a connection): held until
    released or until the connection ends, so a process that dies loses it."""

    scope: str  #: SQL naming where the collection's tables are (database, schema): the lock's name derives from it
    acquire: str  #: SQL answering at once: true when taken, false when another session holds it
    release: str
    numeric: bool  #: the name is a 64-bit integer (PostgreSQL advisory locks), else a short string


_SESSION_LOCKS = {
    "postgresql": _SessionLock(
        "SELECT current_database() || '.' || current_schema()",
        "SELECT pg_try_advisory_lock(:key)",
        "SELECT pg_advisory_unlock(:key)",
        numeric=True,
    ),
    "mysql": _SessionLock("SELECT DATABASE()", "SELECT GET_LOCK(:key, 0)", "SELECT RELEASE_LOCK(:key)", False),
}
_SESSION_LOCKS["mariadb"] = _SESSION_LOCKS["mysql"]
_warned_unlocked: set[str] = set()


def lock_key(scope: str, numeric: bool) -> int | str:
    """The lock name of the collection whose tables are in ``scope``: a signed 64-bit integer, or a string
    of at most 64 characters (MySQL's limit)."""
    digest = hashlib.blake2b(f"lookalike write lock {scope}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True) if numeric else f"lookalike.{digest.hex()}"


@contextlib.contextmanager
def database_lock(engine: Engine, url: str) -> Iterator[None]:
    """Hold the database's own write lock of the collection in it, on a connection of its own, for the duration;
    raise :class:`~indexer.errors.CollectionBusyError` at once when another session holds it. This keeps apart
    writers that share no home folder: other machines, or other homes on one database.

    - PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a 64-bit key derived from the
      database and schema the tables are in. The connection is in autocommit mode: holding the lock keeps no
      transaction open, and readers (searches) never wait for it.
    - MySQL and MariaDB: ``GET_LOCK(name, 0)`` on a name derived from the database (server-wide names, hence the
      database in it). Written to the same pattern but not tested here (no MySQL server in the tests).
    - Other servers (Oracle, SQL Server, ...): no lock is taken and a warning says so once; only the home
      folder's file lock keeps writers apart, so run one writer at a time there.
    - SQLite is not meant to come here: its file lives in the home folder, whose file lock covers it.

    A process that dies loses its connection, and the server releases the lock.
    """
    kind = _SESSION_LOCKS.get(engine.dialect.name)
    if kind is None:
        if engine.dialect.name not in _warned_unlocked:
            _warned_unlocked.add(engine.dialect.name)
            log.warning(
                "no database lock for %s: writers on other machines are not kept apart; run one at a time",
                engine.dialect.name,
            )
        yield
        return
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        key = lock_key(str(conn.execute(text(kind.scope)).scalar()), kind.numeric)
        if not conn.execute(text(kind.acquire), {"key": key}).scalar():
            raise CollectionBusyError(
                f"another lookalike process is writing to the collection in {database_location(url)}; "
                "wait for it to finish"
            )
        try:
            yield
        finally:
            try:
                conn.execute(text(kind.release), {"key": key})
            except (SQLAlchemyError, DatabaseUnavailableError) as exc:  # connection gone: so is the lock
                log.warning("could not release the database lock (%s); closing its connection releases it", exc)
                conn.invalidate()
    finally:
        conn.close()


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
    "engine_url",
    "database_lock",
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
