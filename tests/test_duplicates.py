"""Duplicate finding: grouping on synthetic vectors (exact tier, near tier, chaining guard, keeper choice,
reference files), the threshold for a target precision, calibration and the CLI on a small real collection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from indexer.cli import main
from indexer.copy_edits import EDITS, apply_edit, edited_copy
from indexer.duplicates import (
    CALIBRATION_SETTING,
    CHECKS_FILE,
    Calibration,
    DuplicateFinder,
    FileTable,
    _similar_groups,
    calibrate_scores,
    connected_components,
    group_exact,
    group_vectors,
    threshold_for_precision,
)
from indexer.engine import Collection
from indexer.vector_index import IndexConfig, VectorIndex
from retrieval.model import Embedder

from .conftest import FAST_RUNTIME, SMALL_MODEL, draw_image, make_folder


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, n_orig: int, copies: int, d: int = 32, noise: float = 0.1):
    """``n_orig`` random unit vectors, each with ``copies`` noisy copies -> vectors, true group of each row."""
    base = unit(rng.normal(size=(n_orig, d)))
    rows, labels = [base], [np.arange(n_orig)]
    for _ in range(copies):
        rows.append(unit(base + noise * rng.normal(size=base.shape) / np.sqrt(d)))
        labels.append(np.arange(n_orig))
    return np.vstack(rows), np.concatenate(labels)


def as_sets(groups) -> set[frozenset[int]]:
    return {frozenset(int(m) for m in g[0]) for g in groups}


# --------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_connected_components_match_a_plain_union_find(seed):
    rng = np.random.default_rng(seed)
    n = 300
    a, b = rng.integers(0, n, 250), rng.integers(0, n, 250)
    labels = connected_components(n, a, b)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for x, y in zip(a, b):
        parent[find(int(x))] = find(int(y))
    for x in range(n):
        for y in range(x + 1, n, 7):
            assert (labels[x] == labels[y]) == (find(x) == find(y))


@pytest.mark.parametrize("seed", [0, 1])
def test_pairs_checked_on_threads_give_the_groups_of_one_thread(seed):
    """Enough candidate pairs for the check's threads to take slices of them (edges and the guard), with a check
    that refuses some pairs: the same groups as one pair at a time, and every pair asked once per place."""
    from indexer.duplicates import CHECK_SLICE

    rng = np.random.default_rng(seed)
    vectors, _ = clustered(rng, 60, 6, noise=0.3)  # 360 vectors in groups of 6: 900+ candidate pairs

    def refuse_some(x: int, y: int) -> bool:
        return ((x * 31) ^ (y * 17)) % 5 != 0

    one = group_vectors(vectors, threshold=0.7, verify=refuse_some)
    threads = group_vectors(vectors, threshold=0.7, verify=refuse_some, workers=3)
    assert [m.tolist() for m, _, _ in one] == [m.tolist() for m, _, _ in threads]
    assert [p for _, _, p in one] == [p for _, _, p in threads]
    plain = group_vectors(vectors, threshold=0.7)
    assert sum(m.size for m, _, _ in plain) > sum(m.size for m, _, _ in one) >= 2 * CHECK_SLICE  # it refused some


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_near_copies_are_grouped_and_different_pictures_are_not(seed):
    rng = np.random.default_rng(seed)
    vectors, truth = clustered(rng, 200, 2, noise=0.3)
    groups = group_vectors(vectors, threshold=0.8)
    found = as_sets(groups)
    expected = {frozenset(np.flatnonzero(truth == t).tolist()) for t in range(200)}
    assert found == expected
    for members, scores, pairs in groups:
        assert scores[0] == pytest.approx(1.0) and np.all(scores >= 0.8)
        assert all(0 <= i < j < len(members) and s >= 0.8 for i, j, s in pairs)


def test_exact_copies_are_grouped_by_hash_even_with_unrelated_vectors():
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(6, 16)))
    table = FileTable.plain(6)
    table.hash_code[:] = [5, -1, 5, 7, -1, 7]
    groups = group_vectors(vectors, threshold=0.99, files=table)
    assert as_sets(groups) == {frozenset({0, 2}), frozenset({3, 5})}
    assert all(np.all(g[1] == 1.0) for g in groups)
    a, b = group_exact(table.hash_code)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 2), (3, 5)]


def test_chaining_guard_keeps_a_chain_of_barely_similar_pairs_apart():
    # points on a circle 25 degrees apart: neighbours score cos 25 = 0.906, two apart cos 50 = 0.64
    angles = np.radians(np.arange(8) * 25.0)
    vectors = np.zeros((8, 4), np.float32)
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    groups = group_vectors(vectors, threshold=0.9)
    # without the guard the graph is one component of 8
    assert len(set(connected_components(8, np.arange(7), np.arange(1, 8)).tolist())) == 1
    for members, _scores, _ in groups:
        keeper = vectors[members[0]]
        assert np.all(vectors[members] @ keeper >= 0.9 - 1e-6)
        assert len(members) <= 3
    assert sum(len(g[0]) for g in groups) >= 6  # most points still find a partner


def test_keeper_is_the_largest_picture_then_the_oldest_file():
    v = unit(np.array([[1, 0.01, 0], [1, 0, 0.01], [1, 0.005, 0.005]], np.float32))
    table = FileTable.plain(3)
    table.pixels[:] = [100, 400, 400]
    table.mtime_ns[:] = [1, 50, 20]
    ((members, scores, _),) = group_vectors(v, threshold=0.9, files=table)
    assert members[0] == 2  # 400 px like 1, but older
    table.reference[:] = [True, False, False]
    ((members, _, _),) = group_vectors(v, threshold=0.9, files=table)
    assert members[0] == 0  # a reference file is always the keeper


def test_threshold_for_precision_is_the_lowest_safe_one():
    pos = np.array([0.99, 0.97, 0.95, 0.93, 0.90, 0.80])
    neg = np.array([0.50, 0.60, 0.91, 0.70, 0.40, 0.30])
    t, recall, precision = threshold_for_precision(pos, neg, 0.99)
    assert t == pytest.approx(0.93) and recall == pytest.approx(4 / 6) and precision == 1.0
    t, recall, _ = threshold_for_precision(pos, neg, 0.8)
    assert t == pytest.approx(0.80) and recall == 1.0  # 6 / 7 >= 0.8
    t, recall, _ = threshold_for_precision(np.array([0.5]), np.array([0.9]), 0.99)
    assert recall == 0.0 and t > 0.9


def rotated(v: np.ndarray, towards: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector at cosine ``cos`` from unit ``v``, in the plane of ``v`` and ``towards``."""
    w = towards - (towards @ v) * v
    w /= np.linalg.norm(w)
    return (cos * v + np.sqrt(1 - cos**2) * w).astype(np.float32)


def test_calibration_negatives_leave_out_the_original_and_its_copies_only():
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=(4, 16)))
    o = base[0]
    collection = np.stack([o, rotated(o, base[1], 0.99), rotated(o, base[2], 0.93), base[3]])
    # rows: the original, a resize of it already in the collection (0.99), a near-identical shot (0.93), other
    copies = np.stack([rotated(o, base[3], c) for c in (0.96, 0.95, 0.94)])
    index = VectorIndex.build(np.arange(4), collection, IndexConfig(device="cpu"))
    originals = np.zeros(3, np.int64)
    pos, neg = calibrate_scores(copies, originals, collection, index)
    assert np.allclose(pos, [0.96, 0.95, 0.94], atol=1e-5)
    # median copy score 0.95: the shot at 0.93 to the original is "another image", the 0.99 resize is not
    expected = copies @ collection[2]
    assert np.allclose(neg, np.maximum(expected, copies @ collection[3]), atol=1e-5)
    _, strict = calibrate_scores(copies, originals, collection, index, same_picture=0.995)
    assert np.all(strict >= copies @ collection[1] - 1e-5)  # now the 0.99 copy counts as a mistake too


def test_edited_copies_are_seeded_and_every_edit_works():
    img = draw_image(3, (120, 90))
    for name in EDITS:
        out = apply_edit(img, name, np.random.default_rng(0), 2)
        assert out.mode == "RGB" and min(out.size) >= 8
    a = edited_copy(img, np.random.default_rng(5), strength=1)
    b = edited_copy(img, np.random.default_rng(5), strength=1)
    assert a.edits == b.edits and np.array_equal(np.asarray(a.image), np.asarray(b.image))


# --------------------------------------------------------------------------------------------- a real collection

_EMBEDDER: list[Embedder] = []


def small_collection(home: Path, db_url: str | None = None) -> Collection:
    if not _EMBEDDER:
        _EMBEDDER.append(Embedder(SMALL_MODEL, FAST_RUNTIME))
    coll = Collection(home, db_url=db_url, runtime=FAST_RUNTIME, embedder_factory=lambda cfg, rt: _EMBEDDER[0])
    coll.configure(model=SMALL_MODEL)
    return coll


@pytest.fixture
def dup_folder(tmp_path: Path) -> Path:
    """20 drawn pictures, a byte-identical copy of one, and light edited copies (a resize, a re-encode) of two."""
    folder = tmp_path / "photos"
    make_folder(folder, 20)
    shutil.copy(folder / "img_0007.png", folder / "exact_7.png")
    draw_image(3).resize((48, 40)).save(folder / "small_3.png")
    draw_image(5).save(folder / "jpeg_5.jpg", quality=80)
    return folder


def test_calibration_is_stored_and_groups_the_copies(tmp_path, dup_folder, one_thread, db_url):
    coll = small_collection(tmp_path / "home", db_url)
    coll.index_folder(dup_folder)
    finder = DuplicateFinder(coll)
    cal = finder.calibrate(samples=12, copies_per_image=3, seed=0)
    assert -1.0 <= cal.threshold <= 1.0 and 0.0 <= cal.expected_recall <= 1.0
    assert cal.copies == 36 and cal.originals == 12 and set(cal.recall_by_strength) == {"0", "1", "2"}
    assert cal.threshold_strict is not None and 0.0 <= cal.expected_recall_strict <= 1.0
    assert cal.verify_min_inliers >= 8 and cal.verify_candidate_threshold <= cal.threshold + 1e-6
    assert 0.0 <= cal.verify_expected_recall <= 1.0
    # recall by the copies' size: every copy in one bin, the bins' recalls averaging to the whole
    by_side = cal.verify_recall_by_side
    assert set(by_side) <= {"<100", "100-299", ">=300"} and sum(b["copies"] for b in by_side.values()) == 36
    mean = sum(b["recall"] * b["copies"] for b in by_side.values()) / 36
    assert mean == pytest.approx(cal.verify_expected_recall, abs=2e-3)
    # copies are made from the pictures at their own size (96 x 80 here), never enlarged first: none reaches 300 px
    # (the strongest upscale edit is 2.4x), most stay under 100
    assert ">=300" not in by_side and by_side["<100"]["copies"] >= 18

    # the calibrated run checks candidates geometrically; byte-identical copies need no check
    verified = finder.find()
    assert verified.verification == {
        "candidate_threshold": cal.verify_candidate_threshold,
        "min_inliers": cal.verify_min_inliers,
    }
    assert {"img_0007.png", "exact_7.png"} in [{Path(f.path).name for f in g.files} for g in verified.groups]
    assert finder.stored_calibration() == cal
    with coll.session() as s:
        from indexer import db

        assert db.get_setting(s, CALIBRATION_SETTING)["threshold"] == cal.threshold
        # a calibration made for another verification rule (another inlier scale) is not used
        older = dict(db.get_setting(s, CALIBRATION_SETTING), verify_rule="ORB 1000, similarity RANSAC 5px")
        db.set_setting(s, CALIBRATION_SETTING, older)
        s.commit()
    assert finder.stored_calibration() is None
    with coll.session() as s:
        db.set_setting(s, CALIBRATION_SETTING, cal.to_dict())
        s.commit()

    # at a threshold the copies pass (the small test model scores a 2x smaller copy ~0.92), they are grouped
    # with their originals
    report = finder.find(threshold=0.85)
    by_name = [{Path(f.path).name for f in g.files} for g in report.groups]
    assert {"img_0007.png", "exact_7.png"} in by_name
    assert any({"img_0003.png", "small_3.png"} <= names for names in by_name)
    assert any({"img_0005.png", "jpeg_5.jpg"} <= names for names in by_name)
    exact = next(g for g in report.groups if "exact_7.png" in {Path(f.path).name for f in g.files})
    assert exact.tier == "exact" and exact.keeper.keep and not exact.files[1].keep and exact.files[1].exact
    keeper_3 = next(g for g in report.groups if "small_3.png" in {Path(f.path).name for f in g.files}).keeper
    assert Path(keeper_3.path).name == "img_0003.png"  # the larger picture

    # exact copies need no network: a collection whose embedder fails still finds them
    def broken(cfg, rt):
        raise RuntimeError("no network here")

    offline = Collection(tmp_path / "home", db_url=db_url, runtime=FAST_RUNTIME, embedder_factory=broken)
    exact_only = DuplicateFinder(offline).find(exact_only=True)
    assert [{Path(f.path).name for f in g.files} for g in exact_only.groups] == [{"img_0007.png", "exact_7.png"}]

    # --of: a new file, indexed nowhere, is found as a copy; a different picture is not
    probe = tmp_path / "probe.png"
    draw_image(5).resize((90, 75)).save(probe)
    t, matches = finder.of(probe, threshold=0.85)
    assert {Path(m.path).name for m in matches} >= {"img_0005.png"}
    t, matches = finder.of(dup_folder / "img_0007.png", threshold=0.999)
    assert [Path(m.path).name for m in matches] == ["exact_7.png"] and matches[0].exact

    # a file deleted since indexing is left out and named; the other groups stay
    (dup_folder / "exact_7.png").unlink()
    after = finder.find(threshold=0.85)
    assert after.missing == [str((dup_folder / "exact_7.png").resolve())]
    names_after = [{Path(f.path).name for f in g.files} for g in after.groups]
    assert not any("exact_7.png" in n for n in names_after)
    assert any({"img_0005.png", "jpeg_5.jpg"} <= n for n in names_after)


def test_reference_files_are_kept_and_folder_limits_the_search(tmp_path, one_thread):
    ref, new = tmp_path / "ref", tmp_path / "new"
    make_folder(ref, 6)
    new.mkdir()
    for i in (1, 4):
        shutil.copy(ref / f"img_{i:04d}.png", new / f"copy_{i}.png")
    draw_image(50).resize((192, 160)).save(new / "big.png")
    draw_image(50).save(ref / "small_50.png")  # the reference copy is smaller, and still the keeper
    coll = small_collection(tmp_path / "home")
    coll.index_folder(ref)
    coll.index_folder(new)
    finder = DuplicateFinder(coll)
    report = finder.find(folder=new, reference=ref, threshold=0.97)
    assert report.groups
    for g in report.groups:
        assert g.keeper.reference and Path(g.keeper.path).parent == ref
        assert all(f.keep == f.reference for f in g.files)
    names = {Path(f.path).name for g in report.groups for f in g.files if not f.keep}
    assert names == {"copy_1.png", "copy_4.png", "big.png"}


def test_cli_json_shape(tmp_path, dup_folder, one_thread):
    home = tmp_path / "home"
    small_collection(home).index_folder(dup_folder)
    runner = CliRunner()
    result = runner.invoke(main, ["--home", str(home), "duplicates", "--threshold", "0.97", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["threshold"] == 0.97 and "calibration" in data
    assert data["groups"]
    for g in data["groups"]:
        assert g["tier"] in ("exact", "near")
        assert [f["keep"] for f in g["files"]].count(True) == 1 and g["files"][0]["keep"]
        assert all(set(f) >= {"path", "score", "keep"} for f in g["files"])
    result = runner.invoke(main, ["--home", str(home), "duplicates", "--exact", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["groups"]) == 1
    # a dry run says what it would do and changes nothing
    before = sorted(p.name for p in dup_folder.iterdir())
    result = runner.invoke(main, ["--home", str(home), "duplicates", "--exact", "--move-to", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "would move" in result.output and "dry run" in result.output
    assert sorted(p.name for p in dup_folder.iterdir()) == before and not (tmp_path / "d").exists()
    result = runner.invoke(
        main, ["--home", str(home), "duplicates", "--exact", "--move-to", str(tmp_path / "d"), "--yes"]
    )
    assert result.exit_code == 0, result.output
    assert not (dup_folder / "exact_7.png").exists()
    result = runner.invoke(main, ["--home", str(home), "duplicates", "--undo"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dup_folder.iterdir()) == before


def test_a_second_run_checks_only_new_and_changed_images(tmp_path, dup_folder, one_thread, monkeypatch, db_url):
    from indexer import duplicates, knn_graph

    coll = small_collection(tmp_path / "home", db_url)
    coll.index_folder(dup_folder)
    queried: list[int] = []
    real = knn_graph.knn_search  # the k-NN graph shared with re-ranking searches through it

    def counting(index, vectors, *args, **kwargs):
        queried.append(len(vectors))
        return real(index, vectors, *args, **kwargs)

    monkeypatch.setattr(knn_graph, "knn_search", counting)
    finder = DuplicateFinder(coll)
    first = finder.find(threshold=0.85)
    assert queried == [first.images]
    draw_image(11).save(dup_folder / "jpeg_11.jpg", quality=85)  # a new copy
    (dup_folder / "small_3.png").unlink()  # a copy gone
    draw_image(12).save(dup_folder / "img_0012.png")  # rewritten: same picture, new file
    coll.index_folder(dup_folder)
    second = finder.find(threshold=0.85)
    assert queried[1] <= 2  # the new file, and the rewritten one if its bytes changed
    names = [{Path(f.path).name for f in g.files} for g in second.groups]
    assert any({"img_0011.png", "jpeg_11.jpg"} <= n for n in names)
    assert not any("small_3.png" in n for n in names)
    # the same groups as a run from scratch
    (coll.home / duplicates.GRAPH_FILE).unlink()
    fresh = finder.find(threshold=0.85)
    assert queried[2] == fresh.images
    assert sorted(sorted(f.path for f in g.files) for g in fresh.groups) == sorted(
        sorted(f.path for f in g.files) for g in second.groups
    )


# --------------------------------------------------------------------------------------------- the similar tier


def test_similar_tier_takes_pairs_that_fail_the_check_and_copy_groups_through_their_keeper():
    # 0 and 1 copies of one picture (they pass the check); 2 alike to both but not a copy; 3 alike to nothing;
    # 4 and 5 copies of another picture, 5 alike to 2 by its vectors only
    v = unit(
        np.array(
            [[1, 0.02, 0, 0], [1, 0, 0.02, 0], [1, 0.2, 0.2, 0], [0, 0, 0, 1], [0.2, 1, 0, 0], [0.35, 1, 0, 0]],
            np.float32,
        )
    )
    copies = {(0, 1), (4, 5)}
    table = FileTable.plain(6)
    table.pixels[:] = [500, 100, 100, 100, 500, 100]

    def check(a: int, b: int) -> bool:
        return (min(a, b), max(a, b)) in copies

    n = len(v)
    a, b = np.triu_indices(n, 1)
    edges = (a, b, np.einsum("ij,ij->i", v[a], v[b]))
    copy_groups = group_vectors(v, 0.9, table, edges=edges, verify=check)
    assert as_sets(copy_groups) == {frozenset({0, 1}), frozenset({4, 5})}
    similar = _similar_groups(v, edges, 0.9, copy_groups, check, table)
    assert as_sets(similar) == {frozenset({0, 2})}  # 1 is with 0 already; 2 ~ 5 is below 0.9 via 5's keeper 4
    members, scores, _ = similar[0]
    assert members[0] == 0 and scores[1] == pytest.approx(float(v[0] @ v[2]))
    # without the check failing nothing is similar
    assert _similar_groups(v, edges, 0.9, copy_groups, lambda a, b: True, table) == []


def store_calibration(finder: DuplicateFinder, threshold: float, candidate: float, min_inliers: int) -> Calibration:
    """A calibration as if made on the collection (thresholds chosen by the test), stored."""
    from indexer import db
    from indexer.verify import VerifySettings

    cal = Calibration(
        threshold=threshold,
        target_precision=0.99,
        expected_recall=0.9,
        expected_precision=0.99,
        originals=3,
        copies=9,
        seed=0,
        model=finder._model_description(),
        verify_candidate_threshold=candidate,
        verify_min_inliers=min_inliers,
        verify_expected_precision=0.99,
        verify_expected_recall=0.9,
        verify_rule=VerifySettings().describe(),
    )
    with finder.coll.session() as s, s.begin():
        db.set_setting(s, CALIBRATION_SETTING, cal.to_dict())
    return cal


def test_similar_tier_is_listed_apart_and_never_acted_on(tmp_path, one_thread):
    from .test_verify import textured

    folder = tmp_path / "photos"
    folder.mkdir()
    textured(1).save(folder / "a.png")
    textured(1).save(folder / "a_copy.jpg", quality=90)
    # the same scene shot again: the same shapes, other fine detail (another texture)
    other = np.asarray(textured(2)).astype(np.int16) - np.asarray(draw_image(2, (240, 180))).astype(np.int16) // 2
    shot = np.asarray(draw_image(1, (240, 180))).astype(np.int16) // 2 + other
    Image.fromarray(np.clip(shot, 0, 255).astype(np.uint8)).save(folder / "b.png")
    coll = small_collection(tmp_path / "home")
    coll.index_folder(folder)
    finder = DuplicateFinder(coll)
    ids, vectors = coll.vectors()
    paths = finder._rows(ids).paths
    pos = {Path(p).name: i for i, p in enumerate(paths)}
    cos_ab = float(vectors[pos["a.png"]] @ vectors[pos["b.png"]])
    cal = store_calibration(finder, cos_ab - 1e-3, min(0.5, cos_ab - 0.01), 30)

    plain = finder.find()
    assert plain.similar == [] and plain.similar_threshold is None
    report = finder.find(similar=True)
    copy_sets = [{Path(f.path).name for f in g.files} for g in report.groups]
    assert copy_sets == [{"a.png", "a_copy.jpg"}]
    assert report.similar_threshold == pytest.approx(cal.threshold)
    assert [{Path(f.path).name for f in g.files} for g in report.similar] == [{"a.png", "b.png"}]
    g = report.similar[0]
    assert g.tier == "similar" and all(f.keep for f in g.files)

    runner = CliRunner()
    home = ["--home", str(tmp_path / "home"), "duplicates"]
    result = runner.invoke(main, [*home, "--similar", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [gr["tier"] for gr in data["groups"]] == ["near", "similar"]
    assert all(f["keep"] for f in data["groups"][1]["files"])
    result = runner.invoke(main, [*home, "--similar", "--move-to", str(tmp_path / "d"), "--yes"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png"]  # the copy moved, the burst stayed
    result = runner.invoke(main, [*home, "--similar", "--no-verify"])
    assert result.exit_code != 0 and "geometric check" in result.output


def test_a_second_run_checks_no_pair_twice(tmp_path, dup_folder, one_thread, monkeypatch):
    from indexer.verify import Verifier

    coll = small_collection(tmp_path / "home")
    coll.index_folder(dup_folder)
    finder = DuplicateFinder(coll)
    store_calibration(finder, 0.95, 0.8, 30)
    checked: list[tuple[str, str]] = []
    real = Verifier.inliers

    def counting(self, a, b):
        checked.append((a, b))
        return real(self, a, b)

    monkeypatch.setattr(Verifier, "inliers", counting)
    first = finder.find()
    assert checked and (coll.home / CHECKS_FILE).exists()
    n_first = len(checked)
    second = DuplicateFinder(coll).find()  # a new run: the counts come from the home
    assert len(checked) == n_first
    assert [[f.path for f in g.files] for g in second.groups] == [[f.path for f in g.files] for g in first.groups]
    draw_image(9).save(dup_folder / "jpeg_9.jpg", quality=85)  # a new copy: only its pairs are checked
    coll.index_folder(dup_folder)
    DuplicateFinder(coll).find()
    new = checked[n_first:]
    assert new and all(str((dup_folder / "jpeg_9.jpg").resolve()) in pair for pair in new)


def test_the_cli_says_when_small_copies_are_found_less_often(capsys):
    from indexer.cli_duplicates import _echo_small_copies

    cal = Calibration(
        threshold=0.9,
        target_precision=0.99,
        expected_recall=0.5,
        expected_precision=0.99,
        originals=10,
        copies=60,
        seed=0,
        model="m",
        verify_expected_recall=0.95,
        verify_recall_by_side={"<100": {"copies": 12, "recall": 0.75}, "100-299": {"copies": 48, "recall": 1.0}},
    )
    _echo_small_copies(cal)
    out = capsys.readouterr().out
    assert "copies <100 px on their longest side: recall 0.750 (of 12)" in out and "100-299" not in out
    # an older stored calibration has no sizes: nothing said
    old = Calibration.from_dict({k: v for k, v in cal.to_dict().items() if k != "verify_recall_by_side"})
    _echo_small_copies(old)
    assert capsys.readouterr().out == ""
