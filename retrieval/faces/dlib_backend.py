"""dlib's face models as an optional backend: HOG / CNN detectors, 5-point landmarks, 128-d ResNet descriptor.

Needs the ``dlib`` extra: ``pip install -e ".[dlib]"`` (``dlib-bin``, a prebuilt wheel, and
``face-recognition-models``, which holds the trained ``.dat`` files). The model files are loaded by path
from the installed ``face_recognition_models`` package folder, found without importing the package
(importing it fails on recent setuptools, which no longer ship ``pkg_resources``); ``$LOOKALIKE_DLIB_MODELS``
may name another folder holding the same files.

Importing this module registers the ``dlib-hog`` and ``dlib-cnn`` detectors in
:data:`retrieval.faces.detection.DETECTORS`; dlib itself is imported only when a model is built.

Models used:

- ``mmod_human_face_detector.dat`` (``dlib-cnn``) and dlib's built-in HOG detector (``dlib-hog``);
- ``shape_predictor_5_face_landmarks.dat``: 2 corners per eye and the base of the nose;
- ``dlib_face_recognition_resnet_model_v1.dat``: a ResNet-34-like network mapping a 150x150 aligned chip to
  a 128-d vector; dlib reports 99.38% on LFW with it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from .detection import DETECTORS, working_scale
from .types import Face, check_pixels, sort_faces

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[dlib]"'

#: Model files of the ``face_recognition_models`` package used here.
SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
RESNET = "dlib_face_recognition_resnet_model_v1.dat"
MMOD = "mmod_human_face_detector.dat"

#: dlib's own decision threshold: two faces are the same person when the Euclidean distance between their
#: *raw* (not L2-normalised) descriptors is below 0.6.
DLIB_RAW_THRESHOLD = 0.6


class DlibUnavailableError(RuntimeError):
    """dlib or its model files are missing; the message says what to install."""


def import_dlib() -> ModuleType:
    """The ``dlib`` module, or :class:`DlibUnavailableError` naming the install command."""
    try:
        import dlib  # type: ignore[import-not-found]
    except ImportError as exc:
        raise DlibUnavailableError(f"dlib is not installed: {INSTALL_HINT} (from the lookalike source folder)") from exc
    return dlib


def models_dir() -> Path:
    """Folder holding dlib's ``.dat`` model files: ``$LOOKALIKE_DLIB_MODELS``, else the installed
    ``face_recognition_models/models`` (located with ``importlib.util.find_spec``, without running it)."""
    env = os.environ.get("LOOKALIKE_DLIB_MODELS")
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DlibUnavailableError(f"the face-recognition-models package is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_path(filename: str) -> Path:
    """Path of one model file; :class:`DlibUnavailableError` when it is not there."""
    path = models_dir() / filename
    if not path.is_file():
        raise DlibUnavailableError(f"dlib model file {path} is missing: {INSTALL_HINT}")
    return path


def dlib_available() -> bool:
    """Whether dlib and its model files are installed."""
    try:
        import_dlib()
        model_path(SHAPE_5)
        return True
    except DlibUnavailableError:
        return False


# Loaded models are shared by every instance (the ResNet alone is 22 MB).
@cache
def _shape_predictor() -> Any:
    log.debug("loading %s", model_path(SHAPE_5))
    return import_dlib().shape_predictor(str(model_path(SHAPE_5)))


@cache
def _resnet() -> Any:
    log.debug("loading %s", model_path(RESNET))
    return import_dlib().face_recognition_model_v1(str(model_path(RESNET)))


@cache
def _mmod() -> Any:
    log.debug("loading %s", model_path(MMOD))
    return import_dlib().cnn_face_detection_model_v1(str(model_path(MMOD)))


@cache
def _hog() -> Any:
    return import_dlib().get_frontal_face_detector()


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """dlib wants C-contiguous ``(H, W, 3)`` uint8 RGB."""
    a = check_pixels(pixels)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a)


def _rectangle(box: Sequence[float]) -> Any:
    """``(x0, y0, x1, y1)`` with exclusive ``x1, y1`` -> ``dlib.rectangle`` (inclusive corners)."""
    x0, y0, x1, y1 = box
    return import_dlib().rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)


def shape_to_landmarks(shape: Any) -> np.ndarray:
    """dlib 5-point ``full_object_detection`` -> ``(3, 2)`` float32: image-left eye centre, image-right eye
    centre, nose base (:data:`retrieval.faces.types.LANDMARK_NAMES` order).

    dlib's points 0-1 are the corners of the image-right eye, 2-3 those of the image-left eye, 4 the base
    of the nose.
    """
    p = np.array([[q.x, q.y] for q in shape.parts()], dtype=np.float32)
    if p.shape != (5, 2):
        raise ValueError(f"expected a 5-point shape, got {p.shape[0]} points")
    return np.stack([(p[2] + p[3]) / 2, (p[0] + p[1]) / 2, p[4]])


class DlibDetector:
    """dlib's HOG (``kind="hog"``) or MMOD CNN (``kind="cnn"``) face detector with 5-point landmarks.

    ``detect((H, W, 3) uint8 RGB) -> list[Face]`` with ``landmarks (3, 2)`` (eye centres, nose base).
    Detection runs on a copy whose longest side is at most ``max_side``; ``upsample`` doubles that copy's
    size this many times first (HOG finds faces from ~80 px, ~40 px with one upsampling). Landmarks are
    fitted on the full-resolution image. ``threshold`` is added to the detector's own cut-off (negative:
    more faces). The CNN detector is slow on a CPU (~1 s for a 640 px photo).
    """

    def __init__(
        self,
        kind: str = "hog",
        upsample: int = 1,
        max_side: int | None = 640,
        threshold: float = 0.0,
        landmarks: bool = True,
    ) -> None:
        if kind not in ("hog", "cnn"):
            raise ValueError(f"kind must be 'hog' or 'cnn', got {kind!r}")
        import_dlib()
        self.kind, self.upsample, self.max_side, self.threshold = kind, int(upsample), max_side, float(threshold)
        self.name = f"dlib-{kind}"
        self._detector = _hog() if kind == "hog" else _mmod()
        self._shape = _shape_predictor() if landmarks else None

    def detect(self, pixels: np.ndarray) -> list[Face]:
        """``(H, W, 3)`` uint8 RGB -> faces, largest first."""
        img = _rgb(pixels)
        h, w = img.shape[:2]
        if h < 2 or w < 2:
            return []
        s = working_scale(h, w, self.max_side)
        small = (
            img
            if s == 1.0
            else cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        )
        # Smaller than the detection window (HOG 80 px, CNN ~40 px) even after upsampling: no face can be
        # there, and dlib's CNN raises on inputs under ~7 px.
        if min(small.shape[:2]) * 2**self.upsample < (80 if self.kind == "hog" else 40):
            return []
        if self.kind == "hog":
            rects, scores, _ = self._detector.run(small, self.upsample, self.threshold)
        else:
            found = self._detector(small, self.upsample)
            rects = [d.rect for d in found]
            scores = [d.confidence for d in found]
        faces = []
        for r, score in zip(rects, scores):
            box = (
                max(0.0, r.left() / s),
                max(0.0, r.top() / s),
                min(float(w), (r.right() + 1) / s),
                min(float(h), (r.bottom() + 1) / s),
            )
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            marks = None
            if self._shape is not None:
                marks = shape_to_landmarks(self._shape(img, _rectangle(box)))
            faces.append(Face(*box, score=float(score), landmarks=marks, detector=self.name))
        return sort_faces(faces)


class DlibFaceEncoder:
    """dlib's 128-d ResNet face descriptor: ``embed((H, W, 3) uint8 RGB, faces) -> (N, 128) float32``.

    For each face, dlib's 5-point shape predictor runs inside the face's box and
    ``compute_face_descriptor`` aligns a 150x150 chip (``padding`` around the face, as a fraction of its
    size) and runs the network; ``num_jitters > 0`` averages that many randomly jittered copies (slower,
    slightly better). Boxes from any detector are accepted, though dlib's own (``dlib-hog``) are what the
    shape predictor was trained on.

    Vectors are L2-normalised by default, so that cosine similarity works as for every other lookalike
    vector. dlib's own rule, "same person when the Euclidean distance is below 0.6"
    (:data:`DLIB_RAW_THRESHOLD`), applies to the *raw* vectors: pass ``normalize=False`` to get those.
    """

    dim = 128

    def __init__(self, normalize: bool = True, num_jitters: int = 0, padding: float = 0.25) -> None:
        import_dlib()
        self.normalize, self.num_jitters, self.padding = normalize, int(num_jitters), float(padding)
        self._shape = _shape_predictor()
        self._net = _resnet()

    def embed(self, pixels: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Descriptors of ``faces`` in one image: ``(H, W, 3) uint8`` -> ``(len(faces), 128)`` float32."""
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        dlib = import_dlib()
        img = _rgb(pixels)
        shapes = dlib.full_object_detections()
        for f in faces:
            shapes.append(self._shape(img, _rectangle(f.box)))
        vecs = np.array(
            self._net.compute_face_descriptor(img, shapes, self.num_jitters, self.padding), dtype=np.float32
        ).reshape(len(faces), self.dim)
        if self.normalize:
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs


@DETECTORS.register("dlib-hog")
def _dlib_hog(**options: Any) -> DlibDetector:
    return DlibDetector(kind="hog", **options)


@DETECTORS.register("dlib-cnn")
def _dlib_cnn(**options: Any) -> DlibDetector:
    return DlibDetector(kind="cnn", **options)
