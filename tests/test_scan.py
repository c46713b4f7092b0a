from pathlib import Path

import pytest

from indexer.scan import KnownFile, ScannedFile, plan_sync, scan_folder


def test_scan_finds_images_recursively_and_skips_hidden_and_other_files(tmp_path: Path):
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"xy")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.png").write_bytes(b"x")
    (tmp_path / ".d.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hello")
    res = scan_folder(tmp_path)
    assert [Path(f.path).name for f in res.files] == ["a.JPG", "b.png"]
    assert res.files[1].size == 2
    assert res.ignored == 1


def test_scan_of_a_missing_folder_raises():
    with pytest.raises(FileNotFoundError, match="folder not found"):
        scan_folder("/no/such/folder")


def known(id_, path, size=10, mtime=1, status="indexed", h="h"):
    return KnownFile(id_, path, size, mtime, status, h)


def test_plan_sorts_files_into_new_changed_removed_unchanged_and_resume():
    scanned = [
        ScannedFile("/r/a", 10, 1),
        ScannedFile("/r/b", 11, 2),
        ScannedFile("/r/c", 5, 1),
        ScannedFile("/r/p", 10, 1),
    ]
    db = [known(1, "/r/a"), known(2, "/r/b"), known(3, "/r/gone", size=99), known(4, "/r/p", status="pending")]
    plan = plan_sync(scanned, db, hash_of=lambda p: pytest.fail("no hashing needed"))
    assert plan.unchanged == 1
    assert [i for i, _ in plan.changed] == [2]
    assert [f.path for f in plan.new] == ["/r/c"]
    assert plan.removed == [3]
    assert [i for i, _ in plan.resume] == [4]
    assert plan.moved == []


def test_plan_recognises_a_moved_file_by_size_then_hash():
    scanned = [ScannedFile("/r/new/a", 10, 5), ScannedFile("/r/other", 10, 5)]
    db = [known(1, "/r/old/a", h="AAA")]
    hashes = {"/r/new/a": "AAA", "/r/other": "BBB"}
    plan = plan_sync(scanned, db, hash_of=hashes.__getitem__)
    assert [(i, f.path) for i, f in plan.moved] == [(1, "/r/new/a")]
    assert [f.path for f in plan.new] == ["/r/other"]
    assert plan.removed == []


def test_two_copies_of_a_moved_file_keep_one_row_and_add_the_other():
    scanned = [ScannedFile("/r/x1", 10, 5), ScannedFile("/r/x2", 10, 5)]
    plan = plan_sync(scanned, [known(1, "/r/x", h="AAA")], hash_of=lambda p: "AAA")
    assert len(plan.moved) == 1 and len(plan.new) == 1 and plan.removed == []


def test_exclusions_match_paths_folders_wildcards_and_names(tmp_path: Path):
    from indexer.scan import Exclusions

    folder = str(tmp_path / "photos")
    ex = Exclusions(
        (
            Exclusions.normalise(str(tmp_path / "photos" / "private")),
            Exclusions.normalise(str(tmp_path / "photos" / "*" / "tmp_*.png")),
            Exclusions.normalise("*.gif"),
            Exclusions.normalise("thumbnails"),
        )
    )
    assert ex.matches(f"{folder}/private/a.jpg") and ex.matches(f"{folder}/private/deep/b.jpg")
    assert not ex.matches(f"{folder}/private-not/a.jpg")  # a folder, not a prefix of names
    assert ex.matches(f"{folder}/2024/tmp_1.png") and not ex.matches(f"{folder}/2024/keep_1.png")
    assert ex.matches(f"{folder}/x/anim.gif") and ex.matches(f"{folder}/thumbnails/a.jpg")
    assert not ex.matches(f"{folder}/x/a.jpg")
    with pytest.raises(ValueError):
        Exclusions.normalise("  ")
