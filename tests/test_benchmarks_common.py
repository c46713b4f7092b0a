"""The benchmarks' shared helpers: argument prelude, result files, timing, and the dataset loaders (on tiny
synthetic folders; nothing is read from the shared datasets)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import benchmarks.common as common
from benchmarks.common import BenchParser, result_path, set_threads, trained_config, write_json
from benchmarks.shared_data import (
    coil20,
    coil20_object,
    in_folds,
    lfw_pairs,
    pair_paths,
    people_images,
    people_with_photos,
    weizmann_photos,
    weizmann_split,
)
from benchmarks.timing import Stopwatch, interleaved, rate, warm_up


@pytest.fixture()
def torch_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- prelude


def test_prelude_adds_only_the_shared_options_asked_for_with_their_defaults() -> None:
    bare = BenchParser("doc").parse_args([])
    assert vars(bare) == {}
    args = BenchParser("doc", workers=2, precision=True, seed=0, out="x.json").parse_args([])
    assert (args.workers, args.precision, args.seed, args.out) == (2, "fp32", 0, "x.json")
    args = BenchParser("doc", workers=2, precision=True).parse_args(["--workers", "0", "--precision", "bf16"])
    assert (args.workers, args.precision) == (0, "bf16")
    with pytest.raises(SystemExit):
        BenchParser("doc", precision=True).parse_args(["--precision", "fp16"])


def test_prelude_out_is_a_path_when_its_default_is_one(tmp_path: Path) -> None:
    args = BenchParser("doc", out=tmp_path / "r.json").parse_args(["--out", "elsewhere.json"])
    assert args.out == Path("elsewhere.json") and isinstance(args.out, Path)


def test_prelude_lfw_data_defaults_to_the_shared_photos() -> None:
    assert BenchParser("doc", lfw_data=True).parse_args([]).data is None
    assert BenchParser("doc", lfw_data=True).parse_args(["--data", "crops"]).data == Path("crops")


def test_parsing_sizes_the_thread_pools(torch_threads: int) -> None:
    want = 1 if torch_threads != 1 else 2
    args = BenchParser("doc", threads=want).parse_args([])
    assert args.threads == want and torch.get_num_threads() == want
    BenchParser("doc", threads=7).parse_args(["--threads", str(torch_threads)])
    assert torch.get_num_threads() == torch_threads


def test_set_threads_refuses_an_unknown_pool() -> None:
    with pytest.raises(ValueError, match="known: torch, opencv, faiss"):
        set_threads(1, ["torch", "mkl"])


def test_prelude_keeps_the_docstring_as_written() -> None:
    doc = "First line.\n\n    python -m benchmarks.x --flag   # indented example\n"
    assert "    python -m benchmarks.x --flag   # indented example" in BenchParser(doc).format_help()


# --------------------------------------------------------------------------------------------- results


def test_results_go_by_name_into_the_results_folder_and_by_path_anywhere(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    assert result_path("a.json") == tmp_path / "results" / "a.json"
    written = write_json("a.json", {"x": 1})
    assert json.loads(written.read_text()) == {"x": 1} and json.loads(capsys.readouterr().out) == {"x": 1}
    elsewhere = tmp_path / "deep" / "b.json"
    assert write_json(elsewhere, {"y": [1, 2]}, echo=False) == elsewhere
    assert json.loads(elsewhere.read_text()) == {"y": [1, 2]} and capsys.readouterr().out == ""


def test_machine_lists_extras_after_the_common_entries() -> None:
    info = common.machine(bf16_native=False)
    assert {"python", "torch", "cpus", "torch_threads", "processor"} <= set(info)
    assert list(info)[-1] == "bf16_native"


def test_trained_config_points_at_the_checkpoint_with_overrides(tmp_path: Path) -> None:
    from retrieval.checkpoint import save_checkpoint
    from retrieval.config import ModelConfig

    path = tmp_path / "net.pt"
    save_checkpoint(path, ModelConfig(pooling="mac", image_size=96).to_dict(), {"w": torch.zeros(1)})
    config = trained_config(path, image_size=64)
    assert (config.weights, config.pooling, config.image_size) == (str(path), "mac", 64)


def test_a_missing_dataset_stops_with_where_it_was_looked_for(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(common, "SHARED_DATA", tmp_path)
    with pytest.raises(SystemExit, match="dataset missing: .*coil-20"):
        coil20()


# --------------------------------------------------------------------------------------------- timing


def test_stopwatch_sums_its_blocks_and_keeps_each_lap() -> None:
    clock = Stopwatch()
    for _ in range(3):
        time.sleep(0.001)  # outside: not counted
        with clock:
            time.sleep(0.002)
    assert len(clock.laps) == 3 and all(lap >= 0.002 for lap in clock.laps)
    assert clock.seconds == pytest.approx(sum(clock.laps))
    with Stopwatch() as once:
        pass
    assert once.seconds >= 0 and len(once.laps) == 1


def test_rate_rounds_and_survives_no_time() -> None:
    assert rate(10, 4.0) == 2.5
    assert rate(10, 3.0, 2) == 3.33
    assert rate(5, 0.0) == float("inf") and rate(5, 0.0, 1) == float("inf")


def test_warm_up_returns_the_first_result_and_stops_after_a_slow_pass() -> None:
    calls: list[int] = []

    def step() -> int:
        calls.append(len(calls))
        return len(calls)

    first, seconds = warm_up(step, passes=3)
    assert (first, len(calls)) == (1, 3) and seconds >= 0
    calls.clear()
    assert warm_up(step, passes=0)[0] == 1 and len(calls) == 1  # always at least one pass
    calls.clear()
    warm_up(lambda: (time.sleep(0.002), step())[1], passes=5, max_seconds=0.001)
    assert len(calls) == 1  # the first pass alone took longer than allowed


def test_interleaved_runs_take_turns_round_after_round() -> None:
    order: list[str] = []

    def run(name: str):
        return lambda: (order.append(name), f"{name}{order.count(name)}")[1]

    results = interleaved({"a": run("a"), "b": run("b"), "c": run("c")}, rounds=2)
    assert order == ["a", "b", "c", "a", "b", "c"]
    assert results == {"a": ["a1", "a2"], "b": ["b1", "b2"], "c": ["c1", "c2"]}
    assert interleaved({"a": run("a")}, rounds=0) == {"a": []}


# --------------------------------------------------------------------------------------------- datasets


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_coil20_labels_every_image_by_its_object(tmp_path: Path) -> None:
    for obj, pose in [(1, 0), (1, 5), (12, 0), (3, 71)]:
        _image(tmp_path / f"obj{obj}__{pose}.png")
    files, objects = coil20(tmp_path)
    assert sorted(Path(f).name for f in files) == ["obj12__0.png", "obj1__0.png", "obj1__5.png", "obj3__71.png"]
    assert [coil20_object(f) for f in files] == objects.tolist()
    assert sorted(objects.tolist()) == [1, 1, 3, 12]
    with pytest.raises(ValueError, match="not named like a COIL-20 image"):
        coil20_object("horse.png")


def _lfw(tmp_path: Path) -> tuple[Path, Path]:
    """People A (3 photos), B (1), C (2), D (2); two folds of one same + one different pair."""
    root = tmp_path / "lfw"
    for person, n in {"A": 3, "B": 1, "C": 2, "D": 2}.items():
        for i in range(1, n + 1):
            _image(root / person / f"{person}_{i:04d}.jpg")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t1\nA\t1\t2\nA\t3\tB\t1\nC\t1\t2\nC\t2\tD\t1\n")
    return root, pairs


def test_lfw_pairs_folds_and_the_people_of_a_half(tmp_path: Path) -> None:
    root, pairs_file = _lfw(tmp_path)
    got = lfw_pairs(root, pairs_file)
    assert got.root == root and got.pairs_file == pairs_file and len(got.pairs) == 4
    first = in_folds(got.pairs, range(0, 1))
    assert [(Path(p.a).name, Path(p.b).name, p.same, p.fold) for p in first] == [
        ("A_0001.jpg", "A_0002.jpg", True, 0),
        ("A_0003.jpg", "B_0001.jpg", False, 0),
    ]
    assert pair_paths(first) == [str(root / "A" / f"A_000{i}.jpg") for i in (1, 2, 3)] + [
        str(root / "B" / "B_0001.jpg")
    ]
    # B has a single photo: no use for training on pairs of the same person
    files, labels = people_images(root, first)
    assert labels == ["A", "A", "A"] and files == [str(root / "A" / f"A_000{i}.jpg") for i in (1, 2, 3)]
    files, labels = people_images(root, in_folds(got.pairs, [1]))
    assert labels == ["C", "C", "D", "D"]


def test_people_with_photos_takes_the_first_people_with_all_of_them(tmp_path: Path) -> None:
    root, _ = _lfw(tmp_path)
    assert [name for name, _ in people_with_photos(root, 5, photos=2)] == ["A", "C", "D"]
    ((name, photos),) = people_with_photos(root, 1, photos=3)
    assert name == "A" and [p.name for p in photos] == ["A_0001.jpg", "A_0002.jpg", "A_0003.jpg"]


def test_weizmann_split_holds_out_every_fourth_photo(tmp_path: Path) -> None:
    for i in range(8):
        _image(tmp_path / "rgb" / f"horse{i:03d}.png", 100)
        _image(tmp_path / "figure_ground" / f"horse{i:03d}.png", 255)
    train, test = weizmann_split(tmp_path)
    assert [p.image.name for p in test] == ["horse000.png", "horse004.png"]
    assert len(train) == 6 and not {p.image for p in train} & {p.image for p in test}
    assert weizmann_photos(tmp_path) == tmp_path / "rgb"
