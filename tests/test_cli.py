"""The CLI through CliRunner; effects checked through the Python API."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import EXIT_SKIPPED, main
from indexer.engine import Collection

from .conftest import make_folder

FAST = ["--workers", "0", "--batch-size", "8", "--device", "cpu"]


def run(home: Path, *args: str):
    return CliRunner().invoke(main, ["--home", str(home), *FAST, *args], catch_exceptions=False)


@pytest.fixture
def indexed(tmp_path, image_folder):
    home = tmp_path / "home"
    res = run(home, "index", str(image_folder), "--image-size", "64")
    assert res.exit_code == 0, res.output
    return home, image_folder


def test_index_reports_counts_and_a_second_run_embeds_nothing(indexed):
    home, folder = indexed
    assert Collection(home).stats().indexed == 16
    res = run(home, "index", str(folder))
    assert res.exit_code == 0
    assert "0 embedded" in res.output and "16 unchanged" in res.output


def test_search_json_gives_query_and_ranked_results(indexed):
    home, folder = indexed
    q = folder / "img_0002.png"
    res = run(home, "search", str(q), "-k", "3", "--json")
    assert res.exit_code == 0
    [entry] = json.loads(res.output)
    assert entry["query"] == str(q.resolve())
    assert [r["rank"] for r in entry["results"]] == [1, 2, 3]
    assert entry["results"][0]["path"] == str(q.resolve())
    assert entry["results"][0]["score"] >= entry["results"][1]["score"] >= entry["results"][2]["score"]


def test_search_by_a_folder_of_queries_answers_each(indexed):
    home, folder = indexed
    res = run(home, "search", str(folder / "sub"), "-k", "1", "--json")
    out = json.loads(res.output)
    assert len(out) == 4
    assert all(e["results"][0]["path"] == e["query"] for e in out)


def test_human_search_output_shows_score_and_path(indexed):
    home, folder = indexed
    res = run(home, "search", str(folder / "img_0001.png"), "-k", "2")
    lines = res.output.splitlines()
    assert lines[0].startswith("query: ")
    assert lines[1].split()[0] == "1" and lines[1].split()[2].endswith("img_0001.png")
    assert 0.99 <= float(lines[1].split()[1]) <= 1.0001


def test_broken_files_are_listed_and_set_the_exit_status(tmp_path, image_folder):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    res = run(tmp_path / "home", "index", str(image_folder), "--image-size", "64")
    assert res.exit_code == EXIT_SKIPPED
    assert "skipped 1 files" in res.output and "broken.jpg" in res.output
    stats = json.loads(run(tmp_path / "home", "stats", "--json", "--errors").output)
    assert stats["indexed"] == 16 and stats["errors"] == 1
    assert stats["error_files"][0]["path"].endswith("broken.jpg")


def test_names_that_are_not_utf8_are_reported_and_the_rest_indexed(tmp_path, image_folder):
    src = image_folder / "img_0001.png"
    bad_file = os.path.join(os.fsencode(image_folder), b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    bad_dir = os.path.join(os.fsencode(image_folder), b"f\xf6to")
    os.mkdir(bad_dir)
    for target in (bad_file, os.path.join(bad_dir, b"inside.png")):
        with open(target, "wb") as fh:
            fh.write(src.read_bytes())
    res = run(tmp_path / "home", "index", str(image_folder), "--image-size", "64")
    assert res.exit_code == EXIT_SKIPPED, res.output
    assert "caf\\xe9.png" in res.output and "f\\xf6to" in res.output and "not valid UTF-8" in res.output
    stats = json.loads(run(tmp_path / "home", "stats", "--json").output)
    assert stats["indexed"] == 16


@pytest.mark.parametrize(
    "args,message",
    [
        (["index", "/no/such/folder"], "folder not found"),
        (["index", "{folder}", "--backbone", "alexnet"], "unknown backbone 'alexnet'; known:"),
        (["search", "/no/such.jpg"], "no collection in"),
        (
            ["eval", "{folder}", "--label-regex", r"obj(\d+"],
            "is not a valid regular expression: missing ), unterminated",
        ),
        (["eval", "{folder}", "--weights", "{folder}/notes.txt"], "is not a weights file lookalike can read"),
        (["index", "{folder}", "--weights", "/no/such.pt"], "weights file not found: /no/such.pt"),
    ],
)
def test_mistakes_get_one_clear_line_not_a_traceback(tmp_path, image_folder, args, message):
    (image_folder / "notes.txt").write_text("hello: not weights")
    args = [a.replace("{folder}", str(image_folder)) for a in args]
    res = run(tmp_path / "home", *args)
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output
    assert "weights_only" not in res.output  # never advise loading a file unsafely
    assert len(res.output.strip().splitlines()) == 1


def test_searching_an_empty_collection_says_what_to_do(tmp_path, image_folder):
    res = run(tmp_path / "home", "search", str(image_folder / "img_0001.png"))
    assert res.exit_code == 1 and "index a folder first" in res.output


def test_another_model_on_an_existing_collection_is_refused(indexed):
    home, folder = indexed
    res = run(home, "index", str(folder), "--pooling", "mac")
    assert res.exit_code == 1 and "--reembed" in res.output


def test_remove_and_doctor(indexed):
    home, folder = indexed
    res = run(home, "remove", str(folder / "sub"))
    assert res.exit_code == 0 and "removed 4 images" in res.output
    assert Collection(home).stats().indexed == 12
    assert run(home, "doctor").output.startswith("ok")
    (home / "index.faiss").unlink()
    bad = run(home, "doctor")
    assert bad.exit_code == 1 and "problem" in bad.output
    fixed = run(home, "doctor", "--repair")
    assert "rebuilt" in fixed.output
    assert run(home, "doctor").output.startswith("ok")


def test_help_explains_each_command():
    res = CliRunner().invoke(main, ["--help"])
    for cmd in ("index", "search", "stats", "remove", "doctor"):
        assert cmd in res.output
    assert "--threshold" in CliRunner().invoke(main, ["search", "--help"]).output


def test_kill_9_during_indexing_then_restart_finishes_with_a_consistent_index(tmp_path):
    """A real ``kill -9`` of the CLI mid-run; the restarted run completes the job, embedding nothing twice."""
    folder = tmp_path / "photos"
    make_folder(folder, 160)
    home = tmp_path / "home"
    cmd = [
        sys.executable,
        "-m",
        "indexer.cli",
        "--home",
        str(home),
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "index",
        str(folder),
        "--image-size",
        "64",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db_path = home / "lookalike.db"
    deadline = time.time() + 120
    indexed_at_kill = None
    while time.time() < deadline and proc.poll() is None:
        if db_path.exists():
            try:
                with sqlite3.connect(db_path, timeout=1) as con:
                    n = con.execute("select count(*) from images where status='indexed'").fetchone()[0]
            except sqlite3.Error:
                n = 0
            if n > 0:
                os.kill(proc.pid, signal.SIGKILL)
                indexed_at_kill = n
                break
        time.sleep(0.05)
    proc.wait()
    assert indexed_at_kill is not None, "the run ended before it could be killed"
    with sqlite3.connect(db_path) as con:
        done_before = con.execute("select count(*) from images where status='indexed'").fetchone()[0]
    assert 0 < done_before < 160
    res = run(home, "index", str(folder))
    assert res.exit_code == 0, res.output
    assert f"{160 - done_before} embedded" in res.output  # only what the killed run had not committed
    coll = Collection(home)
    st = coll.stats()
    assert (st.indexed, st.pending, st.index_vectors) == (160, 0, 160)
    assert coll.doctor().ok


@pytest.mark.parametrize(
    "args,message",
    [
        (["index", "{folder}", "--weights", "{seg}"], "holds a unet segmentation network, not an embedding network"),
        (["index", "{folder}", "--scales", "1,x"], "--scales takes numbers separated by commas"),
        (["eval", "{folder}", "--mask", "no-such"], "cannot build the segmenter 'no-such'"),
        (["train", "{folder}", "--out", "{seg}.new"], "is not in a class sub-folder"),
    ],
)
def test_option_and_data_mistakes_are_one_line_too(tmp_path, image_folder, args, message):
    from retrieval.checkpoint import save_checkpoint

    seg = tmp_path / "seg.pt"
    save_checkpoint(seg, {"kind": "unet", "image_size": 64}, {})
    args = [a.replace("{folder}", str(image_folder)).replace("{seg}", str(seg)) for a in args]
    res = run(tmp_path / "home", *args)
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_an_unknown_device_is_a_usage_error_naming_the_accepted_ones(tmp_path, image_folder):
    res = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "--device", "gpu", "eval", str(image_folder)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "unknown device 'gpu': use auto, cpu, cuda, cuda:N or mps (available here: cpu" in res.output
    assert "ipu" not in res.output  # not torch's list of ~20 device types


def test_a_device_this_machine_lacks_is_one_line_naming_those_it_has(tmp_path, image_folder, monkeypatch):
    import retrieval.config

    monkeypatch.setattr(retrieval.config, "available_devices", lambda: ["cpu"])
    res = CliRunner().invoke(main, ["--device", "cuda:3", "eval", str(image_folder)])
    assert res.exit_code == 1
    assert res.output.strip() == "Error: device 'cuda:3' is not available here; available: cpu"


def test_a_missing_query_is_reported_and_the_others_answered(indexed):
    home, folder = indexed
    res = run(home, "search", "nothere.jpg", str(folder / "img_0001.png"), "-k", "2", "--json")
    assert res.exit_code == EXIT_SKIPPED
    missing, found = json.loads(res.output)
    assert missing["query"].endswith("nothere.jpg") and missing["error"] and missing["results"] == []
    assert found["error"] is None and found["results"][0]["path"] == str((folder / "img_0001.png").resolve())


@pytest.mark.parametrize(
    "args",
    [
        ["search", "q.jpg"],
        ["stats"],
        ["doctor"],
        ["remove", "x.jpg"],
        ["duplicates"],
        ["faces", "search", "q.jpg"],
        ["faces", "identify", "q.jpg"],
        ["faces", "verify", "q.jpg", "--as", "ann"],
        ["faces", "list"],
    ],
)
def test_read_only_commands_say_there_is_no_collection_and_create_nothing(tmp_path, args):
    home = tmp_path / "nowhere"
    res = run(home, *args)
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: no collection in {home}; index a folder first: lookalike index DIR"
    assert not home.exists()


def test_indexing_a_folder_without_images_says_so_and_exits_5(tmp_path):
    from indexer.cli import EXIT_EMPTY

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("no pictures here")
    res = run(tmp_path / "home", "index", str(folder))
    assert res.exit_code == EXIT_EMPTY == 5
    assert f"no images found in {folder} (1 other files ignored" in res.output
    stats = run(tmp_path / "home", "stats").output
    assert "no vectors yet" in stats and "dimension" not in stats
    assert json.loads(run(tmp_path / "home", "stats", "--json").output)["dim"] is None


def test_whitening_a_collection_too_small_to_learn_it_says_so(tmp_path, image_folder):
    home = tmp_path / "home"
    res = run(home, "index", str(image_folder), "--image-size", "64", "--whiten", "--whiten-dim", "64")
    assert res.exit_code == 0, res.output
    assert "whitening is on but not learned yet: it needs 128 images (2 per dimension kept, 64)" in res.output
    assert "the collection has 16; searching unwhitened vectors" in res.output
    res = run(home, "index", str(image_folder), "--whiten-dim", "8")  # 16 vectors are enough for 8 dimensions
    assert "not learned" not in res.output and Collection(home).stats().whitening == "PCA 1280 -> 8"


def test_group_options_after_the_command(tmp_path, image_folder):
    home = tmp_path / "home"
    args = ["index", str(image_folder), "--image-size", "64", "--home", str(home), *FAST]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert Collection(home).stats().indexed == 16
    res = CliRunner().invoke(main, ["stats", "--json", "--home", str(home)])
    assert json.loads(res.output)["indexed"] == 16


def test_train_seg_checks_its_own_device_option_the_same_way(tmp_path):
    res = CliRunner().invoke(main, ["train-seg", str(tmp_path), "--out", str(tmp_path / "s.pt"), "--device", "tpu0"])
    assert res.exit_code == 2 and "unknown device 'tpu0': use auto, cpu, cuda, cuda:N or mps" in res.output


def test_index_vector_dtype_is_stored_with_the_collection(tmp_path, image_folder):
    res = run(tmp_path / "home", "index", str(image_folder), "--image-size", "64", "--vector-dtype", "float16")
    assert res.exit_code == 0, res.output
    assert Collection(tmp_path / "home", create=False).vector_dtype == "float16"
