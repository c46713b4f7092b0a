"""Face types: the :class:`Face` record (box, score, landmarks), landmark names, boxes, and checks on pixels.

Boxes and landmarks are in the input image's pixel coordinates (pixel centres at integer coordinates, as
OpenCV and dlib use them). Landmarks are a ``(K, 2)`` float32 array of ``(x, y)`` rows in the order of
:data:`LANDMARK_NAMES`; every detector gives at least the two eye centres (``K >= 2``), image-left eye first
(that is the subject's right eye). When a detector could not locate the eyes and guessed them from the box,
``Face.landmarks_estimated`` is ``True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A face box ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
Box = tuple[float, float, float, float]

#: Row names of ``Face.landmarks``; a detector fills the first ``K`` of them. "left"/"right" are as seen in
#: the image (the image-left eye is the subject's right eye). ``nose_base`` is the point under the nose tip
#: (dlib's 5-point model), not the tip itself.
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose_base", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One detected face.

    ``x0, y0, x1, y1``: the box in input pixels (``x1``/``y1`` exclusive, as ``x0 + width``).
    ``score``: the detector's confidence (its own scale: neighbour count for Haar, SVM margin for dlib HOG,
    CNN confidence for dlib CNN); only comparable within one detector.
    ``landmarks``: ``(K, 2)`` float32 ``(x, y)`` rows named by :data:`LANDMARK_NAMES`, or ``None``.
    ``landmarks_estimated``: the landmarks were guessed from the box, not found in the pixels.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 0.0
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)
    landmarks_estimated: bool = False
    detector: str = ""

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"empty face box ({self.x0}, {self.y0}, {self.x1}, {self.y1})")
        if self.landmarks is not None:
            pts = np.array(self.landmarks, dtype=np.float32)  # a private copy, made read-only below
            if pts.ndim != 2 or pts.shape[1] != 2 or not 2 <= pts.shape[0] <= len(LANDMARK_NAMES):
                raise ValueError(f"landmarks must be (K, 2) with 2 <= K <= {len(LANDMARK_NAMES)}, got {pts.shape}")
            pts.setflags(write=False)
            object.__setattr__(self, "landmarks", pts)

    @property
    def box(self) -> Box:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    @property
    def eyes(self) -> np.ndarray | None:
        """``(2, 2)`` eye centres (image-left first), or ``None`` without landmarks."""
        return None if self.landmarks is None else self.landmarks[:2]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "landmarks": None if self.landmarks is None else self.landmarks.tolist(),
            "landmarks_estimated": self.landmarks_estimated,
            "detector": self.detector,
        }


def check_pixels(pixels: np.ndarray) -> np.ndarray:
    """Validate an image: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey, returned as is). Raises ``ValueError``."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {a.dtype}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"expected (H, W, 3) RGB or (H, W) grey pixels, got shape {a.shape}")
    return a


def sort_faces(faces: list[Face]) -> list[Face]:
    """Largest box first; equal sizes by decreasing score."""
    return sorted(faces, key=lambda f: (-f.area, -f.score))


def nearest_to(faces: list[Face], x: float, y: float) -> Face | None:
    """The face whose box centre is nearest ``(x, y)`` (``None`` for no faces)."""
    if not faces:
        return None
    return min(faces, key=lambda f: (f.centre[0] - x) ** 2 + (f.centre[1] - y) ** 2)
