"""What every kind of tracked collection shares: the home folder and its metadata database, the write lock,
FAISS index files kept as caches of the database, progress hooks, and small helpers.

:class:`~indexer.engine.Collection` (images) and :class:`~indexer.faces.FaceGallery` (faces) both build on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retrieval.config import RuntimeOptions

from . import db
from .db import redact_url
from .errors import CollectionBusyError, LookalikeError, SettingsError
from .scan import Exclusions
from .vector_index import IndexConfig, VectorIndex

log = logging.getLogger(__name__)

DB_FILE = "lookalike.db"
EXCLUDE_KEY = "exclude"
LOCK_FILE = "lock"


def default_home() -> Path:
    """``$LOOKALIKE_HOME``, else ``$XDG_DATA_HOME/lookalike``, else ``~/.local/share/lookalike``."""
    env = os.environ.get("LOOKALIKE_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "lookalike"


class Progress(Protocol):
    """Progress reporting hooks; the CLI passes a progress bar, the library default does nothing."""

    def start(self, total: int, description: str) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def existing_home(home: Path | None, db_url: str | None) -> Path:
    """The collection folder ``home`` (default: :func:`default_home`), checked to hold a collection: a database
    file there, unless ``db_url`` names the database. Reading commands open a home this way, so they never create
    an empty one. Raises :class:`LookalikeError` naming the folder and the command that makes a collection."""
    folder = (home if home is not None else default_home()).expanduser()
    if db_url is None and not (folder / DB_FILE).is_file():
        raise LookalikeError(f"no collection in {folder}; index a folder first: lookalike index DIR")
    return folder


class Store:
    """What a collection and a face gallery share: the home folder, the metadata database, run-time options.
    ``create=False``: open an existing collection only (:func:`existing_home`), never make an empty one."""

    def __init__(
        self,
        home: str | Path | None,
        db_url: str | None,
        runtime: RuntimeOptions | None,
        max_pixels: int,
        commit_every: int,
        create: bool = True,
    ) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        if not create:
            existing_home(self.home, db_url)
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LookalikeError(f"cannot open the collection in {self.home}: {exc.strerror or exc}") from None
        self.db_url = db_url or f"sqlite:///{self.home / DB_FILE}"
        self.runtime = runtime or RuntimeOptions()
        self.max_pixels = max_pixels
        self.commit_every = commit_every
        try:
            self._engine = db.make_engine(self.db_url)
        except LookalikeError:
            raise
        except (SQLAlchemyError, OSError, ImportError) as exc:  # a bad URL, a missing driver, an unreachable server
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LookalikeError(f"cannot open the database {redact_url(self.db_url)}: {reason}") from None

    def session(self) -> Session:
        """A new session on the metadata database (``with store.session() as s, s.begin(): ...``)."""
        return Session(self._engine, expire_on_commit=False)

    @property
    def exclusions(self) -> Exclusions:
        """What every index run of this home leaves out (a setting shared by images and face photos)."""
        with self.session() as s:
            return Exclusions(tuple(db.get_setting(s, EXCLUDE_KEY, [])))

    def exclude(self, patterns: Sequence[str]) -> Exclusions:
        """Add exclusion patterns (:class:`~indexer.scan.Exclusions`); returns them all."""
        return self._edit_exclusions(patterns, add=True)

    def include(self, patterns: Sequence[str]) -> Exclusions:
        """Drop exclusion patterns, so the next index run takes those files again; returns what is left."""
        return self._edit_exclusions(patterns, add=False)

    def _edit_exclusions(self, patterns: Sequence[str], add: bool) -> Exclusions:
        try:
            given = [Exclusions.normalise(p) for p in patterns]
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        with self.session() as s, s.begin():
            current = list(db.get_setting(s, EXCLUDE_KEY, []))
            if add:
                current += [p for p in given if p not in current]
            else:
                unknown = [p for p in given if p not in current]
                if unknown:
                    listed = ", ".join(current) or "none"
                    raise SettingsError(f"not excluded: {', '.join(unknown)} (exclusions: {listed})")
                current = [p for p in current if p not in given]
            db.set_setting(s, EXCLUDE_KEY, current)
        return Exclusions(tuple(current))

    def integrity_problem(self) -> str | None:
        """What SQLite's integrity check finds wrong with the database file (``None``: nothing, or not SQLite)."""
        if self._engine.dialect.name != "sqlite":
            return None
        with self._engine.connect() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check")]
        if rows == ["ok"]:
            return None
        return f"the database is damaged ({'; '.join(rows[:3])}); {db.RECOVERY.format(url=db.database_location(self.db_url))}"


@contextlib.contextmanager
def write_lock(owner: Store | Path) -> Iterator[None]:
    """One writer at a time per collection; :class:`~indexer.errors.CollectionBusyError` at once when another
    holds it. Two locks, both released if the process dies:

    - the home folder's file lock (``flock`` on ``home/lock``): keeps apart the processes sharing the home, and
      guards the files kept there (index caches, journals);
    - given a :class:`Store` on a database server (not SQLite), that database's own lock as well
      (:func:`indexer.db.database_lock`: a PostgreSQL advisory lock), which keeps apart writers on other
      machines or with other home folders. Readers take neither.

    ``owner``: the store whose database is written, or a bare home folder for work on its files only.
    """
    home = owner if isinstance(owner, Path) else owner.home
    try:
        fh = open(home / LOCK_FILE, "a+")
    except OSError as exc:
        raise LookalikeError(f"cannot write to {home}: {exc.strerror or exc}") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CollectionBusyError(
                f"another lookalike process is writing to {home}; wait for it to finish"
            ) from None
        try:
            if isinstance(owner, Store) and owner._engine.dialect.name != "sqlite":
                with db.database_lock(owner._engine, owner.db_url):
                    yield
            else:
                yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class IndexFile:
    """A FAISS index file in ``home`` and the JSON state beside it (the database version it was saved at).

    Both are written atomically (temp file + rename); an unreadable or missing file loads as ``None``: it is
    a cache, rebuilt from the database by the caller.
    """

    def __init__(self, home: Path, index_name: str, state_name: str) -> None:
        self.index_path = home / index_name
        self.state_path = home / state_name

    def read_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def write_state(self, state: dict) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def load(self, config: IndexConfig) -> tuple[VectorIndex | None, dict | None]:
        state = self.read_state()
        if state is None or not self.index_path.exists():
            return None, state
        try:
            return VectorIndex.load(self.index_path, config), state
        except Exception as exc:  # a damaged file is just a stale cache: rebuild it
            log.warning("index file %s is unreadable (%s); it will be rebuilt", self.index_path, exc)
            return None, state

    def save(self, index: VectorIndex, version: int) -> None:
        index.save(self.index_path)
        self.write_state({"version": version, "kind": index.kind, "count": len(index), "dim": index.dim})


#: How a collection may keep its vectors in the database (setting ``vector_dtype``): float32, or float16 at half
#: the size (the database stays the source the index is rebuilt from; cosines move by ~1e-3 at most).
VECTOR_DTYPES = {"float32": np.float32, "float16": np.float16}


def vector_bytes(vector: np.ndarray, dtype: str = "float32") -> bytes:
    """A ``(D,)`` vector as the database keeps it, in ``dtype`` (a :data:`VECTOR_DTYPES` name)."""
    return np.asarray(vector, dtype=VECTOR_DTYPES[dtype]).tobytes()


def decode_vector(raw: bytes, dim: int | None) -> np.ndarray:
    """Stored bytes -> ``(D,)`` float32: float16 when they hold 2 bytes for each of the ``dim`` components, else
    float32. Both may sit in one collection (its ``vector_dtype`` changed: the rows written since use the new one)."""
    if dim and len(raw) == 2 * dim:
        return np.frombuffer(raw, dtype=np.float16).astype(np.float32)
    return np.frombuffer(raw, dtype=np.float32)


def well_formed(raw: bytes | None, dim: int | None) -> bool:
    """Stored bytes that decode to a ``dim``-vector (either dtype); any whole float32 vector when ``dim`` is
    unknown."""
    if raw is None:
        return False
    return len(raw) in (2 * dim, 4 * dim) if dim else len(raw) > 0 and len(raw) % 4 == 0


def vectors_from_rows(rows: Sequence, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(id, stored bytes or None)`` rows -> ``(N,)`` int64 ids and ``(N, D)`` float32 vectors (``None`` left out;
    ``dim``: the collection's dimension, which tells float16 rows from float32 ones: :func:`decode_vector`)."""
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return ids, np.stack([decode_vector(r[1], dim) for r in rows])


def chunks(items: Sequence[int] | list[int], size: int) -> Iterator[list[int]]:
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i : i + size]
