"""Duplicates across a collection: copies of the same picture, found, grouped, and given a keeper.

Three tiers:

- **exact**: files with the same content hash (byte-identical), found from the database alone, no network;
- **near**: edited copies (crops, resizes, rotations, colour, re-encoding, overlays, flips), found by the
  collection's vectors: a k-nearest-neighbour graph from the FAISS index (no N x N matrix), its edges at or
  above the threshold joined into connected components, then each component split so that every member of a
  group is itself within the threshold of the group's keeper (a guard against chains of barely-similar pairs:
  A ~ B ~ C does not put A and C together unless C ~ A too). With the calibrated threshold, candidate pairs
  must also pass the geometric check (:mod:`indexer.verify`), whose results are kept in the home by content
  (:data:`CHECKS_FILE`): a later run checks only pairs it has not seen;
- **similar** (asked for): pictures whose vectors score like copies but which fail the geometric check (bursts,
  the same scene or object shot again); every file kept, never acted on.

The keeper of a group is a file under the ``reference`` folder when there is one (reference files are never
touched), else the largest picture (pixel count), then the oldest file, then the first path.

The threshold means something: :func:`calibrate` makes seeded edited copies of a sample of the collection's
own images (:mod:`indexer.copy_edits`), embeds them with the collection's model, and picks the lowest threshold
at which the copies, scored against their original, are told apart from the best-scoring *other* image with
the target precision (default 0.99); the expected recall comes with it. It is stored with the collection.
Near-identical shots (bursts, the same scene a second later) score like copies: they are "similar", not
copies, and the calibration counts them as mistakes, which raises the threshold in collections full of them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from sqlalchemy import select

from . import db
from .copy_edits import edited_copy
from .db import INDEXED, ImageRecord
from .errors import LookalikeError, SettingsError
from .imageio import ImageLoadError, file_hash, load_image
from .knn_graph import DEFAULT_K, GRAPH_FILE, NpzFile, fingerprint, knn_edges, save_locked
from .store import NullProgress, Progress
from .vector_index import IndexConfig, VectorIndex
from .verify import Verifier, VerifySettings, check_pool

if TYPE_CHECKING:
    from .engine import Collection

__all__ = [
    "DEFAULT_K",
    "GRAPH_FILE",
    "CHECKS_FILE",
    "CheckedPairs",
    "Calibration",
    "DuplicateFile",
    "DuplicateGroup",
    "DuplicateReport",
    "DuplicateFinder",
    "FileTable",
    "CALIBRATION_SETTING",
    "calibrate_scores",
    "connected_components",
    "group_vectors",
    "group_exact",
    "knn_edges",
    "threshold_for_precision",
]

log = logging.getLogger(__name__)

#: The setting the calibration is stored in.
CALIBRATION_SETTING = "duplicates_calibration"
#: ``check(a, b)``: whether positions ``a`` and ``b`` are copies by some other evidence than their vectors.
PairCheck = Callable[[int, int], bool]
#: Verification: an image of the collection sharing this many inliers with a calibration original is a copy of
#: it already there (not "another image"). Different pictures rarely reach 40 under the spread-discounted count
#: (``indexer.verify``); copies reach hundreds. 100 (the old rule's value) made the calibration count copies of
#: benchmark originals as other images and ask for 84 inliers (recall 0.83); 50 asks for 46 (recall 0.88,
#: precision 0.995, ``benchmarks/bench_duplicates.py``).
EXISTING_COPY_INLIERS = 50
#: Verification: the candidate cosine lies this far below the lowest cosine of a calibration copy to its original
#: (never below ``CANDIDATE_FLOOR``). The check, not the cosine, carries the precision, and the k-NN graph bounds the
#: pairs checked, so the candidate cosine only needs to let through copies edited harder than the calibration's:
#: keeping all but 0.5% of its 600 copies (0.621) left copies hidden under a large caption (cosine 0.55-0.61, up to
#: 536 inliers) unchecked on the duplicates benchmark; 2% left 4% of its true pairs unchecked.
CANDIDATE_MARGIN = 0.1
CANDIDATE_FLOOR = 0.5


#: Calibration copies are made from the collection's pictures shrunk to at most this longest side (px).
CALIBRATION_SIDE = 768
#: Bins of a calibration copy's longest side (px) for the check's recall by size: ``(name, from, below)``.
SIDE_BINS = (("<100", 0, 100), ("100-299", 100, 300), (">=300", 300, 1 << 30))


#: The geometric check runs on this many threads (OpenCV releases the GIL); pairs are taken this many at a time
#: (a progress step), each thread taking ``CHECK_SLICE`` of them.
CHECK_WORKERS = max(1, min(8, os.cpu_count() or 1))
CHECK_CHUNK = 1024
CHECK_SLICE = 32

#: The geometric check's results kept in the home, so that a later run checks only pairs it has not seen.
CHECKS_FILE = "duplicates-checks.npz"


# --------------------------------------------------------------------------------------------- results


@dataclass
class DuplicateFile:
    id: int
    path: str
    #: cosine similarity to the group's keeper (1.0 for the keeper and for byte-identical copies)
    score: float
    keep: bool
    #: byte-identical to the keeper (same content hash)
    exact: bool = False
    #: under the reference folder: never touched
    reference: bool = False
    size: int | None = None
    mtime_ns: int | None = None
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class DuplicateGroup:
    #: the keeper first, then the others, most similar first
    files: list[DuplicateFile]
    #: ``(i, j, score)`` over ``files``: the k-NN graph's edges inside the group at or above the threshold
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    #: pictures alike, not copies (the ``similar`` tier): every file is kept, nothing is ever done to them
    similar: bool = False

    @property
    def tier(self) -> str:
        """``"similar"`` for alike pictures that are not copies; ``"exact"`` when every file is byte-identical
        to the keeper; else ``"near"``."""
        if self.similar:
            return "similar"
        return "exact" if all(f.exact or f.keep for f in self.files) and self._all_same_hash() else "near"

    def _all_same_hash(self) -> bool:
        hashes = {f.content_hash for f in self.files}
        return len(hashes) == 1 and None not in hashes

    @property
    def keeper(self) -> DuplicateFile:
        return self.files[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "files": [
                {"path": f.path, "score": round(f.score, 6), "keep": f.keep, "exact": f.exact, "id": f.id}
                | ({"reference": True} if f.reference else {})
                for f in self.files
            ],
            "pairs": [[i, j, round(s, 6)] for i, j, s in self.pairs],
        }


@dataclass
class Calibration:
    """A threshold chosen for a target precision on edited copies of the collection's own images."""

    threshold: float
    target_precision: float
    #: on the calibration copies: share of copies scoring at or above the threshold with their original
    expected_recall: float
    #: on the calibration copies: precision at the threshold
    expected_precision: float
    originals: int
    copies: int
    seed: int
    #: the model (and whitening) whose scores it was made for
    model: str
    created: float = field(default_factory=time.time)
    #: recall at the threshold by edit strength (0 light, 1 medium, 2 strong)
    recall_by_strength: dict[str, float] = field(default_factory=dict)
    #: the strict variant: every image but the original's re-encodes counted as a mistake, including copies
    #: already in the collection and near-identical shots (``--strict``)
    threshold_strict: float | None = None
    expected_recall_strict: float | None = None
    #: geometric verification (``indexer.verify``): a pair is a copy when its cosine is at least
    #: ``verify_candidate_threshold`` and one similarity transform explains ``verify_min_inliers`` of its
    #: local-feature matches; expected precision / recall of that rule on the calibration copies
    verify_candidate_threshold: float | None = None
    verify_min_inliers: int | None = None
    verify_expected_precision: float | None = None
    verify_expected_recall: float | None = None
    #: the verification rule the inlier count was calibrated for (``VerifySettings.describe()``)
    verify_rule: str | None = None
    #: the rule's recall by the copy's longest side (``"<100"``, ``"100-299"``, ``">=300"`` px): ``{"copies": n,
    #: "recall": r}``; small copies (thumbnails) have few local features and are found less often
    verify_recall_by_side: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class DuplicateReport:
    #: the threshold used (``None``: exact copies only); with verification, the candidates' threshold
    threshold: float | None
    calibration: Calibration | None
    groups: list[DuplicateGroup]
    #: images considered
    images: int
    #: indexed files no longer on disk (left out; ``lookalike index`` forgets them)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: ``{"candidate_threshold", "min_inliers"}`` when pairs were also checked geometrically
    verification: dict[str, Any] | None = None
    #: the ``similar`` tier, when asked for: groups of pictures whose vectors score like copies (at or above
    #: :attr:`similar_threshold`) but which fail the geometric check; never acted on
    similar: list[DuplicateGroup] = field(default_factory=list)
    similar_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; the ``similar`` tier's groups (all files kept) follow the copies' groups."""
        out = {
            "threshold": self.threshold,
            "verification": self.verification,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "images": self.images,
            "missing": self.missing,
            "groups": [g.to_dict() for g in self.groups + self.similar],
        }
        if self.similar_threshold is not None:
            out["similar_threshold"] = self.similar_threshold
        return out


# --------------------------------------------------------------------------------------------- pure functions


def threshold_for_precision(positives: np.ndarray, negatives: np.ndarray, target: float) -> tuple[float, float, float]:
    """The lowest threshold ``t`` such that, at ``t`` and at every higher candidate, ``#(pos >= t) /
    (#(pos >= t) + #(neg >= t)) >= target`` -> ``(t, recall, precision)`` at ``t``.

    ``positives``: scores of true copies with their original; ``negatives``: for each copy, the best score of
    an image that is not its original. When no threshold reaches the target, one above every score is returned
    (recall 0)."""
    pos = np.sort(np.asarray(positives, np.float64))
    neg = np.sort(np.asarray(negatives, np.float64))
    if pos.size == 0:
        raise ValueError("no positive scores to calibrate on")
    cand = np.unique(pos)[::-1]  # thresholds at positive scores, highest first
    tp = pos.size - np.searchsorted(pos, cand, side="left")
    fp = neg.size - np.searchsorted(neg, cand, side="left")
    prec = tp / np.maximum(tp + fp, 1)
    ok = prec >= target
    # the run of candidates from the top down that all reach the target
    bad = np.flatnonzero(~ok)
    last = (bad[0] - 1) if bad.size else cand.size - 1
    if last < 0:
        t = max(float(cand[0]), float(neg[-1]) if neg.size else -1.0) + 1e-6
        return t, 0.0, 1.0
    t = float(cand[last])
    return t, float(tp[last] / pos.size), float(prec[last])


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the graph on ``n`` nodes with edges ``a[i] - b[i]`` -> ``(n,)`` labels (each
    component labelled by its smallest node). Vectorised hooking + pointer jumping: no Python loop per edge."""
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    while a.size:
        pa, pb = parent[a], parent[b]
        diff = pa != pb
        if not diff.any():
            break
        a, b, pa, pb = a[diff], b[diff], pa[diff], pb[diff]
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        np.minimum.at(parent, hi, lo)
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return parent


@dataclass
class FileTable:
    """What the keeper rule and the exact tier need of each file, as arrays (``(N,)`` each): pixel count,
    mtime, whether it is a reference file, and the content hash as an integer code (-1: unknown)."""

    pixels: np.ndarray
    mtime_ns: np.ndarray
    reference: np.ndarray
    hash_code: np.ndarray

    @classmethod
    def plain(cls, n: int) -> FileTable:
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool), np.full(n, -1, np.int64))

    def keeper_rank(self) -> np.ndarray:
        """``(N,)`` rank, lower keeps: reference files first, then more pixels, then older, then position."""
        order = np.lexsort((np.arange(len(self.pixels)), self.mtime_ns, -self.pixels, ~self.reference))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        return rank


def group_exact(hash_code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every file to the first file with the same hash code (codes < 0 are left alone)."""
    code = np.asarray(hash_code, np.int64)
    pos = np.flatnonzero(code >= 0)
    if not pos.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = pos[np.argsort(code[pos], kind="stable")]
    c = code[order]
    starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
    first = np.repeat(order[starts], np.diff(np.r_[starts, len(order)]))
    same = first != order
    return first[same], order[same]


def group_vectors(
    vectors: np.ndarray,
    threshold: float,
    files: FileTable | None = None,
    index: VectorIndex | None = None,
    k: int = DEFAULT_K,
    id_to_pos: np.ndarray | None = None,
    progress: Progress | None = None,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    verify: PairCheck | None = None,
    workers: int = 1,
) -> list[tuple[np.ndarray, np.ndarray, list[tuple[int, int, float]]]]:
    """Groups of copies among ``vectors`` (``(N, D)``, L2-normalised) -> for each group ``(members, scores,
    pairs)``: positions with the keeper first (then by score, highest first), each one's score with the keeper,
    and the graph's edges inside the group as ``(i, j, score)`` over ``members``.

    ``index`` (ids = positions, or mapped by ``id_to_pos``) gives the k-NN graph; ``None`` builds one over
    ``vectors``; ``edges`` (``(a, b, score)`` positions) gives the graph directly. ``verify(a, b)``, when given,
    must also accept a pair (an edge, and a member with its keeper): e.g. a geometric check of the pixels; with
    ``workers`` > 1 the edges are checked on that many threads (``verify`` must then be thread-safe).
    Byte-identical files (``files.hash_code``) are always grouped together, at score 1."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = vectors.shape[0]
    files = files or FileTable.plain(n)
    if n < 2:
        return []
    if edges is not None:
        keep = edges[2] >= threshold
        a, b, s = edges[0][keep], edges[1][keep], edges[2][keep]
    else:
        if index is None:
            index = VectorIndex.build(np.arange(n, dtype=np.int64), vectors, IndexConfig(device="cpu"))
            id_to_pos = None
        a, b, s = knn_edges(index, vectors, threshold, k, id_to_pos, progress=progress)
    with check_pool(workers) if verify is not None and workers > 1 else contextlib.nullcontext() as pool:
        if verify is not None and a.size:
            ok = _check_pairs(verify, a, b, pool, progress)
            a, b, s = a[ok], b[ok], s[ok]
        return _components(n, a, b, s, vectors, threshold, files, verify, pool)


def _check_pairs(
    verify: PairCheck,
    a: np.ndarray,
    b: np.ndarray,
    pool: ThreadPoolExecutor | None,
    progress: Progress | None = None,
    what: str = "checking candidate pairs",
) -> np.ndarray:
    """``verify(a[e], b[e])`` for every ``e`` -> ``(E,)`` bool, on ``pool``'s threads when given, with
    ``progress``."""
    ok = np.zeros(a.size, bool)
    progress = progress or NullProgress()
    progress.start(int(a.size), what)
    try:
        for lo in range(0, a.size, CHECK_CHUNK):
            xs, ys = a[lo : lo + CHECK_CHUNK].tolist(), b[lo : lo + CHECK_CHUNK].tolist()
            if pool is None or len(xs) < CHECK_SLICE:
                ok[lo : lo + len(xs)] = list(map(verify, xs, ys))
            else:  # the threads take slices of pairs: one task a pair costs more than a known pair's check
                cuts = list(range(0, len(xs), CHECK_SLICE))
                done = pool.map(
                    _check_slice,
                    [verify] * len(cuts),
                    [xs[c : c + CHECK_SLICE] for c in cuts],
                    [ys[c : c + CHECK_SLICE] for c in cuts],
                )
                for c, passed in zip(cuts, done):
                    ok[lo + c : lo + c + len(passed)] = passed
            progress.advance(len(xs))
    finally:
        progress.finish()
    return ok


def _check_slice(verify: PairCheck, xs: list[int], ys: list[int]) -> list[bool]:
    return [verify(x, y) for x, y in zip(xs, ys)]


def _components(
    n: int,
    a: np.ndarray,
    b: np.ndarray,
    s: np.ndarray,
    vectors: np.ndarray,
    threshold: float,
    files: FileTable,
    verify: PairCheck | None,
    pool: ThreadPoolExecutor | None,
) -> list[tuple[np.ndarray, np.ndarray, list[tuple[int, int, float]]]]:
    """The accepted edges ``(a, b, s)`` and the byte-identical files joined into components, each split by the
    chaining guard (:func:`_split_component`)."""
    ea, eb = group_exact(files.hash_code)
    all_a = np.concatenate([a, ea])
    all_b = np.concatenate([b, eb])
    all_s = np.concatenate([s, np.ones(ea.size, np.float32)])
    labels = connected_components(n, all_a, all_b)
    rank = files.keeper_rank()
    code = files.hash_code

    # nodes of each component with more than one node, and the edges of each
    counts = np.bincount(labels, minlength=n)
    multi = np.flatnonzero(counts[labels] > 1)
    if not multi.size:
        return []
    node_order = multi[np.argsort(labels[multi], kind="stable")]
    node_labels = labels[node_order]
    node_starts = np.r_[0, np.flatnonzero(np.diff(node_labels)) + 1, len(node_order)]
    edge_labels = labels[all_a]
    edge_order = np.argsort(edge_labels, kind="stable")
    sorted_edge_labels = edge_labels[edge_order]

    groups: list[tuple[np.ndarray, np.ndarray, list[tuple[int, int, float]]]] = []
    for ci in range(len(node_starts) - 1):
        comp = node_order[node_starts[ci] : node_starts[ci + 1]]
        lab = node_labels[node_starts[ci]]
        lo, hi = np.searchsorted(sorted_edge_labels, [lab, lab + 1])
        e = edge_order[lo:hi]
        groups.extend(
            _split_component(comp, all_a[e], all_b[e], all_s[e], vectors, threshold, rank, code, verify, pool)
        )
    groups.sort(key=lambda g: int(rank[g[0][0]]))
    return groups


def _split_component(
    comp: np.ndarray,
    ea: np.ndarray,
    eb: np.ndarray,
    es: np.ndarray,
    vectors: np.ndarray,
    threshold: float,
    rank: np.ndarray,
    code: np.ndarray,
    verify: PairCheck | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> list[tuple[np.ndarray, np.ndarray, list[tuple[int, int, float]]]]:
    """The chaining guard: the best keeper of ``comp`` takes every member within the threshold of itself (and
    its byte-identical copies); what is left is split again by its own edges, and so on."""
    out = []
    stack = [comp]
    while stack:
        m = stack.pop()
        if m.size < 2:
            continue
        keeper = m[np.argmin(rank[m])]
        sims = vectors[m] @ vectors[keeper]
        same = (code[m] == code[keeper]) & (code[keeper] >= 0)
        sims = np.where(same, 1.0, sims)
        ok = (sims >= threshold) | same
        if verify is not None:
            ask = np.flatnonzero(ok & ~same & (m != keeper))
            if ask.size:
                ok[ask] = _check_pairs(verify, m[ask], np.full(ask.size, keeper), pool)
        members, scores = m[ok], sims[ok]
        if members.size >= 2:
            order = np.lexsort((rank[members], -scores))
            order = np.r_[order[members[order] == keeper], order[members[order] != keeper]]
            members, scores = members[order], scores[order]
            where = {int(p): i for i, p in enumerate(members)}
            inside = np.isin(ea, members) & np.isin(eb, members)
            best: dict[tuple[int, int], float] = {}
            for x, y, sc in zip(ea[inside], eb[inside], es[inside]):
                i, j = sorted((where[int(x)], where[int(y)]))
                best[(i, j)] = max(best.get((i, j), -1.0), float(sc))
            pairs = [(i, j, sc) for (i, j), sc in sorted(best.items())]
            out.append((members, scores.astype(np.float32), pairs))
        rest = m[~ok]
        if rest.size < 2:
            continue
        inside = np.isin(ea, rest) & np.isin(eb, rest)
        ra, rb = ea[inside], eb[inside]
        if not ra.size:
            continue
        local = {int(p): i for i, p in enumerate(rest)}
        la = np.fromiter((local[int(x)] for x in ra), np.int64, ra.size)
        lb = np.fromiter((local[int(x)] for x in rb), np.int64, rb.size)
        sub = connected_components(rest.size, la, lb)
        for lab in np.unique(sub):
            part = rest[sub == lab]
            if part.size >= 2:
                stack.append(part)
    return out


def _similar_groups(
    vectors: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float,
    copy_groups: list[tuple[np.ndarray, np.ndarray, list[tuple[int, int, float]]]],
    check: PairCheck,
    files: FileTable,
) -> list[tuple[np.ndarray, np.ndarray, list[tuple[int, int, float]]]]:
    """The similar tier: groups (as :func:`group_vectors`'s, positions in ``vectors``) joined by the ``edges``
    at or above ``threshold`` that fail ``check``, with the same guard against chains. A copy group takes part
    through its keeper alone (its copies are listed with it already)."""
    stand_in = np.arange(vectors.shape[0], dtype=np.int64)
    for members, _, _ in copy_groups:
        stand_in[members] = members[0]
    a, b, s = (x[edges[2] >= threshold] for x in edges)
    alike = np.fromiter((stand_in[x] != stand_in[y] and not check(int(x), int(y)) for x, y in zip(a, b)), bool, a.size)
    a, b = stand_in[a[alike]], stand_in[b[alike]]
    s = np.einsum("ij,ij->i", vectors[a], vectors[b])  # the keepers' own score
    plain = FileTable(files.pixels, files.mtime_ns, files.reference, np.full(len(files.pixels), -1, np.int64))
    return group_vectors(vectors, threshold, plain, edges=(a, b, s))


def calibrate_scores(
    copy_vectors: np.ndarray,
    copy_original: np.ndarray,
    vectors: np.ndarray,
    index: VectorIndex,
    id_to_pos: np.ndarray | None = None,
    hash_code: np.ndarray | None = None,
    k: int = 20,
    same_picture: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores for calibration: each copy's score with its original (``copy_original``: the original's
    position in ``vectors``), and the best score of an image that is not its original -> ``(positives,
    negatives)``. Images already in the collection that look like copies of the original are not counted as
    "other" images: those with the same hash, and those scoring at least ``same_picture`` with the original
    (default: the copies' median score, i.e. closer to the original than a typical edited copy). So existing
    copies do not count as mistakes, and neither do near-identical shots (bursts) that close: the precision
    promised is then an upper bound in collections full of them. ``same_picture=0.985`` counts everything but
    re-encodes and resizes as a mistake (the strict variant, :attr:`Calibration.threshold_strict`)."""
    copy_vectors = np.ascontiguousarray(copy_vectors, np.float32)
    pos = np.einsum("ij,ij->i", copy_vectors, vectors[copy_original])
    if same_picture is None:
        same_picture = float(np.median(pos))
    scores, ids = index.search(copy_vectors, min(k, len(index)))
    if id_to_pos is not None:
        p = np.clip(np.searchsorted(id_to_pos, ids), 0, len(id_to_pos) - 1)
        ids = np.where((ids >= 0) & (id_to_pos[p] == ids), p, -1)
    neg = np.full(len(copy_vectors), -1.0, np.float32)
    for i in range(len(copy_vectors)):
        o = int(copy_original[i])
        for sc, j in zip(scores[i], ids[i]):
            if j < 0 or j == o:
                continue
            if hash_code is not None and hash_code[o] >= 0 and hash_code[j] == hash_code[o]:
                continue
            if float(vectors[j] @ vectors[o]) >= same_picture:
                continue  # already a copy of the original in the collection
            neg[i] = sc
            break
    return pos.astype(np.float32), neg


# --------------------------------------------------------------------------------------------- the collection


@dataclass
class _Rows:
    ids: np.ndarray
    paths: list[str]
    size: np.ndarray
    mtime_ns: np.ndarray
    hashes: list[str | None]
    width: np.ndarray
    height: np.ndarray


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class CheckedPairs:
    """Inlier counts of pairs already checked, by the two files' content fingerprints (``(P,)`` each, ``a < b``),
    for one verification ``rule`` (:meth:`VerifySettings.describe`)."""

    rule: str
    a: np.ndarray
    b: np.ndarray
    inliers: np.ndarray


class ChecksFile(NpzFile[CheckedPairs]):
    kind = CheckedPairs
    what = "duplicates check cache"


class _CachedChecks:
    """Inlier counts between positions of a selection, from the cache file when the pair's content was checked
    before, else from the verifier (and remembered). Files without a content hash are never cached."""

    def __init__(self, verifier: Verifier, paths: list[str], prints: np.ndarray, file: ChecksFile) -> None:
        self.verifier, self.paths, self.prints, self.file = verifier, paths, prints, file
        rule = verifier.settings.describe()
        old = file.load()
        self.known: dict[tuple[int, int], int] = {}
        if old is not None and old.rule == rule:
            self.known = dict(zip(zip(old.a.tolist(), old.b.tolist()), old.inliers.tolist()))
        self.rule = rule
        self.added = 0
        self._lock = threading.Lock()

    def inliers(self, x: int, y: int) -> int:
        fx, fy = int(self.prints[x]), int(self.prints[y])
        if fx == 0 or fy == 0:
            return self.verifier.inliers(self.paths[x], self.paths[y])
        key = (min(fx, fy), max(fx, fy))
        with self._lock:
            n = self.known.get(key)
        if n is None:
            n = self.verifier.inliers(self.paths[x], self.paths[y])
            with self._lock:
                self.known[key] = n
                self.added += 1
        return n

    def save(self, home: Path, alive: np.ndarray) -> None:
        """Keep the counts in the home, less those of pairs whose content is no longer in the collection
        (``alive``: every indexed file's fingerprint)."""
        if not self.added:
            return
        keys = np.array(list(self.known), np.int64).reshape(-1, 2)
        kept = np.isin(keys[:, 0], alive) & np.isin(keys[:, 1], alive)
        self.known = {k: n for k, n, ok in zip(self.known, self.known.values(), kept) if ok}
        keys = keys[kept]
        value = CheckedPairs(self.rule, keys[:, 0], keys[:, 1], np.fromiter(self.known.values(), np.int32))
        save_locked(home, lambda: self.file.save(value), False, "the duplicates check cache")


class DuplicateFinder:
    """Duplicates in a :class:`~indexer.engine.Collection`: groups, calibration, "is this file already here?"."""

    def __init__(self, collection: Collection) -> None:
        self.coll = collection
        self._verifier: Verifier | None = None

    def verifier(self) -> Verifier:
        """The geometric check, one per finder: each file's features are computed once, for the calibration and
        the groups alike."""
        if self._verifier is None:
            self._verifier = Verifier(max_pixels=self.coll.max_pixels)
        return self._verifier

    # ------------------------------------------------------------------ data
    def _rows(self, ids: np.ndarray | None = None) -> _Rows:
        q = select(
            ImageRecord.id,
            ImageRecord.path,
            ImageRecord.size,
            ImageRecord.mtime_ns,
            ImageRecord.content_hash,
            ImageRecord.width,
            ImageRecord.height,
        ).where(ImageRecord.status == INDEXED)
        with self.coll.session() as s:
            rows = list(s.execute(q.order_by(ImageRecord.id)))
        if ids is not None:
            by_id = {r[0]: r for r in rows}
            missing = [int(i) for i in ids if int(i) not in by_id]
            if missing:
                raise LookalikeError("the collection changed while reading it; run the command again")
            rows = [by_id[int(i)] for i in ids]
        return _Rows(
            ids=np.array([r[0] for r in rows], np.int64),
            paths=[r[1] for r in rows],
            size=np.array([r[2] for r in rows], np.int64),
            mtime_ns=np.array([r[3] for r in rows], np.int64),
            hashes=[r[4] for r in rows],
            width=np.array([r[5] or 0 for r in rows], np.int64),
            height=np.array([r[6] or 0 for r in rows], np.int64),
        )

    def _model_description(self) -> str:
        cfg = self.coll.model_config
        st = self.coll.stats()
        return f"{cfg.describe() if cfg else 'none'}; {st.whitening or 'no whitening'}; {st.mask}"

    def _require_indexed(self) -> None:
        if self.coll.model_config is None:
            raise LookalikeError(
                f"the collection in {self.coll.home} is empty; index a folder first (lookalike index DIR)"
            )

    # ------------------------------------------------------------------ calibration
    def stored_calibration(self) -> Calibration | None:
        """The stored calibration, when it was made for the collection's current model."""
        with self.coll.session() as s:
            d = db.get_setting(s, CALIBRATION_SETTING)
        if d is None:
            return None
        cal = Calibration.from_dict(d)
        if cal.model != self._model_description():
            log.info("the stored duplicates calibration was made for another model; it will be redone")
            return None
        if cal.verify_min_inliers is not None and cal.verify_rule != VerifySettings().describe():
            log.info("the stored duplicates calibration was made for another verification rule; it will be redone")
            return None
        return cal

    def calibrate(
        self,
        precision: float = 0.99,
        samples: int = 100,
        copies_per_image: int = 6,
        seed: int = 0,
        store: bool = True,
        progress: Progress | None = None,
    ) -> Calibration:
        """Choose the threshold for ``precision`` on seeded edited copies of ``samples`` of the collection's
        images (``copies_per_image`` each, strengths light / medium / strong in turn); store it unless not
        ``store``. Needs the network (the copies are embedded)."""
        if not 0.5 <= precision < 1.0:
            raise SettingsError(f"the target precision must be in [0.5, 1), got {precision}")
        self._require_indexed()
        ids, vectors = self.coll.vectors()
        if ids.size < 2:
            raise LookalikeError("calibration needs at least 2 indexed images; index more first")
        rows = self._rows(ids)
        rng = np.random.default_rng(seed)
        order = rng.permutation(ids.size)
        originals: list[int] = []
        copy_paths: list[str] = []
        copy_orig: list[int] = []
        copy_strength: list[int] = []
        copy_side: list[int] = []
        with tempfile.TemporaryDirectory(prefix="lookalike-calibration-") as tmp:
            for pos in order:
                if len(originals) >= samples:
                    break
                try:
                    # at most CALIBRATION_SIDE, never enlarged: a small picture's copies must be as small as the
                    # copies a user makes of it (a large JPEG is still decoded at a reduced size)
                    larger = max(int(rows.width[pos]), int(rows.height[pos])) > CALIBRATION_SIDE
                    side = CALIBRATION_SIDE if larger else None
                    img = Image.fromarray(load_image(rows.paths[pos], side, max_pixels=self.coll.max_pixels).pixels)
                    img.thumbnail((CALIBRATION_SIDE, CALIBRATION_SIDE), Image.Resampling.BICUBIC)  # no size recorded
                except ImageLoadError:
                    continue
                originals.append(int(pos))
                for c in range(copies_per_image):
                    strength = c % 3
                    copy = edited_copy(img, rng, strength=strength)
                    p = os.path.join(tmp, f"{pos}_{c}.png")
                    copy.image.save(p, compress_level=1)
                    copy_paths.append(p)
                    copy_orig.append(int(pos))
                    copy_strength.append(strength)
                    copy_side.append(max(copy.image.size))
            if not originals:
                raise LookalikeError("no indexed image could be read for calibration; are the files still there?")
            log.info("calibrating on %d copies of %d images", len(copy_paths), len(originals))
            progress = progress or NullProgress()
            vecs: dict[int, np.ndarray] = {}
            progress.start(len(copy_paths), "calibrating")
            try:
                for i, vec, error in self.coll.embed_paths(copy_paths):
                    if vec is not None:
                        vecs[i] = vec
                    else:
                        log.warning("a calibration copy could not be embedded: %s", error)
                    progress.advance()
            finally:
                progress.finish()
            done = sorted(vecs)
            cv = np.stack([vecs[i] for i in done]).astype(np.float32)
            co = np.array([copy_orig[i] for i in done], np.int64)
            cs = np.array([copy_strength[i] for i in done], np.int64)
            index = self.coll.index()
            pos_scores, neg_scores = calibrate_scores(cv, co, vectors, index, ids, _hash_codes(rows.hashes))
            t, recall, prec = threshold_for_precision(pos_scores, neg_scores, precision)
            _, strict_neg = calibrate_scores(cv, co, vectors, index, ids, _hash_codes(rows.hashes), same_picture=0.985)
            t_strict, recall_strict, _ = threshold_for_precision(pos_scores, strict_neg, precision)
            verified = self._calibrate_verify(
                precision,
                cv,
                co,
                [copy_paths[i] for i in done],
                np.array([copy_side[i] for i in done]),
                vectors,
                index,
                ids,
                rows,
                pos_scores,
                t,
            )
        cal = Calibration(
            threshold=round(t, 6),
            target_precision=precision,
            expected_recall=round(recall, 4),
            expected_precision=round(prec, 4),
            originals=len(originals),
            copies=len(done),
            seed=seed,
            model=self._model_description(),
            threshold_strict=round(t_strict, 6),
            expected_recall_strict=round(recall_strict, 4),
            recall_by_strength={
                str(st): round(float((pos_scores[cs == st] >= t).mean()), 4) for st in sorted(set(cs.tolist()))
            },
            **verified,
        )
        log.info("duplicates threshold %.4f: precision %.3f, recall %.3f", t, prec, recall)
        if store:
            with self.coll.session() as s, s.begin():
                db.set_setting(s, CALIBRATION_SETTING, cal.to_dict())
        return cal

    def _calibrate_verify(
        self,
        precision: float,
        copy_vectors: np.ndarray,
        copy_original: np.ndarray,
        copy_paths: list[str],
        copy_sides: np.ndarray,
        vectors: np.ndarray,
        index: VectorIndex,
        ids: np.ndarray,
        rows: _Rows,
        pos_scores: np.ndarray,
        t: float,
    ) -> dict[str, Any]:
        """The verification rule's calibration: a candidate threshold ``CANDIDATE_MARGIN`` below the copies' lowest
        cosine (at most the plain threshold), and the fewest inliers that reach ``precision`` against the 3 other images nearest to
        each copy (images sharing their pixels with the original are copies already there, not others)."""

        verifier = self.verifier()
        t_c = float(min(t, max(CANDIDATE_FLOOR, pos_scores.min() - CANDIDATE_MARGIN)))
        codes = _hash_codes(rows.hashes)
        scores, nb = index.search(copy_vectors, min(8, len(index)))
        p = np.clip(np.searchsorted(ids, nb), 0, len(ids) - 1)
        nb = np.where((nb >= 0) & (ids[p] == nb), p, -1)
        pos_inl = np.full(len(copy_paths), -1.0)
        neg_inl = np.full(len(copy_paths), -1.0)
        # each copy's 3 nearest other images (not its original, nor a byte-identical copy of it), those at or
        # above the candidate threshold
        others: list[list[int]] = []
        for i in range(len(copy_paths)):
            o = int(copy_original[i])
            valid = [
                (sc, int(j)) for sc, j in zip(scores[i], nb[i]) if j >= 0 and j != o and not 0 <= codes[o] == codes[j]
            ]
            others.append([j for sc, j in itertools.takewhile(lambda q: q[0] >= t_c, valid[:3])])
        # every pair asked about below, checked first on the check's threads
        ahead = {(p_, rows.paths[int(copy_original[i])]) for i, p_ in enumerate(copy_paths) if pos_scores[i] >= t_c}
        for i, p_ in enumerate(copy_paths):
            o_path = rows.paths[int(copy_original[i])]
            ahead.update(q for j in others[i] for q in ((o_path, rows.paths[j]), (p_, rows.paths[j])))
        if CHECK_WORKERS > 1 and ahead:
            with check_pool(CHECK_WORKERS) as pool:
                for _ in pool.map(lambda q: verifier.inliers(*q), sorted(ahead)):
                    pass
        for i, path in enumerate(copy_paths):
            o = int(copy_original[i])
            if pos_scores[i] >= t_c:
                pos_inl[i] = verifier.inliers(path, rows.paths[o])
            for j in others[i]:
                if verifier.inliers(rows.paths[o], rows.paths[j]) >= EXISTING_COPY_INLIERS:
                    continue
                neg_inl[i] = max(neg_inl[i], verifier.inliers(path, rows.paths[j]))
        verifier.forget(copy_paths)
        m, recall, prec = threshold_for_precision(pos_inl, neg_inl, precision)
        m = max(int(np.ceil(m)), 8)
        recall = float((pos_inl >= m).mean())
        fp = int((neg_inl >= m).sum())
        tp = int((pos_inl >= m).sum())
        by_side: dict[str, dict[str, float]] = {}
        for name, lo, hi in SIDE_BINS:
            sel = (copy_sides >= lo) & (copy_sides < hi)
            if sel.any():
                by_side[name] = {"copies": int(sel.sum()), "recall": round(float((pos_inl[sel] >= m).mean()), 4)}
        return dict(
            verify_candidate_threshold=round(t_c, 6),
            verify_min_inliers=m,
            verify_rule=verifier.settings.describe(),
            verify_expected_precision=round(tp / max(tp + fp, 1), 4),
            verify_expected_recall=round(recall, 4),
            verify_recall_by_side=by_side,
        )

    def threshold(
        self,
        threshold: float | None = None,
        precision: float | None = None,
        progress: Progress | None = None,
        strict: bool = False,
    ) -> tuple[float, Calibration | None]:
        """The threshold to use: ``threshold`` when given; else the stored calibration's (calibrated now when
        there is none, or when ``precision`` asks for another target)."""
        if threshold is not None:
            if not -1.0 <= threshold <= 1.0:
                raise SettingsError(f"the threshold is a cosine similarity in [-1, 1], got {threshold}")
            return threshold, self.stored_calibration()
        cal = self.stored_calibration()
        if cal is None or (precision is not None and abs(cal.target_precision - precision) > 1e-9):
            cal = self.calibrate(precision=precision if precision is not None else 0.99, progress=progress)
        if strict and cal.threshold_strict is not None:
            return cal.threshold_strict, cal
        return cal.threshold, cal

    # ------------------------------------------------------------------ groups
    def find(
        self,
        folder: str | Path | None = None,
        threshold: float | None = None,
        precision: float | None = None,
        reference: str | Path | None = None,
        exact_only: bool = False,
        k: int = DEFAULT_K,
        check_files: bool = True,
        progress: Progress | None = None,
        strict: bool = False,
        verify: bool = True,
        similar: bool = False,
    ) -> DuplicateReport:
        """Groups of copies among the indexed images (under ``folder`` when given, plus those under
        ``reference``, whose files are preferred as keepers and never touched). ``exact_only``: byte-identical
        copies only, from the database (no network, no calibration). ``check_files``: leave out files no
        longer on disk. ``strict``: the calibration's strict threshold (near-identical shots counted as
        mistakes). ``verify``: with the calibrated threshold, candidate pairs must also pass the geometric check
        (:mod:`indexer.verify`) with the calibrated number of inliers; a given ``threshold`` or ``strict`` uses the
        vectors alone. ``similar``: also the ``similar`` tier (:attr:`DuplicateReport.similar`): pictures whose
        vectors score at least the calibrated vectors-only threshold (at which, on the calibration copies, a score
        is a copy's with the target precision) but which fail the geometric check: bursts, the same scene or
        object shot again; it needs the check."""
        started = time.perf_counter()
        self._require_indexed()
        folder_s = str(Path(folder).expanduser().resolve()) if folder is not None else None
        ref_s = str(Path(reference).expanduser().resolve()) if reference is not None else None
        if exact_only:
            rows = self._rows()
            vectors = None
            t, cal = None, None
        else:
            t, cal = self.threshold(threshold, precision, progress, strict)
            ids, vectors = self.coll.vectors()
            rows = self._rows(ids)
        check: PairCheck | None = None
        verification: dict[str, Any] | None = None
        if (
            verify
            and not exact_only
            and threshold is None
            and not strict
            and cal is not None
            and cal.verify_min_inliers is not None
            and cal.verify_candidate_threshold is not None
        ):
            verifier = self.verifier()
            t = cal.verify_candidate_threshold
            min_inliers = cal.verify_min_inliers
            verification = {"candidate_threshold": t, "min_inliers": min_inliers}
        if similar and verification is None:
            raise SettingsError(
                "the similar tier needs the geometric check with the calibrated threshold "
                "(not with --exact, --no-verify, --threshold or --strict)"
            )
        n_all = len(rows.paths)
        keep = np.ones(n_all, bool)
        if folder_s is not None:
            keep &= np.array([_under(p, folder_s) or (ref_s is not None and _under(p, ref_s)) for p in rows.paths])
        missing: list[str] = []
        if check_files:
            exists = np.array([bool(k_) and os.path.exists(p) for k_, p in zip(keep, rows.paths)])
            missing = [p for k_, e, p in zip(keep, exists, rows.paths) if k_ and not e]
            keep &= exists
        sel = np.flatnonzero(keep)
        reference_mask = np.array([ref_s is not None and _under(rows.paths[i], ref_s) for i in sel], bool)
        checks: _CachedChecks | None = None
        if verification is not None:
            checks = _CachedChecks(
                verifier,
                [rows.paths[i] for i in sel],
                np.array([fingerprint(rows.hashes[i]) for i in sel], np.int64),
                ChecksFile(self.coll.home / CHECKS_FILE),
            )
            need = verification["min_inliers"]
            check = lambda a, b: checks.inliers(a, b) >= need
        table = FileTable(
            pixels=rows.width[sel] * rows.height[sel],
            mtime_ns=rows.mtime_ns[sel],
            reference=reference_mask,
            hash_code=_hash_codes([rows.hashes[i] for i in sel]),
        )
        if exact_only:
            ea, eb = group_exact(table.hash_code)
            labels = connected_components(sel.size, ea, eb)
            raw_groups = []
            rank = table.keeper_rank()
            for lab in np.unique(labels[np.bincount(labels, minlength=sel.size)[labels] > 1]):
                m = np.flatnonzero(labels == lab)
                m = m[np.argsort(rank[m])]
                raw_groups.append((m, np.ones(m.size, np.float32), []))
            raw_groups.sort(key=lambda g: int(rank[g[0][0]]))
        else:
            assert vectors is not None
            # the collection's own index when the selection is most of it (neighbours outside the selection
            # are dropped); a new one over the selection when it is a small part
            index = self.coll.index() if 2 * sel.size >= n_all else None
            if index is not None and len(index) == n_all:
                edges = self._graph(rows.ids[sel], t, k, progress)
            else:
                built = VectorIndex.build(np.arange(sel.size, dtype=np.int64), vectors[sel], IndexConfig(device="cpu"))
                edges = knn_edges(built, vectors[sel], t, k, None, progress=progress)
            raw_groups = group_vectors(
                vectors[sel], t, table, edges=edges, verify=check, progress=progress, workers=CHECK_WORKERS
            )
        groups = [self._group(rows, sel, reference_mask, *g) for g in raw_groups]
        similar_groups: list[DuplicateGroup] = []
        t_similar = None
        if similar:
            assert cal is not None and check is not None and vectors is not None
            t_similar = max(cal.threshold, float(t))
            similar_groups = [
                self._group(rows, sel, reference_mask, *g, similar=True)
                for g in _similar_groups(vectors[sel], edges, t_similar, raw_groups, check, table)
            ]
        if checks is not None:
            checks.save(self.coll.home, np.array([fingerprint(h) for h in rows.hashes], np.int64))
        if ref_s is not None:  # groups of reference files only have nothing to act on
            groups = [g for g in groups if any(not f.reference for f in g.files)]
        return DuplicateReport(
            threshold=t,
            verification=verification,
            calibration=cal,
            groups=groups,
            images=int(sel.size),
            missing=missing,
            seconds=time.perf_counter() - started,
            similar=similar_groups,
            similar_threshold=t_similar,
        )

    @staticmethod
    def _group(
        rows: _Rows,
        sel: np.ndarray,
        reference_mask: np.ndarray,
        members: np.ndarray,
        scores: np.ndarray,
        pairs: list[tuple[int, int, float]],
        similar: bool = False,
    ) -> DuplicateGroup:
        """A group of :func:`group_vectors` (positions in ``sel``) as files; in the similar tier all are kept."""
        files = []
        for j, (m, sc) in enumerate(zip(members, scores)):
            i = int(sel[m])
            h = rows.hashes[i]
            files.append(
                DuplicateFile(
                    id=int(rows.ids[i]),
                    path=rows.paths[i],
                    score=float(sc),
                    keep=similar or j == 0 or bool(reference_mask[m]),
                    exact=j > 0 and h is not None and h == rows.hashes[int(sel[members[0]])],
                    reference=bool(reference_mask[m]),
                    size=int(rows.size[i]),
                    mtime_ns=int(rows.mtime_ns[i]),
                    content_hash=h,
                    width=int(rows.width[i]) or None,
                    height=int(rows.height[i]) or None,
                )
            )
        return DuplicateGroup(files, pairs, similar=similar)

    # ------------------------------------------------------------------ the graph, kept between runs
    def _graph(
        self, ids: np.ndarray, threshold: float, k: int, progress: Progress | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The edges at or above ``threshold`` among each image's ``k`` nearest neighbours, between images of
        ``ids`` (sorted) -> ``(a, b, score)`` positions in ``ids``. From the collection's k-NN graph
        (:mod:`indexer.knn_graph`, kept in the home and shared with re-ranking): a later run searches only the
        images that are new or changed since."""
        graph = self.coll.knn_graph(k, progress)
        a, b, s = graph.edges(threshold, k)
        pa, pb = _positions_in(ids, graph.ids[a]), _positions_in(ids, graph.ids[b])
        ok = (pa >= 0) & (pb >= 0)
        return np.minimum(pa, pb)[ok], np.maximum(pa, pb)[ok], s[ok]

    # ------------------------------------------------------------------ one file
    def of(
        self,
        path: str | Path,
        threshold: float | None = None,
        precision: float | None = None,
        k: int = DEFAULT_K,
        verify: bool = True,
    ) -> tuple[float, list[DuplicateFile]]:
        """Is this file (indexed or not) already in the collection? -> ``(threshold, matches)``: indexed files
        byte-identical to it, then those scoring at or above the threshold, best first (the file itself left
        out). With the calibrated threshold and ``verify``, candidates from the calibration's candidate threshold
        up must also pass the geometric check, as in :meth:`find`."""
        self._require_indexed()
        p = str(Path(path).expanduser().resolve())
        if not os.path.isfile(p):
            raise LookalikeError(f"{path} is not a file")
        t, cal = self.threshold(threshold, precision)
        check = None
        if verify and threshold is None and cal is not None and cal.verify_min_inliers is not None:
            verifier, need = self.verifier(), cal.verify_min_inliers
            t = cal.verify_candidate_threshold or t
            check = lambda other: verifier.inliers(p, other) >= need
        try:
            h = file_hash(p)
        except OSError as exc:
            raise LookalikeError(f"cannot read {path}: {exc.strerror or exc}") from None
        vec = None
        for _, v, error in self.coll.embed_paths([p]):
            if error is not None:
                raise LookalikeError(f"cannot read {path} as an image: {error}")
            vec = v
        assert vec is not None
        index = self.coll.index()
        scores, ids = index.search(vec[None].astype(np.float32), min(k, max(1, len(index))))
        rows = self._rows()
        by_id = {int(i): n for n, i in enumerate(rows.ids)}
        matches: dict[int, DuplicateFile] = {}
        for n, hh in enumerate(rows.hashes):
            if hh == h and rows.paths[n] != p:
                matches[int(rows.ids[n])] = self._file(rows, n, 1.0, exact=True)
        for sc, i in zip(scores[0], ids[0]):
            n = by_id.get(int(i))
            if n is None or sc < t or rows.paths[n] == p or int(i) in matches:
                continue
            if check is not None and not check(rows.paths[n]):
                continue
            matches[int(i)] = self._file(rows, n, float(sc), exact=False)
        return t, sorted(matches.values(), key=lambda f: (-f.score, f.path))

    @staticmethod
    def _file(rows: _Rows, n: int, score: float, exact: bool) -> DuplicateFile:
        return DuplicateFile(
            id=int(rows.ids[n]),
            path=rows.paths[n],
            score=score,
            keep=True,
            exact=exact,
            size=int(rows.size[n]),
            mtime_ns=int(rows.mtime_ns[n]),
            content_hash=rows.hashes[n],
            width=int(rows.width[n]) or None,
            height=int(rows.height[n]) or None,
        )


def _hash_codes(hashes: Sequence[str | None]) -> np.ndarray:
    codes: dict[str, int] = {}
    return np.array([-1 if h is None else codes.setdefault(h, len(codes)) for h in hashes], np.int64)


def _positions_in(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` in the sorted ``ids`` (``-1`` where absent)."""
    if not ids.size:
        return np.full(wanted.shape, -1, np.int64)
    pos = np.clip(np.searchsorted(ids, wanted), 0, ids.size - 1)
    return np.where(ids[pos] == wanted, pos, -1).astype(np.int64)
