"""Acting on duplicates: dry runs change nothing; move / hard link / trash, then undo, give every file back
byte-identical; changed files and keepers are re-checked; a run killed at any step is undone correctly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from indexer import file_actions
from indexer.duplicates import DuplicateFile, DuplicateGroup
from indexer.engine import Collection
from indexer.errors import LookalikeError
from indexer.file_actions import Journal, apply_actions, latest_journal, undo
from indexer.imageio import file_hash


def tracked(path: Path, keep: bool = False, reference: bool = False) -> DuplicateFile:
    """A file as the collection indexed it (size, mtime, hash as they are now)."""
    st = path.stat()
    return DuplicateFile(
        id=0,
        path=str(path),
        score=1.0,
        keep=keep,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        content_hash=file_hash(path),
        reference=reference,
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def setup(tmp_path: Path):
    """A keeper, a byte-identical copy, a near copy (other bytes) and a collection home."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "keeper.jpg").write_bytes(b"K" * 1000)
    (photos / "exact.jpg").write_bytes(b"K" * 1000)
    (photos / "near.jpg").write_bytes(b"N" * 700)
    coll = Collection(tmp_path / "home")
    group = DuplicateGroup(
        [
            tracked(photos / "keeper.jpg", keep=True),
            tracked(photos / "exact.jpg"),
            tracked(photos / "near.jpg"),
        ]
    )
    group.files[1].exact = True
    return photos, coll, group


def test_dry_run_changes_nothing(setup, tmp_path):
    photos, coll, group = setup
    before = snapshot(tmp_path)
    for action in ("move", "hardlink", "trash"):
        report = apply_actions(coll, [group], action, move_to=tmp_path / "dupes", dry_run=True)
        assert report.dry_run and report.journal is None
        assert all(r.path != group.keeper.path for r in report.results)
    assert snapshot(tmp_path) == before and not (tmp_path / "dupes").exists()
    assert latest_journal(coll.home) is None


def test_move_then_undo_restores_every_file(setup, tmp_path):
    photos, coll, group = setup
    before = snapshot(photos)
    report = apply_actions(coll, [group], "move", move_to=tmp_path / "dupes", dry_run=False)
    assert report.count("done") == 2
    assert sorted(p.name for p in photos.iterdir()) == ["keeper.jpg"]
    moved = tmp_path / "dupes" / str(photos / "near.jpg").lstrip("/")
    assert moved.read_bytes() == before["near.jpg"]
    rep = undo(coll)
    assert rep.count("restored") == 2
    assert snapshot(photos) == before and not moved.exists()
    with pytest.raises(LookalikeError, match="nothing to undo"):
        undo(coll)


def test_hardlink_only_exact_copies_then_undo(setup):
    photos, coll, group = setup
    before = snapshot(photos)
    report = apply_actions(coll, [group], "hardlink", dry_run=False)
    statuses = {Path(r.path).name: r.status for r in report.results}
    assert statuses == {"exact.jpg": "done", "near.jpg": "skipped"}
    assert os.path.samefile(photos / "exact.jpg", photos / "keeper.jpg")
    undo(coll)
    assert not os.path.samefile(photos / "exact.jpg", photos / "keeper.jpg")
    assert snapshot(photos) == before
    assert (photos / "exact.jpg").stat().st_mtime_ns == group.files[1].mtime_ns


def test_trash_then_undo(setup, tmp_path, monkeypatch):
    import send2trash.plat_other as plat

    data = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.setattr(plat, "XDG_DATA_HOME", os.fsencode(data))
    monkeypatch.setattr(plat, "HOMETRASH_B", os.fsencode(data / "Trash"))
    monkeypatch.setattr(plat, "HOMETRASH", str(data / "Trash"))
    photos, coll, group = setup
    before = snapshot(photos)
    report = apply_actions(coll, [group], "trash", dry_run=False)
    assert report.count("done") == 2
    assert sorted(p.name for p in photos.iterdir()) == ["keeper.jpg"]
    assert len(list((data / "Trash" / "files").iterdir())) == 2
    undo(coll)
    assert snapshot(photos) == before
    assert not list((data / "Trash" / "info").iterdir())


def test_changed_file_and_changed_keeper_are_skipped(setup, tmp_path):
    photos, coll, group = setup
    (photos / "near.jpg").write_bytes(b"M" * 700)  # same size, new content and mtime
    os.utime(photos / "near.jpg", ns=(1, 1))
    report = apply_actions(coll, [group], "move", move_to=tmp_path / "dupes", dry_run=False)
    statuses = {Path(r.path).name: (r.status, r.reason) for r in report.results}
    assert statuses["near.jpg"][0] == "skipped" and "changed since indexing" in statuses["near.jpg"][1]
    assert statuses["exact.jpg"][0] == "done"
    undo(coll)
    (photos / "keeper.jpg").unlink()
    report = apply_actions(coll, [group], "move", move_to=tmp_path / "dupes", dry_run=False)
    assert report.results and all(r.status == "skipped" and "keeper" in r.reason for r in report.results)
    assert (photos / "exact.jpg").exists() and (photos / "near.jpg").exists()


def test_reference_files_and_keepers_are_never_touched(setup, tmp_path):
    photos, coll, group = setup
    group.files[2].reference = True
    group.files[2].keep = True
    report = apply_actions(coll, [group], "move", move_to=tmp_path / "dupes", dry_run=False)
    assert [Path(r.path).name for r in report.results] == ["exact.jpg"]
    assert (photos / "near.jpg").exists() and (photos / "keeper.jpg").exists()


def test_move_never_overwrites(setup, tmp_path):
    photos, coll, group = setup
    target = tmp_path / "dupes" / str(photos / "exact.jpg").lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"already here")
    report = apply_actions(coll, [group], "move", move_to=tmp_path / "dupes", dry_run=False)
    assert {Path(r.path).name: r.status for r in report.results} == {"exact.jpg": "skipped", "near.jpg": "done"}
    assert target.read_bytes() == b"already here" and (photos / "exact.jpg").exists()


@pytest.mark.parametrize("stage", ["before the action", "after the link", "after the action"])
def test_a_run_killed_at_any_stage_is_undone(setup, tmp_path, monkeypatch, stage):
    """The journal line is written before the action; a kill before, during (the new name linked, the old one
    not yet removed) or after it (before the done line) is undone, and nothing is lost."""
    photos, coll, group = setup
    before = snapshot(photos)
    real_do = file_actions._do

    def killed(action, path, keeper, dest):
        if stage == "after the link":
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest)
        elif stage == "after the action":
            real_do(action, path, keeper, dest)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(file_actions, "_do", killed)
    with pytest.raises(KeyboardInterrupt):
        apply_actions(coll, [group], "move", move_to=tmp_path / "dupes", dry_run=False)
    journal = latest_journal(coll.home)
    assert journal is not None and [e["state"] for e in Journal.read(journal)] == ["begin"]
    # a torn line from a kill while writing the journal is ignored too
    with open(journal, "a") as fh:
        fh.write('{"seq": 1, "sta')
    monkeypatch.setattr(file_actions, "_do", real_do)
    undo(coll)
    assert snapshot(photos) == before
    dupes = tmp_path / "dupes"
    assert not dupes.exists() or not [p for p in dupes.rglob("*") if p.is_file()]


def test_a_full_target_on_another_file_system_leaves_the_source(setup, tmp_path, monkeypatch):
    import errno
    import shutil

    photos, coll, group = setup
    before = snapshot(photos)

    def other_fs(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def full(src, dst, **kw):
        Path(dst).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", other_fs)
    monkeypatch.setattr(shutil, "copy2", full)
    report = apply_actions(coll, [group], "move", move_to=tmp_path / "dupes", dry_run=False)
    assert [r.status for r in report.results] == ["failed", "failed"]
    assert all("no space" in r.reason for r in report.results)
    assert snapshot(photos) == before
    assert not [p for p in (tmp_path / "dupes").rglob("*") if p.is_file()]  # no partial file left
    assert [e["state"] for e in Journal.read(Path(report.journal))] == ["failed", "failed"]
    monkeypatch.undo()
    undo(coll)
    assert snapshot(photos) == before


def test_kill_9_during_a_move_loses_nothing(setup, tmp_path):
    """A real process killed (SIGKILL) in the middle of its moves; then undo puts every file back."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    photos, coll, group = setup
    for i in range(6):
        (photos / f"more_{i}.jpg").write_bytes(bytes([i]) * 300)
        group.files.append(tracked(photos / f"more_{i}.jpg"))
    before = snapshot(photos)
    spec = tmp_path / "groups.json"
    import json

    spec.write_text(json.dumps([f.__dict__ for f in group.files]))
    script = textwrap.dedent(
        f"""
        import json, os, time
        from indexer import file_actions
        from indexer.duplicates import DuplicateFile, DuplicateGroup
        from indexer.engine import Collection
        real = file_actions._do
        def slow(*a):
            out = real(*a)
            print("moved", flush=True)
            time.sleep(0.5)
            return out
        file_actions._do = slow
        files = [DuplicateFile(**d) for d in json.load(open({str(spec)!r}))]
        file_actions.apply_actions(Collection({str(coll.home)!r}), [DuplicateGroup(files)], "move",
                                   move_to={str(tmp_path / "dupes")!r}, dry_run=False)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent
    )
    assert proc.stdout is not None
    for _ in range(3):
        assert proc.stdout.readline().strip() == b"moved"
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(photos.iterdir())) < len(before)  # some moved
    entries = Journal.read(latest_journal(coll.home))
    assert len(entries) >= 3 and all(e["state"] in ("begin", "done") for e in entries)
    undo(coll)
    assert snapshot(photos) == before
    assert not [p for p in (tmp_path / "dupes").rglob("*") if p.is_file()]
