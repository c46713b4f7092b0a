"""``auto`` re-ranking: diffusion for collections whose k-NN graph is mostly reciprocal (views chaining round
objects), none for the others; the choice kept with the collection and reported with every search."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.engine import Collection
from indexer.knn_graph import GRAPH_FILE, update_graph
from indexer.reranking import AUTO_CHOICE_SETTING, graph_auto_choice, rerank_search, sampled_auto_choice
from retrieval.rerank import AutoChoice, RerankSettings, auto_choice, l2n, reciprocity
from tests.conftest import make_folder
from tests.test_rerank import exact_lists, flat_index, table_collection


def turntables(objects: int = 6, views: int = 36, dim: int = 32, seed: int = 0) -> np.ndarray:
    """``objects`` rings of ``views`` unit vectors each (an object turned round in even steps, a little noise):
    ``(objects * views, dim)``."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, views, endpoint=False)
    rings = []
    for _ in range(objects):
        a, b = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
        rings.append(np.cos(t)[:, None] * a + np.sin(t)[:, None] * b + 0.02 * rng.normal(size=(views, dim)))
    return l2n(np.vstack(rings))


def photo_like(n: int = 216, dim: int = 64, seed: int = 0) -> np.ndarray:
    """``(n, dim)`` unit vectors with a decaying spectrum, as image embeddings have (a few directions dominate,
    so a few images are everyone's neighbours)."""
    rng = np.random.default_rng(seed)
    return l2n(rng.normal(size=(n, dim)) / np.sqrt(np.arange(1, dim + 1)))


@pytest.mark.parametrize("seed", range(4))
def test_reciprocity_is_high_for_turntable_views_and_low_for_photo_like_vectors(seed):
    rings, _ = exact_lists(turntables(seed=seed), 8)
    photos, _ = exact_lists(photo_like(seed=seed), 8)
    assert reciprocity(rings, 5) > 0.85
    assert reciprocity(photos, 5) < 0.6
    settings = RerankSettings(method="auto", graph_k=5)
    assert auto_choice(rings, settings).method == "diffusion"
    assert auto_choice(photos, settings).method == "none"


def test_a_small_collection_gets_no_rerank_however_reciprocal():
    one_object, _ = exact_lists(turntables(objects=1), 8)  # 36 views: every link mutual, or nearly
    settings = RerankSettings(method="auto", graph_k=5)
    assert reciprocity(one_object, 5) > 0.85
    choice = auto_choice(one_object, settings)
    assert choice.method == "none" and "36 images, fewer than 100" in choice.apply(settings).describe()
    assert auto_choice(one_object, RerankSettings(method="auto", auto_min_images=30)).method == "diffusion"


def test_reciprocity_counts_mutual_links_only():
    # 0 <-> 1 mutual; 2 -> 0 one way; 3 has no neighbours
    nbr = np.array([[1], [0], [0], [-1]])
    assert reciprocity(nbr, 1) == pytest.approx(2 / 3)
    assert reciprocity(np.full((3, 2), -1), 2) == 0.0


def test_auto_choice_applies_as_its_method_and_says_why():
    settings = RerankSettings(method="auto", graph_k=5, auto_reciprocity=0.7)
    assert settings.graph_neighbours == 5
    assert settings.describe().startswith("auto (diffusion when >= 0.7")
    chosen = AutoChoice("diffusion", 0.84, 0.7, 5, 720, 100, version=3).apply(settings)
    assert chosen.method == "diffusion" and chosen.graph_k == 5
    assert chosen.describe() == f"auto: {RerankSettings(method='diffusion', graph_k=5).describe()} " + (
        "(mutual 5-NN reciprocity 0.840 >= 0.7)"
    )
    assert "chosen_by" not in chosen.to_dict()
    assert RerankSettings.from_dict(chosen.to_dict()).describe().startswith("diffusion")
    assert AutoChoice.from_dict(AutoChoice("none", 0.5, 0.7, 5, 720, 100, 3).to_dict()).fits(settings, 3)
    assert not AutoChoice("none", 0.5, 0.7, 5, 720, 100, 3).fits(settings, 4)  # made on older vectors
    with pytest.raises(ValueError, match="auto_reciprocity"):
        RerankSettings(method="auto", auto_reciprocity=1.5)


def graph_of(x: np.ndarray):
    ids = np.arange(len(x), dtype=np.int64) * 3 + 7  # ids are not positions
    index = flat_index(ids, x)
    vectors_of = lambda i: x[(np.asarray(i) - 7) // 3]  # noqa: E731
    graph, _ = update_graph(None, index, ids, np.zeros(len(x), np.int64), vectors_of, "t", 0, 8)
    return ids, index, vectors_of, graph


@pytest.mark.parametrize("make", [turntables, photo_like])
def test_a_sample_of_neighbour_lists_estimates_the_graphs_reciprocity(make):
    x = make(seed=3)
    ids, index, vectors_of, graph = graph_of(x)
    auto = RerankSettings(method="auto", graph_k=5)
    whole = graph_auto_choice(graph, auto)
    assert sampled_auto_choice(index, ids, vectors_of, auto, version=0) == whole  # every image sampled: exact
    for seed in range(3):
        part = sampled_auto_choice(index, ids, vectors_of, auto, sample=60, seed=seed)
        assert part.method == whole.method and abs(part.reciprocity - whole.reciprocity) < 0.08


@pytest.mark.parametrize("make, method", [(turntables, "diffusion"), (photo_like, "none")])
def test_rerank_search_resolves_auto_on_the_graph(make, method):
    x = make()
    ids, index, vectors_of, graph = graph_of(x)
    x = vectors_of(ids)
    auto = RerankSettings(method="auto", graph_k=5)
    assert graph_auto_choice(graph, auto).method == method
    got = rerank_search(index, x[:7], 20, auto, graph=lambda _k: graph, vectors_of=vectors_of)
    want = rerank_search(index, x[:7], 20, RerankSettings(method=method, graph_k=5), graph=lambda _k: graph)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


@pytest.mark.parametrize("make, method", [(turntables, "diffusion"), (photo_like, "none")])
def test_a_collection_with_auto_keeps_its_choice_and_reports_it(tmp_path, make, method):
    x = make()
    coll = table_collection(tmp_path / "home", tmp_path / "photos", x, range(len(x)))
    coll.configure(rerank=RerankSettings(method="auto"))
    coll.index_folder(tmp_path / "photos")
    with coll.session() as s:
        from indexer import db

        kept = AutoChoice.from_dict(db.get_setting(s, AUTO_CHOICE_SETTING))
    assert kept.method == method and kept == coll.auto_choice()
    # the graph is built only when the choice needs it (the choice itself comes from a sample of lists)
    assert (tmp_path / "home" / GRAPH_FILE).exists() == (method == "diffusion")
    hit = coll.search([tmp_path / "photos" / "v000.png"], k=1)[0]
    assert hit.rerank.startswith(f"auto: {method}") and f"reciprocity {kept.reciprocity:.3f}" in hit.rerank
    start = hit.hits[0].id
    auto = coll.search_ids([start], k=20)[0]
    same = coll.search_ids([start], k=20, rerank=method)[0]
    assert [h.id for h in auto.hits] == [h.id for h in same.hits]


def test_index_and_search_with_rerank_auto_on_the_command_line(tmp_path, one_thread):
    photos = tmp_path / "photos"
    make_folder(photos, 10)
    home = str(tmp_path / "home")
    runner = CliRunner()
    args = ["--home", home, "--device", "cpu", "index", str(photos), "--image-size", "64", "--rerank", "auto"]
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    assert Collection(home, create=False).rerank_settings.method == "auto"
    out = runner.invoke(main, ["--home", home, "search", str(photos / "img_0003.png"), "-k", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["rerank"].startswith("auto: ")


@pytest.fixture
def choices_made(monkeypatch) -> list[int]:
    """Grows by one each time a collection makes auto's choice on a sample of neighbour lists."""
    from indexer import engine

    made: list[int] = []
    real = engine.sampled_auto_choice

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "sampled_auto_choice", counting)
    return made


def test_a_choice_not_kept_is_made_once_per_process(tmp_path, choices_made):
    from indexer import db

    x = photo_like()
    coll = table_collection(tmp_path / "home", tmp_path / "photos", x, range(len(x)))
    coll.index_folder(tmp_path / "photos")  # the default: auto
    with coll.session() as s, s.begin():
        db.set_setting(s, AUTO_CHOICE_SETTING, None)  # as when the vectors changed without an index run
    made = choices_made
    made.clear()
    for _ in range(3):
        assert coll.search_ids([1], k=3)[0].rerank.startswith("auto: none")
    assert made == [1]


def test_the_choice_is_carried_over_small_changes_and_made_again_after_a_tenth_changed(tmp_path, choices_made):
    x = photo_like()
    folder = tmp_path / "photos"
    coll = table_collection(tmp_path / "home", folder, x, range(180))
    made = choices_made
    coll.index_folder(folder)
    assert len(made) == 1 and coll.auto_choice().images == 180
    coll.index_folder(folder)  # nothing changed
    assert len(made) == 1
    table_collection(tmp_path / "home", folder, x, range(180, 190))  # 10 more images: under a tenth of 180
    coll.index_folder(folder)
    choice = coll.auto_choice()
    assert len(made) == 1 and choice.changes == 10 and choice.images == 180
    assert coll.search_ids([1], k=3)[0].rerank.startswith("auto: none")  # kept for the new vectors, not remade
    assert len(made) == 1
    table_collection(tmp_path / "home", folder, x, range(190, 200))  # 20 changes since: more than a tenth
    coll.index_folder(folder)
    choice = coll.auto_choice()
    assert len(made) == 2 and choice.changes == 0 and choice.images == 200
