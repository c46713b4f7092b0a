"""Re-ranking math, numpy in and out: α-query expansion, database-side augmentation and diffusion on a k-NN graph.

- **αQE** (Radenović et al., "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018): the query is
  replaced by the normalised weighted sum of itself and its top-``k`` neighbours, each weighted by its similarity
  to the query raised to ``α``, and searched again.
- **DBA** (database-side augmentation, Gordo et al. 2017; α-weighted as Radenović et al.): every database vector is
  replaced by the normalised weighted sum of itself and its ``k`` nearest neighbours (weights ``sim^α``).
- **Diffusion** (Iscen et al., "Efficient Diffusion on Region Manifolds", CVPR 2017): on the mutual k-NN graph
  with edge weights ``sim^γ``, symmetrically normalised (``S = D^-1/2 W D^-1/2``), the ranking ``f`` solves
  ``(I - α S) f = y``, where ``y`` seeds the query's nearest neighbours with ``sim^γ``; solved by conjugate
  gradient (the matrix is symmetric positive definite for ``α < 1``). Diffusion follows chains of neighbours
  (an object's views on a turntable) that a single query vector does not reach.
- **auto**: diffusion for a collection whose k-NN graph is mostly reciprocal (:func:`reciprocity`: the share of
  its ``graph_k``-NN links that are mutual is at least ``auto_reciprocity``), else no re-ranking. Views of objects
  that chain from pose to pose are each other's neighbours both ways; in collections of photos, faces or copies
  most links point into a few hubs and are not returned, and diffusion there follows links that lead astray.

Graphs are padded neighbour tables: ``nbr (N, K)`` int64 positions (``-1``: none), ``sim (N, K)`` float32, each
row best first. Nothing here knows of files, indexes or databases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

#: The re-ranking methods, in the order of their cost; ``auto`` chooses ``diffusion`` or ``none`` per collection.
METHODS = ("none", "qe", "dba", "diffusion", "auto")


@dataclass(frozen=True)
class RerankSettings:
    """How search results are re-ranked.

    ``method``: ``none`` (the plain cosine ranking), ``qe`` (αQE), ``dba`` (database vectors augmented with their
    neighbours, then αQE on them unless ``qe_k`` is 0), ``diffusion``, or ``auto`` (diffusion when the
    collection's mutual ``graph_k``-NN graph keeps at least ``auto_reciprocity`` of its links, else none; see
    :func:`auto_choice`). DBA and diffusion re-rank the ``candidates`` best results of the plain search (the
    truncation of Iscen et al.); αQE searches the whole index again.

    Defaults (``benchmarks/bench_rerank.py``, README "Re-ranking"): ``auto``. Diffusion lifts COIL-20 from 0.92
    to 1.00 mAP but loses on near-duplicate retrieval, the cluttered composites and LFW identification (0.90 ->
    0.68, 0.24 -> 0.14, 0.99 -> 0.92), and so does every other method somewhere; the reciprocity of the mutual
    5-NN graph tells these collections apart (0.84 on COIL-20, 0.50-0.70 on the others), so ``auto`` re-ranks
    the first and leaves the others as plain search. Each method's parameters are those chosen on one half of
    COIL-20's objects and scored on the other (αQE's are DBA's, which shares them: k 20, α 1 was within 0.005).
    """

    method: str = "auto"
    #: αQE: neighbours of the query averaged into it, and the exponent of their weights
    qe_k: int = 10
    qe_alpha: float = 3.0
    #: DBA: neighbours averaged into each database vector, and the exponent of their weights
    dba_k: int = 10
    dba_alpha: float = 3.0
    #: diffusion: neighbours per node of the mutual k-NN graph, the similarity exponent γ, the damping α
    graph_k: int = 5
    gamma: float = 1.0
    alpha: float = 0.99
    #: diffusion: the query's nearest neighbours that seed it
    seeds: int = 5
    #: diffusion: conjugate-gradient iterations at most, and the relative residual at which it stops
    iterations: int = 30
    tolerance: float = 1e-4
    #: results of the plain search that DBA and diffusion re-rank
    candidates: int = 1000
    #: auto: the share of the ``graph_k``-NN links that must be mutual for diffusion to be chosen
    auto_reciprocity: float = 0.75
    #: auto: collections smaller than this get no re-ranking
    auto_min_images: int = 100
    #: set by :meth:`AutoChoice.apply` on the settings it resolved (why auto chose the method); never stored
    chosen_by: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown re-ranking {self.method!r}; known: {', '.join(METHODS)}")
        for name in ("qe_k", "dba_k"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("graph_k", "seeds", "iterations", "candidates", "auto_min_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"the diffusion's alpha must be in (0, 1), got {self.alpha}")
        for name in ("qe_alpha", "dba_alpha", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not 0.0 <= self.auto_reciprocity <= 1.0:
            raise ValueError(f"auto_reciprocity must be in [0, 1], got {self.auto_reciprocity}")

    @property
    def graph_neighbours(self) -> int:
        """Neighbours per image the k-NN graph must hold for these settings (0: no graph needed)."""
        if self.method in ("diffusion", "auto"):
            return self.graph_k
        if self.method == "dba":
            return self.dba_k
        return 0

    def describe(self) -> str:
        """One line: the method and the parameters that matter to it (and, when ``auto`` chose it, why)."""
        if self.chosen_by:
            return f"auto: {replace(self, chosen_by='').describe()} ({self.chosen_by})"
        if self.method == "auto":
            return f"auto (diffusion when >= {self.auto_reciprocity:g} of the {self.graph_k}-NN links are mutual, else none)"
        if self.method == "qe":
            return f"qe (k={self.qe_k}, alpha={self.qe_alpha:g})"
        if self.method == "dba":
            qe = f", qe k={self.qe_k} alpha={self.qe_alpha:g}" if self.qe_k else ""
            return f"dba (k={self.dba_k}, alpha={self.dba_alpha:g}{qe})"
        if self.method == "diffusion":
            return (
                f"diffusion (mutual {self.graph_k}-NN, gamma={self.gamma:g}, alpha={self.alpha:g}, "
                f"seeds={self.seeds}, top {self.candidates})"
            )
        return "none"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("chosen_by")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RerankSettings:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "chosen_by"})


@dataclass(frozen=True)
class AutoChoice:
    """What ``auto`` chose for a collection of ``images``: ``method`` (``diffusion`` or ``none``), from the share
    of its ``k``-NN links that are mutual (``reciprocity``) against ``threshold``, on the vectors of ``version``.
    Collections of fewer than ``min_images`` get none: in a small collection most links are mutual whatever the
    images (all of them when it holds ``k + 1``)."""

    method: str
    reciprocity: float
    threshold: float
    k: int
    images: int
    min_images: int
    version: int = -1
    #: Images added, re-embedded or removed since the choice was made (carried over by :meth:`carried`).
    changes: int = 0

    #: Changes to this share of the images make the choice again; fewer carry it over.
    REMAKE_SHARE = 0.1

    @classmethod
    def of(cls, reciprocity: float, images: int, settings: RerankSettings, version: int = -1) -> AutoChoice:
        """The choice for ``images`` whose ``graph_k``-NN links are mutual in this share."""
        chain = reciprocity >= settings.auto_reciprocity and images >= settings.auto_min_images
        return cls(
            "diffusion" if chain else "none",
            round(reciprocity, 4),
            settings.auto_reciprocity,
            settings.graph_k,
            int(images),
            settings.auto_min_images,
            version,
        )

    def describe(self) -> str:
        if self.images < self.min_images:
            return f"{self.images} images, fewer than {self.min_images}"
        sign = ">=" if self.reciprocity >= self.threshold else "<"
        return f"mutual {self.k}-NN reciprocity {self.reciprocity:.3f} {sign} {self.threshold:g}"

    def fits(self, settings: RerankSettings, version: int) -> bool:
        """Made for these settings' ``graph_k``, threshold and minimum, on the vectors of ``version``."""
        return (self.version, self.k, self.threshold, self.min_images) == (
            version,
            settings.graph_k,
            settings.auto_reciprocity,
            settings.auto_min_images,
        )

    def carried(self, settings: RerankSettings, version: int, changed: int) -> AutoChoice | None:
        """This choice kept for the vectors of ``version`` after ``changed`` more images were added, re-embedded
        or removed; ``None`` when it must be made again: other settings, or changes since it was made reaching
        :attr:`REMAKE_SHARE` of its images (a neighbourhood statistic moves little with a few images more or
        less, and making it on a big collection takes seconds)."""
        changes = self.changes + changed
        if not self.fits(settings, self.version) or changes > self.REMAKE_SHARE * self.images:
            return None
        return replace(self, version=version, changes=changes)

    def apply(self, settings: RerankSettings) -> RerankSettings:
        """``settings`` with this choice's method, marked as chosen by auto."""
        return replace(settings, method=self.method, chosen_by=self.describe())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoChoice:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def auto_choice(nbr: np.ndarray, settings: RerankSettings, version: int = -1) -> AutoChoice:
    """``auto``'s choice for a graph's neighbour table ``nbr (N, K)`` (positions, ``-1`` none): diffusion when
    :func:`reciprocity` of its first ``graph_k`` links reaches ``auto_reciprocity``, else none."""
    return AutoChoice.of(reciprocity(nbr, settings.graph_k), len(nbr), settings, version)


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length: ``(N, D) -> (N, D)`` float32."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _weights(sims: np.ndarray, power: float, valid: np.ndarray | None = None) -> np.ndarray:
    w = np.power(np.clip(np.asarray(sims, np.float32), 0.0, None), power)
    return w if valid is None else np.where(valid, w, 0.0).astype(np.float32)


def alpha_qe(queries: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    """αQE: ``(Q, D)`` queries, their top-k neighbours' vectors ``(Q, k, D)`` and similarities ``(Q, k)`` ->
    ``(Q, D)`` expanded unit queries ``l2n(q + Σ max(s, 0)^α x)``. Neighbours with ``nan`` similarity are left out."""
    q = np.asarray(queries, np.float32)
    sims = np.asarray(sims, np.float32)
    valid = np.isfinite(sims)
    w = _weights(np.nan_to_num(sims, nan=0.0, neginf=0.0), alpha, valid)
    return l2n(q + np.einsum("qk,qkd->qd", w, np.asarray(neighbours, np.float32)))


def dba(
    vectors: np.ndarray,
    nbr: np.ndarray,
    sims: np.ndarray,
    k: int,
    alpha: float,
    rows: np.ndarray | None = None,
    chunk: int = 65536,
) -> np.ndarray:
    """Database-side augmentation: each vector replaced by ``l2n(x_i + Σ_j s_ij^α x_j)`` over its first ``k``
    neighbours. ``vectors (M, D)``; ``rows (N,)``: the positions of the vectors to augment (default: all);
    ``nbr (N, K)`` their neighbours' positions in ``vectors`` (``-1`` none), ``sims (N, K)`` their similarities
    -> ``(N, D)`` float32 unit vectors."""
    x = np.asarray(vectors, np.float32)
    rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows, np.int64)
    nbr = np.asarray(nbr)[:, :k]
    sims = np.asarray(sims, np.float32)[:, :k]
    out = np.empty((rows.size, x.shape[1]), np.float32)
    for start in range(0, rows.size, chunk):
        nb = nbr[start : start + chunk]
        valid = nb >= 0
        w = _weights(sims[start : start + chunk], alpha, valid)
        gathered = x[np.where(valid, nb, 0)]  # (n, k, D)
        own = x[rows[start : start + chunk]]
        out[start : start + chunk] = l2n(own + np.einsum("nk,nkd->nd", w, gathered))
    return out


def subgraph(nodes: np.ndarray, nbr: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The graph restricted to ``nodes`` ``(R,)`` (any labels, e.g. ids): ``nbr (R, K)`` their neighbours' labels,
    ``sims (R, K)`` -> ``(R, K)`` local positions in ``nodes`` (``-1`` for neighbours outside) and the sims."""
    nodes = np.asarray(nodes)
    order = np.argsort(nodes, kind="stable")
    sorted_nodes = nodes[order]
    pos = np.clip(np.searchsorted(sorted_nodes, nbr), 0, max(len(nodes) - 1, 0))
    inside = (nbr >= 0) & (sorted_nodes[pos] == nbr) if len(nodes) else np.zeros(nbr.shape, bool)
    return np.where(inside, order[pos], -1).astype(np.int64), np.where(inside, sims, 0.0).astype(np.float32)


def mutual_links(nbr: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of the first ``k`` links of ``nbr (N, K)`` (positions, ``-1`` none) are mutual (``i`` among the
    first ``k`` of ``j`` too) -> ``(mutual (N, k) bool, valid (N, k) bool)``: links to another image at all."""
    nbr = np.asarray(nbr, np.int64)[:, :k]
    n = nbr.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), nbr.shape[1]).reshape(nbr.shape)
    valid = (nbr >= 0) & (nbr != rows)
    forward = rows[valid] * n + nbr[valid]
    backward = np.sort(nbr[valid] * n + rows[valid])
    hit = np.zeros(nbr.shape, bool)
    if forward.size:
        pos = np.clip(np.searchsorted(backward, forward), 0, backward.size - 1)
        hit[valid] = backward[pos] == forward
    return hit, valid


def reciprocity(nbr: np.ndarray, k: int, rows: int | None = None) -> float:
    """The share of the ``k``-NN links of ``nbr (N, K)`` (positions) that are mutual (0 for no links), counting
    the links of the first ``rows`` rows only (default: all; the others' lists serve to check them): near 1 when
    the images lie along chains (views of an object on a turntable), about one half in photo collections."""
    hit, valid = mutual_links(nbr, k)
    hit, valid = hit[:rows], valid[:rows]
    return float(hit.sum() / valid.sum()) if valid.any() else 0.0


def mutual_knn(nbr: np.ndarray, sims: np.ndarray, k: int, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """The mutual k-NN graph: ``j`` and ``i`` are joined when each is among the other's first ``k`` neighbours,
    weighted ``max(s, 0)^γ``. ``nbr (N, K)`` positions (``-1`` none) -> ``(cols (N, k), weights (N, k))``, a
    symmetric graph as a padded table (absent edges: column 0, weight 0)."""
    nbr = np.asarray(nbr, np.int64)[:, :k]
    sims = np.asarray(sims, np.float32)[:, :k]
    hit, _ = mutual_links(nbr, k)
    # the two directions' scores may differ slightly (approximate search): both edges get their mean
    w = _weights(sims, gamma, hit)
    return np.where(hit, nbr, 0), _symmetrise(nbr, w, hit)


def _symmetrise(nbr: np.ndarray, w: np.ndarray, hit: np.ndarray) -> np.ndarray:
    n = nbr.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), nbr.shape[1]).reshape(nbr.shape)
    a, b, wv = rows[hit], nbr[hit], w[hit]
    key_ab = a * n + b
    key_ba = b * n + a
    order = np.argsort(key_ab)
    pos = order[np.searchsorted(key_ab[order], key_ba)]
    out = np.zeros_like(w)
    out[hit] = 0.5 * (wv + wv[pos])
    return out


def normalise_graph(cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``D^-1/2 W D^-1/2`` of a symmetric padded graph -> ``(N, k)`` normalised weights (isolated nodes: 0)."""
    degree = weights.sum(axis=1)
    inv = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-30)), 0.0).astype(np.float32)
    return (inv[:, None] * weights * inv[cols]).astype(np.float32)


def conjugate_gradient(
    matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, iterations: int = 30, tolerance: float = 1e-4
) -> np.ndarray:
    """Solve ``A x = b`` for a symmetric positive definite ``A`` given as ``matvec`` (``(N, Q) -> (N, Q)``), one
    column per right-hand side ``b (N, Q)``; stops when every column's residual is below ``tolerance`` times its
    ``|b|`` or after ``iterations``."""
    b = np.asarray(b, np.float64)
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = (r * r).sum(axis=0)
    stop = (tolerance**2) * np.maximum(rr, 1e-300)
    for _ in range(iterations):
        if np.all(rr <= stop):
            break
        ap = matvec(p)
        pap = (p * ap).sum(axis=0)
        step = np.where(pap > 0, rr / np.where(pap > 0, pap, 1.0), 0.0)
        x += step * p
        r -= step * ap
        rr_new = (r * r).sum(axis=0)
        p = r + np.where(rr > 0, rr_new / np.where(rr > 0, rr, 1.0), 0.0) * p
        rr = rr_new
    return x


def diffuse(
    cols: np.ndarray, norm_weights: np.ndarray, seeds: np.ndarray, alpha: float, iterations: int, tolerance: float
) -> np.ndarray:
    """The diffusion ``f`` solving ``(I - α S) f = y`` for each column of ``seeds`` ``(N, Q)``, ``S`` the normalised
    graph (``cols``, ``norm_weights`` ``(N, k)``) -> ``(N, Q)``."""

    def matvec(v: np.ndarray) -> np.ndarray:
        return v - alpha * np.einsum("nk,nkq->nq", norm_weights, v[cols])

    return conjugate_gradient(matvec, seeds, iterations, tolerance)


def diffusion_scores(
    nbr: np.ndarray,
    sims: np.ndarray,
    seed_pos: np.ndarray,
    seed_sims: np.ndarray,
    settings: RerankSettings,
) -> np.ndarray:
    """Diffusion rankings on one graph for a batch of queries: the graph's ``nbr (N, K)`` positions and
    ``sims``; each query's seeds ``seed_pos (Q, s)`` (positions, ``-1`` none) with their similarities to it
    ``seed_sims (Q, s)`` -> ``(Q, N)`` scores, higher first, scaled so each query's best is 1 (0: not reached)."""
    cols, w = mutual_knn(nbr, sims, settings.graph_k, settings.gamma)
    norm = normalise_graph(cols, w)
    n, q = nbr.shape[0], seed_pos.shape[0]
    y = np.zeros((n, q), np.float64)
    seed_pos = np.asarray(seed_pos)[:, : settings.seeds]
    seed_w = _weights(seed_sims[:, : settings.seeds], settings.gamma, seed_pos >= 0)
    qi = np.repeat(np.arange(q), seed_pos.shape[1]).reshape(seed_pos.shape)
    ok = seed_pos >= 0
    np.add.at(y, (seed_pos[ok], qi[ok]), seed_w[ok])
    f = diffuse(cols, norm, y, settings.alpha, settings.iterations, settings.tolerance).T
    top = f.max(axis=1, keepdims=True)
    return np.where(top > 0, f / np.where(top > 0, top, 1.0), 0.0).astype(np.float32)


__all__ = [
    "METHODS",
    "AutoChoice",
    "RerankSettings",
    "alpha_qe",
    "auto_choice",
    "conjugate_gradient",
    "dba",
    "diffuse",
    "diffusion_scores",
    "l2n",
    "mutual_knn",
    "mutual_links",
    "normalise_graph",
    "reciprocity",
    "subgraph",
]
