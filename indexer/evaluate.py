"""Evaluation of a model on a labelled folder: every image a query against the rest, or queries vs a database.

Labels come from the layout most datasets use, one sub-folder per class (``DIR/<label>/...``), or from a
regular expression on the file name (its first group, e.g. ``obj(\\d+)__`` for COIL-20).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.metrics import query_database_metrics, retrieval_metrics

from .errors import DataError, SettingsError
from .masking import Masker
from .pipeline import embed_files
from .scan import scan_folder

if TYPE_CHECKING:
    from retrieval.model import Embedder

log = logging.getLogger(__name__)


class LabelError(DataError):
    """The folder's labels cannot be worked out; the message says why and what to do."""


def compile_label_regex(label_regex: str) -> re.Pattern[str]:
    """``label_regex`` compiled; a pattern that is not a valid regular expression raises :class:`SettingsError`
    saying where it is wrong."""
    try:
        return re.compile(label_regex)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise SettingsError(
            f"--label-regex '{label_regex}' is not a valid regular expression: {exc.msg}{where} "
            r"(e.g. 'obj(\d+)__': the first group is the label)"
        ) from None


def labelled_files(folder: str | Path, label_regex: str | None = None) -> tuple[list[str], list[str]]:
    """Image paths under ``folder`` and their labels (sub-folder name, or ``label_regex``'s first group)."""
    pattern = compile_label_regex(label_regex) if label_regex else None
    root = Path(folder).expanduser().resolve()
    files = [f.path for f in scan_folder(root).files]
    if not files:
        raise LabelError(f"no images found in {root}")
    labels: list[str] = []
    if pattern is not None:
        for p in files:
            m = pattern.search(Path(p).name)
            if m is None:
                raise LabelError(f"--label-regex {label_regex!r} does not match {Path(p).name}")
            labels.append(m.group(1) if m.groups() else m.group(0))
    else:
        for p in files:
            rel = Path(p).relative_to(root)
            if len(rel.parts) < 2:
                raise LabelError(
                    f"{rel} is not in a class sub-folder: use one sub-folder per class (DIR/<label>/image.jpg) "
                    "or give --label-regex"
                )
            labels.append(rel.parts[0])
    return files, labels


@dataclass
class EvalReport:
    metrics: dict[str, float]
    images: int
    classes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images_per_second: float = 0.0


def embed_paths(
    paths: list[str], embedder: Embedder, batch_size: int = 32, workers: int = 2, masker: Masker | None = None
) -> tuple[np.ndarray, list[bool], list[tuple[str, str]], float]:
    """Embed files through the indexing pipeline (masked by ``masker`` when given): ``(N, D)`` vectors (zeros
    where unreadable), which are readable, ``(path, reason)`` of the others, and images/s."""
    vecs = np.zeros((len(paths), embedder.dim), np.float32)
    ok = [False] * len(paths)
    skipped: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    for out in embed_files(paths, embedder, batch_size=batch_size, workers=workers, masker=masker):
        if out.error is not None:
            skipped.append((paths[out.index], out.error))
        else:
            assert out.vector is not None
            vecs[out.index], ok[out.index] = out.vector, True
    return vecs, ok, skipped, len(paths) / max(time.perf_counter() - t0, 1e-9)


def evaluate_folder(
    folder: str | Path,
    embedder: Embedder,
    *,
    queries: str | Path | None = None,
    label_regex: str | None = None,
    batch_size: int = 32,
    workers: int = 2,
    masker: Masker | None = None,
) -> EvalReport:
    """mAP, recall@k and precision@k of ``embedder`` on a labelled folder (unreadable images are left out)."""
    paths, labels = labelled_files(folder, label_regex)
    vecs, ok, skipped, speed = embed_paths(paths, embedder, batch_size, workers, masker)
    keep = np.array(ok)
    db_vecs, db_labels = vecs[keep], np.array(labels)[keep]
    if queries is None:
        metrics = retrieval_metrics(db_vecs, db_labels)
        n_images = int(keep.sum())
    else:
        q_paths, q_labels = labelled_files(queries, label_regex)
        q_vecs, q_ok, q_skipped, _ = embed_paths(q_paths, embedder, batch_size, workers, masker)
        skipped += q_skipped
        q_keep = np.array(q_ok)
        metrics = query_database_metrics(q_vecs[q_keep], np.array(q_labels)[q_keep], db_vecs, db_labels)
        n_images = int(keep.sum() + q_keep.sum())
    return EvalReport(
        metrics=metrics, images=n_images, classes=len(set(db_labels.tolist())), skipped=skipped, images_per_second=speed
    )


@dataclass
class PairsReport:
    #: accuracy (threshold chosen on the other folds), its std, ROC AUC, TAR at FAR 1e-3 / 1e-2, per-fold values.
    metrics: dict[str, object]
    pairs: int
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def evaluate_pairs(
    pairs_file: str | Path,
    image_root: str | Path,
    embedder: Embedder,
    *,
    batch_size: int = 32,
    workers: int = 2,
    masker: Masker | None = None,
) -> PairsReport:
    """Verification on a pairs file in the LFW format: cosine similarity of the two images' vectors,
    scored with the k-fold protocol (each fold's threshold chosen on the other folds).

    Pairs with an unreadable image are left out and listed in ``skipped``.
    """
    from retrieval.verification import read_pairs_file

    try:
        pairs = read_pairs_file(pairs_file, image_root)
    except (OSError, ValueError) as exc:
        raise DataError(str(exc)) from None
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    vecs, ok, skipped, _ = embed_paths(paths, embedder, batch_size, workers, masker)
    metrics, n_pairs = score_pairs(pairs, {p: v for p, v, good in zip(paths, vecs, ok) if good})
    return PairsReport(metrics=metrics, pairs=n_pairs, images=int(sum(ok)), skipped=skipped)


def score_pairs(pairs: list, vectors: dict[str, np.ndarray]) -> tuple[dict[str, object], int]:
    """LFW k-fold verification of ``pairs`` (``retrieval.verification.Pair``) by the cosine similarity of
    their images' vectors (``path -> (D,)`` unit vector). Pairs with an image missing from ``vectors`` are
    left out. Returns the metrics and the number of pairs scored."""
    from retrieval.verification import kfold_verification

    usable = [p for p in pairs if p.a in vectors and p.b in vectors]
    if not usable:
        raise DataError("no pair has two readable images")
    scores = np.array([float(vectors[p.a] @ vectors[p.b]) for p in usable])
    same = np.array([p.same for p in usable])
    folds = np.array([p.fold for p in usable])
    return kfold_verification(scores, same, folds), len(usable)
