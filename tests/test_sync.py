"""The sync engine on its own (no network): a new kind of tracked file built from FileSync, BatchWriter and
IndexCache, with a processor that turns a file's bytes into a vector."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from indexer import db
from indexer.db import ERROR, INDEXED, FacePhoto, FaceRecord, ImageRecord
from indexer.errors import Interrupted, LookalikeError
from indexer.imageio import file_hash
from indexer.index_cache import IndexCache, RowVectors
from indexer.store import IndexFile, Store, write_lock
from indexer.sync import BatchWriter, FileSync, IndexReport, index_folder

DIM = 8


def vector_of(path: str) -> np.ndarray:
    """A unit vector determined by the file's bytes (processors record the content hash too, as the real
    ones do while decoding: it is what recognises moves and touched-but-identical files)."""
    seed = int.from_bytes(hashlib.sha256(Path(path).read_bytes()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


class Files:
    """A tracked kind whose tracked row holds the vector (as images do)."""

    def __init__(self, home: Path, commit_every: int = 2) -> None:
        self.store = Store(home, None, None, max_pixels=1, commit_every=commit_every)
        self.sync = FileSync(ImageRecord, db.VECTOR_VERSION, reset=dict(vector=None))
        self.cache = IndexCache(
            self.store,
            IndexFile(self.store.home, "t.faiss", "t.json"),
            db.VECTOR_VERSION,
            RowVectors(ImageRecord, (ImageRecord.status == INDEXED,), "t_dim"),
        )
        self.processed: list[str] = []
        self.fail_after: int | None = None

    def process(self, todo, report, writer: BatchWriter) -> None:
        for row_id, path in todo:
            if self.fail_after is not None and len(self.processed) >= self.fail_after:
                raise KeyboardInterrupt("simulated interruption")
            self.processed.append(path)
            if Path(path).read_bytes().startswith(b"bad"):
                writer.put(dict(id=row_id, status=ERROR, error="unreadable", vector=None))
                report.skipped.append((path, "unreadable"))
                continue
            writer.put(
                dict(
                    id=row_id,
                    status=INDEXED,
                    error=None,
                    vector=vector_of(path).tobytes(),
                    content_hash=file_hash(path),
                ),
                indexed=True,
            )
            report.embedded += 1

    def index(self, folder: Path) -> IndexReport:
        report = IndexReport(folder=str(folder))
        index_folder(self.store, folder, report, self.sync, self.cache, self.process)
        return report

    def rows(self) -> dict[str, tuple[int, str]]:
        with self.store.session() as s:
            return {p: (i, st) for i, p, st in s.execute(select(ImageRecord.id, ImageRecord.path, ImageRecord.status))}

    def nearest(self, path: Path) -> int:
        _, ids = self.cache.current().search(vector_of(str(path))[None], 1)
        return int(ids[0, 0])


def assert_index_matches_database(kind: Files) -> None:
    index = kind.cache.current()
    with kind.store.session() as s:
        ids, vecs, _ = kind.cache.vectors.indexed(s)
    assert sorted(int(i) for i in index.ids()) == sorted(int(i) for i in ids)
    for i, v in zip(ids, vecs):
        assert int(index.search(v[None], 1)[1][0, 0]) == int(i)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i in range(5):
        write(tmp_path / "f" / f"{i}.png", f"content {i}".encode())
    return tmp_path / "f"


def test_new_files_are_processed_once_and_an_unchanged_rescan_processes_nothing(tmp_path, folder):
    kind = Files(tmp_path / "home")
    first = kind.index(folder)
    assert (first.new, first.embedded, first.total_indexed) == (5, 5, 5)
    version = kind.cache.version()
    again = kind.index(folder)
    assert (again.new, again.unchanged, again.embedded, again.total_indexed) == (0, 5, 0, 5)
    assert len(kind.processed) == 5 and kind.cache.version() == version
    assert_index_matches_database(kind)


def test_touched_files_with_the_same_content_are_not_processed_again(tmp_path, folder):
    kind = Files(tmp_path / "home")
    kind.index(folder)
    st = os.stat(folder / "1.png")
    os.utime(folder / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    report = kind.index(folder)
    assert (report.changed, report.unchanged, report.embedded) == (0, 5, 0)


def test_a_changed_file_keeps_its_id_and_gets_its_new_vector(tmp_path, folder):
    kind = Files(tmp_path / "home")
    kind.index(folder)
    row_id = kind.rows()[str(folder / "2.png")][0]
    write(folder / "2.png", b"something else entirely")
    report = kind.index(folder)
    assert (report.changed, report.embedded, report.total_indexed) == (1, 1, 5)
    assert kind.rows()[str(folder / "2.png")][0] == row_id
    assert kind.nearest(folder / "2.png") == row_id
    assert_index_matches_database(kind)


def test_moves_are_followed_by_content_and_deleted_files_leave_the_index(tmp_path, folder):
    kind = Files(tmp_path / "home")
    kind.index(folder)
    before = kind.rows()
    os.rename(folder / "0.png", folder / "renamed.png")
    (folder / "4.png").unlink()
    report = kind.index(folder)
    assert (report.moved, report.removed, report.embedded, report.total_indexed) == (1, 1, 0, 4)
    after = kind.rows()
    assert after[str(folder / "renamed.png")] == before[str(folder / "0.png")]
    assert str(folder / "4.png") not in after
    assert_index_matches_database(kind)


def test_an_interrupted_run_keeps_what_it_finished_and_the_next_run_resumes_the_rest(tmp_path, folder):
    kind = Files(tmp_path / "home", commit_every=2)
    kind.fail_after = 3
    with pytest.raises(Interrupted, match="3 of 5 files done and kept"):
        kind.index(folder)
    statuses = sorted(st for _, st in kind.rows().values())
    assert statuses == ["indexed", "indexed", "indexed", "pending", "pending"]
    assert_index_matches_database(kind)  # the index file was brought up to date too
    kind.fail_after = None
    report = kind.index(folder)
    assert (report.resumed, report.embedded, report.total_indexed) == (2, 2, 5)
    assert len(kind.processed) == 3 + 2 and len(set(kind.processed)) == 5
    assert_index_matches_database(kind)


def test_results_are_committed_from_the_first_one_then_by_count_or_time(tmp_path, folder, monkeypatch):
    kind = Files(tmp_path / "home", commit_every=100)
    commits: list[int] = []
    flush = BatchWriter.flush

    def counting_flush(self):
        if self._values:
            commits.append(len(self._values))
        flush(self)

    monkeypatch.setattr(BatchWriter, "flush", counting_flush)
    kind.index(folder)
    assert commits == [1, 4]  # the first result at once, the rest at the end (well within 2 s)
    commits.clear()
    monkeypatch.setattr(BatchWriter, "commit_seconds", 0.0)
    for i in range(5):
        write(folder / f"{i}.png", f"changed {i}".encode())
    kind.index(folder)
    assert commits == [1, 1, 1, 1, 1]  # every result is due at once


def test_unreadable_files_are_recorded_and_not_retried_until_they_change(tmp_path, folder):
    kind = Files(tmp_path / "home")
    write(folder / "broken.png", b"bad bytes")
    report = kind.index(folder)
    assert report.skipped == [(str(folder / "broken.png"), "unreadable")] and report.total_indexed == 5
    again = kind.index(folder)
    assert (again.embedded, again.earlier_errors, len(kind.processed)) == (0, 1, 6)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LookalikeError, match="not found"):
        Files(tmp_path / "home").index(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- dependents
class Photos(Files):
    """A tracked kind whose vectors live in derived rows (two 'faces' per photo), as face galleries do."""

    class Faces:
        def moved(self, s, file_id, path):
            for r in s.scalars(select(FaceRecord).where(FaceRecord.photo_id == file_id)):
                r.path = path

        def drop(self, s, file_ids):
            rows = list(s.scalars(select(FaceRecord).where(FaceRecord.photo_id.in_(file_ids))))
            for r in rows:
                s.delete(r)
            return {r.id for r in rows}

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.sync = FileSync(FacePhoto, "v_faces", reset=dict(faces=None), dependents=Photos.Faces())
        self.cache = IndexCache(
            self.store,
            IndexFile(self.store.home, "p.faiss", "p.json"),
            "v_faces",
            RowVectors(FaceRecord, (FaceRecord.source == "t",), "t_dim"),
        )

    def process(self, todo, report, writer: BatchWriter) -> None:
        for row_id, path in todo:
            v = vector_of(path)
            faces = [
                FaceRecord(source="t", photo_id=row_id, path=path, x0=0, y0=0, x1=1, y1=1, vector=(sign * v).tobytes())
                for sign in (1, -1)
            ]
            writer.put(dict(id=row_id, status=INDEXED, error=None, faces=2, content_hash=file_hash(path)), faces)
            report.embedded += 1

    def face_paths(self) -> list[str]:
        with self.store.session() as s:
            return sorted(s.scalars(select(FaceRecord.path)))


def test_derived_rows_follow_their_file_and_go_when_it_changes_or_goes(tmp_path, folder):
    kind = Photos(tmp_path / "home")
    assert kind.index(folder).total_indexed == 10
    os.rename(folder / "0.png", folder / "moved.png")
    write(folder / "1.png", b"new content")
    (folder / "2.png").unlink()
    report = kind.index(folder)
    assert (report.moved, report.changed, report.removed, report.embedded, report.total_indexed) == (1, 1, 1, 1, 8)
    paths = kind.face_paths()
    assert paths.count(str(folder / "moved.png")) == 2 and str(folder / "0.png") not in paths
    assert str(folder / "2.png") not in paths
    assert_index_matches_database(kind)


# ---------------------------------------------------------------------------------------------- the cache
def test_a_stale_or_damaged_index_file_is_rebuilt_from_the_database(tmp_path, folder):
    kind = Files(tmp_path / "home")
    kind.index(folder)
    kind.cache.files.index_path.write_bytes(b"not a faiss index")
    fresh = Files(tmp_path / "home")
    assert len(fresh.cache.current()) == 5
    assert fresh.cache.load()[0] is not None  # saved again
    assert_index_matches_database(fresh)


def test_a_busy_collection_still_searches_with_an_unsaved_rebuilt_index(tmp_path, folder):
    kind = Files(tmp_path / "home")
    kind.index(folder)
    kind.cache.files.state_path.unlink()
    fresh = Files(tmp_path / "home")
    with write_lock(fresh.store.home):  # another writer holds the lock
        assert len(fresh.cache.current()) == 5
    assert not fresh.cache.files.state_path.exists()


def test_changes_made_by_another_process_make_the_next_update_rebuild(tmp_path, folder):
    kind = Files(tmp_path / "home")
    kind.index(folder)
    other = Files(tmp_path / "home")
    write(folder / "extra.png", b"extra")
    other.index(folder)  # the first process's index file is now stale
    write(folder / "more.png", b"more")
    report = kind.index(folder)
    assert report.total_indexed == 7
    assert_index_matches_database(kind)
