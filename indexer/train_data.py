"""Labelled image folders as training data for :class:`retrieval.training.Trainer`.

Images are decoded once (longest side ``max_side``), kept in memory, and unreadable files are left out
and reported. Classes are split into training and validation classes, so validation measures what
matters for retrieval: images of classes the network has never seen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .pipeline import decoded

log = logging.getLogger(__name__)


class FolderImages:
    """``labels (N,)`` and ``load(i) -> (H, W, 3) uint8`` over decoded files (implements ``LabelledImages``)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[str], max_side: int, workers: int = 2,
                 on_progress: Callable[[int], None] | None = None) -> None:
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
        raise ValueError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    n_val = int(round(len(classes) * val_fraction))
    if val_fraction > 0 and n_val < 2:
        n_val = 2 if len(classes) >= 4 else 0
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


def read_labelled(folder: str | Path, label_regex: str | None, max_side: int, workers: int = 2,
                  on_progress: Callable[[int], None] | None = None) -> FolderImages:
    from .evaluate import labelled_files

    paths, labels = labelled_files(folder, label_regex)
    return FolderImages(paths, labels, max_side, workers, on_progress)
