"""Geometric verification of candidate copies: do two pictures share the same pixels, moved by a crop, resize,
rotation or mirror flip?

ORB keypoints of both (grey, brought to longest side ``max_side``, small pictures enlarged; a low corner
threshold, so that soft or low-contrast pictures give keypoints too), matched by Hamming distance with Lowe's
ratio test and kept one-to-one (each point of the second picture in its best match only: a picture with few
keypoints must not collect many matches on one of them), then a similarity transform (rotation, scale, shift)
fitted by RANSAC with a tight tolerance (2 px): the matches it explains (inliers) are the evidence, discounted when they crowd
into a small part of the picture. A copy keeps its whole layout, so it explains many matches spread over the
picture; the same object turned explains a few on one flat face (a box's label), the same person in another
photo or another horse on grass explain few. On the duplicates benchmark's candidate pairs, the tight tolerance
and the spread took recall at precision 0.99 from 0.84 to 0.95; one-to-one matches and the low corner threshold
from 0.95 to 0.98 (``benchmarks/bench_duplicates.py``, candidate pairs at cosine >= 0.6, inlier count chosen on
the benchmark: an upper bound; the calibrated rule's figures are in the README).
The second picture is also tried mirrored, so flipped copies are found. Features are computed once per file
and size.

A copy shrunk to a fraction of its original (a 250-px photo saved at 60 px) is enlarged back to ``max_side`` and
comes out blurred, while the original stays sharp: their corners and descriptors differ. So when one picture is
much larger than the other (``rescale_ratio``), the larger is also looked at shrunk to the smaller's size (and a
little more, for a copy that was cropped too), so that both are equally blurred, with a lower corner threshold
(a picture of 40-70 px has few corners), both enlarged to ``min_side`` only; the best count wins. On the duplicates benchmark this took thumbnail
copies of faces, horses and objects from 2-33 inliers to 26-250 (objects shrunk to 35-50 px stay at 2-14), while
all 1,744 different pairs of such sizes at cosine >= 0.5 stayed at 6 or fewer (``benchmarks/bench_duplicates.py``).

Global descriptors cannot tell a strong edit of a picture from the same object in another pose (see the
duplicates benchmark); this check on the k-NN graph's candidate pairs can.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .imageio import ImageLoadError, load_image

__all__ = ["VerifySettings", "Verifier", "check_pool"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifySettings:
    max_side: int = 384
    min_side: int = 256
    features: int = 1000
    #: ORB's corner detector threshold (OpenCV's default is 20): low, so that soft, small or low-contrast
    #: pictures (a 250-px face, an object on black) still give keypoints; the strongest ``features`` are kept
    fast_threshold: int = 7
    ratio: float = 0.8
    ransac_px: float = 2.0
    #: Inliers whose convex hull covers less than this share of the area the first picture's keypoints span
    #: count proportionally less (a copy's matches spread over the picture).
    full_spread: float = 0.3
    #: A pair whose longest sides differ by this factor or more is also compared with the larger shrunk to the
    #: smaller's side times each of ``rescale_factors``.
    rescale_ratio: float = 1.5
    rescale_factors: tuple[float, ...] = (1.0, 1.4)
    #: ORB's corner threshold for those small looks (few corners survive in a picture of 40-70 px)
    rescale_fast_threshold: int = 4

    def describe(self) -> str:
        """The rule, as a calibration records it: a calibration made for another rule is redone."""
        return (
            f"ORB {self.features} (FAST {self.fast_threshold}) at {self.min_side}-{self.max_side}px, ratio "
            f"{self.ratio}, one-to-one, "
            f"similarity RANSAC {self.ransac_px}px, full spread {self.full_spread}, larger also shrunk to "
            f"{'/'.join(f'{f:g}' for f in self.rescale_factors)}x the smaller beyond {self.rescale_ratio:g}x "
            f"(FAST {self.rescale_fast_threshold})"
        )


Features = tuple[np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class _Look:
    """A picture as the check sees it at one size: its file's longest side (at most ``max_side``), its features
    and its mirror's."""

    side: int
    plain: Features
    mirrored: Features


def _grid_side(side: float) -> int:
    """``side`` rounded onto a grid of 10% steps, so that one picture shrunk for many partners of about the same
    size is looked at once."""
    return int(round(1.1 ** round(np.log(max(side, 1.0)) / np.log(1.1))))


class Verifier:
    """Inlier counts between image files, each file's features computed once while they stay among the
    ``max_cached`` most recently used (about 64 KB a picture: 8,192 hold ~0.5 GB, however big the collection)."""

    max_cached = 8192

    def __init__(self, settings: VerifySettings | None = None, max_pixels: int | None = None) -> None:
        import cv2

        self.settings = settings or VerifySettings()
        self.max_pixels = max_pixels
        self._cv2 = cv2
        self._local = threading.local()  # OpenCV's detectors and matcher, one set per thread
        self._lock = threading.Lock()  # the two caches below; the work itself runs outside it
        self._cache: OrderedDict[tuple[str, int], _Look | None] = OrderedDict()
        self._pairs: dict[tuple[str, str], int] = {}

    def _tools(self) -> threading.local:
        tools = self._local
        if not hasattr(tools, "matcher"):
            cv2, st = self._cv2, self.settings
            tools.orb = cv2.ORB_create(st.features, fastThreshold=st.fast_threshold)
            tools.orb_small = cv2.ORB_create(st.features, fastThreshold=st.rescale_fast_threshold)
            tools.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        return tools

    def _look(self, path: str, max_side: int | None = None) -> _Look | None:
        """The picture brought to longest side ``max_side`` (default: the settings'; another side: a small look,
        with ``rescale_fast_threshold``), enlarged to ``min_side`` when smaller; ``None``: unreadable."""
        key = (path, max_side or self.settings.max_side)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        look = self._compute_look(*key)
        with self._lock:
            while len(self._cache) >= self.max_cached:
                self._cache.popitem(last=False)
            self._cache[key] = look
        return look

    def _compute_look(self, path: str, max_side: int) -> _Look | None:
        tools = self._tools()
        orb = tools.orb if max_side == self.settings.max_side else tools.orb_small
        cv2 = self._cv2
        try:
            kw = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
            loaded = load_image(path, max_side=max_side, **kw)
        except ImageLoadError as exc:
            log.info("cannot verify %s: %s", path, exc)
            return None
        gray = cv2.cvtColor(np.ascontiguousarray(loaded.pixels), cv2.COLOR_RGB2GRAY)
        if max(gray.shape) < self.settings.min_side:
            f = self.settings.min_side / max(gray.shape)
            gray = cv2.resize(gray, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
        out = []
        for im in (gray, np.ascontiguousarray(gray[:, ::-1])):
            kp, desc = orb.detectAndCompute(im, None)
            pts = np.float32([k.pt for k in kp]) if kp else np.zeros((0, 2), np.float32)
            out.append((pts, desc))
        return _Look(min(max(loaded.width, loaded.height), self.settings.max_side), out[0], out[1])

    @property
    def features_held(self) -> int:
        """How many pictures' features are held in memory now."""
        with self._lock:
            return len(self._cache)

    def forget(self, paths: list[str]) -> None:
        """Drop the features of ``paths`` (e.g. temporary files), at every size: about 64 KB each."""
        gone = set(paths)
        with self._lock:
            for key in [k for k in self._cache if k[0] in gone]:
                del self._cache[key]

    def _inliers(self, a: Features, b: Features) -> int:
        pa, da = a
        pb, db = b
        if da is None or db is None or len(da) < 3 or len(db) < 3:
            return 0
        good = [
            m[0]
            for m in self._tools().matcher.knnMatch(da, db, k=2)
            if len(m) == 2 and m[0].distance < self.settings.ratio * m[1].distance
        ]
        # one match per point of the second picture (its best): many points matched to one are one piece of
        # evidence, not many
        taken: set[int] = set()
        unique = []
        for m in sorted(good, key=lambda m: m.distance):
            if m.trainIdx not in taken:
                taken.add(m.trainIdx)
                unique.append(m)
        good = unique
        if len(good) < 4:
            return 0
        src = pa[[m.queryIdx for m in good]]
        dst = pb[[m.trainIdx for m in good]]
        cv2 = self._cv2
        _, mask = cv2.estimateAffinePartial2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=self.settings.ransac_px
        )
        if mask is None:
            return 0
        inl = src[mask.ravel().astype(bool)]
        if len(inl) < 3 or self.settings.full_spread <= 0:
            return len(inl)
        span = float(np.ptp(pa[:, 0]) * np.ptp(pa[:, 1]))
        spread = cv2.contourArea(cv2.convexHull(inl)) / span if span > 0 else 0.0
        return int(round(len(inl) * min(1.0, spread / self.settings.full_spread)))

    def inliers(self, path_a: str, path_b: str) -> int:
        """Matches explained by one similarity transform between the two pictures (the second also mirrored),
        discounted when they cover less than ``full_spread`` of the picture."""
        key = (path_a, path_b) if path_a <= path_b else (path_b, path_a)
        with self._lock:
            if key in self._pairs:
                return self._pairs[key]
        a, b = self._look(key[0]), self._look(key[1])
        if a is None or b is None:
            return self._remember(key, 0)
        n = self._best(a, b)
        big, small = (key[0], key[1]) if a.side >= b.side else (key[1], key[0])
        large, little = max(a.side, b.side), min(a.side, b.side)
        if large >= self.settings.rescale_ratio * little:
            native = self._look(small, little)  # the small picture at its own size, not enlarged first
            for f in self.settings.rescale_factors:
                side = _grid_side(little * f)
                shrunk = self._look(big, side) if side < large else None
                if native is not None and shrunk is not None:
                    n = max(n, self._best(shrunk, native) if big == key[0] else self._best(native, shrunk))
        return self._remember(key, n)

    def _remember(self, key: tuple[str, str], n: int) -> int:
        with self._lock:
            self._pairs[key] = n
        return n

    def _best(self, a: _Look, b: _Look) -> int:
        return max(self._inliers(a.plain, b.plain), self._inliers(a.plain, b.mirrored))


@contextmanager
def check_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """Threads to check pairs side by side (a :class:`Verifier` may be shared by them), with OpenCV itself on one
    thread meanwhile: OpenCV releases the GIL, and threads over pairs keep the cores busier than OpenCV's own
    threads inside each small call (800 pairs of the duplicates benchmark's pictures on 2 cores: 18.5 s one
    pair at a time, 11.2 s on 2 threads)."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="lookalike-check") as pool:
            yield pool
    finally:
        cv2.setNumThreads(before)
