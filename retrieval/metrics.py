"""Retrieval metrics, numpy in and out: mean average precision, recall@k, precision@k.

Used by the evaluation command and the benchmarks alike.
"""

from __future__ import annotations

import numpy as np


def leave_one_out_ranking(vectors: np.ndarray, k: int | None = None) -> np.ndarray:
    """Rank the others for every vector by inner product: ``(N, D) -> (N, N-1)`` indices, best first.

    Each vector is a query against all the others (itself excluded). ``k`` truncates the ranking.
    """
    x = np.asarray(vectors, dtype=np.float32)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    n = x.shape[0]
    k = n - 1 if k is None else min(k, n - 1)
    if k < n - 1:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(part, np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1), axis=1)
        return order
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def average_precision(relevant: np.ndarray, n_relevant: int | None = None) -> float:
    """AP of one ranked list given its boolean relevance ``(R,)``; ``n_relevant`` defaults to ``relevant.sum()``."""
    rel = np.asarray(relevant, dtype=bool)
    total = int(rel.sum()) if n_relevant is None else n_relevant
    if total == 0:
        return 0.0
    hits = np.cumsum(rel)
    ranks = np.nonzero(rel)[0] + 1
    return float((hits[rel] / ranks).sum() / total)


def retrieval_metrics(
    vectors: np.ndarray, labels: np.ndarray | list, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Leave-one-out mAP, recall@k (a relevant item in the top k) and precision@k over labelled vectors.

    Queries with no other item of their label are skipped.
    """
    labels = np.asarray(labels)
    ranking = leave_one_out_ranking(vectors)
    return ranking_metrics(labels[ranking] == labels[:, None], ks)


def query_database_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray | list,
    database: np.ndarray,
    database_labels: np.ndarray | list,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """The same metrics with separate query ``(Q, D)`` and database ``(M, D)`` sets (no item is left out)."""
    qlab, dlab = np.asarray(query_labels), np.asarray(database_labels)
    sims = np.asarray(queries, np.float32) @ np.asarray(database, np.float32).T
    ranking = np.argsort(-sims, axis=1, kind="stable")
    return ranking_metrics(dlab[ranking] == qlab[:, None], ks)


def ranking_metrics(rel: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Metrics of ranked lists given their relevance ``(Q, R)`` bool, best first; queries with none relevant skipped."""
    rel = np.asarray(rel, dtype=bool)
    has_any = rel.any(axis=1)
    aps = [average_precision(r) for r in rel[has_any]]
    out: dict[str, float] = {"mAP": float(np.mean(aps)) if aps else 0.0, "queries": float(has_any.sum())}
    for k in ks:
        topk = rel[has_any, :k]
        out[f"recall@{k}"] = float(topk.any(axis=1).mean()) if len(topk) else 0.0
        out[f"precision@{k}"] = float(topk.mean()) if len(topk) else 0.0
    return out
