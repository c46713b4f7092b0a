"""Training data from folders: labelled images split by class (or a validation folder), image + mask pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.errors import LookalikeError
from indexer.evaluate import LabelError
from indexer.settings import SettingsError
from indexer.train_data import mask_pair_data, split_classes, training_data

from .conftest import draw_image


def make_classes(root: Path, n_classes: int, per_class: int = 3, seed: int = 0) -> Path:
    for c in range(n_classes):
        (root / f"c{c}").mkdir(parents=True)
        for j in range(per_class):
            draw_image(seed + 10 * c + j, (40, 32)).save(root / f"c{c}" / f"{j}.png")
    return root


class Counting:
    def __init__(self) -> None:
        self.total, self.seen, self.finished = 0, 0, 0

    def start(self, total: int, description: str) -> None:
        self.total += total

    def advance(self, n: int = 1) -> None:
        self.seen += n

    def finish(self) -> None:
        self.finished += 1


def test_a_share_of_the_classes_is_held_out_for_validation(tmp_path):
    data = make_classes(tmp_path / "data", 6)
    (data / "c0" / "broken.png").write_bytes(b"not a png")
    progress = Counting()
    sets = training_data(data, val_fraction=0.34, seed=0, max_side=32, workers=0, progress=progress)
    train, val = set(sets.train.labels.tolist()), set(sets.val.labels.tolist())
    assert len(train) == 4 and len(val) == 2 and not train & val
    assert len(sets.train) + len(sets.val) == 18
    assert [Path(p).name for p, _ in sets.skipped] == ["broken.png"]
    assert (progress.total, progress.seen, progress.finished) == (19, 19, 1)
    assert max(sets.train.load(0).shape[:2]) == 32
    again = training_data(data, val_fraction=0.34, seed=0, max_side=32, workers=0)
    assert set(again.val.labels.tolist()) == val  # seeded


def test_no_validation_when_the_share_is_zero_or_classes_are_too_few(tmp_path):
    data = make_classes(tmp_path / "data", 3)
    assert training_data(data, val_fraction=0.0, max_side=32, workers=0).val is None
    assert training_data(data, val_fraction=0.2, max_side=32, workers=0).val is None  # 3 classes: keep them all


def test_a_validation_folder_validates_and_labels_can_come_from_names(tmp_path):
    data = make_classes(tmp_path / "data", 3)
    val = make_classes(tmp_path / "val", 2, seed=500)
    sets = training_data(data, val_folder=val, label_regex=r"^(\d)\.png", max_side=32, workers=0)
    assert len(sets.train) == 9 and len(sets.val) == 6
    assert sorted(set(sets.train.labels.tolist())) == ["0", "1", "2"]


def test_mistakes_are_library_errors(tmp_path):
    with pytest.raises(LabelError, match="no images found"):
        training_data(tmp_path, max_side=32)
    data = make_classes(tmp_path / "data", 2)
    with pytest.raises(LabelError, match="does not match"):
        training_data(data, label_regex=r"zzz(\d)", max_side=32)
    with pytest.raises(SettingsError, match="validation fraction"):
        split_classes(["a", "b"], 1.0)
    with pytest.raises(SettingsError, match=r"--label-regex 'obj\(\\d\+' is not a valid regular expression"):
        training_data(data, label_regex=r"obj(\d+", max_side=32)


def test_a_validation_share_rounded_up_to_two_classes_is_a_warning(caplog):
    labels = ["a", "b", "c", "d"] * 3
    with caplog.at_level("WARNING"):
        train, val = split_classes(labels, 0.1)
    assert len({labels[i] for i in val}) == 2 and len({labels[i] for i in train}) == 2
    assert "holding out 2 of the 4 classes for validation, not 0 (0.1 of them)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert len(split_classes(labels[:3], 0.1)[1]) == 0
    assert "no validation: 3 classes are too few" in caplog.text


def make_pairs(root: Path, n: int) -> Path:
    from PIL import Image

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        draw_image(i, (48, 40)).save(root / "images" / f"{i}.png")
        mask = Image.new("L", (48, 40), 0)
        mask.paste(255, (10, 10, 30, 30))
        mask.save(root / "masks" / f"{i}.png")
    return root


def test_mask_pairs_are_split_and_unreadable_ones_reported(tmp_path):
    data = make_pairs(tmp_path / "data", 5)
    (data / "images" / "9.png").write_bytes(b"not a png")
    (data / "masks" / "9.png").write_bytes(b"not a png")
    skipped: list[str] = []
    sets = mask_pair_data(data, val_fraction=0.4, image_size=16, on_skip=lambda pair, exc: skipped.append(pair.image))
    assert len(sets.train) + len(sets.val) == 5 and len(sets.val) >= 1
    assert [Path(p).name for p in skipped] == ["9.png"]
    assert max(sets.train.load(0)[0].shape[:2]) == 32  # training images shrunk to twice the image size
    assert mask_pair_data(data, val_fraction=0.0, on_skip=lambda pair, exc: None).val is None


def test_a_folder_without_masks_or_readable_pairs_is_a_library_error(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(LookalikeError, match="images/ \\+ masks/"):
        mask_pair_data(tmp_path / "photos")
    data = make_pairs(tmp_path / "data", 1)
    (data / "images" / "0.png").write_bytes(b"not a png")
    with pytest.raises(LookalikeError, match="no readable image \\+ mask pair"):
        mask_pair_data(data, on_skip=lambda pair, exc: None)
