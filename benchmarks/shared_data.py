"""Loaders of the shared datasets the benchmarks read (``../shared/data``; its README gives each one's origin
and ground truth): where each lives, and how its images are labelled.

- COIL-20 (:data:`COIL20`): ``obj<O>__<P>.png``, object ``O`` in pose ``P``; same object = relevant.
- LFW deep-funneled (:data:`LFW`) and its View 2 ``pairs.txt`` (:data:`LFW_PAIRS`): ``NAME/NAME_0001.jpg``,
  identity = folder name; 10 folds of pairs, disjoint in people (:data:`LFW_HALVES`: folds 1-5 and 6-10).
- Weizmann horses (:data:`WEIZMANN`): ``rgb/`` photos with ``figure_ground/`` masks, split by
  ``segmentation.data.split_pairs`` into 246 training and 82 test photos.

Every loader takes the folder as an argument (tests pass a small synthetic one); without it, the shared copy is
used, and a missing dataset stops the benchmark with a message that says where it was looked for.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks.common import require_dataset
from retrieval.verification import Pair, read_pairs_file
from segmentation.data import MaskedImage, find_pairs, split_pairs

COIL20 = "coil-20/coil-20-proc"
LFW = "lfw/lfw-deepfunneled"
LFW_PAIRS = "lfw/pairs.txt"
WEIZMANN = "weizmann-horse/weizmann_horse_db"
#: The two halves of LFW View 2, by 0-based fold.
LFW_HALVES = {"folds 1-5": range(0, 5), "folds 6-10": range(5, 10)}

_COIL_NAME = re.compile(r"obj(\d+)__")


# --------------------------------------------------------------------------------------------- COIL-20


def coil20_object(path: str | Path) -> int:
    """The object id ``O`` of a COIL-20 file ``obj<O>__<P>.png``."""
    found = _COIL_NAME.search(Path(path).name)
    if found is None:
        raise ValueError(f"{path} is not named like a COIL-20 image (obj<O>__<P>.png)")
    return int(found.group(1))


def coil20(folder: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """COIL-20's images as the engine scans them (``indexer.scan.scan_folder``) and each one's object id."""
    from indexer.scan import scan_folder

    files = [f.path for f in scan_folder(folder or require_dataset(COIL20)).files]
    return files, np.array([coil20_object(f) for f in files], dtype=int)


# --------------------------------------------------------------------------------------------- LFW


class LfwPairs(NamedTuple):
    root: Path  # the images, NAME/NAME_0001.jpg
    pairs_file: Path
    pairs: list[Pair]  # paths under root


def lfw_pairs(root: str | Path | None = None, pairs_file: str | Path | None = None) -> LfwPairs:
    """LFW View 2's pairs over the images under ``root`` (default: the shared deep-funneled photos; e.g. a folder
    of aligned crops in the same layout) from ``pairs_file`` (default: the shared ``pairs.txt``)."""
    root = Path(root) if root is not None else require_dataset(LFW)
    pairs_file = Path(pairs_file) if pairs_file is not None else require_dataset(LFW_PAIRS)
    return LfwPairs(root, pairs_file, read_pairs_file(pairs_file, root))


def in_folds(pairs: Iterable[Pair], folds: Collection[int]) -> list[Pair]:
    """The pairs of ``folds`` (0-based)."""
    return [p for p in pairs if p.fold in folds]


def pair_paths(pairs: Iterable[Pair]) -> list[str]:
    """Every image of ``pairs`` once, sorted."""
    return sorted({path for p in pairs for path in (p.a, p.b)})


def people_images(root: str | Path, pairs: Iterable[Pair], min_images: int = 2) -> tuple[list[str], list[str]]:
    """Every image of every person named in ``pairs`` who has at least ``min_images`` under ``root`` -> image
    paths and each one's person, people sorted by name (a training set disjoint from the other folds' people)."""
    root = Path(root)
    files: list[str] = []
    labels: list[str] = []
    for person in sorted({Path(path).parent.name for path in pair_paths(pairs)}):
        images = sorted((root / person).glob("*.jpg"))
        if len(images) >= min_images:
            files += [str(i) for i in images]
            labels += [person] * len(images)
    return files, labels


def people_with_photos(root: str | Path | None, people: int, photos: int = 3) -> list[tuple[str, list[Path]]]:
    """The first ``people`` people (sorted by name) under ``root`` (default: the shared deep-funneled photos)
    whose photos ``NAME_0001.jpg`` .. ``NAME_<photos>.jpg`` all exist -> ``(name, those photos)``."""
    out: list[tuple[str, list[Path]]] = []
    for d in sorted(Path(root if root is not None else require_dataset(LFW)).iterdir()):
        files = [d / f"{d.name}_{i:04d}.jpg" for i in range(1, photos + 1)]
        if all(p.exists() for p in files):
            out.append((d.name, files))
            if len(out) == people:
                break
    return out


# --------------------------------------------------------------------------------------------- Weizmann horses


def weizmann_photos(root: str | Path | None = None) -> Path:
    """The folder of the 328 Weizmann horse photos (``rgb/``)."""
    return Path(root) / "rgb" if root is not None else require_dataset(f"{WEIZMANN}/rgb")


def weizmann_split(root: str | Path | None = None) -> tuple[list[MaskedImage], list[MaskedImage]]:
    """The Weizmann horses' fixed ``(training, test)`` photo/mask pairs (``segmentation.data.split_pairs``)."""
    return split_pairs(find_pairs(root if root is not None else require_dataset(WEIZMANN)))
