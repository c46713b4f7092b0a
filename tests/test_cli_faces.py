"""``lookalike faces ...`` through click's CliRunner, on drawn faces with the fake detector and embedder;
effects are checked through the Python API."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from indexer import cli_faces
from indexer.cli import main
from indexer.faces import DEFAULT_THRESHOLDS, FaceGallery

from .conftest import FAST_RUNTIME
from .test_faces_gallery import ALICE, BOB, CAROL, BlobDetector, ThumbEmbedder, save_photo

if "faces" not in main.commands:
    main.add_command(cli_faces.faces)


@pytest.fixture
def fake_gallery(monkeypatch):
    monkeypatch.setattr(
        cli_faces,
        "FaceGallery",
        functools.partial(
            FaceGallery,
            detector_factory=lambda name: BlobDetector(),
            face_embedder_factory=lambda settings, runtime: ThumbEmbedder(),
        ),
    )


def run(home: Path, *args: str) -> object:
    return CliRunner().invoke(main, ["--home", str(home), "--device", "cpu", "faces", *map(str, args)])


@pytest.fixture
def home(tmp_path: Path, fake_gallery) -> Path:
    photos = tmp_path / "photos"
    for person, name in ((ALICE, "alice"), (BOB, "bob")):
        r = run(
            tmp_path / "home", "enroll", name, *[save_photo(photos / f"{name}{v}.png", [person], v) for v in range(2)]
        )
        assert r.exit_code == 0, r.output
        assert f"enrolled 2 faces of {name}" in r.output
    return tmp_path / "home"


def test_verify_as_prints_the_decision_and_exits_0_same_4_different_5_no_face(home, tmp_path):
    probe = save_photo(tmp_path / "probe.png", [ALICE], 7)
    same = run(home, "verify", probe, "--as", "alice")
    assert same.exit_code == 0 and "SAME person as alice" in same.output and "default threshold" in same.output
    assert f"threshold {DEFAULT_THRESHOLDS['sface']:.4f}" in same.output
    other = run(home, "verify", probe, "--as", "bob", "--json")
    assert other.exit_code == 4
    d = json.loads(other.output)
    assert (
        d["same"] is False and d["calibrated"] is False and d["score"] < d["threshold"] == DEFAULT_THRESHOLDS["sface"]
    )
    empty = tmp_path / "wall.png"
    Image.new("RGB", (80, 60)).save(empty)
    none = run(home, "verify", empty, "--as", "alice")
    assert none.exit_code == 5 and "no face found" in none.output
    pair = run(home, "verify", probe, tmp_path / "photos" / "alice0.png")
    assert pair.exit_code == 0 and "SAME person:" in pair.output
    assert run(home, "verify", probe).exit_code == 2
    unknown = run(home, "verify", probe, "--as", "zoe")
    assert unknown.exit_code == 1 and "no identity named 'zoe'" in unknown.output


def test_identify_list_forget(home, tmp_path):
    group = save_photo(tmp_path / "group.png", [BOB, CAROL], 3, sizes=[56, 44])
    r = run(home, "identify", group, "-k", "2", "--json")
    assert r.exit_code == 0, r.output
    assert [f["identity"] for f in json.loads(r.output)["faces"]] == ["bob", "unknown"]
    stranger = run(home, "identify", save_photo(tmp_path / "carol.png", [CAROL], 1))
    assert stranger.exit_code == 4 and ": unknown" in stranger.output
    listed = json.loads(run(home, "list", "--json").output)
    assert [(p["name"], p["faces"]) for p in listed["people"]] == [("alice", 2), ("bob", 2)]
    forgot = run(home, "forget", "alice")
    assert forgot.exit_code == 0 and "forgot alice (2 faces)" in forgot.output
    assert [p.name for p in FaceGallery(home).identities()] == ["bob"]
    assert run(home, "forget", "alice").exit_code == 1


def test_index_then_search_and_rerun_reads_nothing(tmp_path, fake_gallery):
    home, photos = tmp_path / "home", tmp_path / "photos"
    save_photo(photos / "ab.png", [ALICE, BOB], 0)
    save_photo(photos / "c.png", [CAROL], 1)
    (photos / "broken.png").write_bytes(b"not a png")
    r = run(home, "index", photos)
    assert r.exit_code == 3 and "3 faces" in r.output and "broken.png" in r.output
    again = run(home, "index", photos, "--json")
    assert again.exit_code == 0 and json.loads(again.output)["embedded"] == 0
    found = run(home, "search", save_photo(tmp_path / "q.png", [CAROL], 5), "-k", "1", "--json")
    assert found.exit_code == 0
    assert [Path(q["hits"][0]["path"]).name for q in json.loads(found.output)] == ["c.png"]


def test_calibrate_and_eval_on_a_pairs_file(tmp_path, fake_gallery):
    root = tmp_path / "lfw"
    for p, name in enumerate(["Ann", "Ben", "Cat", "Dan"]):
        for v in range(1, 4):
            save_photo(root / name / f"{name}_{v:04d}.jpg", [10 + p], v)
    pairs = root / "pairs.txt"
    pairs.write_text("2 2\nAnn 1 2\nBen 1 3\nAnn 1 Ben 2\nCat 1 Dan 1\nCat 2 3\nDan 1 2\nAnn 3 Cat 3\nBen 2 Dan 3\n")
    home = tmp_path / "home"
    r = run(home, "calibrate", pairs, "--far", "0.25", "--json")
    assert r.exit_code == 0, r.output
    cal = json.loads(r.output)["calibration"]
    assert cal["far"] <= 0.25 and cal["tar"] == 1.0
    assert FaceGallery(home).settings.threshold == pytest.approx(cal["threshold"])
    ev = run(home, "eval", pairs)
    assert ev.exit_code == 0 and "8 pairs" in ev.output and "accuracy      1.0000" in ev.output


def test_a_backend_change_needs_reembed(home, tmp_path):
    assert FaceGallery(home, runtime=FAST_RUNTIME).settings.backend == "sface"  # a new gallery's default
    r = run(home, "--backend", "lookalike", "list")
    assert r.exit_code == 1 and "--reembed" in r.output
    ok = run(home, "--backend", "lookalike", "--reembed", "list")
    assert ok.exit_code == 0, ok.output
    assert FaceGallery(home, runtime=FAST_RUNTIME).settings.backend == "lookalike"
    r = run(home, "--crop-size", "64", "list")
    assert r.exit_code == 1 and "--reembed" in r.output
    ok = run(home, "--crop-size", "64", "--reembed", "list")
    assert ok.exit_code == 0, ok.output
    settings = FaceGallery(home, runtime=FAST_RUNTIME).settings
    assert settings.crop_size == 64 and settings.backend == "lookalike"  # stored settings are kept


def test_weights_of_another_kind_of_network_are_one_line_exit_1(tmp_path, fake_gallery):
    from retrieval.checkpoint import save_checkpoint

    seg = tmp_path / "seg.pt"
    save_checkpoint(seg, {"kind": "unet", "image_size": 64}, {})
    r = run(tmp_path / "home", "--weights", seg, "enroll", "ann", tmp_path / "ann.png")
    assert r.exit_code == 1 and "segmentation network, not an embedding network" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_a_pairs_file_without_folds_is_taken_by_eval_as_by_calibrate(tmp_path, fake_gallery):
    """One rule for pairs files: without a header (one fold), `faces eval` deals the pairs into folds."""
    root = tmp_path / "lfw"
    for p, name in enumerate(["Ann", "Ben", "Cat", "Dan"]):
        for v in range(1, 4):
            save_photo(root / name / f"{name}_{v:04d}.jpg", [10 + p], v)
    pairs = root / "pairs.txt"
    pairs.write_text("Ann 1 2\nBen 1 3\nAnn 1 Ben 2\nCat 1 Dan 1\nCat 2 3\nDan 1 2\nAnn 3 Cat 3\nBen 2 Dan 3\n")
    home = tmp_path / "home"
    assert run(home, "calibrate", pairs, "--far", "0.25").exit_code == 0
    ev = run(home, "eval", pairs)
    assert ev.exit_code == 0, ev.output
    assert "8 folds, dealt: the file has none of its own" in ev.output
