"""Re-ranking in a collection: query vectors -> re-ranked hits, over the FAISS index, the shared k-NN graph
(:mod:`indexer.knn_graph`) and the DBA vectors, a derived cache kept in the home.

The math is :mod:`retrieval.rerank`. Here: :func:`rerank_search` (one call, every method, what every search of a
collection goes through) and :class:`DbaCache`, the augmented database vectors saved atomically with the
collection's vector version inside, and brought up to date incrementally: only the rows whose own vector,
neighbour list or neighbours' vectors changed are recomputed. A missing, unreadable or stale file is rebuilt
from the database; it is never a source of truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from retrieval.rerank import (
    AutoChoice,
    RerankSettings,
    alpha_qe,
    auto_choice,
    dba,
    diffusion_scores,
    reciprocity,
    subgraph,
)

from .knn_graph import GraphCache, KnnGraph, NpzFile, knn_search, save_locked
from .store import Store
from .vector_index import VectorIndex

log = logging.getLogger(__name__)

#: The DBA vectors kept in the collection's home.
DBA_FILE = "rerank-dba.npz"

#: ``vectors_of(ids (n,)) -> (n, D)``: indexed vectors of those ids, in that order.
VectorsOf = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------- DBA vectors


@dataclass
class DbaVectors:
    """Augmented vectors of ``ids`` (sorted), float16 ``(N, D)``, made from the graph lists ``nbr (N, k)`` (ids)
    and the images' ``fingerprints``, at the collection's vector ``version`` with ``k`` and ``alpha``."""

    ids: np.ndarray
    vectors: np.ndarray
    nbr: np.ndarray
    fingerprints: np.ndarray
    version: int
    k: int
    alpha: float
    signature: str

    def matches(self, version: int, settings: RerankSettings) -> bool:
        return self.version == version and self.k == settings.dba_k and self.alpha == settings.dba_alpha

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        if not self.ids.size:
            return np.full(np.shape(ids), -1, np.int64)
        pos = np.clip(np.searchsorted(self.ids, ids), 0, self.ids.size - 1)
        return np.where((ids >= 0) & (self.ids[pos] == ids), pos, -1)


def update_dba(
    cached: DbaVectors | None, graph: KnnGraph, vectors_of: VectorsOf, settings: RerankSettings
) -> tuple[DbaVectors, int]:
    """The DBA vectors of ``graph``'s images, reusing the rows of ``cached`` that nothing changed for ->
    ``(vectors, rows recomputed)``."""
    k, alpha = settings.dba_k, settings.dba_alpha
    ids, nbr = graph.ids, graph.nbr[:, :k]
    n = ids.size
    todo = np.arange(n)
    out = None
    if cached is not None and cached.k == k and cached.alpha == alpha and cached.signature == graph.signature:
        pos = cached.rows_of(ids)
        same_row = (pos >= 0) & (cached.fingerprints[np.maximum(pos, 0)] == graph.fingerprints)
        same_row &= (cached.nbr[np.maximum(pos, 0)] == nbr).all(axis=1) if n else same_row
        changed_ids = ids[~same_row]
        # a row whose neighbours' vectors changed is recomputed as well
        changed_vec = ids[(pos < 0) | (cached.fingerprints[np.maximum(pos, 0)] != graph.fingerprints)]
        same_row &= ~np.isin(nbr, changed_vec).any(axis=1)
        todo = np.flatnonzero(~same_row)
        out = np.zeros((n, cached.vectors.shape[1]), np.float16)
        out[same_row] = cached.vectors[pos[same_row]]
        log.debug("DBA: %d of %d rows to recompute (%d changed)", todo.size, n, changed_ids.size)
    if todo.size:
        rows = ids[todo]
        local_nbr = nbr[todo]
        need = np.union1d(rows, local_nbr[local_nbr >= 0])
        vecs = vectors_of(need)
        at = np.searchsorted(need, rows)
        nb_at = np.where(local_nbr >= 0, np.searchsorted(need, np.maximum(local_nbr, 0)), -1)
        fresh = dba(vecs, nb_at, graph.sim[todo, :k], k, alpha, rows=at)
        if out is None:
            out = np.zeros((n, vecs.shape[1]), np.float16)
        out[todo] = fresh.astype(np.float16)
    if out is None:
        out = np.zeros((0, 1), np.float16)
    return (
        DbaVectors(ids, out, nbr.copy(), graph.fingerprints, graph.version, k, alpha, graph.signature),
        int(todo.size),
    )


class DbaFile(NpzFile[DbaVectors]):
    """The DBA vectors' file in a home."""

    kind = DbaVectors
    what = "re-ranking cache (DBA vectors)"


class DbaCache:
    """A collection's DBA vectors: in memory, in ``home/DBA_FILE``, from its :class:`GraphCache`."""

    def __init__(self, store: Store, graph: GraphCache, vectors_of: VectorsOf, file_name: str = DBA_FILE) -> None:
        self.store, self.graph, self.vectors_of = store, graph, vectors_of
        self.file = DbaFile(store.home / file_name)
        self._dba: DbaVectors | None = None
        self._stamp: tuple[int, int] | None = None
        #: rows recomputed by the last :meth:`current` (0: the cache was current)
        self.last_recomputed = 0

    def forget(self) -> None:
        self._dba = None

    def current(self, settings: RerankSettings, locked: bool = False) -> DbaVectors:
        """The DBA vectors for ``settings``, brought up to date with the database (saved unless another process
        is writing; ``locked``: this process holds the write lock already)."""
        self.last_recomputed = 0
        version = self.graph.version()
        stamp = self.file.stamp()
        if self._dba is not None and stamp != self._stamp:
            self._dba = None  # the file was replaced or deleted since: it is the truth
        if self._dba is not None and self._dba.matches(version, settings):
            return self._dba
        on_disk = self.file.load()
        if on_disk is not None and on_disk.matches(version, settings):
            self._dba, self._stamp = on_disk, stamp
            return on_disk
        graph = self.graph.current(settings.dba_k, locked=locked)
        cached = on_disk if on_disk is not None else self._dba
        fresh, self.last_recomputed = update_dba(cached, graph, self.vectors_of, settings)
        self._dba = fresh

        def save() -> None:
            if self.graph.version() == version:
                self.file.save(fresh)
                self._stamp = self.file.stamp()

        save_locked(self.store.home, save, locked, "the DBA vectors")
        return fresh

    def check(self) -> str | None:
        """What is wrong with the DBA file, if one is kept (``None``: nothing, or no file: it is optional)."""
        return self.file.check(self.graph.version())


# --------------------------------------------------------------------------------------------- auto


#: The setting ``auto``'s choice is kept in (an :class:`AutoChoice` as a dict), made after each run that changed
#: the collection.
AUTO_CHOICE_SETTING = "rerank_auto_choice"

_last_choice: tuple[KnnGraph, AutoChoice] | None = None


def graph_auto_choice(graph: KnnGraph, settings: RerankSettings) -> AutoChoice:
    """``auto``'s choice on a collection's k-NN graph (:func:`retrieval.rerank.auto_choice`), made once per graph
    object and settings (the last one is remembered: a linear pass over the graph's links)."""
    global _last_choice
    if _last_choice is not None and _last_choice[0] is graph:
        choice = _last_choice[1]
        if choice.fits(settings, graph.version):
            return choice
    choice = auto_choice(graph.positions(), settings, graph.version)
    _last_choice = (graph, choice)
    return choice


#: Images whose neighbour lists (and their neighbours') estimate ``auto``'s statistic when no graph is kept.
AUTO_SAMPLE = 2000


def sampled_auto_choice(
    index: VectorIndex,
    ids: np.ndarray,
    vectors_of: VectorsOf,
    settings: RerankSettings,
    version: int = -1,
    sample: int = AUTO_SAMPLE,
    seed: int = 0,
) -> AutoChoice:
    """``auto``'s choice without the whole k-NN graph: the share of mutual links among the ``graph_k``-NN links
    of a seeded sample of ``sample`` of the indexed ``ids`` (all of them when fewer), each checked against the
    neighbour's own list (searched as the graph is: :func:`~indexer.knn_graph.knn_search`). About
    ``sample * (graph_k + 1)`` searches whatever the collection's size; exact when the sample is every image."""
    ids = np.asarray(ids, np.int64)
    k = settings.graph_k
    if ids.size < settings.auto_min_images:
        return AutoChoice.of(0.0, ids.size, settings, version)
    rng = np.random.default_rng(seed)
    pick = ids if ids.size <= sample else np.sort(rng.choice(ids, sample, replace=False))
    nbr, _ = knn_search(index, vectors_of(pick), k, pick)
    extra = np.setdiff1d(np.unique(nbr[nbr >= 0]), pick)
    extra_nbr, _ = knn_search(index, vectors_of(extra), k, extra) if extra.size else (np.zeros((0, k), np.int64), None)
    nodes = np.concatenate([pick, extra])
    lists = np.concatenate([nbr, extra_nbr])
    order = np.argsort(nodes)
    at = np.clip(np.searchsorted(nodes[order], lists), 0, max(nodes.size - 1, 0))
    local = np.where((lists >= 0) & (nodes[order][at] == lists), order[at], -1)
    # only the sample's own links count: their neighbours' lists are all known
    return AutoChoice.of(reciprocity(local, k, rows=pick.size), ids.size, settings, version)


# --------------------------------------------------------------------------------------------- searching


def rerank_search(
    index: VectorIndex,
    queries: np.ndarray,
    k: int,
    settings: RerankSettings,
    graph: Callable[[int], KnnGraph] | None = None,
    dba_vectors: Callable[[], DbaVectors] | None = None,
    vectors_of: VectorsOf | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, ids)`` ``(Q, k)`` of each query vector ``(Q, D)`` (as indexed) under
    ``settings``: ``graph(k)`` gives the k-NN graph (diffusion), ``dba_vectors()`` the DBA vectors (dba),
    ``vectors_of`` the indexed vectors of ids (αQE). Padded with ``-1`` ids and ``-inf`` scores, like
    :meth:`VectorIndex.search`. Scores: cosine similarities (none, qe, dba: with the expanded query or the
    augmented vectors), or the diffusion's, scaled so that each query's best hit scores its cosine similarity with
    the query (the others less, in the diffusion's proportions). Images identical to the query
    (cosine at least :data:`IDENTICAL`) come first whatever the method, scored 1. ``auto`` is resolved on
    ``graph(settings.graph_k)`` (:func:`graph_auto_choice`; a caller that keeps the choice passes its result)."""
    q = np.ascontiguousarray(queries, np.float32)
    if settings.method == "auto":
        if graph is None:
            raise ValueError("auto re-ranking needs the k-NN graph")
        settings = graph_auto_choice(graph(settings.graph_k), settings).apply(settings)
    method = settings.method
    if method == "none" or len(index) == 0:
        return index.search(q, k)
    if method == "qe":
        if vectors_of is None:
            raise ValueError("αQE needs the indexed vectors")
        sims, ids = index.search(q, settings.qe_k)
        neighbours = _gather(vectors_of, ids, q.shape[1])
        scores, found = index.search(alpha_qe(q, neighbours, np.where(ids >= 0, sims, np.nan), settings.qe_alpha), k)
        return _identical_first(sims, ids, scores, found, k)
    want = min(max(settings.candidates, k), len(index))
    sims, cand = index.search(q, want)
    if method == "dba":
        if dba_vectors is None:
            raise ValueError("DBA needs its vectors")
        scores, found = _dba_rank(q, sims, cand, dba_vectors(), k, settings)
    else:
        if graph is None:
            raise ValueError("diffusion needs the k-NN graph")
        scores, found = _diffusion_rank(sims, cand, graph(settings.graph_k), k, settings)
    return _identical_first(sims, cand, scores, found, k)


#: A cosine at which an image is the query itself (the same file, a byte-identical copy): it stays first.
IDENTICAL = 0.99999


def _identical_first(
    sims: np.ndarray, ids: np.ndarray, scores: np.ndarray, found: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-ranked ``(scores, found)`` with the plain search's identical images (``sims``, ``ids``) moved first."""
    same = (sims >= IDENTICAL) & (ids >= 0)
    if not same.any():
        return scores, found
    out_s, out_i = scores.copy(), found.copy()
    for row in np.flatnonzero(same.any(axis=1)):
        first = ids[row][same[row]]
        rest = ~np.isin(found[row], first)
        s = np.concatenate([np.ones(first.size, np.float32), scores[row][rest]])[:k]
        i = np.concatenate([first, found[row][rest]])[:k]
        out_s[row, : s.size], out_i[row, : i.size] = s, i
    return out_s, out_i


def _gather(vectors_of: VectorsOf, ids: np.ndarray, dim: int) -> np.ndarray:
    """``(Q, m)`` ids (``-1`` none) -> ``(Q, m, D)`` their vectors (zeros for none)."""
    flat = ids.ravel()
    valid = flat >= 0
    uniq = np.unique(flat[valid])
    out = np.zeros((flat.size, dim), np.float32)
    if uniq.size:
        vecs = vectors_of(uniq)
        out[valid] = vecs[np.searchsorted(uniq, flat[valid])]
    return out.reshape(*ids.shape, dim)


def _finish(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by ``scores`` (``(Q, R)``, ``-inf`` for none), the best ``k`` kept, padded to ``k``."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    s, i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    i = np.where(np.isfinite(s), i, -1)
    pad = k - s.shape[1]
    if pad > 0:
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return s.astype(np.float32), i.astype(np.int64)


def _dba_rank(
    q: np.ndarray, sims: np.ndarray, cand: np.ndarray, d: DbaVectors, k: int, settings: RerankSettings
) -> tuple[np.ndarray, np.ndarray]:
    rows = d.rows_of(cand)
    vecs = d.vectors[np.maximum(rows, 0)].astype(np.float32)  # (Q, R, D)
    vecs[rows < 0] = 0.0
    scores = np.einsum("qrd,qd->qr", vecs, q)
    # candidates the cache does not know (added since it was made: none, when it is current) keep their score
    scores = np.where(rows >= 0, scores, sims)
    scores = np.where(cand >= 0, scores, -np.inf)
    if settings.qe_k:
        top = np.argsort(-scores, axis=1, kind="stable")[:, : settings.qe_k]
        top_s = np.take_along_axis(scores, top, 1)
        top_v = np.take_along_axis(vecs, top[:, :, None], 1)
        expanded = alpha_qe(q, top_v, np.where(np.isfinite(top_s), top_s, np.nan), settings.qe_alpha)
        scores = np.where(cand >= 0, np.einsum("qrd,qd->qr", vecs, expanded), -np.inf)
    return _finish(scores.astype(np.float32), cand, k)


def _diffusion_rank(
    sims: np.ndarray, cand: np.ndarray, graph: KnnGraph, k: int, settings: RerankSettings
) -> tuple[np.ndarray, np.ndarray]:
    out_s, out_i = [], []
    for row_sims, row_ids in zip(sims, cand):
        nodes = row_ids[row_ids >= 0]
        plain = row_sims[row_ids >= 0]
        g = graph.rows_of(nodes)
        nb = np.where(g[:, None] >= 0, graph.nbr[np.maximum(g, 0), : settings.graph_k], -1)
        nb_s = graph.sim[np.maximum(g, 0), : settings.graph_k]
        local, local_s = subgraph(nodes, nb, nb_s)
        seeds = np.arange(min(settings.seeds, nodes.size))[None]
        f = diffusion_scores(local, local_s, seeds, plain[None, : seeds.shape[1]], settings)[0]
        # ties (nodes the diffusion did not reach) keep the plain order: plain scores are below every f > 0
        order = np.lexsort((-plain, -f))[:k]
        # scaled so that the best hit scores its cosine similarity: the top score keeps its meaning
        s, i = f[order] * (plain[order[0]] if order.size else 1.0), nodes[order]
        pad = k - s.size
        out_s.append(np.pad(s, (0, pad), constant_values=-np.inf))
        out_i.append(np.pad(i, (0, pad), constant_values=-1))
    return np.stack(out_s).astype(np.float32), np.stack(out_i).astype(np.int64)


__all__ = [
    "AUTO_CHOICE_SETTING",
    "DBA_FILE",
    "DbaCache",
    "DbaFile",
    "DbaVectors",
    "AUTO_SAMPLE",
    "graph_auto_choice",
    "rerank_search",
    "sampled_auto_choice",
    "update_dba",
]
