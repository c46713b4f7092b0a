"""Pair verification metrics, numpy in and out, and the LFW pairs-file format.

A verification benchmark is a list of image pairs, each labelled "same identity" or not, and a score
per pair where a higher score means "more similar". From these we compute the ROC curve (false
accept rate against true accept rate), its area, the TAR at a fixed FAR, the accuracy of a
threshold, and the LFW protocol: a k-fold accuracy where each fold's threshold is chosen on the
other folds only.

Used by the evaluation command and the face benchmarks alike.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# LFW pairs file
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One verification pair: two image paths, whether they show the same identity, and its fold."""

    a: str
    b: str
    same: bool
    fold: int


def _lfw_path(name: str, index_field: str, ext: str, image_root: str | Path | None, where: str) -> str:
    """``Name``, ``"3"`` -> ``Name/Name_0003.jpg`` (joined with ``image_root`` when given)."""
    try:
        index = int(index_field)
    except ValueError:
        raise ValueError(f"{where}: image number {index_field!r} is not an integer") from None
    if index < 1:
        raise ValueError(f"{where}: image number {index} must be >= 1 (LFW numbers images from 1)")
    rel = f"{name}/{name}_{index:04d}{ext}"
    return rel if image_root is None else os.path.join(os.fspath(image_root), rel)


def _parse_header(fields: list[str]) -> tuple[int, int] | None:
    """``["10", "300"]`` -> ``(10, 300)``; ``["1100"]`` -> ``(1, 1100)``; anything else -> ``None``."""
    if len(fields) not in (1, 2) or not all(f.isdigit() for f in fields):
        return None
    if len(fields) == 1:
        return 1, int(fields[0])
    return int(fields[0]), int(fields[1])


def read_pairs_file(path: str | Path, image_root: str | Path | None = None, ext: str = ".jpg") -> list[Pair]:
    """Read an LFW-style pairs file into a list of :class:`Pair`.

    The official View 2 format (``pairs.txt``) starts with a header ``n_folds  n_per_class``
    (e.g. ``10 300``); then each fold holds ``n_per_class`` "same" lines ``Name i j`` followed by
    ``n_per_class`` "different" lines ``Name1 i Name2 j``. A one-number header (``pairsDevTrain.txt``
    style) means one fold. Without a header, every line is read by its field count (3: same,
    4: different) and all pairs fall in fold 0. Fields are whitespace separated; blank lines are
    skipped. Image number ``i`` (1-based) maps to ``Name/Name_%04d<ext>``, relative, or joined with
    ``image_root`` when given. Folds are numbered from 0.

    Raises ``ValueError`` naming the line number on a malformed line, and when a headed file holds
    the wrong number of pairs.
    """
    path = Path(path)
    lines = [(no, line.split()) for no, line in enumerate(path.read_text().splitlines(), start=1)]
    lines = [(no, fields) for no, fields in lines if fields]
    if not lines:
        raise ValueError(f"{path}: no pairs in file")

    header = _parse_header(lines[0][1])
    if header is not None:
        n_folds, n_per_class = header
        if n_folds < 1 or n_per_class < 1:
            raise ValueError(f"{path} line {lines[0][0]}: header needs positive counts, got {n_folds} {n_per_class}")
        lines = lines[1:]
        expected = n_folds * 2 * n_per_class
        if len(lines) != expected:
            raise ValueError(
                f"{path}: header says {n_folds} folds x 2 x {n_per_class} pairs = {expected} lines, found {len(lines)}"
            )

    pairs: list[Pair] = []
    for k, (no, fields) in enumerate(lines):
        where = f"{path} line {no}"
        if header is not None:
            fold, within = divmod(k, 2 * header[1])
            want = 3 if within < header[1] else 4
            if len(fields) != want:
                kind = "same" if want == 3 else "different"
                raise ValueError(
                    f"{where}: expected a '{kind}' pair with {want} fields, got {len(fields)}: {' '.join(fields)!r}"
                )
        else:
            fold = 0
        if len(fields) == 3:
            name, i, j = fields
            pairs.append(
                Pair(_lfw_path(name, i, ext, image_root, where), _lfw_path(name, j, ext, image_root, where), True, fold)
            )
        elif len(fields) == 4:
            name1, i, name2, j = fields
            pairs.append(
                Pair(
                    _lfw_path(name1, i, ext, image_root, where),
                    _lfw_path(name2, j, ext, image_root, where),
                    False,
                    fold,
                )
            )
        else:
            raise ValueError(
                f"{where}: expected 3 fields (same) or 4 fields (different), got {len(fields)}: {' '.join(fields)!r}"
            )
    log.debug("read %d pairs (%d same) from %s", len(pairs), sum(p.same for p in pairs), path)
    return pairs


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _check(scores: np.ndarray, same: np.ndarray, need_both: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``scores (N,)`` float and ``same (N,)`` bool."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and same must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and same must have the same length, got {s.shape[0]} and {y.shape[0]}")
    if s.size == 0:
        raise ValueError("need at least one pair")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("same must be boolean (or 0/1)")
        y = y.astype(bool)
    if need_both and (y.all() or not y.any()):
        raise ValueError("need both 'same' and 'different' pairs")
    return s, y


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of ``scores (N,)`` (higher = more similar) against labels ``same (N,)`` bool.

    Returns ``far (K,)``, ``tar (K,)`` and ``thresholds (K,)``, with ``K`` = number of distinct scores
    + 1. Point ``k`` predicts "same" for ``score >= thresholds[k]``; thresholds decrease from
    ``+inf`` (nothing accepted: FAR = TAR = 0) to the lowest score (everything accepted: FAR = TAR = 1),
    so ``far`` and ``tar`` are non-decreasing.
    """
    s, y = _check(scores, same, need_both=True)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of equal scores: accepting down to that score includes the whole tie.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    tar = np.r_[0.0, tp / y.sum()]
    far = np.r_[0.0, fp / (~y).sum()]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return far, tar, thresholds


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve of ``scores (N,)`` against ``same (N,)``.

    Equal to the Mann-Whitney probability that a random "same" pair scores above a random
    "different" pair, ties counted half; computed from mid-ranks in ``O(N log N)``.
    """
    s, y = _check(scores, same, need_both=True)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Mid-rank (1-based) of each distinct value: ranks below it + (count + 1) / 2.
    midranks = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = midranks[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """Highest TAR whose FAR is at most ``far``, over ``scores (N,)`` and ``same (N,)``.

    Returns ``(tar, threshold)``: "same" is predicted for ``score >= threshold``. When no finite
    threshold keeps the FAR low enough (the top "different" score ties with or beats every "same"
    score), the answer is ``(0.0, inf)``.
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], got {far}")
    fars, tars, thresholds = roc_curve(scores, same)
    k = int(np.searchsorted(fars, far, side="right")) - 1  # last point with FAR <= far (fars[0] == 0)
    return float(tars[k]), float(thresholds[k])


def accuracy(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs ``scores (N,)``, ``same (N,)`` classified right, predicting "same" for ``score >= threshold``."""
    s, y = _check(scores, same)
    return float(np.mean((s >= threshold) == y))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold maximising :func:`accuracy` on ``scores (N,)``, ``same (N,)``.

    Candidates are the midpoints between adjacent distinct sorted scores, plus ``-inf`` (accept
    everything) and ``+inf`` (accept nothing); among equally accurate candidates the lowest wins.
    """
    s, y = _check(scores, same)
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Candidate c accepts the sorted pairs from cut[c] on; cuts fall only between distinct scores.
    cuts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1, s.size]
    neg_below = np.r_[0, np.cumsum(~y_sorted)][cuts]  # "different" pairs rejected
    pos_above = y.sum() - np.r_[0, np.cumsum(y_sorted)][cuts]  # "same" pairs accepted
    correct = neg_below + pos_above
    c = int(np.argmax(correct))
    if c == 0:
        return float("-inf")
    if c == len(cuts) - 1:
        return float("inf")
    return float((s_sorted[cuts[c] - 1] + s_sorted[cuts[c]]) / 2.0)


#: Folds a pairs file without folds of its own (no header, or a one-number header) is dealt into.
DEFAULT_FOLDS = 10


def deal_folds(same: np.ndarray, k: int = DEFAULT_FOLDS) -> np.ndarray:
    """Folds for pairs that have none: ``same (N,)`` bool -> ``folds (N,)`` int in ``[0, min(k, N))``.

    The "same" pairs, then the "different" ones, are dealt in file order to folds 0, 1, 2, ... in turn (one
    count running through both), so every fold gets its share of each kind and the result is reproducible.
    """
    y = np.asarray(same, dtype=bool)
    k = max(1, min(k, y.size))
    order = np.r_[np.nonzero(y)[0], np.nonzero(~y)[0]]
    folds = np.empty(y.size, dtype=np.int64)
    folds[order] = np.arange(y.size) % k
    return folds


def kfold_verification(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, float | np.ndarray]:
    """The LFW protocol over ``scores (N,)``, ``same (N,)`` bool and ``folds (N,)`` int.

    For each fold, the threshold is chosen (:func:`best_threshold`) on all the other folds and the
    accuracy measured on this fold. Pairs that all lie in one fold (a pairs file without folds: no header,
    or a one-number header) are first dealt into :data:`DEFAULT_FOLDS` folds (:func:`deal_folds`; fewer
    when there are fewer pairs), and ``folds_dealt`` says so. Returns:

    - ``accuracy``: mean of the per-fold accuracies; ``accuracy_std``: their standard deviation
      (population, ``ddof=0``, as LFW tables usually report);
    - ``fold_ids (F,)``, ``fold_accuracies (F,)``, ``fold_thresholds (F,)``, in sorted fold order;
      ``folds_dealt``: whether the folds were dealt by :func:`deal_folds`;
    - ``auc``, ``tar@far=1e-3``, ``threshold@far=1e-3``, ``tar@far=1e-2``, ``threshold@far=1e-2``:
      computed over all pairs at once.
    """
    s, y = _check(scores, same, need_both=True)
    f = np.asarray(folds)
    if f.shape != s.shape:
        raise ValueError(f"folds must have shape {s.shape}, got {f.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"folds must be integers, got dtype {f.dtype}")
    fold_ids = np.unique(f)
    dealt = fold_ids.size < 2
    if dealt:
        if s.size < 2:
            raise ValueError(f"need at least 2 pairs to measure the k-fold accuracy, got {s.size}")
        f = deal_folds(y)
        fold_ids = np.unique(f)
        log.info("the pairs have no folds of their own: dealt into %d folds", fold_ids.size)

    accs = np.empty(fold_ids.size)
    thrs = np.empty(fold_ids.size)
    for k, fold in enumerate(fold_ids):
        test = f == fold
        thrs[k] = best_threshold(s[~test], y[~test])
        accs[k] = accuracy(s[test], y[test], thrs[k])
        log.debug("fold %s: threshold %.6g, accuracy %.4f", fold, thrs[k], accs[k])

    out: dict[str, float | np.ndarray] = {
        "accuracy": float(accs.mean()),
        "accuracy_std": float(accs.std()),
        "fold_ids": fold_ids,
        "fold_accuracies": accs,
        "fold_thresholds": thrs,
        "folds_dealt": dealt,
        "auc": roc_auc(s, y),
    }
    for far, name in ((1e-3, "1e-3"), (1e-2, "1e-2")):
        tar, thr = tar_at_far(s, y, far)
        out[f"tar@far={name}"] = tar
        out[f"threshold@far={name}"] = thr
    return out
