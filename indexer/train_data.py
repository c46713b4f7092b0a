"""Folders as training data: labelled images for :class:`retrieval.training.Trainer`, image + mask pairs for
:class:`segmentation.training.SegTrainer`.

Images are decoded once (longest side ``max_side``), kept in memory, and unreadable files are left out
and reported. Classes are split into training and validation classes, so validation measures what
matters for retrieval: images of classes the network has never seen. :func:`training_data` and
:func:`mask_pair_data` turn a folder (and an optional validation folder) into the training and validation
sets; mistakes raise :class:`~indexer.evaluate.DataError` or :class:`~indexer.settings.SettingsError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError, SettingsError
from .evaluate import labelled_files
from .pipeline import decoded
from .store import NullProgress, Progress

if TYPE_CHECKING:
    from segmentation.data import MaskedImage
    from segmentation.training import InMemoryPairs

log = logging.getLogger(__name__)


class FolderImages:
    """``labels (N,)`` and ``load(i) -> (H, W, 3) uint8`` over decoded files (implements ``LabelledImages``)."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[str],
        max_side: int,
        workers: int = 2,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.paths: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._pixels: list[np.ndarray] = []
        kept_labels: list[str] = []
        for i, item in decoded(list(paths), max_side, workers=workers):
            if isinstance(item, str):
                self.skipped.append((paths[i], item))
            else:
                self.paths.append(paths[i])
                self._pixels.append(item.image.pixels)
                kept_labels.append(labels[i])
            if on_progress is not None:
                on_progress(1)
        self.labels = np.array(kept_labels)

    def __len__(self) -> int:
        return len(self._pixels)

    def load(self, i: int) -> np.ndarray:
        return self._pixels[i]


def split_classes(labels: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation items, split by class (seeded): ``-> (train_idx, val_idx)``."""
    if not 0.0 <= val_fraction < 1.0:
        raise SettingsError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    n_val = round(len(classes) * val_fraction)
    if val_fraction > 0 and n_val < 2:  # mAP on one class measures nothing
        asked = n_val
        n_val = 2 if len(classes) >= 4 else 0
        if n_val:
            log.warning(
                "holding out %d of the %d classes for validation, not %d (%g of them): validation needs at "
                "least 2 classes; pass --val-fraction 0 for none, or --val DIR",
                n_val,
                len(classes),
                asked,
                val_fraction,
            )
        else:
            log.warning(
                "no validation: %d classes are too few to hold 2 out and still train on 2 (give --val DIR)",
                len(classes),
            )
    rng = np.random.default_rng(seed)
    val_classes = set(rng.choice(classes, size=n_val, replace=False).tolist()) if n_val else set()
    is_val = np.array([label in val_classes for label in labels.tolist()], dtype=bool)
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]


class Subset:
    """A view of some items of a ``LabelledImages``."""

    def __init__(self, base: FolderImages, idx: np.ndarray) -> None:
        self.base, self.idx = base, np.asarray(idx)
        self.labels = base.labels[self.idx]

    def __len__(self) -> int:
        return len(self.idx)

    def load(self, i: int) -> np.ndarray:
        return self.base.load(int(self.idx[i]))


def read_labelled(
    folder: str | Path,
    label_regex: str | None,
    max_side: int,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
) -> FolderImages:
    paths, labels = labelled_files(folder, label_regex)
    return FolderImages(paths, labels, max_side, workers, on_progress)


@dataclass
class TrainingData:
    """What :func:`training_data` read: ``train`` and ``val`` (``None``: no validation) implement
    ``LabelledImages``; ``skipped`` lists ``(path, reason)`` of the files that could not be read."""

    train: FolderImages | Subset
    val: FolderImages | Subset | None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def training_data(
    folder: str | Path,
    *,
    val_folder: str | Path | None = None,
    label_regex: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_side: int = 224,
    workers: int = 2,
    progress: Progress | None = None,
) -> TrainingData:
    """The labelled images of ``folder`` (one sub-folder per class, or ``label_regex``'s first group on the
    file name), decoded with their longest side ``max_side``, as training and validation sets.

    Validation: the images of ``val_folder`` when given, else a seeded ``val_fraction`` of ``folder``'s
    classes (:func:`split_classes`; none when too few classes). ``progress`` sees every image read.
    """
    paths, labels = labelled_files(folder, label_regex)
    val_paths, val_labels = labelled_files(val_folder, label_regex) if val_folder is not None else ([], [])
    progress = progress or NullProgress()
    progress.start(len(paths) + len(val_paths), "reading")
    try:
        images = FolderImages(paths, labels, max_side, workers, progress.advance)
        if val_folder is not None:
            val_images = FolderImages(val_paths, val_labels, max_side, workers, progress.advance)
            return TrainingData(images, val_images, images.skipped + val_images.skipped)
    finally:
        progress.finish()
    train_idx, val_idx = split_classes(images.labels, val_fraction, seed)
    return TrainingData(Subset(images, train_idx), Subset(images, val_idx) if len(val_idx) else None, images.skipped)


@dataclass
class MaskPairData:
    """What :func:`mask_pair_data` read: image + mask pairs in memory (``val`` ``None``: no validation)."""

    train: InMemoryPairs
    val: InMemoryPairs | None


def mask_pair_data(
    folder: str | Path,
    *,
    val_folder: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 192,
    progress: Progress | None = None,
    on_skip: Callable[[MaskedImage, Exception], None] | None = None,
) -> MaskPairData:
    """The image + mask pairs of ``folder`` (``rgb/`` + ``figure_ground/``, or ``images/`` + ``masks/``) in
    memory, training images shrunk to twice ``image_size``, as training and validation sets.

    Validation: the pairs of ``val_folder`` when given, else a seeded ``val_fraction`` of ``folder``'s pairs.
    Unreadable pairs are passed to ``on_skip`` and left out; ``progress`` sees each set being read.
    """
    from segmentation.data import find_pairs
    from segmentation.training import InMemoryPairs, split_validation

    try:
        pairs = find_pairs(folder)
        if val_folder is not None:
            train_pairs, val_pairs = pairs, find_pairs(val_folder)
        else:
            train_pairs, val_pairs = split_validation(pairs, val_fraction, seed)
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None
    progress = progress or NullProgress()

    def read(pairs: list[MaskedImage], max_side: int | None, description: str) -> InMemoryPairs:
        progress.start(len(pairs), description)
        try:
            return InMemoryPairs.from_files(pairs, max_side, on_load=progress.advance, on_skip=on_skip)
        finally:
            progress.finish()

    train = read(train_pairs, 2 * image_size, "reading training pairs")
    val = read(val_pairs, None, "reading validation pairs") if val_pairs else None
    if len(train) == 0:
        raise DataError(f"no readable image + mask pair in {folder}")
    return MaskPairData(train, val if val is not None and len(val) else None)
