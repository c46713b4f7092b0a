"""Face detection: RGB pixels in, a list of :class:`~retrieval.faces.types.Face` (box, score, landmarks) out.

Every detector takes one ``(H, W, 3) uint8`` RGB image (``(H, W)`` grey is accepted too) and returns the
faces it finds, largest first (ties: highest score first). An image without faces gives ``[]``, never an
error. Boxes and landmarks follow :mod:`retrieval.faces.types`: input pixels, eye centres first.

Detectors (the :data:`DETECTORS` registry; :func:`build_detector` builds one by name):

- ``haar`` (default, no extra dependency): OpenCV's Viola-Jones cascade ``haarcascade_frontalface_alt2``
  on a downscaled grey copy, then the eye cascade inside the upper part of each box. Measured on 1,000 random
  LFW photos (full size, 3 neighbours): ``default`` found a box on the centred face in 99.9% of them and
  ``alt2`` in 99.4%, but ``default`` gave 14% extra (mostly spurious) boxes against 6%, and ``alt2``'s
  boxes predict dlib's eye centres better (spread of the eye position in the box 0.022 vs 0.029 of its
  width); after the eye cascade, eyes are off by 6.1% vs 6.3% of the inter-ocular distance on average
  (400 photos). So ``alt2`` is the default. On all of LFW (13,233 photos) it finds the face in 99.4%.
- ``dlib-hog`` and ``dlib-cnn`` (``pip install -e ".[dlib]"``): dlib's HOG + linear SVM frontal detector
  or its MMOD CNN detector, with dlib's 5-point shape predictor for the eyes and the base of the nose. They
  live in :mod:`retrieval.faces.dlib_backend`, which registers them here when imported (the package
  ``retrieval.faces`` imports it); this module imports no detector of another module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ..registry import Registry
from .types import Box, Face, check_pixels, sort_faces

log = logging.getLogger(__name__)


@runtime_checkable
class FaceDetector(Protocol):
    """``detect((H, W, 3) uint8 RGB) -> list[Face]``, largest first; ``[]`` when there is no face."""

    name: str

    def detect(self, pixels: np.ndarray) -> list[Face]: ...


DETECTORS: Registry[Callable[..., FaceDetector]] = Registry("face detector")


def build_detector(name: str = "haar", **options: Any) -> FaceDetector:
    """Build a registered detector (``options`` go to its constructor); raises ``UnknownNameError`` naming
    the known ones."""
    return DETECTORS.get(name)(**options)


def detect_faces(pixels: np.ndarray, detector: str | FaceDetector = "haar") -> list[Face]:
    """One-call convenience: ``(H, W, 3) uint8 -> list[Face]`` with a detector or a detector's name."""
    det = build_detector(detector) if isinstance(detector, str) else detector
    return det.detect(pixels)


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB or ``(H, W)`` uint8 -> ``(H, W)`` uint8 grey."""
    a = check_pixels(pixels)
    return a if a.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)


def working_scale(height: int, width: int, max_side: int | None) -> float:
    """Factor (<= 1) that brings the longest side down to ``max_side`` (1.0 when ``None`` or already small)."""
    longest = max(height, width)
    if not max_side or longest <= max_side:
        return 1.0
    return max_side / longest


# Where the two eye centres fall inside a Haar ``alt2`` box, as fractions of its width and height: the mean
# over 1,000 LFW photos of dlib's 5-point eye centres (spread ~0.02 of the box per coordinate).
HAAR_EYES_IN_BOX = np.array([[0.314, 0.405], [0.674, 0.397]], dtype=np.float32)


def eyes_from_box(box: Box, eyes_in_box: np.ndarray = HAAR_EYES_IN_BOX) -> np.ndarray:
    """The usual eye centres of a frontal face box: ``(2, 2)`` float32, image-left eye first."""
    x0, y0, x1, y1 = box
    return (np.array([x0, y0], np.float32) + eyes_in_box * np.array([x1 - x0, y1 - y0], np.float32)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# OpenCV Haar cascades
# --------------------------------------------------------------------------------------------------


def _cascade_path(filename: str) -> str:
    return str(cv2.data.haarcascades) + filename  # type: ignore[attr-defined]


def _load_cascade(filename: str) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(_cascade_path(filename))
    if cascade.empty():
        raise RuntimeError(
            f"OpenCV could not load {_cascade_path(filename)}; "
            "opencv-python(-headless) 4.x ships it (5.x dropped the cascades)"
        )
    return cascade


@dataclass(frozen=True)
class HaarConfig:
    """Settings of :class:`HaarDetector`.

    ``cascade``: ``"alt2"``, ``"default"``, ``"alt"`` (``haarcascade_frontalface_<cascade>.xml``).
    ``max_side``: detection runs on a grey copy whose longest side is at most this (boxes are mapped back).
    ``min_face``: smallest face looked for, as a fraction of the working copy's shorter side (and at
    least ``min_face_px`` pixels there). ``scale_factor`` / ``min_neighbors``: OpenCV's pyramid step and
    the number of overlapping hits a box needs. ``find_eyes``: run the eye cascade in each box (else eyes
    are estimated from the box). ``equalize``: histogram-equalise the grey copy first (on LFW it lost
    ~0.5% of faces, so it is off).
    """

    cascade: str = "alt2"
    max_side: int | None = 640
    min_face: float = 0.1
    min_face_px: int = 24
    scale_factor: float = 1.1
    min_neighbors: int = 3
    find_eyes: bool = True
    equalize: bool = False


class HaarDetector:
    """OpenCV Haar cascade face detector with the eye cascade for landmarks.

    ``detect((H, W, 3) uint8 RGB) -> list[Face]`` with ``landmarks (2, 2)`` = eye centres. When the eye
    cascade finds both eyes where eyes can be (near their usual place in the box, one each side), those are
    used; when it finds one, the other is placed at the usual eye distance beside it; when it finds none,
    both come from the box (:data:`HAAR_EYES_IN_BOX`). The last two cases set ``landmarks_estimated``.

    One instance is not safe to share between threads (OpenCV's cascades hold scratch state); make one per
    thread.
    """

    name = "haar"

    def __init__(self, config: HaarConfig | None = None, **overrides: Any) -> None:
        cfg = config or HaarConfig()
        if overrides:
            cfg = HaarConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        self._faces = _load_cascade(f"haarcascade_frontalface_{cfg.cascade}.xml")
        self._eyes = _load_cascade("haarcascade_eye.xml") if cfg.find_eyes else None

    def detect(self, pixels: np.ndarray) -> list[Face]:
        """``(H, W, 3)`` uint8 RGB -> faces, largest first."""
        cfg = self.config
        if check_pixels(pixels).size == 0:
            return []
        grey = to_grey(pixels)
        h, w = grey.shape
        s = working_scale(h, w, cfg.max_side)
        small = (
            grey
            if s == 1.0
            else cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        )
        if cfg.equalize and small.size:
            small = cv2.equalizeHist(small)
        min_px = max(cfg.min_face_px, int(cfg.min_face * min(small.shape)))
        if min(small.shape) < min_px:
            return []
        boxes, neighbours = self._faces.detectMultiScale2(
            small, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors, minSize=(min_px, min_px)
        )
        faces = []
        for (bx, by, bw, bh), n in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(neighbours).reshape(-1)):
            box = (max(0.0, bx / s), max(0.0, by / s), min(float(w), (bx + bw) / s), min(float(h), (by + bh) / s))
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            eyes, estimated = self._find_eyes(grey, box)
            faces.append(Face(*box, score=float(n), landmarks=eyes, landmarks_estimated=estimated, detector=self.name))
        log.debug("haar: %d face(s) in a %dx%d image (searched at %.2fx)", len(faces), w, h, s)
        return sort_faces(faces)

    # Eye search in a copy of the face box rescaled to this width: eyes are then ~20-30 px wide, where the
    # 20x20 eye cascade works well, whatever the face's size in the photo.
    _EYE_BOX_WIDTH = 120

    def _find_eyes(self, grey: np.ndarray, box: Box) -> tuple[np.ndarray, bool]:
        """Eye centres ``(2, 2)`` in image pixels for one face box, and whether they were estimated."""
        expected = eyes_from_box(box)
        if self._eyes is None:
            return expected, True
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        # The band of the box where eyes can be: 20% to 60% of its height.
        top, bottom = int(y0 + 0.2 * bh), int(np.ceil(y0 + 0.6 * bh))
        left, right = int(x0), int(np.ceil(x1))
        band = grey[top:bottom, left:right]
        if band.shape[0] < 4 or band.shape[1] < 8:
            return expected, True
        k = self._EYE_BOX_WIDTH / band.shape[1]
        band = cv2.resize(
            band,
            (self._EYE_BOX_WIDTH, max(1, round(band.shape[0] * k))),
            interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
        )
        lo, hi = int(0.12 * self._EYE_BOX_WIDTH), int(0.4 * self._EYE_BOX_WIDTH)
        if min(band.shape) < lo:
            return expected, True
        found = self._eyes.detectMultiScale(band, scaleFactor=1.1, minNeighbors=3, minSize=(lo, lo), maxSize=(hi, hi))
        centres = [
            np.array([left + (ex + ew / 2) / k, top + (ey + eh / 2) / k], np.float32)
            for ex, ey, ew, eh in np.asarray(found).reshape(-1, 4)
        ]
        # A candidate counts for an eye only if it lies within 12% of the box width of where that eye usually is.
        reach = 0.12 * bw
        picked: list[np.ndarray | None] = []
        for eye in expected:
            near = [c for c in centres if np.hypot(*(c - eye)) < reach]
            picked.append(min(near, key=lambda c: float(np.hypot(*(c - eye)))) if near else None)
        left_eye, right_eye = picked
        if left_eye is not None and right_eye is not None and right_eye[0] - left_eye[0] > 0.2 * bw:
            return np.stack([left_eye, right_eye]), False
        if left_eye is not None:
            return np.stack([left_eye, left_eye + (expected[1] - expected[0])]), True
        if right_eye is not None:
            return np.stack([right_eye - (expected[1] - expected[0]), right_eye]), True
        return expected, True


@DETECTORS.register("haar")
def _haar(**options: Any) -> HaarDetector:
    return HaarDetector(**options)
