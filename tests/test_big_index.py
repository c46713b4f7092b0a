"""Indexes for big collections (indexer.vector_index): the compressed kinds ``ivfpq`` (OPQ + IVF-PQ with float16
re-ranking) and ``ivfpq-disk`` (lists in a file), and ``kind="auto"`` choosing within a memory budget. Small,
seeded data with the size thresholds lowered; a few seconds in all."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexer import vector_index
from indexer.vector_index import COMPRESSED_KINDS, MEMORY_HEADROOM, IndexConfig, VectorIndex, brute_force_search

DIM = 32
N = 6000
# Lists, codes and sample small enough to train in seconds on a busy machine: 16 lists, 8-byte codes, 3000
# training points; the OPQ rotation only where a test is about it (it trains for longer than the rest together).
SMALL = {
    "device": "cpu",
    "nlist": 16,
    "pq_bytes": 8,
    "nprobe": 8,
    "approx_threshold": 1000,
    "max_train_points": 3000,
    "opq": False,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """FAISS on one thread: on a shared 2-core machine two OpenMP threads trained ~10x slower."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, DIM) and (n_queries, DIM) unit vectors from a 60-component Gaussian mixture (queries held out)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, DIM))
    x = centres[rng.integers(0, 60, n + n_queries)] + 0.6 * rng.standard_normal((n + n_queries, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[:n], x[n:]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(f[f >= 0], t).size for f, t in zip(found, truth)]) / truth.shape[1])


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, queries = clustered(N, 60)
    return np.arange(N, dtype=np.int64) * 2 + 5, x, queries


@pytest.fixture(scope="module")
def built(data) -> dict[str, VectorIndex]:
    ids, x, _ = data
    return {
        "ivfpq": VectorIndex.build(ids, x, IndexConfig(kind="ivfpq", **{**SMALL, "opq": True})),
        "ivfpq-disk": VectorIndex.build(ids, x, IndexConfig(kind="ivfpq-disk", **SMALL)),
    }


def budget_between(cfg: IndexConfig, n: int, low_kind: str, high_kind: str) -> float:
    """A budget (GB) whose usable share fits ``low_kind``'s estimate but not ``high_kind``'s."""
    low = cfg.estimate_memory(low_kind, n, DIM)["memory"]
    high = cfg.estimate_memory(high_kind, n, DIM)["memory"]
    assert low < high
    return (low + high) / 2 / MEMORY_HEADROOM / 1e9


# --------------------------------------------------------------------------- #
# the choice by budget
# --------------------------------------------------------------------------- #
def test_estimates_order_the_kinds_by_memory_and_grow_with_the_collection():
    cfg = IndexConfig(nlist=64)
    for n in (100_000, 10_000_000):
        est = {k: cfg.estimate_memory(k, n, 256)["memory"] for k in ("flat", "hnsw", "ivfpq", "ivfpq-disk")}
        assert est["hnsw"] > est["flat"] > est["ivfpq"] > est["ivfpq-disk"]
    assert (
        cfg.estimate_memory("ivfpq", 10_000_000, 256)["memory"]
        > 10 * cfg.estimate_memory("ivfpq", 1_000_000, 256)["memory"] * 0.9
    )
    disk = cfg.estimate_memory("ivfpq-disk", 10_000_000, 256)
    assert disk["disk"] == 10_000_000 * (64 + 8)  # 256 / 4 bytes of code + the id, per vector


def test_auto_picks_hnsw_then_ivfpq_then_on_disk_lists_as_the_budget_shrinks():
    n = 200_000
    base = IndexConfig(approx_threshold=1000)
    roomy = IndexConfig(approx_threshold=1000, memory_budget_gb=1000.0)
    assert roomy.resolve_kind(n, DIM) == "hnsw"
    assert roomy.resolve_kind(500, DIM) == "flat"  # below the threshold: exact search
    mid = IndexConfig(approx_threshold=1000, memory_budget_gb=budget_between(base, n, "ivfpq", "hnsw"))
    assert mid.resolve_kind(n, DIM) == "ivfpq"
    tight = IndexConfig(approx_threshold=1000, memory_budget_gb=budget_between(base, n, "ivfpq-disk", "ivfpq"))
    assert tight.resolve_kind(n, DIM) == "ivfpq-disk"
    # without the dimension the budget cannot be consulted: the old rule
    assert tight.resolve_kind(n) == "hnsw"
    # a kind asked for by name is kept whatever the budget
    assert IndexConfig(kind="hnsw", memory_budget_gb=1e-6).resolve_kind(n, DIM) == "hnsw"


def test_auto_builds_the_compressed_index_the_budget_allows(data):
    ids, x, queries = data
    probe = IndexConfig(**SMALL)
    cfg = IndexConfig(**SMALL, memory_budget_gb=budget_between(probe, N, "ivfpq", "hnsw"))
    index = VectorIndex.build(ids, x, cfg)
    assert index.kind == "ivfpq"
    assert not index.needs_rebuild()
    roomier = IndexConfig(**{**SMALL, "memory_budget_gb": 1000.0})
    assert index.needs_rebuild(roomier)  # with room for HNSW again, a rebuild would change the kind


def test_unset_budget_defaults_to_half_the_machine_memory():
    assert IndexConfig().budget_bytes() == pytest.approx(vector_index.default_memory_budget_gb() * 1e9)
    assert 0.1 < vector_index.default_memory_budget_gb() < 10_000


@pytest.mark.parametrize("bad", [{"memory_budget_gb": 0}, {"rerank": 0}, {"pq_bytes": 0}, {"max_train_points": -1}])
def test_invalid_big_index_settings_are_refused(bad):
    with pytest.raises(ValueError):
        IndexConfig(**bad)


def test_compressed_kinds_are_valid_kind_names():
    for kind in COMPRESSED_KINDS:
        IndexConfig(kind=kind).check_kind(DIM)
    assert IndexConfig.from_dict(IndexConfig(memory_budget_gb=8.0).to_dict()).memory_budget_gb == 8.0


# --------------------------------------------------------------------------- #
# search quality
# --------------------------------------------------------------------------- #
def test_ivfpq_with_reranking_finds_nearly_what_exact_search_finds(data, built):
    ids, x, queries = data
    _, truth = brute_force_search(x, ids, queries, 10)
    index = built["ivfpq"]
    assert index.kind == "ivfpq" and len(index) == N
    scores, found = index.search(queries, 10)
    assert recall(found, truth) >= 0.9
    # re-ranked scores are the (float16) inner products, best first
    exact = np.einsum("qd,qkd->qk", queries, x[(found - 5) // 2])
    np.testing.assert_allclose(scores, exact, atol=2e-3)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_reranking_more_candidates_does_not_lose_recall(data, built):
    ids, x, queries = data
    _, truth = brute_force_search(x, ids, queries, 10)
    index = built["ivfpq"]
    index.set_search_params(rerank=10)
    short = recall(index.search(queries, 10)[1], truth)
    index.set_search_params(rerank=200)
    long = recall(index.search(queries, 10)[1], truth)
    index.set_search_params(rerank=IndexConfig().rerank)
    assert long >= short + 0.02  # PQ order alone loses neighbours that re-ranking recovers


def test_on_disk_kind_finds_most_neighbours(data, built):
    ids, x, queries = data
    _, truth = brute_force_search(x, ids, queries, 10)
    assert recall(built["ivfpq-disk"].search(queries, 10)[1], truth) >= 0.4  # PQ scores only, 8-byte codes


def test_float16_input_is_built_a_block_at_a_time_like_float32(data, monkeypatch):
    ids, x, queries = data
    monkeypatch.setattr(vector_index, "_BUILD_BLOCK", 1000)
    cfg = IndexConfig(kind="ivfpq", **SMALL)
    from_half = VectorIndex.build(ids, x.astype(np.float16), cfg)
    from_single = VectorIndex.build(ids, x.astype(np.float16).astype(np.float32), cfg)
    assert len(from_half) == N and np.array_equal(from_half.ids(), np.sort(ids))
    np.testing.assert_array_equal(from_half.search(queries, 10)[1], from_single.search(queries, 10)[1])


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #
def test_ivfpq_save_load_round_trip(data, built, tmp_path):
    _, _, queries = data
    index = built["ivfpq"]
    index.save(tmp_path / "images.faiss")
    back = VectorIndex.load(tmp_path / "images.faiss", IndexConfig(**SMALL))
    assert back.kind == "ivfpq" and len(back) == len(index)
    for a, b in zip(index.search(queries, 10), back.search(queries, 10)):
        np.testing.assert_array_equal(a, b)


def test_on_disk_lists_live_in_a_file_beside_the_index_and_round_trip(data, built, tmp_path):
    _, x, queries = data
    path = tmp_path / "images.faiss"
    built["ivfpq-disk"].save(path)
    lists = list(tmp_path.glob("images.faiss.*.ivfdata"))
    assert len(lists) == 1 and lists[0].stat().st_size > N * 8
    back = VectorIndex.load(path, IndexConfig(**SMALL))
    assert back.kind == "ivfpq-disk"
    assert VectorIndex._on_disk_lists(back.faiss_index) is not None  # memory-mapped, not read in
    for a, b in zip(built["ivfpq-disk"].search(queries, 10), back.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    # a change reads the lists in; the next save writes a new lists file and drops the old one
    back.remove(np.array([5, 7]))
    back.save(path)
    again = list(tmp_path.glob("images.faiss.*.ivfdata"))
    assert len(again) == 1 and again[0] != lists[0]
    reloaded = VectorIndex.load(path, IndexConfig(**SMALL))
    assert len(reloaded) == N - 2 and 5 not in reloaded and 9 in reloaded
    # the folder can move: the lists file is found beside the index
    moved = tmp_path / "moved"
    moved.mkdir()
    path.rename(moved / path.name)
    again[0].rename(moved / again[0].name)
    assert len(VectorIndex.load(moved / path.name, IndexConfig(**SMALL))) == N - 2


# --------------------------------------------------------------------------- #
# updates
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", COMPRESSED_KINDS)
def test_add_and_remove_behave_like_the_other_kinds(data, built, tmp_path, kind):
    ids, x, queries = data
    built[kind].save(tmp_path / "i.faiss")
    index = VectorIndex.load(tmp_path / "i.faiss", IndexConfig(**SMALL, max_tombstone_fraction=0.2))
    # a query's own vector is found first; once removed it never comes back, and the others keep their ids
    probe = ids[:20]
    assert np.mean(index.search(x[:20], 1)[1][:, 0] == probe) >= 0.9
    assert index.remove(probe) == 20 and index.remove(probe) == 0
    assert len(index) == N - 20 and not any(int(i) in index for i in probe)
    found = index.search(x[:20], 10)[1]
    assert not np.isin(found, probe).any()
    assert np.isin(found[found >= 0], ids).all()
    with pytest.raises(ValueError):
        index.add(ids[20:21], x[20:21])  # present already
    index.add(probe, x[:20])
    assert np.mean(index.search(x[:20], 1)[1][:, 0] == probe) >= 0.9
    # removing most vectors compacts (HNSW-like tombstones for ivfpq) and still answers correctly
    gone = ids[: N // 2]
    index.remove(gone)
    assert len(index) == N - N // 2
    rest = index.search(x[N // 2 : N // 2 + 20], 1)[1][:, 0]
    assert np.mean(rest == ids[N // 2 : N // 2 + 20]) >= 0.9
    assert not np.isin(index.search(queries, 10)[1], gone).any()


def test_too_few_vectors_to_train_fall_back_to_flat():
    x, _ = clustered(50, 0)
    index = VectorIndex.build(np.arange(50), x, IndexConfig(kind="ivfpq", device="cpu"))
    assert index.kind == "flat" and len(index) == 50


# --------------------------------------------------------------------------- #
# the command line
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("text", "gb"), [("8GB", 8.0), ("8 g", 8.0), ("512MB", 0.512), ("1.5TB", 1500.0), ("2GiB", 2**31 / 1e9), ("3", 3.0)]
)
def test_memory_sizes_read_as_people_write_them(text, gb):
    assert vector_index.parse_memory_size(text) == pytest.approx(gb)


@pytest.mark.parametrize("text", ["0GB", "lots", "8XB", "-1GB"])
def test_unreadable_memory_sizes_are_refused(text):
    with pytest.raises(ValueError):
        vector_index.parse_memory_size(text)


def test_index_memory_budget_option_is_stored_with_the_collection(tmp_path):
    from click.testing import CliRunner

    from indexer.cli import main
    from indexer.engine import Collection

    home, empty = tmp_path / "home", tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["--home", str(home), "index", str(empty), "--memory-budget", "8GB"])
    assert Collection(home).index_config.memory_budget_gb == 8.0, res.output
    res = CliRunner().invoke(main, ["--home", str(home), "index", str(empty), "--memory-budget", "lots"])
    assert res.exit_code == 2 and "--memory-budget" in res.output
    assert Collection(home).index_config.memory_budget_gb == 8.0


def test_a_dropped_ivfpq_index_frees_its_float16_copy(built):
    # FAISS's IndexRefine owns its re-ranking index only when told so (own_refine_index), apart from own_fields:
    # without it every rebuild leaked the float16 copy (5 GB at 10M)
    refine = vector_index.faiss.downcast_index(built["ivfpq"].faiss_index.index)
    assert refine.own_fields and refine.own_refine_index
