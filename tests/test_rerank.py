"""Re-ranking: the math on synthetic vectors whose answer is known, the shared k-NN graph and the DBA cache of a
collection (incremental, kill-safe, checked by doctor), and the CLI option and JSON field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from indexer import knn_graph
from indexer.cli import main
from indexer.engine import Collection
from indexer.knn_graph import GRAPH_FILE, GraphFile, update_graph
from indexer.reranking import DBA_FILE, DbaFile, rerank_search, update_dba
from indexer.vector_index import IndexConfig, VectorIndex
from retrieval.config import ModelConfig
from retrieval.rerank import (
    RerankSettings,
    alpha_qe,
    conjugate_gradient,
    dba,
    diffusion_scores,
    l2n,
    mutual_knn,
    normalise_graph,
)
from tests.conftest import FAST_RUNTIME, make_folder

# --------------------------------------------------------------------------------------------- data


def chain_and_distractors(dim: int = 8, steps: int = 12, step_deg: float = 10.0, seed: int = 0) -> np.ndarray:
    """``steps`` views along an arc from e0 towards e1, ``step_deg`` apart (the far end is nearly orthogonal to
    the start), then a tight cluster of 12 distractors at 40 degrees from the start in another direction: closer
    to the start than most of the chain, but not linked to it by neighbours."""
    rng = np.random.default_rng(seed)
    t = np.radians(np.arange(steps) * step_deg)
    chain = np.zeros((steps, dim))
    chain[:, 0], chain[:, 1] = np.cos(t), np.sin(t)
    distract = np.zeros((12, dim))
    distract[:, 0], distract[:, 2] = np.cos(np.radians(40)), np.sin(np.radians(40))
    distract[:, 3:] = 0.03 * rng.normal(size=(12, dim - 3))
    return l2n(np.vstack([chain, distract]))


def exact_lists(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k-NN lists (positions, self left out)."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    nbr = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return nbr, np.take_along_axis(s, nbr, 1).astype(np.float32)


def flat_index(ids: np.ndarray, x: np.ndarray) -> VectorIndex:
    return VectorIndex.build(np.asarray(ids, np.int64), np.asarray(x, np.float32), IndexConfig(kind="flat"))


# --------------------------------------------------------------------------------------------- the math


def test_diffusion_finds_the_far_end_of_a_chain_that_plain_search_misses():
    x = chain_and_distractors()
    chain = np.arange(12)
    plain = np.argsort(-(x @ x[0]))[1:12]
    assert np.isin(plain, chain).mean() < 0.5  # the distractors come before most of the chain
    nbr, sims = exact_lists(x, 8)
    settings = RerankSettings(method="diffusion", graph_k=5, seeds=3)
    seeds = np.argsort(-(x @ x[0]))[:3][None]
    f = diffusion_scores(nbr, sims, seeds, (x @ x[0])[seeds], settings)[0]
    ranked = np.argsort(-f, kind="stable")[:12]  # the query's own view among them
    assert set(ranked.tolist()) == set(chain.tolist())
    assert f.max() == pytest.approx(1.0)
    # through the library's search path as well (index, graph, candidates)
    ids = np.arange(100, 100 + len(x))
    index = flat_index(ids, x)
    graph, _ = update_graph(None, index, ids, np.array([""] * len(x)), lambda i: x[i - 100], "sig", 1, k=8)
    scores, found = rerank_search(index, x[:1], 12, settings, graph=lambda k: graph)
    assert set(found[0].tolist()) == set(ids[chain].tolist())
    assert np.all(np.diff(scores[0]) <= 1e-6)


def test_alpha_qe_moves_the_query_toward_its_cluster():
    rng = np.random.default_rng(1)
    centre = l2n(rng.normal(size=(1, 32)))[0]
    cluster = l2n(centre + 0.1 * rng.normal(size=(20, 32)))
    query = l2n(centre + 0.2 * rng.normal(size=(1, 32)))  # a poor view of the object (cosine ~0.6 with it)
    sims = cluster @ query[0]
    top = np.argsort(-sims)[:10]
    expanded = alpha_qe(query, cluster[top][None], sims[top][None], alpha=3.0)
    assert float(expanded[0] @ centre) > float(query[0] @ centre) + 0.1
    assert np.linalg.norm(expanded, axis=1) == pytest.approx(1.0, abs=1e-5)
    # nan similarities (no neighbour) are left out
    same = alpha_qe(query, cluster[top][None], np.full((1, 10), np.nan), alpha=3.0)
    np.testing.assert_allclose(same, query, atol=1e-6)


def test_dba_keeps_vectors_unit_norm_and_draws_neighbours_together():
    rng = np.random.default_rng(2)
    centres = l2n(rng.normal(size=(5, 16)))
    x = l2n(np.repeat(centres, 10, axis=0) + 0.3 * rng.normal(size=(50, 16)))
    nbr, sims = exact_lists(x, 6)
    out = dba(x, nbr, sims, k=5, alpha=3.0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    labels = np.repeat(np.arange(5), 10)
    same = labels[:, None] == labels[None]
    np.fill_diagonal(same, False)
    assert (out @ out.T)[same].mean() > (x @ x.T)[same].mean() + 0.05
    # only some rows, looked up among all vectors: the same rows of the full result
    rows = np.array([3, 17, 42])
    np.testing.assert_allclose(dba(x, nbr[rows], sims[rows], 5, 3.0, rows=rows), out[rows], atol=1e-6)
    # no neighbours: the vectors themselves
    np.testing.assert_allclose(dba(x, np.full((50, 3), -1), np.zeros((50, 3)), 3, 3.0), x, atol=1e-6)


def test_mutual_knn_graph_is_symmetric_and_keeps_only_mutual_pairs():
    x = chain_and_distractors()
    nbr, sims = exact_lists(x, 4)
    cols, w = mutual_knn(nbr, sims, 4, gamma=3.0)
    n = len(x)
    dense = np.zeros((n, n))
    np.add.at(dense, (np.repeat(np.arange(n), 4), cols.ravel()), w.ravel())
    np.testing.assert_allclose(dense, dense.T, atol=1e-6)
    for i, j in zip(*np.nonzero(dense)):
        assert j in nbr[i] and i in nbr[j]
        assert dense[i, j] == pytest.approx(float(x[i] @ x[j]) ** 3, rel=1e-4)


def test_conjugate_gradient_solves_the_diffusion_system():
    x = chain_and_distractors()
    nbr, sims = exact_lists(x, 6)
    cols, w = mutual_knn(nbr, sims, 6, gamma=3.0)
    norm = normalise_graph(cols, w)
    n = len(x)
    s = np.zeros((n, n))
    np.add.at(s, (np.repeat(np.arange(n), 6), cols.ravel()), norm.ravel())
    a = np.eye(n) - 0.9 * s
    b = np.random.default_rng(3).random((n, 2))
    got = conjugate_gradient(lambda v: a @ v, b, iterations=200, tolerance=1e-10)
    np.testing.assert_allclose(got, np.linalg.solve(a, b), atol=1e-6)


def test_rerank_settings_are_checked_and_round_trip():
    s = RerankSettings(method="diffusion", graph_k=7, gamma=2.0)
    assert RerankSettings.from_dict(s.to_dict()) == s
    assert s.describe().startswith("diffusion (mutual 7-NN")
    assert RerankSettings(method="none").describe() == "none"
    with pytest.raises(ValueError, match="unknown re-ranking"):
        RerankSettings(method="magic")
    with pytest.raises(ValueError, match="alpha"):
        RerankSettings(alpha=1.0)


def test_qe_and_dba_search_return_cosines_of_the_expanded_query_or_augmented_vectors():
    x = chain_and_distractors()
    ids = np.arange(len(x)) + 1
    index = flat_index(ids, x)
    of = lambda i: x[np.asarray(i) - 1]
    s, i = rerank_search(index, x[:2], 5, RerankSettings(method="qe", qe_k=3), vectors_of=of)
    q = alpha_qe(x[:1], x[np.argsort(-(x @ x[0]))[:3]][None], np.sort(x @ x[0])[::-1][None, :3], 3.0)
    # the query's own image first (identical, scored 1), then the others by cosine with the expanded query
    assert i[0, 0] == 1 and s[0, 0] == 1.0
    np.testing.assert_allclose(s[0, 1:], np.sort(x[1:] @ q[0])[::-1][:4], atol=1e-5)
    # plain search is the index's own
    s0, i0 = rerank_search(index, x[:2], 5, RerankSettings(method="none"))
    e0, j0 = index.search(x[:2], 5)
    np.testing.assert_array_equal(i0, j0)


# --------------------------------------------------------------------------------------------- the graph


def test_graph_update_searches_only_new_images_and_agrees_with_a_rebuild():
    rng = np.random.default_rng(4)
    x = l2n(rng.normal(size=(300, 16)))
    ids = np.arange(300, dtype=np.int64) * 2 + 1
    fp = np.array([f"h{i}" for i in ids])
    of = {int(i): v for i, v in zip(ids, x)}
    vectors_of = lambda q: np.stack([of[int(i)] for i in q])
    index = flat_index(ids, x)
    searched: list[int] = []

    def search(index, vectors, *args, **kwargs):
        searched.append(len(vectors))
        return knn_graph.knn_search(index, vectors, *args, **kwargs)

    first, n = update_graph(None, index, ids, fp, vectors_of, "sig", 1, k=8, search=search)
    assert n == 300 and first.k == 8 and not np.isin(first.nbr, -1).any()
    assert not (first.nbr == first.ids[:, None]).any()
    # 3 images gone, 2 changed, 4 new
    gone, changed = ids[[5, 50, 150]], ids[[7, 70]]
    new_ids = np.array([1000, 1002, 1004, 1006])
    new_x = l2n(x[[10, 20, 30, 40]] + 0.05 * rng.normal(size=(4, 16)))
    for i, v in zip(new_ids, new_x):
        of[int(i)] = v
    for i in changed:
        of[int(i)] = l2n(rng.normal(size=(1, 16)))[0]
    ids2 = np.sort(np.concatenate([np.setdiff1d(ids, gone), new_ids]))
    fp2 = np.array([f"h{i}" + ("x" if i in changed else "") for i in ids2])
    index2 = flat_index(ids2, vectors_of(ids2))
    second, n2 = update_graph(first, index2, ids2, fp2, vectors_of, "sig", 2, k=8, search=search)
    assert n2 == 6 and searched[-1] == 6
    assert not np.isin(second.nbr, gone).any()
    fresh, _ = update_graph(None, index2, ids2, fp2, vectors_of, "sig", 2, k=8)
    for row in np.flatnonzero(np.isin(ids2, np.concatenate([new_ids, changed]))):
        np.testing.assert_array_equal(second.nbr[row], fresh.nbr[row])
    # every other list holds what a rebuild finds, less what it lost
    overlap = np.mean([np.isin(a[a >= 0], b).mean() for a, b in zip(second.nbr, fresh.nbr)])
    assert overlap > 0.98
    # each new image entered the list of its nearest old neighbour
    nearest = second.rows_of(second.nbr[second.rows_of(new_ids), 0])
    assert all(new in second.nbr[r] for new, r in zip(new_ids, nearest))
    # another signature (model, whitening): a rebuild
    _, n3 = update_graph(second, index2, ids2, fp2, vectors_of, "other", 3, k=8)
    assert n3 == len(ids2)


def test_a_killed_writer_never_leaves_a_torn_cache_file(tmp_path):
    target = tmp_path / "cache.npz"
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from indexer.knn_graph import write_npz_atomic\n"
        "p = Path(sys.argv[1]); i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    write_npz_atomic(p, a=np.full(1_000_000, i % 7, np.float32), n=np.array(i % 7))\n"
    )
    root = Path(__file__).resolve().parent.parent
    for delay in (0.6, 0.9, 1.3):
        proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=root)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not target.exists():
            continue
        with np.load(target) as z:
            a, n = z["a"], int(z["n"])
        assert a.size == 1_000_000 and np.all(a == n)


# --------------------------------------------------------------------------------------------- a collection


class TableEmbedder:
    """A stand-in network: each image's vector is row ``r`` of ``table``, ``r`` the red value of its top-left
    pixel (the images are drawn as solid colours)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = l2n(table)
        self.dim = self.table.shape[1]
        self.config = ModelConfig(image_size=32)

    def embed_batch(self, pixels: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        return self.table[np.asarray(pixels)[:, 0, 0, 0].astype(int)]


def table_collection(home: Path, folder: Path, table: np.ndarray, rows: range | list[int]) -> Collection:
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        Image.new("RGB", (40, 40), (r, 0, 0)).save(folder / f"v{r:03d}.png")
    fake = TableEmbedder(table)
    coll = Collection(home, runtime=FAST_RUNTIME, embedder_factory=lambda cfg, rt: fake)
    coll.configure(model=ModelConfig(image_size=32))
    return coll


def test_collection_search_by_id_follows_the_chain_with_diffusion_and_says_so(tmp_path):
    x = chain_and_distractors()
    coll = table_collection(tmp_path / "home", tmp_path / "photos", x, range(len(x)))
    coll.index_folder(tmp_path / "photos")
    start = next(h for h in coll.search([tmp_path / "photos" / "v000.png"], k=1)[0].hits)
    chain_names = {f"v{r:03d}.png" for r in range(1, 12)}
    plain = coll.search_ids([start.id], k=11)[0]
    assert plain.rerank == "auto: none (24 images, fewer than 100)"  # the default
    assert len({Path(h.path).name for h in plain.hits} & chain_names) < 6
    settings = RerankSettings(method="diffusion", graph_k=5, seeds=3)
    diffused = coll.search_ids([start.id], k=11, rerank=settings)[0]
    assert {Path(h.path).name for h in diffused.hits} == chain_names
    assert diffused.rerank.startswith("diffusion")
    # a query image from outside the collection is seeded by its neighbours alike
    outside = coll.search([tmp_path / "photos" / "v000.png"], k=12, rerank=settings)[0]
    assert {Path(h.path).name for h in outside.hits} == chain_names | {"v000.png"}
    # a method name takes the collection's parameters; the collection's default applies when none is given
    coll.configure(rerank=settings)
    assert coll.search_ids([start.id], k=11)[0].rerank == settings.describe()
    assert coll.search_ids([start.id], k=11, rerank="none")[0].rerank == "none"
    assert (tmp_path / "home" / GRAPH_FILE).exists()  # kept for the next process


def test_dba_cache_follows_the_collection_and_recomputes_only_what_changed(tmp_path):
    rng = np.random.default_rng(5)
    table = l2n(np.repeat(rng.normal(size=(6, 16)), 10, axis=0) + 0.3 * rng.normal(size=(60, 16)))
    home, photos = tmp_path / "home", tmp_path / "photos"
    coll = table_collection(home, photos, table, range(40))
    settings = RerankSettings(method="dba", dba_k=3, qe_k=0)
    coll.configure(rerank=settings)
    coll.index_folder(photos)
    first = DbaFile(home / DBA_FILE).load()
    assert first is not None and first.ids.size == 40 and first.version == coll._vector_version()
    np.testing.assert_allclose(np.linalg.norm(first.vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    hits = coll.search([photos / "v003.png"], k=5)[0]
    assert hits.rerank.startswith("dba") and hits.hits[0].path.endswith("v003.png")
    # the query's own image scores 1; the others, their augmented vector's cosine with the query
    pos = first.rows_of(np.array([h.id for h in hits.hits[1:]]))
    assert hits.hits[0].score == 1.0
    np.testing.assert_allclose(
        [h.score for h in hits.hits[1:]], first.vectors[pos].astype(np.float32) @ table[3], atol=2e-3
    )
    Image.new("RGB", (40, 40), (45, 0, 0)).save(photos / "v045.png")  # one new image
    coll.index_folder(photos)
    second = DbaFile(home / DBA_FILE).load()
    assert second is not None and second.ids.size == 41 and second.version == coll._vector_version()
    assert 1 <= coll._dba.last_recomputed < 20
    full, n = update_dba(None, coll.knn_graph(3), coll._vectors_of, settings)
    assert n == 41
    np.testing.assert_allclose(full.vectors.astype(np.float32), second.vectors.astype(np.float32), atol=2e-3)


def test_a_crash_between_writing_and_renaming_leaves_the_old_cache_usable(tmp_path, monkeypatch):
    x = chain_and_distractors()
    home, photos = tmp_path / "home", tmp_path / "photos"
    coll = table_collection(home, photos, x, range(20))
    coll.configure(rerank=RerankSettings(method="dba", dba_k=3))
    coll.index_folder(photos)
    before_graph = GraphFile(home / GRAPH_FILE).load()
    before_dba = DbaFile(home / DBA_FILE).load()
    assert before_graph is not None and before_dba is not None

    real_replace = os.replace

    def crash(src, dst):  # the process dies once the new graph is written, before it is renamed
        if Path(dst).name == GRAPH_FILE:
            raise SystemExit("killed before the rename")
        real_replace(src, dst)

    for r in range(20, 24):
        Image.new("RGB", (40, 40), (r, 0, 0)).save(photos / f"v{r:03d}.png")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SystemExit):
        coll.index_folder(photos)
    monkeypatch.undo()
    # the old files are whole and readable (stale: the database moved on), the temp file is left behind
    graph = GraphFile(home / GRAPH_FILE).load()
    assert graph is not None and np.array_equal(graph.ids, before_graph.ids)
    assert (home / (GRAPH_FILE + ".tmp")).exists()
    # a new process finds the collection searchable and brings the caches up to date
    again = Collection(home, runtime=FAST_RUNTIME, embedder_factory=lambda cfg, rt: TableEmbedder(x))
    report = again.doctor()
    assert any("older than the database" in p for p in report.problems)
    hits = again.search([photos / "v021.png"], k=12)[0]  # a new image, in the distractors' tight cluster
    assert hits.error is None and {Path(h.path).name for h in hits.hits} == {f"v{r:03d}.png" for r in range(12, 24)}
    assert GraphFile(home / GRAPH_FILE).load().ids.size == 24
    assert again.doctor().ok


def test_doctor_reports_a_corrupt_rerank_cache_and_repair_rebuilds_it(tmp_path):
    x = chain_and_distractors()
    home, photos = tmp_path / "home", tmp_path / "photos"
    coll = table_collection(home, photos, x, range(20))
    coll.configure(rerank=RerankSettings(method="dba", dba_k=3))
    coll.index_folder(photos)
    assert coll.doctor().ok
    (home / DBA_FILE).write_bytes(b"not a cache")
    report = coll.doctor()
    assert not report.ok and any(DBA_FILE in p and "unreadable" in p for p in report.problems)
    repaired = coll.doctor(repair=True)
    assert any(DBA_FILE in r for r in repaired.repaired)
    assert DbaFile(home / DBA_FILE).load() is not None and coll.doctor().ok


# --------------------------------------------------------------------------------------------- the CLI


def test_search_rerank_option_and_json_field(tmp_path, one_thread):
    photos = tmp_path / "photos"
    make_folder(photos, 10)
    home = str(tmp_path / "home")
    runner = CliRunner()
    out = runner.invoke(main, ["--home", home, "--device", "cpu", "index", str(photos), "--image-size", "64"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["--home", home, "index", str(photos), "--rerank", "diffusion"])
    assert out.exit_code == 0, out.output
    assert Collection(home, create=False).rerank_settings.method == "diffusion"
    query = str(photos / "img_0003.png")
    out = runner.invoke(main, ["--home", home, "search", query, "-k", "3", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data[0]["rerank"].startswith("diffusion") and data[0]["results"][0]["path"] == query
    out = runner.invoke(main, ["--home", home, "search", query, "-k", "3", "--json", "--rerank", "qe"])
    assert json.loads(out.output)[0]["rerank"].startswith("qe")
    out = runner.invoke(main, ["--home", home, "search", query, "--rerank", "magic"])
    assert out.exit_code == 2 and "magic" in out.output
