"""One sync engine for every kind of tracked file: images, face photos, and whatever comes next.

The flow of ``index_folder``, for any table with the :class:`~indexer.db.TrackedFile` columns:

1. scan the folder (:func:`scan_root`);
2. compare the scan with the table and apply the plan in one transaction (:class:`FileSync`): new files get
   ``pending`` rows, changed ones are reset to ``pending`` (unless their content hash says they are the same),
   moved ones follow their file, deleted ones go, rows a killed run left ``pending`` are resumed;
3. process the pending rows, committing the results in small transactions (:class:`BatchWriter`), each of
   which bumps the table's vector version: a run killed at any moment loses at most the batch in flight;
4. bring the index cache up to date with what changed (:class:`~indexer.index_cache.IndexCache`).

:func:`index_folder` is that skeleton; a kind of tracked file supplies its table, how to reset a row, the rows
derived from a file (:class:`Dependents`, e.g. the faces of a photo), and how to process a pending file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from . import db
from .db import ERROR, INDEXED, PENDING
from .errors import Interrupted, LookalikeError
from .imageio import IMAGE_EXTENSIONS, file_hash
from .index_cache import IndexCache
from .scan import KnownFile, ScanResult, plan_sync, scan_folder
from .store import NullProgress, Progress, Store, chunks, write_lock
from .vector_index import VectorIndex

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What one ``index_folder`` run found and did."""

    folder: str
    scanned: int = 0
    new: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    resumed: int = 0
    embedded: int = 0
    ignored: int = 0  # files with a non-image extension
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    embed_seconds: float = 0.0
    total_seconds: float = 0.0
    index_kind: str = ""
    total_indexed: int = 0
    #: Files under the folder that could not be read in an earlier run and have not changed since.
    earlier_errors: int = 0
    #: Masked collections: images embedded whole because their mask was unusable (empty, full, failed).
    mask_fallbacks: int = 0
    #: Of ``removed``: files outside the folder that are gone from disk (forgotten by this run).
    pruned: int = 0
    #: Image files left out by the collection's exclusions (``Store.exclusions``); excluded files that were
    #: indexed before are forgotten (counted in ``removed``).
    excluded: int = 0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0


def scan_root(folder: str | Path) -> tuple[Path, ScanResult]:
    """The resolved folder and its image files; a missing folder or a file is a :class:`LookalikeError`."""
    root = Path(folder).expanduser()
    try:
        scan = scan_folder(root, IMAGE_EXTENSIONS)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise LookalikeError(str(exc)) from None
    return root.resolve(), scan


def safe_hash(path: str) -> str | None:
    """The content hash of ``path``, ``None`` when it cannot be read."""
    try:
        return file_hash(path)
    except OSError:
        return None


class Dependents(Protocol):
    """Rows derived from a tracked file that hold the vectors (e.g. the faces found in a photo)."""

    def moved(self, s: Session, file_id: int, path: str) -> None:
        """The file of ``file_id`` is now at ``path``."""

    def drop(self, s: Session, file_ids: Sequence[int]) -> set[int]:
        """Delete the rows derived from ``file_ids``; return their index ids."""


@dataclass
class SyncChanges:
    """The outcome of applying a sync plan."""

    #: ``(row id, path)`` of the files to process, in scan order (resumed, changed, new).
    todo: list[tuple[int, str]] = field(default_factory=list)
    #: Index ids whose vectors are being replaced (same id, new vector to come).
    refresh: set[int] = field(default_factory=set)
    #: Index ids whose vectors are gone.
    removed: set[int] = field(default_factory=set)
    #: A table that holds vectors and has dependents too (images and their objects): the dependents' index ids
    #: that are gone (they have an index of their own).
    derived_removed: set[int] = field(default_factory=set)


class FileSync:
    """Applies a folder scan to ``model``'s table (one with the :class:`~indexer.db.TrackedFile` columns).

    ``reset`` are the extra column values that undo a row's processing when its file changed (e.g.
    ``vector=None``). Without ``dependents`` the tracked row holds the vector itself and its id is the index
    id; with them, the derived rows hold the vectors and follow their file, unless ``own_vectors``: then both
    do (an image's vector and its objects'), each kind in an index of its own. ``version_key`` is the setting
    counting the changes of the vectors (bumped, in the same transaction, when vectors leave the index).
    """

    def __init__(
        self,
        model: type,
        version_key: str,
        reset: dict[str, Any] | None = None,
        dependents: Dependents | None = None,
        own_vectors: bool | None = None,
    ) -> None:
        self.model = model
        self.version_key = version_key
        self.reset = dict(reset or {})
        self.dependents = dependents
        self.own_vectors = dependents is None if own_vectors is None else own_vectors

    def known_under(self, s: Session, root: Path) -> list[KnownFile]:
        m = self.model
        prefix = str(root).rstrip(os.sep) + os.sep
        rows = s.execute(
            select(m.id, m.path, m.size, m.mtime_ns, m.status, m.content_hash).where(
                m.path.startswith(prefix, autoescape=True)
            )
        )
        return [KnownFile(*r) for r in rows]

    def gone_elsewhere(self, s: Session, root: Path) -> list[KnownFile]:
        """Rows outside ``root`` whose file no longer exists (one directory listing per folder, not one stat
        per file). A folder that cannot be listed for another reason than its absence counts as present."""
        m = self.model
        prefix = str(root).rstrip(os.sep) + os.sep
        rows = s.execute(
            select(m.id, m.path, m.size, m.mtime_ns, m.status, m.content_hash).where(
                ~m.path.startswith(prefix, autoescape=True)
            )
        )
        by_dir: dict[str, list[KnownFile]] = {}
        for r in rows:
            by_dir.setdefault(os.path.dirname(r[1]), []).append(KnownFile(*r))
        gone: list[KnownFile] = []
        for folder, known in by_dir.items():
            try:
                present = set(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                present = set()
            except OSError:
                continue
            gone.extend(k for k in known if os.path.basename(k.path) not in present)
        return gone

    def apply(self, s: Session, root: Path, scan: ScanResult, report: IndexReport) -> SyncChanges:
        """Record the scan of ``root`` in the table (inside the caller's transaction ``s``).

        Files gone from anywhere else in the table take part too: a new file here with the content of one
        that disappeared elsewhere is that file, moved (its vector is kept); the others are forgotten."""
        m = self.model
        known = self.known_under(s, root)
        elsewhere = self.gone_elsewhere(s, root)
        plan = plan_sync(scan.files, known + elsewhere, safe_hash, PENDING)
        report.new, report.moved, report.unchanged = len(plan.new), len(plan.moved), plan.unchanged
        report.resumed = len(plan.resume)
        by_id = {k.id: k for k in known}
        stat_of = {f.path: (f.size, f.mtime_ns) for f in scan.files}
        report.earlier_errors = sum(
            1 for k in known if k.status == ERROR and stat_of.get(k.path) == (k.size, k.mtime_ns)
        )
        out = SyncChanges(todo=[(row_id, f.path) for row_id, f in plan.resume])
        redo = [row_id for row_id, _ in plan.resume]  # a killed run may have left derived rows behind
        for row_id, f in plan.moved:
            s.execute(update(m).where(m.id == row_id).values(path=f.path, size=f.size, mtime_ns=f.mtime_ns))
            if self.dependents is not None:
                self.dependents.moved(s, row_id, f.path)
        for row_id, f in plan.changed:
            old = by_id[row_id]
            if old.status == INDEXED and old.content_hash and safe_hash(f.path) == old.content_hash:
                # Touched but identical (e.g. copied with a new mtime): nothing to process.
                s.execute(update(m).where(m.id == row_id).values(size=f.size, mtime_ns=f.mtime_ns))
                report.unchanged += 1
                continue
            s.execute(
                update(m)
                .where(m.id == row_id)
                .values(size=f.size, mtime_ns=f.mtime_ns, status=PENDING, error=None, **self.reset)
            )
            out.todo.append((row_id, f.path))
            redo.append(row_id)
            report.changed += 1
        if self.own_vectors:
            out.refresh.update(redo)
            out.removed.update(plan.removed)
        if self.dependents is not None:
            gone = out.derived_removed if self.own_vectors else out.removed
            for chunk in chunks(redo + plan.removed, 500):
                gone |= self.dependents.drop(s, chunk)
        for chunk in chunks(plan.removed, 500):
            s.execute(delete(m).where(m.id.in_(chunk)))
        report.removed = len(plan.removed)
        outside = {k.id for k in elsewhere}
        report.pruned = sum(1 for i in plan.removed if i in outside)
        if plan.new:
            rows = [m(path=f.path, size=f.size, mtime_ns=f.mtime_ns, status=PENDING) for f in plan.new]
            s.add_all(rows)
            s.flush()
            out.todo.extend((r.id, r.path) for r in rows)
        if out.refresh or out.removed or out.derived_removed:
            db.bump_vector_version(s, self.version_key)
        log.info(
            "scan of %s: %d new, %d changed, %d moved, %d removed, %d unchanged, %d resumed",
            root,
            report.new,
            report.changed,
            report.moved,
            report.removed,
            report.unchanged,
            report.resumed,
        )
        return out


class BatchWriter:
    """Commits the results of processing pending files in small transactions.

    :meth:`put` takes one file's result: the column values of its tracked row (``id`` included) and the
    derived rows it produced. The batch is committed in one transaction that also bumps ``version_key``: as
    soon as the first result exists, then every ``store.commit_every`` files or ``commit_seconds``, whichever
    comes first, so an interrupted run keeps nearly all its work. ``changed`` collects the index ids of the
    vectors committed: the tracked rows put with ``indexed=True`` (also in ``tracked``), and the derived rows
    (also in ``derived``). Used as a context
    manager, it starts and finishes the progress bar, times the work into ``report.embed_seconds`` and
    commits what is left, also when the work is interrupted (every result put is complete).
    """

    #: Longest time results wait for their commit.
    commit_seconds = 2.0

    def __init__(
        self,
        store: Store,
        model: type,
        version_key: str,
        progress: Progress | None = None,
        report: IndexReport | None = None,
        description: str = "embedding",
        total: int = 0,
    ) -> None:
        self.store, self.model, self.version_key = store, model, version_key
        self.progress = progress or NullProgress()
        self.report, self.description, self.total = report, description, total
        self.changed: set[int] = set()
        self.tracked: set[int] = set()
        self.derived: set[int] = set()
        self._values: list[dict[str, Any]] = []
        self._rows: list[Any] = []
        self._indexed: list[int] = []
        self._t0 = self._last_commit = 0.0
        #: results committed so far
        self.done = 0

    def __enter__(self) -> BatchWriter:
        self.progress.start(self.total, self.description)
        self._t0 = self._last_commit = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                self.flush()
            else:
                try:  # keep the finished results of an interrupted run
                    self.flush()
                except Exception as exc:  # the original error matters more
                    log.warning("could not commit the last %d results: %s", len(self._values), exc)
        finally:
            self.progress.finish()
            if self.report is not None:
                self.report.embed_seconds = time.perf_counter() - self._t0

    def put(self, values: dict[str, Any], rows: Sequence[Any] = (), indexed: bool = False) -> None:
        self._values.append(values)
        self._rows.extend(rows)
        if indexed:
            self._indexed.append(values["id"])
        self.progress.advance(1)
        due = time.perf_counter() - self._last_commit >= self.commit_seconds
        if self.done == 0 or due or len(self._values) >= self.store.commit_every:
            self.flush()

    def flush(self) -> None:
        if not self._values:
            return
        with self.store.session() as s, s.begin():
            s.execute(update(self.model), self._values)
            if self._rows:
                s.add_all(self._rows)
                s.flush()
            db.bump_vector_version(s, self.version_key)
        self.tracked.update(self._indexed)
        self.derived.update(r.id for r in self._rows)
        self.changed.update(self._indexed)
        self.changed.update(r.id for r in self._rows)
        self.done += len(self._values)
        self._values, self._rows, self._indexed = [], [], []
        self._last_commit = time.perf_counter()


#: ``process(todo, report, writer)``: process the pending ``(id, path)`` files, putting each result in ``writer``.
Process = Callable[[list[tuple[int, str]], IndexReport, BatchWriter], None]


def index_folder(
    store: Store,
    folder: str | Path,
    report: IndexReport,
    sync: FileSync,
    cache: IndexCache,
    process: Process,
    progress: Progress | None = None,
    description: str = "embedding",
    prepare: Callable[[], None] | None = None,
    derived_cache: IndexCache | None = None,
) -> VectorIndex:
    """Sync ``store``'s ``sync.model`` table with ``folder`` and bring ``cache`` up to date, under the write
    lock; ``prepare`` runs first inside the lock. Fills ``report``; returns the up-to-date index.
    ``derived_cache``: the index of the dependents' vectors when the tracked rows hold vectors too (it shares
    ``cache``'s version counter), brought up to date as well."""
    t_start = time.perf_counter()
    root, scan = scan_root(folder)
    exclusions = store.exclusions
    if exclusions.patterns:
        kept = [f for f in scan.files if not exclusions.matches(f.path)]
        report.excluded, scan.files = len(scan.files) - len(kept), kept
    report.folder, report.scanned, report.ignored = str(root), len(scan.files), scan.ignored
    report.skipped.extend(scan.unreadable)
    with write_lock(store):
        if prepare is not None:
            prepare()
        start_version = cache.version()
        with store.session() as s, s.begin():
            changes = sync.apply(s, root, scan, report)
        changed, derived = set(changes.refresh), set()
        interrupted: BatchWriter | None = None
        if changes.todo:
            writer = BatchWriter(store, sync.model, sync.version_key, progress, report, description, len(changes.todo))
            try:
                with writer:
                    process(changes.todo, report, writer)
            except KeyboardInterrupt:
                interrupted = writer
            changed |= writer.changed if derived_cache is None else writer.tracked
            derived = writer.derived
        before = cache.version()
        index = cache.update(start_version, changed, changes.removed)
        if derived_cache is not None:  # a change learned by the update (e.g. a whitening) rebuilds it too
            derived_cache.update(start_version, derived, changes.derived_removed, rebuild=cache.version() != before)
    if interrupted is not None:
        raise Interrupted(
            f"interrupted: {interrupted.done} of {interrupted.total} files done and kept; "
            "run the same command to resume"
        )
    report.index_kind, report.total_indexed = index.kind, len(index)
    report.total_seconds = time.perf_counter() - t_start
    return index


__all__ = [
    "IndexReport",
    "scan_root",
    "safe_hash",
    "Dependents",
    "SyncChanges",
    "FileSync",
    "BatchWriter",
    "index_folder",
]
