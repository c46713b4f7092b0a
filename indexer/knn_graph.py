"""The collection's k-nearest-neighbour graph, built from its FAISS index once and kept in the home.

One graph serves every consumer: the duplicates tool takes its edges above a threshold, re-ranking takes the
neighbour lists (DBA, the diffusion's mutual k-NN graph). It is a derived cache of the database, like the index
file: saved atomically (temp file, fsync, rename: a run killed at any moment leaves the previous file whole),
with the collection's vector version and a signature of what made the vectors (model, masking, whitening)
inside. A graph whose version differs is brought up to date incrementally: images that are new or whose
content changed are searched (and entered into the lists of the neighbours they found, when they beat
those lists' worst entries), images gone are dropped from every list; after changes to more than
:data:`REBUILD_FRACTION` of the collection since the last full build, or a new signature, or more neighbours
asked for, it is rebuilt.

Arrays: ``ids (N,)`` sorted int64 (the images' ids), ``nbr (N, K)`` the neighbours' ids (``-1``: none),
``sim (N, K)`` their cosine similarities, each row best first and never the image itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import db
from .errors import CollectionBusyError
from .store import NullProgress, Progress, Store, write_lock
from .vector_index import VectorIndex

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The graph kept in the collection's home.
GRAPH_FILE = "knn-graph.npz"
#: Neighbours per image kept by default (the duplicates tool's ``-k``; re-ranking uses the first of them).
DEFAULT_K = 16
#: Rebuilt from scratch once the images changed since the last full build exceed this share of the collection.
REBUILD_FRACTION = 0.2
#: Search effort while building the graph (at most; an index set lower keeps its own): neighbours that matter
#: (copies, an object's next view) are found with far less effort than interactive queries are tuned for.
GRAPH_EF_SEARCH = 96
GRAPH_NPROBE = 16

#: ``search(index, vectors, k, self_ids, progress) -> (nbr ids (n, k), sims (n, k))``
Search = Callable[..., tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------- searching


def knn_search(
    index: VectorIndex,
    vectors: np.ndarray,
    k: int,
    self_ids: np.ndarray | None = None,
    progress: Progress | None = None,
    batch: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours in ``index`` of each row of ``vectors`` ``(n, D)``, leaving out the row's own
    id (``self_ids (n,)``) -> ``(n, k)`` neighbour ids (``-1``: none) and ``(n, k)`` float32 scores, best first.
    Searched in batches with the graph's search effort."""
    progress = progress or NullProgress()
    n = vectors.shape[0]
    want = max(1, min(k + 1, len(index)))
    nbr = np.full((n, k), -1, np.int64)
    sim = np.full((n, k), -np.inf, np.float32)
    saved = index.config
    index.set_search_params(nprobe=min(saved.nprobe, GRAPH_NPROBE), ef_search=min(saved.ef_search, GRAPH_EF_SEARCH))
    progress.start(n, "neighbours")
    try:
        for start in range(0, n, batch):
            q = np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32)
            scores, ids = index.search(q, want)
            bad = ids < 0
            if self_ids is not None:
                bad |= ids == np.asarray(self_ids[start : start + batch])[:, None]
            # move the left-out entries to the end of each row, keeping the order of the others
            order = np.argsort(bad, axis=1, kind="stable")[:, :k]
            ids = np.take_along_axis(np.where(bad, -1, ids), order, axis=1)
            scores = np.take_along_axis(np.where(bad, -np.inf, scores), order, axis=1)
            w = ids.shape[1]
            nbr[start : start + q.shape[0], :w] = ids
            sim[start : start + q.shape[0], :w] = scores
            progress.advance(q.shape[0])
    finally:
        progress.finish()
        index.set_search_params(nprobe=saved.nprobe, ef_search=saved.ef_search)
    return nbr, sim


def list_edges(
    rows: np.ndarray, nbr: np.ndarray, sim: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges of neighbour lists at or above ``threshold``: row ``i``'s position ``rows[i]`` and its
    neighbours' positions ``nbr (n, K)`` (``-1``: none) -> ``(a, b, score)`` with ``a < b``, each pair once."""
    keep = (nbr >= 0) & (sim >= threshold) & (nbr != rows[:, None])
    r = np.broadcast_to(rows[:, None], nbr.shape)[keep]
    c, s = nbr[keep], sim[keep]
    a, b = np.minimum(r, c).astype(np.int64), np.maximum(r, c).astype(np.int64)
    if a.size:
        key = a * (int(b.max()) + 1) + b
        order = np.lexsort((-s, key))  # the best score of a pair seen from both ends
        _, first = np.unique(key[order], return_index=True)
        a, b, s = a[order[first]], b[order[first]], s[order[first]]
    return a, b, s.astype(np.float32)


def knn_edges(
    index: VectorIndex,
    vectors: np.ndarray,
    threshold: float,
    k: int = DEFAULT_K,
    id_to_pos: np.ndarray | None = None,
    batch: int = 16384,
    progress: Progress | None = None,
    query_pos: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k-NN graph's edges at or above ``threshold``: each row of ``vectors`` searched in ``index`` ->
    ``(a, b, score)`` with ``a < b`` positions (each pair once). ``id_to_pos`` maps the index's ids to rows of
    ``vectors`` (sorted ids -> positions); ``None``: the ids are the positions. ``query_pos``: the positions of
    the rows of ``vectors`` when they are a part of the whole."""
    n = vectors.shape[0]
    row_pos = np.arange(n, dtype=np.int64) if query_pos is None else np.asarray(query_pos, np.int64)
    self_ids = row_pos if id_to_pos is None else np.asarray(id_to_pos)[row_pos]
    nbr, sim = knn_search(index, vectors, k, self_ids, progress, batch)
    return list_edges(row_pos, _positions(nbr, id_to_pos), sim, threshold)


def _positions(nbr: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    """Neighbour ids -> positions in the sorted ``ids`` (``-1`` for ids not there; ``None``: ids are positions)."""
    if ids is None:
        return nbr
    if not len(ids):
        return np.full(nbr.shape, -1, np.int64)
    pos = np.clip(np.searchsorted(ids, nbr), 0, len(ids) - 1)
    return np.where((nbr >= 0) & (ids[pos] == nbr), pos, -1).astype(np.int64)


# --------------------------------------------------------------------------------------------- the graph


@dataclass
class KnnGraph:
    """A k-NN graph over ``ids``, with what it was made from (see the module's docstring for the arrays)."""

    ids: np.ndarray
    nbr: np.ndarray
    sim: np.ndarray
    fingerprints: np.ndarray
    signature: str
    version: int
    #: images searched again since the last full build (a rebuild is due past REBUILD_FRACTION)
    changed: int = 0
    _pos: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def k(self) -> int:
        return int(self.nbr.shape[1])

    def __len__(self) -> int:
        return int(self.ids.size)

    def positions(self) -> np.ndarray:
        """``(N, K)`` the neighbours as positions in ``ids`` (``-1``: none)."""
        if self._pos is None:
            self._pos = _positions(self.nbr, self.ids)
        return self._pos

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` in the graph (``-1`` for ids it does not hold)."""
        return _positions(np.asarray(ids, np.int64), self.ids)

    def edges(self, threshold: float, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected edges at or above ``threshold`` among each image's first ``k`` neighbours (default: all)
        -> ``(a, b, score)`` positions in ``ids``, ``a < b``."""
        rows = np.arange(len(self), dtype=np.int64)
        return list_edges(rows, self.positions()[:, :k], self.sim[:, :k], threshold)


def _merge_lists(
    nbr: np.ndarray, sim: np.ndarray, targets: np.ndarray, cand_ids: np.ndarray, cand_sims: np.ndarray
) -> None:
    """Enter candidates ``(targets[i] row, cand_ids[i], cand_sims[i])`` into the rows' lists in place, keeping
    each row's ``K`` best (entries already in a row are not repeated)."""
    if not targets.size:
        return
    k = nbr.shape[1]
    rows = np.unique(targets)
    r_all = np.concatenate([np.repeat(rows, k), targets])
    i_all = np.concatenate([nbr[rows].ravel(), cand_ids])
    s_all = np.concatenate([sim[rows].ravel(), cand_sims]).astype(np.float32)
    s_all = np.where(i_all >= 0, s_all, -np.inf)
    order = np.lexsort((-s_all, r_all))
    r_all, i_all, s_all = r_all[order], i_all[order], s_all[order]
    dup = np.r_[False, (r_all[1:] == r_all[:-1]) & (i_all[1:] == i_all[:-1]) & (i_all[1:] >= 0)]
    r_all, i_all, s_all = r_all[~dup], i_all[~dup], s_all[~dup]
    starts = np.searchsorted(r_all, rows)
    rank = np.arange(r_all.size) - np.repeat(starts, np.diff(np.r_[starts, r_all.size]))
    take = rank < k
    slot_rows, slot_cols = np.searchsorted(rows, r_all[take]), rank[take]
    new_nbr = np.full((rows.size, k), -1, np.int64)
    new_sim = np.full((rows.size, k), -np.inf, np.float32)
    new_nbr[slot_rows, slot_cols] = i_all[take]
    new_sim[slot_rows, slot_cols] = s_all[take]
    new_nbr[~np.isfinite(new_sim)] = -1
    nbr[rows], sim[rows] = new_nbr, new_sim


def update_graph(
    cached: KnnGraph | None,
    index: VectorIndex,
    ids: np.ndarray,
    fingerprints: np.ndarray,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    signature: str,
    version: int,
    k: int = DEFAULT_K,
    progress: Progress | None = None,
    search: Search | None = None,
) -> tuple[KnnGraph, int]:
    """The graph of ``ids`` (sorted; ``fingerprints (N,)`` say when an image's content changed) from ``cached``
    brought up to date, or built anew -> ``(graph, images searched)``. ``vectors_of(ids) -> (n, D)``: the
    indexed vectors of those ids, in that order. ``search`` defaults to :func:`knn_search`."""
    search = search or knn_search
    ids = np.asarray(ids, np.int64)
    fingerprints = np.asarray(fingerprints)
    n = ids.size
    if cached is not None and cached.signature == signature and cached.k >= k:
        k = cached.k
        pos = cached.rows_of(ids)
        same = (pos >= 0) & (cached.fingerprints[np.maximum(pos, 0)] == fingerprints) if n else np.zeros(0, bool)
        todo = np.flatnonzero(~same)
        if cached.changed + todo.size <= REBUILD_FRACTION * max(n, 1):
            stale = np.setdiff1d(cached.ids, ids[same])  # gone, or changed
            nbr = np.full((n, k), -1, np.int64)
            sim = np.full((n, k), -np.inf, np.float32)
            nbr[same], sim[same] = cached.nbr[pos[same]], cached.sim[pos[same]]
            if stale.size:
                gone = np.isin(nbr, stale)
                nbr[gone], sim[gone] = -1, -np.inf
                order = np.argsort(-sim, axis=1, kind="stable")
                nbr, sim = np.take_along_axis(nbr, order, 1), np.take_along_axis(sim, order, 1)
            if todo.size:
                log.info("k-NN graph: %d of %d images are new or changed", todo.size, n)
                t_nbr, t_sim = search(index, vectors_of(ids[todo]), k, ids[todo], progress)
                nbr[todo], sim[todo] = t_nbr, t_sim
                # each new image enters the lists of the neighbours it found, where it beats their worst
                src = np.repeat(ids[todo], k)
                dst = _positions(t_nbr.ravel(), ids)
                ok = dst >= 0
                _merge_lists(nbr, sim, dst[ok], src[ok], t_sim.ravel()[ok])
            graph = KnnGraph(ids, nbr, sim, fingerprints, signature, version, cached.changed + int(todo.size))
            return graph, int(todo.size)
    log.info("building the k-NN graph of %d images (%d neighbours each)", n, k)
    if n:
        nbr, sim = search(index, vectors_of(ids), k, ids, progress)
    else:
        nbr, sim = np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return KnnGraph(ids, nbr, sim, fingerprints, signature, version, 0), n


class NpzFile(Generic[T]):
    """A cache file holding one dataclass (``kind``: arrays and scalars) as an ``.npz``: it loads as ``None``
    when missing or unreadable (the caller rebuilds it) and is saved atomically. Fields whose names start with
    ``_`` are not kept."""

    kind: type[T]
    what: str = "cache"

    def __init__(self, path: Path) -> None:
        self.path = path

    def stamp(self) -> tuple[int, int] | None:
        """``(mtime_ns, size)`` of the file (``None``: no file): what is held in memory is the file's only while
        this is unchanged (another process may have replaced it, or a person deleted it)."""
        return file_stamp(self.path)

    def _kept(self) -> list[str]:
        return [f.name for f in fields(self.kind) if not f.name.startswith("_")]  # type: ignore[arg-type]

    def load(self) -> T | None:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                values = {name: z[name].item() if z[name].ndim == 0 else z[name] for name in self._kept()}
            return self.kind(**values)
        except FileNotFoundError:
            return None
        except (OSError, KeyError, ValueError, EOFError) as exc:
            log.warning("the %s %s is unreadable (%s); it will be rebuilt", self.what, self.path, exc)
            return None

    def save(self, value: T) -> None:
        write_npz_atomic(self.path, **{name: np.asarray(getattr(value, name)) for name in self._kept()})

    def check(self, version: int) -> str | None:
        """What ``doctor`` finds wrong with the file against the database's ``version`` (``None``: nothing, or
        no file: a cache is optional)."""
        if not self.path.exists():
            return None
        value = self.load()
        if value is None:
            return f"the {self.what} file {self.path.name} is unreadable"
        if value.version != version:
            return f"the {self.what} file {self.path.name} is older than the database"
        return None


class GraphFile(NpzFile[KnnGraph]):
    """The k-NN graph's file in a home."""

    kind = KnnGraph
    what = "k-NN graph"


def file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def save_locked(home: Path, save: Callable[[], None], locked: bool, what: str) -> None:
    """Run ``save`` under the home's write lock (``locked``: already held); when another process holds it, or
    the file cannot be written, the cache is used unsaved (it is rebuilt later)."""
    try:
        with write_lock(home) if not locked else contextlib.nullcontext():
            save()
    except CollectionBusyError:
        log.info("collection busy; using %s without saving it", what)
    except OSError as exc:
        log.warning("could not keep %s in %s: %s", what, home, exc)


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an ``.npz`` so that a crash at any moment leaves the old file or the new
    one, never a torn one: a temp file beside it, flushed to disk, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- in a collection


def vectors_signature(s: Session) -> str:
    """What made a collection's indexed vectors: the model, masking and whitening settings, and when the
    whitening was learned (a graph of other vectors is rebuilt)."""
    parts = {key: db.get_setting(s, key) for key in ("model", "mask", "whitening", "whitening_learned_on")}
    return json.dumps(parts, sort_keys=True, default=str)


class GraphCache:
    """The k-NN graph of a collection's indexed images, kept in memory and in ``home/GRAPH_FILE``.

    ``index()`` gives the collection's current FAISS index; ``rows()`` the ``(ids, fingerprints)`` of the
    indexed images (sorted by id); ``vectors_of(ids)`` their indexed vectors; ``version()`` the vector version.
    """

    def __init__(
        self,
        store: Store,
        index: Callable[[], VectorIndex],
        rows: Callable[[Session], tuple[np.ndarray, np.ndarray]],
        vectors_of: Callable[[np.ndarray], np.ndarray],
        version: Callable[[], int],
        file_name: str = GRAPH_FILE,
    ) -> None:
        self.store, self.index, self.rows, self.vectors_of, self.version = store, index, rows, vectors_of, version
        self.file = GraphFile(store.home / file_name)
        self._graph: KnnGraph | None = None
        self._stamp: tuple[int, int] | None = None
        #: images searched by the last :meth:`current` (0: the graph was current)
        self.last_searched = 0

    def forget(self) -> None:
        self._graph = None

    def is_current(self, graph: KnnGraph | None, version: int, k: int) -> bool:
        return graph is not None and graph.version == version and graph.k >= k

    def current(
        self,
        k: int = DEFAULT_K,
        progress: Progress | None = None,
        search: Search | None = None,
        locked: bool = False,
    ) -> KnnGraph:
        """The graph with at least ``k`` neighbours per image, brought up to date with the database (and saved,
        unless another process is writing; ``locked``: this process holds the write lock already)."""
        self.last_searched = 0
        version = self.version()
        stamp = self.file.stamp()
        if self._graph is not None and stamp != self._stamp:
            self._graph = None  # the file was replaced or deleted since: it is the truth
        if self.is_current(self._graph, version, k):
            assert self._graph is not None
            return self._graph
        on_disk = self.file.load()
        cached = self._graph
        if on_disk is not None and (cached is None or on_disk.version >= cached.version):
            cached, self._stamp = on_disk, stamp
        with self.store.session() as s:
            signature = vectors_signature(s)
            if self.is_current(cached, version, k) and cached is not None and cached.signature == signature:
                self._graph = cached
                return cached
            ids, fingerprints = self.rows(s)
        graph, self.last_searched = update_graph(
            cached, self.index(), ids, fingerprints, self.vectors_of, signature, version, k, progress, search
        )
        self._graph = graph

        def save() -> None:
            if self.version() == version:
                self.file.save(graph)
                self._stamp = self.file.stamp()

        save_locked(self.store.home, save, locked, "the k-NN graph")
        return graph

    def check(self) -> str | None:
        """What is wrong with the graph file, if one is kept (``None``: nothing, or no file: it is optional)."""
        return self.file.check(self.version())


def fingerprint(content_hash: str | None) -> int:
    """A content hash as an int64 (its first 60 bits; 0 when unknown): 8 bytes a row instead of a string."""
    if not content_hash:
        return 0
    try:
        return int(content_hash[:15], 16)
    except ValueError:
        return int.from_bytes(hashlib.blake2b(content_hash.encode(), digest_size=7).digest(), "big")


def indexed_fingerprints(model: type, where: tuple) -> Callable[[Session], tuple[np.ndarray, np.ndarray]]:
    """``rows(session)`` for :class:`GraphCache`: the ids (sorted) of ``model``'s rows that match ``where``, and
    their content hashes as :func:`fingerprint` s."""

    def rows(s: Session) -> tuple[np.ndarray, np.ndarray]:
        found = s.execute(select(model.id, model.content_hash).where(*where).order_by(model.id)).all()
        ids = np.fromiter((r[0] for r in found), np.int64, len(found))
        return ids, np.fromiter((fingerprint(r[1]) for r in found), np.int64, len(found))

    return rows


__all__ = [
    "DEFAULT_K",
    "GRAPH_FILE",
    "GraphCache",
    "GraphFile",
    "NpzFile",
    "fingerprint",
    "KnnGraph",
    "indexed_fingerprints",
    "knn_edges",
    "knn_search",
    "list_edges",
    "update_graph",
    "vectors_signature",
    "save_locked",
    "write_npz_atomic",
]
