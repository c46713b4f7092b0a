"""Torch exact search (indexer.torch_search) on the CPU against FAISS's flat search, and where searches run
(indexer.vector_index.choose_search_backend). The same checks on a GPU are in test_gpu.py (needs_cuda)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from indexer.torch_search import TorchFlatIndex
from indexer.vector_index import IndexConfig, VectorIndex, brute_force_search, choose_search_backend

DIM = 48


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Unit vectors around ``clusters`` centres: near neighbours exist, as in an image collection."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, DIM)))
    return unit(centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM)))


def faiss_flat(ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
    return VectorIndex.build(ids, vectors, IndexConfig(kind="flat", device="cpu"))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    vectors = clustered(3000)
    ids = rng.choice(10**9, size=3000, replace=False).astype(np.int64)  # database keys: sparse, unordered
    queries = clustered(25, seed=3)
    return ids, vectors, queries


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_fp32_search_gives_faiss_flat_ids_and_scores(data):
    ids, vectors, queries = data
    torch_index = TorchFlatIndex.build(ids, vectors, dtype="fp32")
    reference = faiss_flat(ids, vectors)
    for k in (1, 10, 100):
        s, i = torch_index.search(queries, k)
        rs, ri = reference.search(queries, k)
        assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == i.shape == (len(queries), k)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_allclose(s, rs, atol=1e-5)


def test_fp16_storage_keeps_recall_and_scores_close(data):
    ids, vectors, queries = data
    s, i = TorchFlatIndex.build(ids, vectors, dtype="fp16").search(queries, 10)
    ts, ti = brute_force_search(vectors, ids, queries, 10)
    assert recall(i, ti) >= 0.99
    assert np.abs(s - ts).max() < 2e-3
    assert TorchFlatIndex.build(ids, vectors, dtype="fp16").nbytes == len(ids) * DIM * 2


def test_small_score_budget_answers_in_many_chunks_with_the_same_results(data):
    ids, vectors, queries = data
    whole = TorchFlatIndex.build(ids, vectors, dtype="fp32")
    chunked = TorchFlatIndex(DIM, dtype="fp32", score_budget=len(queries) * 97)  # 97 rows per chunk: 31 chunks
    chunked.add(ids, vectors)
    s, i = chunked.search(queries, 20)
    ws, wi = whole.search(queries, 20)
    np.testing.assert_array_equal(i, wi)
    np.testing.assert_allclose(s, ws, atol=1e-6)


def test_empty_index_and_k_beyond_the_collection_are_padded(data):
    ids, vectors, queries = data
    empty = TorchFlatIndex(DIM)
    s, i = empty.search(queries[:2], 3)
    assert (i == -1).all() and np.isneginf(s).all() and len(empty) == 0
    small = TorchFlatIndex.build(ids[:4], vectors[:4], dtype="fp32")
    s, i = small.search(queries[0], 10)  # one query as a (dim,) vector
    assert s.shape == (1, 10)
    assert sorted(i[0, :4].tolist()) == sorted(ids[:4].tolist()) and (i[0, 4:] == -1).all()
    assert np.isneginf(s[0, 4:]).all() and (np.diff(s[0, :4]) <= 0).all()
    with pytest.raises(ValueError, match="k must be a positive integer"):
        small.search(queries, 0)
    with pytest.raises(ValueError, match="an empty build needs dim"):
        TorchFlatIndex.build(np.empty(0, np.int64), np.empty(0, np.float32))


def test_add_and_remove_follow_faiss_and_keep_the_ids(data):
    ids, vectors, queries = data
    torch_index = TorchFlatIndex.build(ids[:1000], vectors[:1000], dtype="fp32")
    reference = faiss_flat(ids[:1000], vectors[:1000])
    for start in range(1000, 3000, 700):  # added in pieces: the storage grows
        torch_index.add(ids[start : start + 700], vectors[start : start + 700])
        reference.add(ids[start : start + 700], vectors[start : start + 700])
    gone = ids[::3]
    assert torch_index.remove(np.concatenate([gone, [123]])) == len(gone)  # an unknown id is ignored
    reference.remove(gone)
    assert len(torch_index) == len(reference) and ids[0] not in torch_index and ids[1] in torch_index
    np.testing.assert_array_equal(torch_index.ids(), reference.ids())
    s, i = torch_index.search(queries, 15)
    rs, ri = reference.search(queries, 15)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, atol=1e-5)
    assert not np.isin(i, gone).any()
    torch_index.add(gone[:5], vectors[::3][:5])  # removed ids may come back
    assert gone[0] in torch_index
    with pytest.raises(ValueError, match="already in the index"):
        torch_index.add(ids[1:2], vectors[1:2])
    with pytest.raises(ValueError, match="dimension mismatch"):
        torch_index.add(np.array([5]), np.ones((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="ids must be unique"):
        torch_index.add(np.array([7, 7]), vectors[:2])


def test_save_and_load_round_trip_atomically(tmp_path, data):
    ids, vectors, queries = data
    index = TorchFlatIndex.build(ids, vectors, dtype="fp16")
    path = tmp_path / "vectors.npz"
    index.save(path)
    assert os.listdir(tmp_path) == ["vectors.npz"]  # no temporary file left
    loaded = TorchFlatIndex.load(path)
    assert loaded.dtype == "fp16" and len(loaded) == len(index)
    s, i = loaded.search(queries, 10)
    ls, li = index.search(queries, 10)
    np.testing.assert_array_equal(i, li)
    np.testing.assert_array_equal(s, ls)
    assert TorchFlatIndex.load(path, dtype="fp32").dtype == "fp32"
    with pytest.raises(FileNotFoundError):
        TorchFlatIndex.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_vector_index_on_the_torch_backend_searches_exactly_whatever_the_kind(kind, data):
    ids, vectors, queries = data
    config = IndexConfig(kind=kind, device="torch", torch_dtype="fp32", nlist=16, hnsw_m=16, ef_construction=40)
    index = VectorIndex.build(ids, vectors, config)
    assert index.kind == kind and index.search_backend == "torch-cpu"
    s, i = index.search(queries, 10)
    ts, ti = brute_force_search(vectors, ids, queries, 10)

    def same(found: np.ndarray, truth: np.ndarray) -> None:
        if kind == "ivf":  # IVF stores fp16 (scores to ~1e-4): near ties may swap
            assert recall(found, truth) >= 0.99
        else:
            np.testing.assert_array_equal(found, truth)  # exact, also for HNSW's approximate kind

    same(i, ti)
    np.testing.assert_allclose(s, ts, atol=1e-3 if kind == "ivf" else 1e-5)
    # the replica follows removals (HNSW: tombstones) and additions made after it was built
    index.remove(ids[:100])
    extra = clustered(50, seed=11)
    index.add(np.arange(50, dtype=np.int64), extra)
    keep = np.concatenate([ids[100:], np.arange(50)])
    s, i = index.search(queries, 10)
    ts, ti = brute_force_search(np.concatenate([vectors[100:], extra]), keep, queries, 10)
    same(i, ti)
    assert not np.isin(i, ids[:100]).any()


def test_vector_index_torch_backend_survives_save_and_load(tmp_path, data):
    ids, vectors, queries = data
    VectorIndex.build(ids, vectors, IndexConfig(kind="hnsw", device="cpu", hnsw_m=16)).save(tmp_path / "index.faiss")
    loaded = VectorIndex.load(tmp_path / "index.faiss", IndexConfig(device="torch", torch_dtype="fp16"))
    assert loaded.search_backend == "torch-cpu"
    _, i = loaded.search(queries, 10)
    assert recall(i, brute_force_search(vectors, ids, queries, 10)[1]) >= 0.99


def test_lossy_faiss_factory_indexes_stay_on_faiss():
    vectors = clustered(600)
    index = VectorIndex.build(np.arange(600), vectors, IndexConfig(kind="PCA16,Flat", device="torch"))
    assert index.search_backend == "cpu"  # exact search over PCA-reduced reconstructions would be wrong


@pytest.mark.parametrize(
    ("device", "faiss_gpu_kind", "torch_kind", "faiss_gpu", "torch_cuda", "expected"),
    [
        ("auto", True, True, True, True, "faiss-gpu"),
        ("auto", False, True, True, True, "torch-cuda"),  # HNSW has no FAISS GPU index: torch on the GPU
        ("auto", True, True, False, True, "torch-cuda"),  # faiss-cpu from pip + CUDA torch
        ("auto", True, False, False, True, "cpu"),  # a lossy factory string stays on FAISS
        ("auto", True, True, False, False, "cpu"),
        ("gpu", True, True, False, True, "torch-cuda"),
        ("cpu", True, True, True, True, "cpu"),
        ("torch", True, True, True, True, "torch-cuda"),
        ("torch", True, True, False, False, "torch-cpu"),
        ("torch", True, False, False, True, "cpu"),
    ],
)
def test_search_backend_choice(device, faiss_gpu_kind, torch_kind, faiss_gpu, torch_cuda, expected):
    assert (
        choose_search_backend(device, faiss_gpu_kind, torch_kind, faiss_gpu=faiss_gpu, torch_cuda=torch_cuda)
        == expected
    )


def test_gpu_search_without_any_gpu_is_an_error_saying_what_is_missing():
    with pytest.raises(RuntimeError, match="install the gpu extra"):
        choose_search_backend("gpu", True, True, faiss_gpu=False, torch_cuda=False)
    with pytest.raises(ValueError, match="device must be one of auto, cpu, gpu, torch"):
        IndexConfig(device="tpu")
    with pytest.raises(ValueError, match="torch_dtype"):
        IndexConfig(torch_dtype="int8")
