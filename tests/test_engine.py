"""The engine end to end on small synthetic folders, with a real (random-weight, small) network."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.engine import Collection, LookalikeError, ModelMismatchError, WhiteningSettings
from indexer.errors import Interrupted
from retrieval.config import ModelConfig
from retrieval.model import Embedder

from .conftest import FAST_RUNTIME, SMALL_MODEL, draw_image, make_folder

_EMBEDDERS: dict[ModelConfig, Embedder] = {}


def shared_embedder(config: ModelConfig) -> Embedder:
    """Build each model once for the whole module: the tests are about the engine, not model loading."""
    if config not in _EMBEDDERS:
        _EMBEDDERS[config] = Embedder(config, FAST_RUNTIME)
    return _EMBEDDERS[config]


class CountingEmbedder:
    """A real embedder that counts the images it embeds, and can simulate an interruption."""

    def __init__(self, config, runtime, counter: list[int], fail_after: int | None = None):
        self.inner = shared_embedder(config)
        self.config, self.dim = config, self.inner.dim
        self.counter = counter
        self.fail_after = fail_after

    def embed_batch(self, pixels, mask=None):
        if self.fail_after is not None and self.counter[0] + len(pixels) > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.counter[0] += len(pixels)
        return self.inner.embed_batch(pixels, mask)

    def feature_map(self, pixels):
        return self.inner.feature_map(pixels)


def open_collection(
    home: Path,
    counter: list[int] | None = None,
    fail_after: int | None = None,
    model: ModelConfig = SMALL_MODEL,
    commit_every: int = 4,
    db_url: str | None = None,
) -> Collection:
    counter = counter if counter is not None else [0]
    coll = Collection(
        home,
        db_url=db_url,
        runtime=FAST_RUNTIME,
        commit_every=commit_every,
        embedder_factory=lambda cfg, rt: CountingEmbedder(cfg, rt, counter, fail_after),
    )
    coll.configure(model=model)
    return coll


@pytest.fixture
def open_db(db_url):
    """:func:`open_collection` on the test's database: a test taking it runs on SQLite and on PostgreSQL."""
    return functools.partial(open_collection, db_url=db_url)


def test_index_then_search_finds_the_query_image_first(tmp_path, image_folder, open_db):
    coll = open_db(tmp_path / "home")
    report = coll.index_folder(image_folder)
    assert (report.scanned, report.new, report.embedded, report.skipped) == (16, 16, 16, [])
    assert report.total_indexed == 16 and report.index_kind == "flat"
    query = image_folder / "img_0003.png"
    [result] = coll.search([query], k=5)
    assert result.error is None and len(result.hits) == 5
    assert result.hits[0].path == str(query.resolve())
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-4)
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)


def test_search_results_match_brute_force_over_stored_vectors(tmp_path, image_folder, open_db):
    coll = open_db(tmp_path / "home")
    coll.index_folder(image_folder)
    query = tmp_path / "q.png"
    draw_image(999).save(query)
    [res] = coll.search([query], k=16)
    _, qvec, _ = next(coll.embed_paths([str(query)]))
    ids, vecs = coll.vectors()
    expected = ids[np.argsort(-(vecs @ qvec))]
    assert [h.id for h in res.hits] == list(expected)


def test_threshold_drops_weak_results(tmp_path, image_folder):
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    [res] = coll.search([image_folder / "img_0001.png"], k=16, threshold=0.999)
    assert [h.path for h in res.hits] == [str((image_folder / "img_0001.png").resolve())]


def test_reindexing_an_unchanged_folder_embeds_nothing_and_loads_no_model(tmp_path, image_folder, open_db, db_url):
    coll = open_db(tmp_path / "home")
    coll.index_folder(image_folder)
    calls = []
    again = Collection(
        tmp_path / "home", db_url=db_url, runtime=FAST_RUNTIME, embedder_factory=lambda c, r: calls.append(1)
    )
    report = again.index_folder(image_folder)
    assert report.embedded == 0 and report.unchanged == 16 and calls == []


def test_changed_file_is_reembedded_and_deleted_file_is_dropped(tmp_path, image_folder, open_db):
    counter = [0]
    coll = open_db(tmp_path / "home", counter)
    coll.index_folder(image_folder)
    changed = image_folder / "img_0002.png"
    draw_image(555).save(changed)
    os.utime(changed, ns=(1, 1))
    (image_folder / "img_0005.png").unlink()
    report = open_db(tmp_path / "home", counter).index_folder(image_folder)
    assert (report.changed, report.removed, report.embedded) == (1, 1, 1)
    assert counter[0] == 17
    coll2 = open_db(tmp_path / "home")
    assert coll2.stats().indexed == 15
    [res] = coll2.search([changed], k=20)
    paths = [h.path for h in res.hits]
    assert str((image_folder / "img_0005.png").resolve()) not in paths
    assert res.hits[0].path == str(changed.resolve()) and res.hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_touched_but_identical_file_is_not_reembedded(tmp_path, image_folder, open_db):
    counter = [0]
    open_db(tmp_path / "home", counter).index_folder(image_folder)
    os.utime(image_folder / "img_0001.png", ns=(10**18, 10**18))
    report = open_db(tmp_path / "home", counter).index_folder(image_folder)
    assert report.embedded == 0 and counter[0] == 16


def test_moved_file_keeps_its_id_and_vector_without_embedding(tmp_path, image_folder, open_db):
    counter = [0]
    coll = open_db(tmp_path / "home", counter)
    coll.index_folder(image_folder)
    [before] = coll.search([image_folder / "img_0007.png"], k=1)
    (image_folder / "moved").mkdir()
    target = image_folder / "moved" / "renamed.png"
    shutil.move(image_folder / "img_0007.png", target)
    report = open_db(tmp_path / "home", counter).index_folder(image_folder)
    assert (report.moved, report.new, report.removed, report.embedded) == (1, 0, 0, 0)
    [after] = open_db(tmp_path / "home").search([target], k=1)
    assert after.hits[0].id == before.hits[0].id and after.hits[0].path == str(target.resolve())


def test_bad_files_are_skipped_recorded_and_the_rest_indexed(tmp_path, image_folder, open_db):
    (image_folder / "empty.jpg").write_bytes(b"")
    (image_folder / "text.png").write_text("not an image")
    good = (image_folder / "img_0000.png").read_bytes()
    (image_folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (image_folder / "readme.txt").write_text("ignored")
    coll = open_db(tmp_path / "home")
    report = coll.index_folder(image_folder)
    assert report.embedded == 16 and report.ignored == 1
    reasons = dict((Path(p).name, r) for p, r in report.skipped)
    assert set(reasons) == {"empty.jpg", "text.png", "truncated.png"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["text.png"]
    st = coll.stats()
    assert (st.indexed, st.errors) == (16, 3)
    assert {Path(p).name for p, _ in coll.errors()} == set(reasons)
    # Unchanged bad files are not retried on the next run, but they are counted.
    again = open_db(tmp_path / "home").index_folder(image_folder)
    assert again.skipped == [] and again.earlier_errors == 3


def test_interrupted_run_resumes_without_embedding_anything_twice(tmp_path, open_db):
    folder = tmp_path / "photos"
    make_folder(folder, 30)
    counter = [0]
    with pytest.raises(Interrupted, match="interrupted: 8 of 30 files done and kept; run the same command"):
        open_db(tmp_path / "home", counter, fail_after=12).index_folder(folder)
    committed = open_db(tmp_path / "home").stats()
    assert committed.indexed == 8 and committed.pending == 22  # every image embedded before the interruption
    first = counter[0]
    report = open_db(tmp_path / "home", counter).index_folder(folder)
    assert report.resumed == 22 and report.embedded == 22
    assert counter[0] - first == 22
    coll = open_db(tmp_path / "home")
    assert coll.stats().indexed == 30 and coll.doctor().ok


def test_a_different_model_is_refused_unless_reembedding(tmp_path, image_folder, open_db):
    coll = open_db(tmp_path / "home")
    coll.index_folder(image_folder)
    other = ModelConfig(image_size=64, pooling="mac")
    with pytest.raises(ModelMismatchError, match="--reembed"):
        coll.configure(model=other)
    counter = [0]
    coll2 = open_db(tmp_path / "home", counter, model=SMALL_MODEL)
    coll2.configure(model=other, reembed=True)
    report = coll2.index_folder(image_folder)
    assert report.embedded == 16 and coll2.model_config == other


def test_whitening_is_learned_from_the_collection_and_applied_to_queries(tmp_path, open_db):
    folder = tmp_path / "photos"
    make_folder(folder, 40)
    coll = open_db(tmp_path / "home")
    coll.configure(whitening=WhiteningSettings(enabled=True, dim=16))
    report = coll.index_folder(folder)
    st = coll.stats()
    assert st.whitening == "PCA 1280 -> 16" and st.dim == 16 and report.total_indexed == 40
    [res] = coll.search([folder / "img_0004.png"], k=3)
    assert res.hits[0].path.endswith("img_0004.png") and res.hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_remove_forgets_files_and_folders(tmp_path, image_folder, open_db):
    coll = open_db(tmp_path / "home")
    coll.index_folder(image_folder)
    assert coll.remove(image_folder / "sub") == 4
    assert coll.remove(image_folder / "img_0000.png") == 1
    assert coll.stats().indexed == 11
    [res] = coll.search([image_folder / "img_0000.png"], k=20)
    assert len(res.hits) == 11 and all("sub" not in h.path and "img_0000" not in h.path for h in res.hits)
    assert coll.doctor().ok


def test_doctor_finds_a_lost_index_file_and_repairs_it(tmp_path, image_folder, open_db):
    coll = open_db(tmp_path / "home")
    coll.index_folder(image_folder)
    (tmp_path / "home" / "index.faiss").unlink()
    fresh = open_db(tmp_path / "home")
    report = fresh.doctor()
    assert not report.ok and any("missing" in p for p in report.problems)
    repaired = fresh.doctor(repair=True)
    assert repaired.repaired and open_db(tmp_path / "home").doctor().ok


def test_search_rebuilds_a_corrupt_index_file_from_the_database(tmp_path, image_folder):
    open_collection(tmp_path / "home").index_folder(image_folder)
    (tmp_path / "home" / "index.faiss").write_bytes(b"garbage")
    [res] = open_collection(tmp_path / "home").search([image_folder / "img_0001.png"], k=3)
    assert res.hits[0].path.endswith("img_0001.png")
    assert open_collection(tmp_path / "home").doctor().ok


def test_missing_folder_and_empty_collection_give_clear_errors(tmp_path):
    coll = open_collection(tmp_path / "home")
    with pytest.raises(LookalikeError, match="folder not found"):
        coll.index_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert coll.index_folder(tmp_path / "empty").total_indexed == 0
    q = tmp_path / "q.png"
    draw_image(1).save(q)
    with pytest.raises(LookalikeError, match="index a folder first"):
        coll.search([q])


def test_unreadable_query_is_reported_not_raised(tmp_path, image_folder):
    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    bad_res, good_res = coll.search([bad, image_folder / "img_0001.png"], k=2)
    assert bad_res.error and not bad_res.hits and good_res.hits


def test_changing_the_index_kind_rebuilds_the_index(tmp_path, image_folder):
    from indexer.vector_index import IndexConfig

    coll = open_collection(tmp_path / "home")
    assert coll.index_folder(image_folder).index_kind == "flat"
    coll.configure(index=IndexConfig(kind="hnsw"))
    report = coll.index_folder(image_folder)
    assert report.embedded == 0 and report.index_kind == "hnsw" and coll.stats().index_kind == "hnsw"
    [res] = coll.search([image_folder / "img_0002.png"], k=1)
    assert res.hits[0].path.endswith("img_0002.png")


def test_a_home_or_database_that_cannot_be_opened_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(LookalikeError, match="cannot open the collection"):
        Collection(tmp_path / "file" / "home")
    with pytest.raises(LookalikeError, match=r"cannot open the database nosuchdb://user:\*\*\*@host/db"):
        Collection(tmp_path / "home", db_url="nosuchdb://user:secret@host/db")


def test_files_gone_from_disk_never_show_in_results_and_the_next_index_forgets_them(tmp_path):
    coll = open_collection(tmp_path / "home")
    make_folder(tmp_path / "a", 6)
    make_folder(tmp_path / "b", 6, start_seed=50)
    coll.index_folder(tmp_path / "a")
    coll.index_folder(tmp_path / "b")
    query = tmp_path / "a" / "img_0002.png"
    shutil.copy(query, tmp_path / "query.png")
    shutil.rmtree(tmp_path / "a")
    [res] = coll.search([tmp_path / "query.png"], k=5)
    assert len(res.hits) == 5 and all(Path(h.path).parent == tmp_path / "b" for h in res.hits)
    report = coll.index_folder(tmp_path / "b")  # another folder: the deleted one is pruned all the same
    assert (report.removed, report.pruned, report.total_indexed) == (6, 6, 6)
    assert coll.stats().images == 6


def test_a_renamed_folder_is_recognised_by_content_wherever_it_went(tmp_path, open_db):
    counter = [0]
    coll = open_db(tmp_path / "home", counter)
    make_folder(tmp_path / "old" / "photos", 8)
    coll.index_folder(tmp_path / "old")
    embedded = counter[0]
    (tmp_path / "new").mkdir()
    os.rename(tmp_path / "old" / "photos", tmp_path / "new" / "photos")
    report = coll.index_folder(tmp_path / "new")
    assert (report.moved, report.new, report.embedded, report.total_indexed) == (8, 0, 0, 8)
    assert counter[0] == embedded and coll.stats().images == 8
    [res] = coll.search([tmp_path / "new" / "photos" / "img_0003.png"], k=1)
    assert res.hits[0].path == str(tmp_path / "new" / "photos" / "img_0003.png")


def test_a_setting_that_cannot_work_is_refused_before_anything_is_recorded(tmp_path, image_folder):
    from indexer.masking import MaskSettings
    from indexer.vector_index import IndexConfig

    fresh = Collection(tmp_path / "fresh", runtime=FAST_RUNTIME)
    with pytest.raises(LookalikeError, match="no-such-weights.pt"):
        fresh.configure(model=ModelConfig(image_size=64, weights=str(tmp_path / "no-such-weights.pt")))
    assert fresh.model_config is None  # a plain `index` afterwards uses the default model, not the failed one

    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    before = (coll.model_config, coll.index_config, coll.mask_settings)
    with pytest.raises(LookalikeError, match="invalid index kind 'Bogus99'"):
        coll.configure(index=IndexConfig(kind="Bogus99"))
    with pytest.raises(LookalikeError, match="cannot build the segmenter 'grabcutt'") as refused:
        coll.configure(mask=MaskSettings(segmenter="grabcutt"))
    assert "--reembed" not in str(refused.value)  # the real problem, not the mismatch advice
    with pytest.raises(LookalikeError, match="no-such-weights.pt"):
        coll.configure(model=ModelConfig(image_size=64, weights=str(tmp_path / "no-such-weights.pt")), reembed=True)
    again = open_collection(tmp_path / "home")
    assert (again.model_config, again.index_config, again.mask_settings) == before
    assert again.search([image_folder / "img_0002.png"], k=1)[0].hits[0].path.endswith("img_0002.png")
    assert again.doctor().ok


def test_a_damaged_database_is_named_with_how_to_recover(tmp_path, image_folder):
    import sqlite3

    coll = open_collection(tmp_path / "home")
    coll.index_folder(image_folder)
    coll._engine.dispose()
    path = tmp_path / "home" / "lookalike.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size > 8 * 4096
    with open(path, "r+b") as fh:  # overwrite a page in the middle, as a bad disk or a half-written copy would
        fh.seek(6 * 4096)
        fh.write(b"\xff" * 4096)
    try:
        problems = Collection(tmp_path / "home", runtime=FAST_RUNTIME).doctor().problems
    except LookalikeError as exc:  # noticed as soon as the database was opened
        problems = [str(exc)]
    assert len(problems) == 1 and "the database is damaged" in problems[0]
    assert f"move {path} aside and index your folders again" in problems[0]


def test_doctor_repair_fixes_what_doctor_reports_missing_files_included(tmp_path, image_folder, open_db):
    coll = open_db(tmp_path / "home")
    coll.index_folder(image_folder)
    shutil.rmtree(image_folder / "sub")
    report = coll.doctor()
    assert not report.ok and len(report.missing_files) == 4
    repaired = coll.doctor(repair=True)
    assert any("forgot 4 images" in r for r in repaired.repaired)
    assert coll.doctor().ok and coll.stats().images == 12


def test_remove_sticks_until_included_and_exclusions_leave_files_out(tmp_path, image_folder, open_db):
    counter = [0]
    coll = open_db(tmp_path / "home", counter)
    coll.index_folder(image_folder)
    assert coll.remove(image_folder / "sub") == 4
    again = coll.index_folder(image_folder)
    assert (again.new, again.excluded, again.total_indexed) == (0, 4, 12)  # removed files do not come back
    coll.include([str(image_folder / "sub")])
    back = coll.index_folder(image_folder)
    assert (back.new, back.total_indexed) == (4, 16)
    coll.exclude(["*.jpg"])  # the 4 images under sub/ are JPEGs: forgotten at the next run
    report = coll.index_folder(image_folder)
    assert (report.excluded, report.removed, report.total_indexed) == (4, 4, 12)
    with pytest.raises(LookalikeError, match="not excluded: nothing"):
        coll.include(["nothing"])


def test_several_queries_each_get_k_live_hits_when_files_are_gone(tmp_path, open_db):
    coll = open_db(tmp_path / "home")
    make_folder(tmp_path / "a", 6)
    make_folder(tmp_path / "b", 6, start_seed=50)
    coll.index_folder(tmp_path)
    shutil.copy(tmp_path / "a" / "img_0001.png", tmp_path / "q1.png")
    shutil.copy(tmp_path / "b" / "img_0051.png", tmp_path / "q2.png")
    shutil.rmtree(tmp_path / "a")
    res = coll.search([tmp_path / "q1.png", tmp_path / "q2.png"], k=4)
    assert [len(r.hits) for r in res] == [4, 4]
    assert all(Path(h.path).parent == tmp_path / "b" for r in res for h in r.hits)
    assert res[1].hits[0].path == str(tmp_path / "b" / "img_0051.png")


def test_a_reader_sees_what_a_run_in_progress_has_committed_without_rebuilding_the_index(
    tmp_path, monkeypatch, open_db, db_url
):
    """Another process indexing commits batch after batch and writes the index file only when it ends: a
    search meanwhile adds the newly committed rows to the index it holds instead of rebuilding it."""
    from indexer.store import write_lock

    folder = tmp_path / "photos"
    make_folder(folder, 8)
    writer = open_db(tmp_path / "home")
    writer.index_folder(folder)
    reader = Collection(
        tmp_path / "home", db_url=db_url, runtime=FAST_RUNTIME, embedder_factory=lambda c, r: shared_embedder(c)
    )
    [before] = reader.search([folder / "img_0001.png"], k=3)
    assert len(reader.index()) == 8

    # the writer's run is "still going": rows committed, the index file not brought up to date
    make_folder(folder, 4, start_seed=100)
    monkeypatch.setattr(writer._cache, "update", lambda *a, **k: writer._cache._cached[1])
    writer.index_folder(folder)

    def no_rebuild():
        raise AssertionError("the reader rebuilt the whole index")

    monkeypatch.setattr(reader._cache, "build", no_rebuild)
    new = sorted(folder.glob("img_01*.png"))
    with write_lock(tmp_path / "home"):  # the writer still holds the collection
        [res] = reader.search([new[2]], k=3)
        assert res.hits[0].path == str(new[2].resolve()) and res.hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert len(reader.index()) == 12
        [again] = reader.search([folder / "img_0001.png"], k=3)
        assert again.hits[0].id == before.hits[0].id

    # the run ends and writes the file: the reader takes the file as it is
    monkeypatch.undo()
    writer.index_folder(folder)
    assert len(reader.index()) == 12 and reader._cache._exact


def test_a_float16_collection_keeps_half_the_bytes_searches_alike_and_reads_both_kinds(tmp_path, image_folder, open_db):
    from sqlalchemy import select

    from indexer import db
    from indexer.db import ImageRecord

    def stored_lengths(c: Collection) -> tuple[set[int], int]:
        with c.session() as s:
            return {len(v) for v in s.scalars(select(ImageRecord.vector))}, int(db.get_setting(s, "model_dim"))

    ref = open_collection(tmp_path / "ref")  # its own SQLite file (the test's PostgreSQL database is coll's)
    ref.index_folder(image_folder)
    coll = open_db(tmp_path / "home")
    with pytest.raises(LookalikeError, match="unknown vector dtype 'int8'"):
        coll.configure(vector_dtype="int8")
    coll.configure(vector_dtype="float16")
    coll.index_folder(image_folder)
    lengths, dim = stored_lengths(coll)
    assert coll.vector_dtype == "float16" and lengths == {2 * dim}
    assert stored_lengths(ref)[0] == {4 * dim}
    (ids16, v16), (ids32, v32) = coll.vectors(), ref.vectors()
    assert list(ids16) == list(ids32)
    assert np.min(np.sum(v16 * v32, axis=1)) >= 0.9999
    query = image_folder / "img_0003.png"
    hits16, hits32 = coll.search([query], k=16)[0].hits, ref.search([query], k=16)[0].hits
    assert hits16[0].path == str(query.resolve())
    score32 = {h.path: h.score for h in hits32}
    assert all(abs(h.score - score32[h.path]) < 2e-3 for h in hits16)
    # back to float32: rows written from now on are float32, those kept are read as float16, side by side
    coll.configure(vector_dtype="float32")
    new = make_folder(image_folder, 2, start_seed=500)
    coll.index_folder(image_folder)
    assert stored_lengths(coll)[0] == {2 * dim, 4 * dim}
    assert coll.doctor().ok
    (tmp_path / "home" / "index.faiss").unlink()  # rebuilt from the database, both kinds of rows
    fresh = open_db(tmp_path / "home")
    for path in new + [query]:
        assert fresh.search([path], k=1)[0].hits[0].path == str(path.resolve())
