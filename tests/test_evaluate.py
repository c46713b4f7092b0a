import json

import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.evaluate import LabelError, labelled_files

from .conftest import draw_image


def make_classes(root, n_classes=3, per_class=4):
    """Each class: one drawn picture under small colour shifts, so a real network can tell the classes apart."""
    for c in range(n_classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        base = draw_image(1000 + c, (96, 96))
        for j in range(per_class):
            base.rotate(2 * j).save(d / f"c{c}_{j}.png")
    return root


def test_labels_come_from_sub_folders_or_a_regex(tmp_path):
    make_classes(tmp_path / "data", 2, 2)
    paths, labels = labelled_files(tmp_path / "data")
    assert labels == ["class0", "class0", "class1", "class1"]
    _, by_name = labelled_files(tmp_path / "data", r"c(\d)_")
    assert by_name == ["0", "0", "1", "1"]
    with pytest.raises(LabelError, match="does not match"):
        labelled_files(tmp_path / "data", r"zzz(\d)")


def test_images_outside_class_folders_are_refused_with_advice(tmp_path):
    draw_image(1).save(tmp_path / "loose.png")
    with pytest.raises(LabelError, match="--label-regex"):
        labelled_files(tmp_path)


def test_eval_command_reports_retrieval_metrics(tmp_path):
    data = make_classes(tmp_path / "data")
    res = CliRunner().invoke(
        main, ["--workers", "0", "--device", "cpu", "eval", str(data), "--image-size", "64", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["images"] == 12 and out["classes"] == 3
    m = out["metrics"]
    # Slightly rotated copies of one picture per class: the nearest is always of the same class, and the
    # ranking is far better than chance (a random ranking gives an mAP of about 0.3 here).
    assert m["recall@1"] == 1.0 and m["mAP"] > 0.6
    assert 0.0 <= m["precision@10"] <= 1.0


def test_eval_with_a_query_folder_searches_the_database(tmp_path):
    data = make_classes(tmp_path / "data")
    queries = tmp_path / "queries" / "class1"
    queries.mkdir(parents=True)
    draw_image(1001, (96, 96)).rotate(3).save(queries / "q.png")
    res = CliRunner().invoke(
        main,
        ["--workers", "0", "eval", str(data), "--queries", str(tmp_path / "queries"), "--image-size", "64", "--json"],
    )
    m = json.loads(res.output)["metrics"]
    assert m["queries"] == 1 and m["recall@1"] == 1.0


def test_eval_pairs_scores_verification_with_the_kfold_protocol(tmp_path):
    people = tmp_path / "faces"
    for name, seed in [("Ann", 1), ("Bob", 2), ("Cid", 3), ("Dee", 4)]:
        (people / name).mkdir(parents=True)
        base = draw_image(seed, (96, 96))
        for i in (1, 2):  # the same picture twice: "same" pairs score the maximum, 1.0
            base.save(people / name / f"{name}_{i:04d}.jpg")
    lines = [
        "2\t2",
        "Ann\t1\t2",
        "Bob\t1\t2",
        "Ann\t1\tBob\t1",
        "Ann\t2\tBob\t2",
        "Cid\t1\t2",
        "Dee\t1\t2",
        "Cid\t1\tDee\t1",
        "Cid\t2\tDee\t2",
    ]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(
        main, ["--workers", "0", "eval", str(people), "--pairs", str(pairs), "--image-size", "64", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["pairs"] == 8 and out["images"] == 8
    m = out["metrics"]
    assert len(m["fold_accuracies"]) == 2 and 0.0 <= m["accuracy"] <= 1.0
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0
