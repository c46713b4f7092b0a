"""Offline mining of training tuples from the current network's vectors, numpy in and out.

As Radenovic et al. (2016, 2018) do, the training set's vectors are recomputed with the current network
once per epoch, and each query's hard negatives are the most similar items of other classes, at most one
per class ("diversity"), optionally searched in a random pool of the collection only. Vectors are
L2-normalised ``(N, D)`` float32, so "most similar" is the largest inner product (= smallest Euclidean
distance). ``labels`` are ``(N,)`` of any comparable dtype (ints, strings); items of one label match.

A query with fewer available negatives than asked is an error (:class:`ValueError`), never padded, so
the returned index arrays are always rectangular and fully valid.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

RngLike = np.random.Generator | int | None

_QUERY_CHUNK = 256  # queries scored at a time: bounds the (chunk, candidates) similarity matrix


def _as_labels(labels: np.ndarray | list, n: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (n is not None and labels.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"labels must have shape {want}, got {labels.shape}")
    return labels


def _class_members(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``labels (N,) -> (inverse (N,), members)``: ``members[c]`` are the indices of class ``c``, ascending."""
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return inverse, np.split(order, np.cumsum(counts)[:-1])


def mine_hard_negatives(
    vectors: np.ndarray,
    labels: np.ndarray | list,
    query_idx: np.ndarray | list,
    n_negatives: int,
    pool: int | None = None,
    one_per_class: bool = True,
    rng: RngLike = None,
) -> np.ndarray:
    """The ``n_negatives`` hardest negatives of each query: ``(N, D), (N,), (Q,) -> (Q, n_negatives)`` int64.

    A negative is an item whose label differs from the query's; the hardest are the most similar (largest
    inner product), listed most similar first (ties: lower index first). With ``one_per_class`` at most
    one negative per class is kept (the most similar of that class). ``pool`` restricts the candidates
    to one random subset of that many items, drawn with ``rng`` (a Generator or a seed; pass one for
    reproducible pools) and shared by all queries. Raises :class:`ValueError` when a query has fewer
    candidates (or, with ``one_per_class``, fewer other classes among the candidates) than asked.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must have shape (N, D), got {x.shape}")
    n = x.shape[0]
    labels = _as_labels(labels, n)
    queries = np.asarray(query_idx, dtype=np.int64)
    if queries.ndim != 1:
        raise ValueError(f"query_idx must have shape (Q,), got {queries.shape}")
    if queries.size and (queries.min() < 0 or queries.max() >= n):
        raise ValueError(f"query_idx must lie in [0, {n}), got values in [{queries.min()}, {queries.max()}]")
    if n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
    out = np.empty((queries.shape[0], n_negatives), dtype=np.int64)
    if n_negatives == 0 or queries.size == 0:
        return out

    candidates = np.arange(n)
    if pool is not None:
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        if pool < n:
            candidates = np.sort(np.random.default_rng(rng).choice(n, size=pool, replace=False))
    cand_x, cand_labels = x[candidates], labels[candidates]

    for start in range(0, queries.shape[0], _QUERY_CHUNK):
        q = queries[start : start + _QUERY_CHUNK]
        other = cand_labels[None, :] != labels[q][:, None]  # (B, C)
        sims = np.where(other, x[q] @ cand_x.T, -np.inf)
        order = np.argsort(-sims, axis=1, kind="stable")  # other-label candidates first, most similar first
        available = other.sum(axis=1)
        for row, query in enumerate(q):
            ranked = order[row, : available[row]]
            if one_per_class:
                _, first = np.unique(cand_labels[ranked], return_index=True)
                ranked = ranked[np.sort(first)]
            if ranked.shape[0] < n_negatives:
                what = "other classes (negatives are at most one per class)" if one_per_class else "negatives"
                raise ValueError(
                    f"{n_negatives} hard negatives asked for, but query {int(query)} (label {str(labels[query])!r}) "
                    f"has only {ranked.shape[0]} {what} among {candidates.shape[0]} candidate images: ask for "
                    f"at most {ranked.shape[0]} negatives, or train on more classes"
                )
            out[start + row] = candidates[ranked[:n_negatives]]
    return out


def positive_pairs(labels: np.ndarray | list, rng: RngLike = None, per_class: int | None = None) -> np.ndarray:
    """Index pairs ``(i, j)`` of items of one label, ``i < j``: ``(N,) -> (P, 2)`` int64, in random order.

    ``per_class=None`` gives every such pair (quadratic in the class sizes); ``per_class=k`` draws ``k``
    distinct pairs per class without replacement (all of them where a class has fewer). Classes with a
    single item give none. Seeded by ``rng`` (a Generator or a seed).
    """
    labels = _as_labels(labels)
    gen = np.random.default_rng(rng)
    if per_class is not None and per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    _, members = _class_members(labels)
    chunks: list[np.ndarray] = []
    for idx in members:
        m = idx.shape[0]
        total = m * (m - 1) // 2
        if total == 0:
            continue
        if per_class is None or per_class >= total:
            flat = np.arange(total)
        else:
            flat = gen.choice(total, size=per_class, replace=False)
        chunks.append(idx[_triangle_pairs(m, flat)])
    if not chunks:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(chunks).astype(np.int64)
    return pairs[gen.permutation(pairs.shape[0])]


def _triangle_pairs(m: int, flat: np.ndarray) -> np.ndarray:
    """Decode flat indices of the strict upper triangle of an ``m x m`` matrix (row-major) to ``(K, 2)``."""
    row_lengths = np.arange(m - 1, 0, -1)  # row i holds pairs (i, i+1..m-1)
    row_starts = np.concatenate(([0], np.cumsum(row_lengths)[:-1]))
    i = np.searchsorted(row_starts, flat, side="right") - 1
    j = i + 1 + (flat - row_starts[i])
    return np.stack([i, j], axis=1)


def make_contrastive_tuples(
    vectors: np.ndarray,
    labels: np.ndarray | list,
    n_queries: int,
    n_negatives: int,
    rng: RngLike = None,
    pool: int | None = None,
    one_per_class: bool = True,
) -> np.ndarray:
    """One epoch's training tuples: ``(N, D), (N,) -> (Q, 2 + n_negatives)`` int64 rows ``(query, positive, negatives...)``.

    Queries are drawn at random without replacement among the items that have another item of their
    label (all of those when ``n_queries`` is larger, which is logged); each query's positive is a random
    other item of its label; its negatives come from :func:`mine_hard_negatives` (most similar first).
    Turn the tuples into labelled pairs for :func:`retrieval.losses.contrastive_loss` with :func:`tuple_pairs`.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must have shape (N, D), got {x.shape}")
    labels = _as_labels(labels, x.shape[0])
    gen = np.random.default_rng(rng)
    inverse, members = _class_members(labels)
    sizes = np.array([m.shape[0] for m in members])
    eligible = np.nonzero(sizes[inverse] >= 2)[0]
    if n_queries > eligible.shape[0]:
        log.info("asked for %d queries, only %d items have a positive: using all of them", n_queries, eligible.shape[0])
    n_q = min(max(n_queries, 0), eligible.shape[0])
    queries = gen.choice(eligible, size=n_q, replace=False).astype(np.int64)
    positives = np.empty(n_q, dtype=np.int64)
    for k, q in enumerate(queries):
        same = members[inverse[q]]
        others = same[same != q]
        positives[k] = others[gen.integers(others.shape[0])]
    negatives = mine_hard_negatives(x, labels, queries, n_negatives, pool=pool, one_per_class=one_per_class, rng=gen)
    return np.concatenate([queries[:, None], positives[:, None], negatives], axis=1)


def tuple_pairs(tuples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Q, 2 + K)`` tuples -> ``(left, right, same)``, each ``(Q * (1 + K),)``: ``(q, p, True), (q, n_k, False)...``."""
    tuples = np.asarray(tuples, dtype=np.int64)
    if tuples.ndim != 2 or tuples.shape[1] < 2:
        raise ValueError(f"tuples must have shape (Q, 2 + K), got {tuples.shape}")
    width = tuples.shape[1] - 1
    left = np.repeat(tuples[:, 0], width)
    right = tuples[:, 1:].reshape(-1)
    same = np.tile(np.arange(width) == 0, tuples.shape[0])
    return left, right, same
