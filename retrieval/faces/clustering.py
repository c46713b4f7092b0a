"""Face clustering: unit face vectors in, person labels out (``-1``: unclustered), numpy only.

Every algorithm works on a sparse k-nearest-neighbour graph (:func:`knn_graph`, exact FAISS inner-product search),
never on an ``N x N`` matrix, so 100,000 faces need ``N x k`` numbers. Faces of one photo are never one person: a
``groups`` array (the photo of each face) gives *cannot-link* constraints, honoured while clustering (edges between
faces of one photo are dropped; a merge that would join two faces of one photo is refused) and enforced at the end
(:func:`enforce_cannot_link`). Clusters smaller than ``min_size`` are dissolved: their faces stay unclustered
rather than being forced into a person.

Algorithms (:data:`ALGORITHMS`, chosen by :class:`ClusterParams.algorithm`):

- ``agglomerative``: average linkage over the graph: the two clusters whose mean pairwise cosine similarity is
  highest merge, while it is at least ``threshold``. The mean is exact (from the clusters' vector sums:
  ``S_A . S_B / (|A| |B|)``); candidate pairs are the clusters joined by a graph edge.
- ``chinese_whispers``: dlib's graph clustering (Biemann 2006): edges of weight 1 between faces at least
  ``threshold`` alike, and a self-edge, as dlib's face clustering builds them; every face starts as its own label
  and, in a seeded random order, takes the label most common among its neighbours and itself (ties: the smallest
  label), until nothing changes.
- ``dbscan``: DBSCAN (Ester et al. 1996) with ``eps`` as a similarity: a face with at least ``min_samples`` faces
  (itself included) at similarity ``>= threshold`` is a core; cores joined by such edges form clusters, other faces
  join the cluster of their most similar core, the rest is noise.
- ``hdbscan``: HDBSCAN (Campello et al. 2013) on the graph: mutual-reachability distances from core distances
  (``min_samples``), a minimum spanning forest, clusters of at least ``min_size`` chosen by excess of mass
  (a tree's root only when it never splits); ``threshold`` cuts the graph's weaker edges.
- ``immich``: Immich's own incremental DBSCAN (``server/src/services/person.service.ts``, ``handleRecognizeFaces``):
  faces in order; a face whose ``min_samples`` nearest faces within the distance (itself included) are all found is
  a core and joins the person of the first of them that has one, else the nearest face with a person, else starts a
  new person; other faces are deferred and then only join an existing person. Immich shows a person only once it has
  ``min_samples`` faces (``minimumFaceCount``); with ``min_size = min_samples`` smaller persons stay unclustered.
  It ignores cannot-link constraints, as Immich does.

:func:`pairwise_scores` and :func:`bcubed_scores` measure a clustering against true labels (unclustered faces count
as clusters of one).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Immich's defaults (``server/src/config.ts``, ``machineLearning.facialRecognition``): ``maxDistance: 0.5`` (cosine
#: distance, so similarity ``>= 0.5``), ``minFaces: 3``.
IMMICH_MAX_DISTANCE = 0.5
IMMICH_MIN_FACES = 3


@dataclass(frozen=True)
class ClusterParams:
    """How to cluster. ``threshold``: cosine similarity at which two faces (``dbscan``, ``immich``,
    ``chinese_whispers``) or two clusters on average (``agglomerative``) are alike; ``min_size``: smaller clusters
    stay unclustered; ``min_samples``: DBSCAN's core size (itself included); ``k``: neighbours per face in the
    graph; ``iterations``, ``seed``: Chinese Whispers' sweeps and random order."""

    algorithm: str = "agglomerative"
    threshold: float = 0.45
    min_size: int = 2
    min_samples: int = 3
    k: int = 32
    iterations: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown clustering algorithm {self.algorithm!r}; known: {', '.join(ALGORITHMS)}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.min_size < 1 or self.min_samples < 1 or self.k < 1 or self.iterations < 1:
            raise ValueError("min_size, min_samples, k and iterations must be at least 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClusterParams:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def immich_params() -> ClusterParams:
    """Immich's face clustering defaults: similarity ``1 - maxDistance``, ``minFaces`` as core and display size."""
    return ClusterParams(
        algorithm="immich",
        threshold=1.0 - IMMICH_MAX_DISTANCE,
        min_size=IMMICH_MIN_FACES,
        min_samples=IMMICH_MIN_FACES,
        k=32,
    )


# ------------------------------------------------------------------------------------------------ the graph
@dataclass
class KnnGraph:
    """Each face's ``k`` most similar other faces: ``neighbours`` ``(N, k)`` int64 (``-1``: none, e.g. a face of
    the same photo, or fewer than ``k`` faces), ``similarities`` ``(N, k)`` float32, most similar first."""

    neighbours: np.ndarray
    similarities: np.ndarray

    def edges(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected edges at similarity ``>= threshold``, each once: ``(i, j, similarity)`` with ``i < j``."""
        n, k = self.neighbours.shape
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        cols = self.neighbours.ravel()
        sims = self.similarities.ravel()
        keep = (cols >= 0) & (sims >= threshold)
        a, b, s = rows[keep], cols[keep], sims[keep]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key = lo * n + hi
        _, first = np.unique(key, return_index=True)
        return lo[first], hi[first], s[first]


def _as_unit(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def knn_graph(vectors: np.ndarray, k: int = 32, groups: np.ndarray | None = None) -> KnnGraph:
    """The ``k`` nearest other faces of every face by cosine similarity (exact FAISS search, ``(N, D)`` in).
    Neighbours in the same group as the face (``groups``: ``(N,)``, e.g. the photo) are dropped (``-1``)."""
    import faiss

    x = _as_unit(vectors)
    n = len(x)
    if n == 0:
        return KnnGraph(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kk = min(n, k + 1)
    sims, nbrs = index.search(x, kk)
    nbrs = nbrs.astype(np.int64)
    own = nbrs == np.arange(n)[:, None]
    # drop the face itself (normally in column 0; duplicates may put it elsewhere) and keep k columns
    out_n = np.full((n, k), -1, np.int64)
    out_s = np.full((n, k), -np.inf, np.float32)
    for i in range(n):
        keep = ~own[i] & (nbrs[i] >= 0)
        ids, ss = nbrs[i][keep][:k], sims[i][keep][:k]
        out_n[i, : len(ids)], out_s[i, : len(ids)] = ids, ss
    if groups is not None:
        g = np.asarray(groups)
        same = (out_n >= 0) & (g[np.maximum(out_n, 0)] == g[:, None])
        out_n[same], out_s[same] = -1, -np.inf
    return KnnGraph(out_n, out_s)


# ------------------------------------------------------------------------------------------------ helpers
def relabel(labels: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Clusters smaller than ``min_size`` become ``-1``; the others are numbered ``0..C-1`` by size (largest
    first, ties by first face)."""
    labels = np.asarray(labels, np.int64)
    out = np.full(len(labels), -1, np.int64)
    valid = labels >= 0
    if not valid.any():
        return out
    uniq, first, inverse, counts = np.unique(labels[valid], return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    new_id = np.full(len(uniq), -1, np.int64)
    kept = order[counts[order] >= min_size]
    new_id[kept] = np.arange(len(kept))
    out[valid] = new_id[inverse]
    return out


def enforce_cannot_link(labels: np.ndarray, vectors: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Where a cluster holds several faces of one group (photo), keep the one most similar to the cluster's mean
    and make the others unclustered."""
    labels = np.asarray(labels, np.int64).copy()
    if groups is None or len(labels) == 0:
        return labels
    g = np.asarray(groups)
    m = labels >= 0
    if not m.any():
        return labels
    idx = np.flatnonzero(m)
    pairs = np.stack([labels[idx], g[idx]], 1)
    _, inv, counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    if counts.max() <= 1:
        return labels
    x = _as_unit(vectors)
    sums: dict[int, np.ndarray] = {}
    for c in np.unique(labels[idx[counts[inv] > 1]]):
        sums[int(c)] = x[labels == c].sum(0)
    for dup in np.flatnonzero(counts > 1):
        members = idx[inv == dup]
        c = int(labels[members[0]])
        score = x[members] @ sums[c]
        for j in members[np.argsort(-score)[1:]]:
            labels[j] = -1
    return labels


# ------------------------------------------------------------------------------------------------ algorithms
def dbscan(
    vectors: np.ndarray, params: ClusterParams, groups: np.ndarray | None = None, graph: KnnGraph | None = None
) -> np.ndarray:
    """DBSCAN with ``params.threshold`` as the similarity radius and ``params.min_samples`` (itself included)."""
    n = len(vectors)
    graph = graph if graph is not None else knn_graph(vectors, params.k, groups)
    close = (graph.neighbours >= 0) & (graph.similarities >= params.threshold)
    core = close.sum(1) + 1 >= params.min_samples
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    a, b, _ = graph.edges(params.threshold)
    for i, j in zip(a[core[a] & core[b]], b[core[a] & core[b]]):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[rj] = ri
    labels = np.full(n, -1, np.int64)
    for i in np.flatnonzero(core):
        labels[i] = find(int(i))
    for i in np.flatnonzero(~core):  # border faces: the cluster of their most similar core
        for j, s in zip(graph.neighbours[i], graph.similarities[i]):
            if j >= 0 and s >= params.threshold and core[j]:
                labels[i] = labels[j]
                break
    return relabel(enforce_cannot_link(labels, vectors, groups), params.min_size)


def immich(
    vectors: np.ndarray, params: ClusterParams, groups: np.ndarray | None = None, graph: KnnGraph | None = None
) -> np.ndarray:
    """Immich's incremental DBSCAN, faces in the given order (see the module's description). ``groups`` is
    ignored, as Immich does."""
    n = len(vectors)
    graph = graph if graph is not None else knn_graph(vectors, max(params.k, params.min_samples), None)
    person = np.full(n, -1, np.int64)
    next_person = 0
    min_faces = params.min_samples

    def matches(i: int) -> list[int]:
        # the face itself and its nearest faces within the distance, min_faces in all (numResults = minFaces)
        found = [i]
        for j, s in zip(graph.neighbours[i], graph.similarities[i]):
            if len(found) >= min_faces or j < 0 or s < params.threshold:
                break
            found.append(int(j))
        return found

    def nearest_with_person(i: int) -> int:
        for j, s in zip(graph.neighbours[i], graph.similarities[i]):
            if j < 0 or s < params.threshold:
                break
            if person[j] >= 0:
                return int(person[j])
        return -1

    deferred = []
    for i in range(n):
        found = matches(i)
        if min_faces > 1 and len(found) <= 1:
            continue
        is_core = len(found) >= min_faces
        if not is_core:
            deferred.append(i)
            continue
        pid = next((int(person[j]) for j in found if person[j] >= 0), -1)
        if pid < 0:
            pid = nearest_with_person(i)
        if pid < 0:
            pid, next_person = next_person, next_person + 1
        person[i] = pid
    for i in deferred:
        found = matches(i)
        pid = next((int(person[j]) for j in found if person[j] >= 0), -1)
        if pid < 0:
            pid = nearest_with_person(i)
        if pid >= 0:
            person[i] = pid
    return relabel(person, params.min_size)


def chinese_whispers(
    vectors: np.ndarray, params: ClusterParams, groups: np.ndarray | None = None, graph: KnnGraph | None = None
) -> np.ndarray:
    """Chinese Whispers on the graph of faces at similarity ``>= params.threshold`` (unit weights and a self-edge,
    as dlib), sweeps in a random order drawn from ``params.seed``."""
    n = len(vectors)
    graph = graph if graph is not None else knn_graph(vectors, params.k, groups)
    a, b, _ = graph.edges(params.threshold)
    adj: list[list[int]] = [[] for _ in range(n)]
    for i, j in zip(a.tolist(), b.tolist()):
        adj[i].append(j)
        adj[j].append(i)
    labels = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(params.seed)
    active = np.array([i for i in range(n) if adj[i]], np.int64)
    for _ in range(params.iterations):
        changed = 0
        for i in rng.permutation(active).tolist():
            votes: dict[int, int] = {int(labels[i]): 1}
            for j in adj[i]:
                lab = int(labels[j])
                votes[lab] = votes.get(lab, 0) + 1
            best = max(votes.items(), key=lambda t: (t[1], -t[0]))[0]
            if best != labels[i]:
                labels[i] = best
                changed += 1
        if not changed:
            break
    return relabel(enforce_cannot_link(labels, vectors, groups), params.min_size)


def agglomerative(
    vectors: np.ndarray, params: ClusterParams, groups: np.ndarray | None = None, graph: KnnGraph | None = None
) -> np.ndarray:
    """Average-linkage agglomerative clustering over the graph, with cannot-link constraints, stopped when the
    best remaining pair's mean similarity falls below ``params.threshold``."""
    n = len(vectors)
    sums = _as_unit(vectors).astype(np.float64)  # row r: the vector sum of the cluster rooted at face r
    size = np.ones(n, np.float64)
    graph = graph if graph is not None else knn_graph(vectors, params.k, groups)
    a, b, _ = graph.edges(params.threshold)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    photos: dict[int, set] = {i: {g} for i, g in enumerate(groups.tolist())} if groups is not None else {}
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for i, j in zip(a.tolist(), b.tolist()):
        adj[i].add(j)
        adj[j].add(i)
    version = [0] * n
    first = np.einsum("ij,ij->i", sums[a], sums[b])
    heap = [(-float(sc), i, j, 0, 0) for sc, i, j in zip(first.tolist(), a.tolist(), b.tolist())]
    heapq.heapify(heap)
    while heap:
        neg, p, q, vp, vq = heapq.heappop(heap)
        if -neg < params.threshold:
            break
        if p not in members or q not in members or version[p] != vp or version[q] != vq:
            continue
        if photos and not photos[p].isdisjoint(photos[q]):
            continue
        if size[p] < size[q]:
            p, q = q, p
        sums[p] += sums[q]
        size[p] += size[q]
        members[p] += members.pop(q)
        if photos:
            photos[p] |= photos.pop(q)
        version[p] += 1
        nbrs = (adj[p] | adj.pop(q)) - {p, q}
        adj[p] = nbrs
        for c in nbrs:
            adj[c].discard(q)
            adj[c].add(p)
        if not nbrs:
            continue
        cs = np.fromiter(nbrs, np.int64, len(nbrs))
        scores = (sums[cs] @ sums[p]) / (size[cs] * size[p])
        good = scores >= params.threshold
        for c, sc in zip(cs[good].tolist(), scores[good].tolist()):
            if photos and not photos[p].isdisjoint(photos[c]):
                continue
            heapq.heappush(heap, (-sc, p, c, version[p], version[c]))
    labels = np.full(n, -1, np.int64)
    for root, ids in members.items():
        labels[ids] = root
    return relabel(labels, params.min_size)


def hdbscan(
    vectors: np.ndarray, params: ClusterParams, groups: np.ndarray | None = None, graph: KnnGraph | None = None
) -> np.ndarray:
    """HDBSCAN (Campello et al. 2013) over the graph: cosine distances, core distance = distance to the
    ``params.min_samples``-th nearest face (itself counted), mutual-reachability minimum spanning forest of the
    graph's edges at similarity ``>= params.threshold`` (an edge cut; ``-1`` keeps them all), clusters of at least
    ``params.min_size`` faces, chosen by excess of mass (a tree's root only when it never splits)."""
    n = len(vectors)
    graph = graph if graph is not None else knn_graph(vectors, params.k, groups)
    m = params.min_size
    dist = 1.0 - graph.similarities.astype(np.float64)
    col = params.min_samples - 2  # the face itself is the first of its min_samples
    core = (
        np.zeros(n)
        if col < 0
        else np.where(graph.neighbours[:, col] >= 0, dist[:, min(col, dist.shape[1] - 1)], np.inf)
    )
    a, b, sim = graph.edges(params.threshold)
    mr = np.maximum(np.maximum(core[a], core[b]), 1.0 - sim.astype(np.float64))
    order = np.argsort(mr, kind="stable")
    parent = list(range(n))
    comp_size = [1] * n
    comp_cluster = [-1] * n  # the cluster a component is, once it has m faces
    # clusters: faces at formation, lambda at formation, (lambda, count) of faces that joined later, children
    formed_size: list[int] = []
    formed_lam: list[float] = []
    joined: list[list[tuple[float, int]]] = []
    children: list[list[int]] = []
    birth: list[float] = []
    members: list[list[int]] = []  # faces, for labelling
    comp_faces: dict[int, list[int]] = {i: [i] for i in range(n)}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def new_cluster(size: int, lam: float, kids: list[int], faces: list[int]) -> int:
        formed_size.append(size)
        formed_lam.append(lam)
        joined.append([])
        children.append(kids)
        birth.append(0.0)
        members.append(faces)
        return len(formed_size) - 1

    for e in order.tolist():
        ra, rb = find(int(a[e])), find(int(b[e]))
        if ra == rb:
            continue
        lam = 1.0 / max(float(mr[e]), 1e-12)
        ca, cb = comp_cluster[ra], comp_cluster[rb]
        if comp_size[ra] < comp_size[rb]:
            ra, rb, ca, cb = rb, ra, cb, ca
        faces = comp_faces.pop(rb)
        size = comp_size[ra] + comp_size[rb]
        if ca >= 0 and cb >= 0:  # two clusters meet: both end here, a parent begins
            birth[ca] = birth[cb] = lam
            cluster = new_cluster(size, lam, [ca, cb], [])
        elif ca >= 0 or cb >= 0:  # a cluster takes in a small group
            cluster = ca if ca >= 0 else cb
            small = comp_size[rb] if ca >= 0 else comp_size[ra]
            joined[cluster].append((lam, small))
            members[cluster].extend(faces if ca >= 0 else comp_faces[ra])
        elif size >= m:  # a small group grows into a cluster
            cluster = new_cluster(size, lam, [], comp_faces[ra] + faces)
        else:
            cluster = -1
        parent[rb] = ra
        comp_size[ra] = size
        comp_faces[ra].extend(faces)
        comp_cluster[ra] = cluster
    # excess of mass, children before parents (they were made first)
    # a tree's root is born at distance infinity: it would always win, so (as HDBSCAN's root) it is chosen only
    # when it never split
    is_child = {k for c in range(len(formed_size)) for k in children[c]}
    value = [0.0] * len(formed_size)
    chosen = [False] * len(formed_size)
    for c in range(len(formed_size)):
        stability = formed_size[c] * (formed_lam[c] - birth[c]) + sum(cnt * (lam - birth[c]) for lam, cnt in joined[c])
        below = sum(value[k] for k in children[c])
        if children[c] and (below > stability or c not in is_child):
            value[c] = below
        else:
            value[c] = stability
            chosen[c] = True
    labels = np.full(n, -1, np.int64)

    def faces_of(c: int) -> list[int]:
        out, stack = [], [c]
        while stack:
            k = stack.pop()
            out.extend(members[k])
            stack.extend(children[k])
        return out

    # a chosen cluster whose ancestor is chosen too belongs to that ancestor: label from the top down
    stack = [c for c in range(len(formed_size)) if c not in is_child]
    while stack:
        c = stack.pop()
        if chosen[c]:
            labels[faces_of(c)] = c
        else:
            stack.extend(children[c])
    return relabel(enforce_cannot_link(labels, vectors, groups), params.min_size)


Algorithm = Callable[..., np.ndarray]
ALGORITHMS: dict[str, Algorithm] = {
    "agglomerative": agglomerative,
    "chinese_whispers": chinese_whispers,
    "dbscan": dbscan,
    "hdbscan": hdbscan,
    "immich": immich,
}


def cluster_faces(
    vectors: np.ndarray, params: ClusterParams, groups: np.ndarray | None = None, graph: KnnGraph | None = None
) -> np.ndarray:
    """Cluster ``(N, D)`` face vectors: ``(N,)`` int64 labels ``0..C-1`` (largest cluster first), ``-1`` for
    unclustered faces. ``groups`` ``(N,)``: faces of one group (photo) are never in one cluster (except with
    ``immich``, which ignores it). ``graph``: the :func:`knn_graph` of these vectors and groups, when already made
    (e.g. to try several parameters; ``immich`` wants one made without groups)."""
    if len(vectors) == 0:
        return np.zeros(0, np.int64)
    if groups is not None and len(groups) != len(vectors):
        raise ValueError(f"groups has {len(groups)} entries for {len(vectors)} vectors")
    return ALGORITHMS[params.algorithm](vectors, params, None if groups is None else np.asarray(groups), graph)


def attach(
    vectors: np.ndarray,
    groups: np.ndarray | None,
    centroids: np.ndarray,
    taken: list[set],
    threshold: float,
) -> np.ndarray:
    """Assign new faces to existing clusters: face ``i`` joins the cluster whose mean vector (``centroids``,
    ``(C, D)``, not normalised: the mean of unit vectors) it is most similar to, when that similarity is at least
    ``threshold`` (average linkage of one face) and the cluster holds no face of its group (``taken[c]``: the
    groups of cluster ``c``, updated as faces join). Returns ``(N,)`` cluster indexes, ``-1`` for none."""
    out = np.full(len(vectors), -1, np.int64)
    if len(vectors) == 0 or len(centroids) == 0:
        return out
    x = _as_unit(vectors)
    sims = x @ np.asarray(centroids, np.float32).T
    order = np.argsort(-sims.max(1))  # the surest faces first
    g = None if groups is None else np.asarray(groups).tolist()
    for i in order.tolist():
        for c in np.argsort(-sims[i]).tolist():
            if sims[i, c] < threshold:
                break
            if g is not None and g[i] in taken[c]:
                continue
            out[i] = c
            if g is not None:
                taken[c].add(g[i])
            break
    return out


# ------------------------------------------------------------------------------------------------ metrics
def _contingency(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of (predicted cluster, true label) cells, predicted sizes and true sizes, per face; unclustered
    predictions (``-1``) are clusters of one."""
    true = np.asarray(true)
    pred = np.asarray(pred, np.int64).copy()
    lone = pred < 0
    pred[lone] = pred.max(initial=-1) + 1 + np.arange(lone.sum())
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    _, cell = np.unique(p.astype(np.int64) * (t.max() + 1) + t, return_inverse=True)
    n_cell = np.bincount(cell)[cell]
    n_pred = np.bincount(p)[p]
    n_true = np.bincount(t)[t]
    return n_cell, n_pred, n_true


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def pairwise_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Pairwise precision (share of pairs put together that are one person), recall (share of one person's pairs
    put together) and F1."""
    n_cell, n_pred, n_true = _contingency(true, pred)
    # every face contributes (n - 1) to its group's count of ordered pairs
    together = float((n_cell - 1).sum())
    said = float((n_pred - 1).sum())
    real = float((n_true - 1).sum())
    p = together / said if said else 1.0
    r = together / real if real else 1.0
    return {"precision": p, "recall": r, "f1": _f1(p, r)}


def bcubed_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """BCubed precision, recall and F1 (Bagga & Baldwin 1998): per face, the share of its cluster that is its
    person and the share of its person in its cluster, averaged over faces."""
    n_cell, n_pred, n_true = _contingency(true, pred)
    p = float(np.mean(n_cell / n_pred)) if len(n_cell) else 1.0
    r = float(np.mean(n_cell / n_true)) if len(n_cell) else 1.0
    return {"precision": p, "recall": r, "f1": _f1(p, r)}


__all__ = [
    "ALGORITHMS",
    "IMMICH_MAX_DISTANCE",
    "IMMICH_MIN_FACES",
    "ClusterParams",
    "KnnGraph",
    "agglomerative",
    "attach",
    "bcubed_scores",
    "chinese_whispers",
    "cluster_faces",
    "dbscan",
    "enforce_cannot_link",
    "hdbscan",
    "immich",
    "immich_params",
    "knn_graph",
    "pairwise_scores",
    "relabel",
]
