"""A FAISS index kept as a cache of vectors stored in the database, keyed by a vector-version counter.

The database is the source of truth. Every change of the vectors an index is made of bumps a counter (a
setting, in the same transaction); the index file is saved atomically with the counter's value beside it
(:class:`~indexer.store.IndexFile`). A file whose version differs from the database's is stale: after a run
that started from a current file, the run's changes are applied to it; otherwise (a crash, a lost or damaged
file, another process's changes) it is rebuilt from the database. Images, enrolled faces and indexed faces
each have one :class:`IndexCache`; any other kind of vector can have its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import db
from .errors import CollectionBusyError
from .store import IndexFile, Store, chunks, vectors_from_rows, write_lock
from .vector_index import IndexConfig, VectorIndex

log = logging.getLogger(__name__)

#: ``transform(session) -> (apply, out_dim)``: how stored vectors become indexed ones (e.g. whitening), and
#: their dimension when known (``None``: the stored one).
Transform = Callable[[Session], tuple[Callable[[np.ndarray], np.ndarray], "int | None"]]


@dataclass(frozen=True)
class RowVectors:
    """The vectors of one index: the ``vector`` column of ``model``'s rows that match every clause of ``where``
    (ids are the rows' primary keys). ``dim_setting`` names the setting holding the dimension, for an empty
    index; ``transform`` turns stored vectors into indexed ones (default: as stored)."""

    model: type
    where: tuple[Any, ...]
    dim_setting: str
    transform: Transform | None = None

    def count(self, s: Session) -> int:
        return s.scalar(select(func.count()).select_from(self.model).where(*self.where)) or 0

    def raw(self, s: Session, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors: ``(N,)`` int64 ids, ``(N, D)`` float32 (all rows in id order, or those of ``ids``)."""
        q = select(self.model.id, self.model.vector).where(*self.where)
        dim = int(db.get_setting(s, self.dim_setting) or 0) or None
        if ids is None:
            return vectors_from_rows(list(s.execute(q.order_by(self.model.id))), dim)
        rows: list = []
        for chunk in chunks(sorted(ids), 500):
            rows.extend(s.execute(q.where(self.model.id.in_(chunk))))
        return vectors_from_rows(rows, dim)

    def ids_above(self, s: Session, last: int) -> list[int]:
        """Ids of the matching rows after ``last`` (rows added since an index was made), in order."""
        q = select(self.model.id).where(*self.where, self.model.id > last, self.model.vector.is_not(None))
        return list(s.scalars(q.order_by(self.model.id)))

    def indexed(self, s: Session, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Vectors as indexed: ``(ids, vectors, dim)``; ``dim`` is known even when there is no vector."""
        ids_, raw = self.raw(s, ids)
        apply, out_dim = self.transform(s) if self.transform is not None else (None, None)
        dim = out_dim or (raw.shape[1] if ids_.size else int(db.get_setting(s, self.dim_setting) or 1))
        if not ids_.size:
            return ids_, np.zeros((0, dim), np.float32), dim
        return ids_, (apply(raw) if apply is not None else raw), dim


class IndexCache:
    """One index of ``store``: its file, its version counter ``version_key`` and its vectors in the database.

    ``config()`` gives the index configuration (read when needed, since it is a stored setting).
    ``learn(session)``, when given, refreshes what is learned from the vectors before every update (e.g. a
    whitening) and says whether it changed, which makes the update a rebuild. :meth:`update` runs under the
    write lock after the database changed; :meth:`current` gives the index to search, rebuilt when stale.
    """

    def __init__(
        self,
        store: Store,
        files: IndexFile,
        version_key: str,
        vectors: RowVectors,
        config: Callable[[], IndexConfig] = IndexConfig,
        name: str = "index",
        learn: Callable[[Session], bool] | None = None,
    ) -> None:
        self.store, self.files, self.version_key, self.vectors = store, files, version_key, vectors
        self.config, self.name, self.learn = config, name, learn
        self._cached: tuple[int, VectorIndex] | None = None
        self._exact = True  # the cached index is the database's state at its version (not a catch-up)

    def version(self) -> int:
        with self.store.session() as s:
            return int(db.get_setting(s, self.version_key, 0))

    def forget(self) -> None:
        """Drop the index held in memory (the next use reloads or rebuilds it)."""
        self._cached = None

    def load(self) -> tuple[VectorIndex | None, dict | None]:
        """The index file and its state as they are on disk (``None`` for what is missing or unreadable)."""
        return self.files.load(self.config())

    def file_problems(self, version: int, ids: set[int]) -> list[str]:
        """What ``doctor`` finds wrong with the index file, against the database at ``version`` holding ``ids``:
        missing or unreadable, older than the database, or other ids."""
        index, state = self.load()
        if index is None:
            return [f"the {self.name} file is missing or unreadable"]
        problems = []
        if state is None or state.get("version") != version:
            problems.append(f"the {self.name} file is older than the database")
        in_index = {int(i) for i in index.ids()}
        if in_index != ids:
            problems.append(
                f"{self.name} and database disagree: {len(in_index - ids)} ids only in the index, "
                f"{len(ids - in_index)} only in the database"
            )
        return problems

    def build(self) -> VectorIndex:
        """A new index of every vector in the database."""
        with self.store.session() as s:
            return self._build(s, self.config())

    def _build(self, s: Session, cfg: IndexConfig) -> VectorIndex:
        ids, vecs, dim = self.vectors.indexed(s)
        log.info("building the %s %s of %d vectors", cfg.resolve_kind(len(ids), dim), self.name, len(ids))
        return VectorIndex.build(ids, vecs, cfg, dim=dim)

    def save(self, index: VectorIndex, version: int) -> None:
        self.files.save(index, version)
        self._cached, self._exact = (version, index), True

    def update(self, start_version: int, changed: set[int], removed: set[int], rebuild: bool = False) -> VectorIndex:
        """Under the write lock, after the database changed from ``start_version``: bring the file up to date
        and return the index. When the file was current at ``start_version`` the changes are applied to it
        (``changed``: ids whose vectors are new or replaced; ``removed``: ids gone); otherwise, or when
        ``rebuild``, when the dimension changed, or when the index kind no longer suits its size, it is
        rebuilt from the database."""
        if self.learn is not None:
            with self.store.session() as s, s.begin():
                if self.learn(s):
                    db.bump_vector_version(s, self.version_key)
                    rebuild = True
        version = self.version()
        cfg = self.config()
        index, state = self.files.load(cfg)
        on_disk = state.get("version") if state is not None else None
        trusted = not rebuild and index is not None and on_disk == start_version
        dirty = on_disk != version
        with self.store.session() as s:
            if trusted and version != start_version:
                assert index is not None
                stale = changed | removed
                if stale:
                    index.remove(np.fromiter(stale, np.int64, len(stale)))
                ids, vecs, _ = self.vectors.indexed(s, changed - removed)
                if ids.size and vecs.shape[1] != index.dim:
                    trusted = False
                elif ids.size:
                    index.add(ids, vecs)
                trusted = trusted and not index.needs_rebuild(cfg)
                dirty = True
            if not trusted:
                index, dirty = self._build(s, cfg), True
            expected = self.vectors.count(s)
        assert index is not None
        if len(index) != expected:
            log.warning("the %s holds %d vectors but the database %d: rebuilding", self.name, len(index), expected)
            index, dirty = self.build(), True
        if dirty or not self.files.index_path.exists():
            self.files.save(index, version)
        self._cached, self._exact = (version, index), True
        return index

    def current(self) -> VectorIndex:
        """The index for searching. When its file is older than the database: while another process is writing
        (an index run committing batch after batch; it brings the file up to date when it ends), the index in
        hand catches up with the rows it has added so far — a search sees them without rebuilding the whole
        index at every commit; otherwise the file is missing or stale for good and is rebuilt from the
        database and saved."""
        version = self.version()
        if self._cached is not None and self._cached[0] == version and self._exact:
            return self._cached[1]
        state = self.files.read_state()
        on_disk = state.get("version") if state is not None else None
        if self._cached is not None and self._cached[0] == version and on_disk != version:
            return self._cached[1]  # caught up with the run in progress, which has committed nothing since
        index = None
        if on_disk == version:
            index, _ = self.files.load(self.config())
        if index is not None:
            self._cached, self._exact = (version, index), True
            return index
        if self._writer_active():
            caught = self._catch_up(version)
            if caught is not None:
                self._cached, self._exact = (version, caught), False
                return caught
        log.warning("the %s file is missing or older than the database; rebuilding it from the database", self.name)
        index = self.build()
        try:
            with write_lock(self.store.home):
                self.files.save(index, version)
        except CollectionBusyError:
            log.info("collection busy; using the rebuilt %s without saving it", self.name)
        self._cached, self._exact = (version, index), True
        return index

    def _writer_active(self) -> bool:
        try:
            with write_lock(self.store):
                return False
        except CollectionBusyError:
            return True

    def _catch_up(self, version: int) -> VectorIndex | None:
        """The index in memory (or else the file, however old) plus the rows added after its last id: what a
        run in progress has committed. Rows it removed or re-embedded keep their old vectors until the run
        ends (searches leave out hits whose rows are gone). ``None`` when there is nothing to start from."""
        base = self._cached[1] if self._cached is not None else self.files.load(self.config())[0]
        if base is None:
            return None
        ids = base.ids()
        with self.store.session() as s:
            new_ids, vecs, _ = self.vectors.indexed(s, self.vectors.ids_above(s, int(ids[-1]) if ids.size else 0))
        if new_ids.size and vecs.shape[1] != base.dim:
            return None
        if new_ids.size:
            base.add(new_ids, vecs)
        log.info("caught the %s up with %d vectors committed by the run in progress", self.name, new_ids.size)
        return base


__all__ = ["RowVectors", "IndexCache", "Transform"]
