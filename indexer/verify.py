"""Geometric verification of candidate copies: do two pictures share the same pixels, moved by a crop, resize,
rotation or mirror flip?

ORB keypoints of both (grey, longest side ``max_side``, small pictures enlarged to ``min_side``), matched by
Hamming distance with Lowe's ratio test, then a similarity transform (rotation, scale, shift) fitted by RANSAC:
the number of matches it explains (inliers) is the evidence. A copy keeps its pixels' layout, so it explains
many matches; the same object turned, the same person in another photo, or another horse on grass explain few.
The second picture is also tried mirrored, so flipped copies are found. Features are computed once per file.

Global descriptors cannot tell a strong edit of a picture from the same object in another pose (see the
duplicates benchmark); this check on the k-NN graph's candidate pairs can.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .imageio import ImageLoadError, load_image

__all__ = ["VerifySettings", "Verifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifySettings:
    max_side: int = 384
    min_side: int = 256
    features: int = 1000
    ratio: float = 0.8
    ransac_px: float = 5.0


Features = tuple[np.ndarray, "np.ndarray | None"]


class Verifier:
    """Inlier counts between image files, with each file's features computed once."""

    def __init__(self, settings: VerifySettings | None = None, max_pixels: int | None = None) -> None:
        import cv2

        self.settings = settings or VerifySettings()
        self.max_pixels = max_pixels
        self._cv2 = cv2
        self._orb = cv2.ORB_create(self.settings.features)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self._cache: dict[str, tuple[Features, Features] | None] = {}
        self._pairs: dict[tuple[str, str], int] = {}

    def features(self, path: str) -> tuple[Features, Features] | None:
        """ORB points and descriptors of the picture and of its mirror image (``None``: unreadable)."""
        if path in self._cache:
            return self._cache[path]
        cv2 = self._cv2
        try:
            kw = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
            px = load_image(path, max_side=self.settings.max_side, **kw).pixels
        except ImageLoadError as exc:
            log.info("cannot verify %s: %s", path, exc)
            self._cache[path] = None
            return None
        gray = cv2.cvtColor(np.ascontiguousarray(px), cv2.COLOR_RGB2GRAY)
        if max(gray.shape) < self.settings.min_side:
            f = self.settings.min_side / max(gray.shape)
            gray = cv2.resize(gray, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
        out = []
        for im in (gray, np.ascontiguousarray(gray[:, ::-1])):
            kp, desc = self._orb.detectAndCompute(im, None)
            pts = np.float32([k.pt for k in kp]) if kp else np.zeros((0, 2), np.float32)
            out.append((pts, desc))
        self._cache[path] = (out[0], out[1])
        return self._cache[path]

    def _inliers(self, a: Features, b: Features) -> int:
        pa, da = a
        pb, db = b
        if da is None or db is None or len(da) < 3 or len(db) < 3:
            return 0
        good = [
            m[0]
            for m in self._matcher.knnMatch(da, db, k=2)
            if len(m) == 2 and m[0].distance < self.settings.ratio * m[1].distance
        ]
        if len(good) < 4:
            return 0
        src = pa[[m.queryIdx for m in good]]
        dst = pb[[m.trainIdx for m in good]]
        _, mask = self._cv2.estimateAffinePartial2D(
            src, dst, method=self._cv2.RANSAC, ransacReprojThreshold=self.settings.ransac_px
        )
        return int(mask.sum()) if mask is not None else 0

    def inliers(self, path_a: str, path_b: str) -> int:
        """Matches explained by one similarity transform between the two pictures (the second also mirrored)."""
        key = (path_a, path_b) if path_a <= path_b else (path_b, path_a)
        if key in self._pairs:
            return self._pairs[key]
        fa, fb = self.features(key[0]), self.features(key[1])
        n = 0 if fa is None or fb is None else max(self._inliers(fa[0], fb[0]), self._inliers(fa[0], fb[1]))
        self._pairs[key] = n
        return n
