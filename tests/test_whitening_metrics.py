import numpy as np
import pytest

from retrieval.metrics import average_precision, leave_one_out_ranking, retrieval_metrics
from retrieval.whitening import Whitening, l2n_np, learn_pca_whitening


def test_pca_whitening_decorrelates_and_equalises_variance(rng):
    x = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 8)) + 3.0
    w = learn_pca_whitening(x.astype(np.float32))
    y = (x - w.shift) @ w.proj.T
    np.testing.assert_allclose(np.cov(y.T), np.eye(8), atol=1e-2)


def test_whitening_keeps_the_strongest_components_and_outputs_unit_vectors(rng):
    x = rng.normal(size=(500, 16)) * np.geomspace(10, 0.1, 16)
    w = learn_pca_whitening(x, dim=4)
    out = w.apply(x[:10])
    assert out.shape == (10, 4) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # The first principal axis is the input's first (largest-variance) coordinate.
    assert np.argmax(np.abs(w.proj[0])) == 0


def test_whitening_round_trips_through_bytes(rng):
    w = learn_pca_whitening(rng.normal(size=(50, 6)), dim=3)
    w2 = Whitening.from_bytes(w.to_bytes())
    np.testing.assert_array_equal(w.proj, w2.proj)
    np.testing.assert_array_equal(w.shift, w2.shift)


def test_whitening_refuses_more_components_than_the_data_carry(rng):
    with pytest.raises(ValueError, match="at most 4"):
        learn_pca_whitening(rng.normal(size=(5, 10)), dim=8)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        learn_pca_whitening(rng.normal(size=(50, 3)), dim=2).apply(np.zeros((1, 4)))


def test_average_precision_by_hand():
    # relevant at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([1, 0, 1, 0], bool)) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0, 0], bool)) == 0.0
    assert average_precision(np.array([0, 1], bool), n_relevant=2) == pytest.approx(0.25)


def test_leave_one_out_ranking_excludes_the_query_and_sorts_by_similarity(rng):
    x = l2n_np(rng.normal(size=(20, 5)))
    full = leave_one_out_ranking(x)
    assert full.shape == (20, 19)
    assert all(i not in full[i] for i in range(20))
    sims = x @ x.T
    assert all(np.all(np.diff(sims[i, full[i]]) <= 1e-6) for i in range(20))
    np.testing.assert_array_equal(leave_one_out_ranking(x, k=5), full[:, :5])


def test_metrics_are_perfect_on_separated_clusters_and_lower_on_noise(rng):
    centres = l2n_np(rng.normal(size=(4, 32))) * 10
    labels = np.repeat(np.arange(4), 10)
    clean = l2n_np(centres[labels] + rng.normal(scale=0.1, size=(40, 32)))
    m = retrieval_metrics(clean, labels)
    assert m["mAP"] == pytest.approx(1.0) and m["recall@1"] == 1.0 and m["precision@5"] == 1.0
    noisy = retrieval_metrics(l2n_np(rng.normal(size=(40, 32))), labels)
    assert noisy["mAP"] < 0.6


def test_query_database_metrics_rank_the_database_for_each_query(rng):
    from retrieval.metrics import query_database_metrics

    db = l2n_np(np.eye(4, 8, dtype=np.float32) + 0.01)
    labels = np.array([0, 1, 2, 3])
    queries = db[[2, 0]] + 0.001
    m = query_database_metrics(queries, [2, 0], db, labels)
    assert m["mAP"] == pytest.approx(1.0) and m["recall@1"] == 1.0
    wrong = query_database_metrics(queries, [1, 3], db, labels)
    assert wrong["recall@1"] == 0.0 and wrong["mAP"] < 0.6


def test_baselines_are_unit_vectors_that_rank_a_copy_first():
    from retrieval.baselines import colour_histogram, perceptual_hash

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for fn in (colour_histogram, perceptual_hash):
        va, vb, va2 = fn(a), fn(b), fn(a.copy())
        assert abs(np.linalg.norm(va) - 1) < 1e-5
        assert va @ va2 == pytest.approx(1.0, abs=1e-5) and va @ vb < 0.999
    # pHash of an image and its slightly brightened copy differ in few bits
    brighter = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    assert perceptual_hash(a) @ perceptual_hash(brighter) > 0.7


def test_supervised_whitening_suppresses_what_varies_within_a_class():
    """Classes differ in 4 quiet dimensions; 28 loud dimensions are noise within each class. PCA keeps the
    loud ones, Radenović's learned whitening (from matching pairs) keeps the ones that separate classes."""
    from retrieval.metrics import retrieval_metrics
    from retrieval.mining import positive_pairs
    from retrieval.whitening import learn_pca_whitening, learn_supervised_whitening

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 8)
    centres = rng.normal(size=(12, 4))
    x = np.concatenate(
        [centres[labels] + 0.05 * rng.normal(size=(len(labels), 4)), 3.0 * rng.normal(size=(len(labels), 28))], axis=1
    ).astype(np.float32)
    pairs = positive_pairs(labels)
    lw = learn_supervised_whitening(x, pairs, dim=4)
    assert lw.proj.shape == (4, 32) and lw.apply(x).shape == (len(x), 4)
    assert retrieval_metrics(lw.apply(x), labels)["mAP"] > 0.95
    assert retrieval_metrics(learn_pca_whitening(x, dim=4).apply(x), labels)["mAP"] < 0.5
    with pytest.raises(ValueError, match="pair"):
        learn_supervised_whitening(x, np.zeros((0, 2), int))
