"""Face embedding: aligned face pixels in, unit vectors out.

A :class:`FaceEmbedder` turns the faces of one photo into ``(len(faces), dim)`` float32 unit vectors.
:class:`AlignedFaceEmbedder` does it with any image embedder (the lookalike network,
``retrieval.model.Embedder``) on aligned crops; dlib's descriptor
(:class:`~retrieval.faces.dlib_backend.DlibFaceEncoder`) is the other implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .alignment import align_faces
from .types import Face


class FaceEmbedder(Protocol):
    """``embed((H, W, 3) uint8 RGB, faces) -> (len(faces), dim)`` float32 unit vectors."""

    dim: int

    def embed(self, pixels: np.ndarray, faces: Sequence[Face]) -> np.ndarray: ...


def unit_vectors(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: ``(N, D)`` -> ``(N, D)`` float32 (all-zero rows stay zero)."""
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class AlignedFaceEmbedder:
    """The lookalike network on aligned face crops: each face is aligned (:func:`align_faces`) into a
    ``crop_size`` square and the crops of one photo are embedded as one batch.

    ``embedder``: anything with ``dim`` and ``embed_batch((N, S, S, 3) uint8) -> (N, dim)``.
    """

    def __init__(self, embedder: Any, crop_size: int) -> None:
        self.embedder, self.crop_size = embedder, crop_size
        self.dim = embedder.dim

    def crops(self, pixels: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(len(faces), S, S, 3)`` uint8 aligned crops."""
        return align_faces(pixels, faces, self.crop_size)

    def embed(self, pixels: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        return unit_vectors(self.embedder.embed_batch(self.crops(pixels, faces)))
