"""Faces, stage by stage: detection -> alignment -> embedding, each usable alone."""

from ..dlib_backend import DlibFaceEncoder
from ..face_alignment import align_face
from ..face_detection import DETECTORS, Face, FaceDetector, build_detector
from .embedding import AlignedFaceEmbedder, FaceEmbedder, unit_vectors

__all__ = ["DETECTORS", "AlignedFaceEmbedder", "DlibFaceEncoder", "Face", "FaceDetector", "FaceEmbedder",
           "align_face", "build_detector", "unit_vectors"]
