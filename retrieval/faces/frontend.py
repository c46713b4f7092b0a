"""The face front end in one call: pixels in -> faces detected, the wanted one(s) picked, aligned crops out.

Decode-free: it takes an ``(H, W, 3)`` uint8 RGB image already in memory (decoding, EXIF and size guards
are the caller's), runs a detector (:mod:`retrieval.faces.detection`), keeps the faces a ``pick`` rule
chooses, and aligns each (:func:`~retrieval.faces.alignment.align_faces`). The face gallery keeps the largest
face of an enrollment photo (or every face of a photo it indexes); the LFW benchmark keeps the face nearest
the image centre, where LFW puts the labelled person.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .alignment import DEFAULT_MARGIN, align_faces
from .detection import FaceDetector, build_detector
from .types import Face, nearest_to

#: ``pick(faces, width, height) -> the face to keep`` (``None``: none of them).
Pick = Callable[[Sequence[Face], int, int], Face | None]


def largest_face(faces: Sequence[Face], width: int = 0, height: int = 0) -> Face | None:
    """The largest box, ties to the highest score (the image size is not needed); ``None`` for no faces."""
    return max(faces, key=lambda f: (f.area, f.score)) if faces else None


def centre_face(faces: Sequence[Face], width: int, height: int) -> Face | None:
    """The face whose box centre is nearest the centre of a ``width x height`` image (pixel-centre
    coordinates); ``None`` for no faces."""
    return nearest_to(list(faces), width / 2.0 - 0.5, height / 2.0 - 0.5)


@dataclass(frozen=True)
class FaceCrops:
    """What :func:`face_crops` found in one image.

    ``faces``: the faces kept (input pixels), ``crops``: their aligned crops ``(len(faces), S, S, 3)`` uint8,
    ``detected``: how many faces the detector found before picking.
    """

    faces: list[Face]
    crops: np.ndarray
    detected: int

    @property
    def face(self) -> Face | None:
        """The first face kept (the picked one), or ``None`` when there is none."""
        return self.faces[0] if self.faces else None


def pick_faces(faces: Sequence[Face], width: int, height: int, pick: Pick | None = largest_face) -> list[Face]:
    """The faces ``pick`` keeps: ``[]`` or ``[face]``; every face, in the detector's order, when ``pick`` is ``None``."""
    if pick is None:
        return list(faces)
    face = pick(faces, width, height)
    return [] if face is None else [face]


def face_crops(
    pixels: np.ndarray,
    detector: FaceDetector | str = "haar",
    size: int = 160,
    margin: float = DEFAULT_MARGIN,
    pick: Pick | None = largest_face,
) -> FaceCrops:
    """Detect, pick and align: ``(H, W, 3)`` uint8 RGB -> :class:`FaceCrops` with ``(N, size, size, 3)`` crops.

    ``detector``: a :class:`~retrieval.faces.detection.FaceDetector` or a registered name (built with its
    defaults; build it once with :func:`~retrieval.faces.detection.build_detector` for many images).
    ``pick``: which face to keep (:func:`largest_face` by default, :func:`centre_face`, or any
    :data:`Pick`); ``None`` keeps them all. An image without a face gives no faces and a ``(0, S, S, 3)`` array.
    """
    det = build_detector(detector) if isinstance(detector, str) else detector
    found = det.detect(pixels)
    h, w = pixels.shape[:2]
    kept = pick_faces(found, w, h, pick)
    return FaceCrops(kept, align_faces(pixels, kept, size, margin), len(found))
