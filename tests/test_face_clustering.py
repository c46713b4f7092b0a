"""Face clustering algorithms (retrieval/faces/clustering.py) on synthetic unit vectors: seeded blobs around random
"person" directions (per-face noise 0.06 per dimension in 64-d: same-person cosine ~0.8, different people ~0)."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.faces.clustering import (
    ALGORITHMS,
    ClusterParams,
    attach,
    bcubed_scores,
    cluster_faces,
    enforce_cannot_link,
    immich_params,
    knn_graph,
    pairwise_scores,
    relabel,
)

DIM = 64


def blobs(sizes: list[int], seed: int, noise: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.concatenate([centres[i] + rng.normal(scale=noise, size=(n, DIM)) for i, n in enumerate(sizes)])
    y = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(y))
    x = x[perm] / np.linalg.norm(x[perm], axis=1, keepdims=True)
    return x.astype(np.float32), y[perm]


def params(algorithm: str, seed: int = 0) -> ClusterParams:
    # HDBSCAN chooses its own levels: no edge cut (one tree, whose root is never a person)
    threshold = -1.0 if algorithm == "hdbscan" else 0.5
    return ClusterParams(algorithm=algorithm, threshold=threshold, min_size=2, min_samples=2, seed=seed)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_well_separated_people_are_found_exactly(algorithm, seed):
    sizes = [12, 9, 7, 5, 4, 3, 2, 2]
    x, y = blobs(sizes, seed)
    labels = cluster_faces(x, params(algorithm, seed))
    assert labels.max() + 1 == len(sizes)
    assert pairwise_scores(y, labels)["f1"] == 1.0
    assert bcubed_scores(y, labels)["f1"] == 1.0
    # largest cluster first
    assert np.bincount(labels[labels >= 0]).tolist() == sorted(sizes, reverse=True)


@pytest.mark.parametrize("algorithm", ["agglomerative", "chinese_whispers", "dbscan"])
def test_lone_faces_stay_unclustered(algorithm):  # (HDBSCAN without an edge cut lets far faces join a cluster)
    x, y = blobs([6, 5, 1, 1, 1, 1], 3)
    labels = cluster_faces(x, params(algorithm))
    lone = np.isin(y, [2, 3, 4, 5])
    assert (labels[lone] == -1).all()
    assert (labels[~lone] >= 0).all() and labels.max() == 1
    # a higher min_size dissolves the smaller person too
    bigger = cluster_faces(x, ClusterParams(algorithm=algorithm, threshold=0.5, min_size=6, min_samples=2))
    assert bigger.max() == 0 and (bigger >= 0).sum() == 6


@pytest.mark.parametrize("algorithm", ["agglomerative", "chinese_whispers", "dbscan", "hdbscan"])
def test_two_faces_of_one_photo_are_never_one_person(algorithm):
    x, y = blobs([5, 5], 4)
    # a near-duplicate of face 0 in face 0's photo, e.g. a reflection: alike, but cannot be the same person
    x = np.concatenate([x, x[:1] * 0.999 + 0.001])
    y = np.append(y, y[0])
    groups = np.arange(len(x))
    groups[-1] = groups[0]
    labels = cluster_faces(x, params(algorithm), groups)
    assert labels[0] != labels[-1] or labels[0] == -1
    same_photo = [(i, j) for i in range(len(x)) for j in range(i) if groups[i] == groups[j]]
    assert all(labels[i] == -1 or labels[i] != labels[j] for i, j in same_photo)
    # the other faces are still found
    assert (labels[:-1] >= 0).sum() >= 9


def test_immich_ignores_cannot_link_and_needs_min_faces():
    x, y = blobs([5, 2], 5)
    labels = cluster_faces(x, immich_params())
    assert labels.max() == 0 and (labels >= 0).sum() == 5  # a person of 2 faces is below minFaces 3
    assert (labels[y == 1] == -1).all()


@pytest.mark.parametrize("algorithm", ["agglomerative", "chinese_whispers"])
def test_stable_over_seeds_and_threads(algorithm):
    import faiss

    x, y = blobs([10, 8, 6, 4, 3, 2, 1, 1, 1], 6, noise=0.09)
    results = []
    before = faiss.omp_get_max_threads()
    try:
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            for seed in range(4):
                labels = cluster_faces(x, params(algorithm, seed))
                results.append(pairwise_scores(y, labels)["f1"])
    finally:
        faiss.omp_set_num_threads(before)
    assert min(results) > 0.97


def test_knn_graph_drops_self_and_same_group():
    x, _ = blobs([3, 3], 7)
    groups = np.array([0, 0, 1, 2, 3, 4])
    g = knn_graph(x, k=4, groups=groups)
    assert g.neighbours.shape == (6, 4)
    for i in range(6):
        nb = g.neighbours[i][g.neighbours[i] >= 0]
        assert i not in nb and not any(groups[j] == groups[i] for j in nb)
        assert np.all(np.diff(g.similarities[i][g.neighbours[i] >= 0]) <= 1e-6)


def test_helpers_relabel_cannot_link_attach():
    assert relabel(np.array([5, 5, 7, 9, 9, 9, -1]), min_size=2).tolist() == [1, 1, -1, 0, 0, 0, -1]
    x, _ = blobs([4], 8)
    fixed = enforce_cannot_link(np.zeros(4, np.int64), x, np.array([0, 0, 1, 2]))
    assert sorted(fixed.tolist()) == [-1, 0, 0, 0]
    cents, _ = blobs([1, 1], 9)
    new = np.concatenate([cents[:1], cents[1:], -cents[:1]])
    taken = [{10}, set()]
    got = attach(new, np.array([10, 11, 12]), cents, taken, 0.5)
    assert got.tolist() == [-1, 1, -1]  # photo 10 is in cluster 0 already; the third face is like nobody
    assert taken[1] == {11}


def test_metrics_on_a_known_case():
    true = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 1, -1])
    pw = pairwise_scores(true, pred)
    # pairs put together: (0,1) right, (2,3) (2,4) wrong, (3,4) right; true pairs: 3 + 1
    assert pw["precision"] == pytest.approx(2 / 4) and pw["recall"] == pytest.approx(2 / 4)
    b = bcubed_scores(true, pred)
    assert b["precision"] == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3 + 1) / 6)
    assert b["recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1 + 1) / 6)
    assert pairwise_scores(true, true)["f1"] == 1.0 and bcubed_scores(true, true)["f1"] == 1.0


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown clustering algorithm"):
        ClusterParams(algorithm="kmeans")
    with pytest.raises(ValueError, match="threshold"):
        ClusterParams(threshold=2.0)
    assert cluster_faces(np.zeros((0, 8), np.float32), ClusterParams()).shape == (0,)
