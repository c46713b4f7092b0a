"""Face alignment: a similarity transform from detected landmarks onto a canonical face, then a square crop.

A similarity transform (rotation, uniform scale, translation; no shear, no reflection) is fitted by least
squares from the face's landmarks (2 eye centres, 3 with the nose base, 5 with the mouth corners; see
:data:`retrieval.faces.types.LANDMARK_NAMES`) to the same points of :data:`CANONICAL_FACE`, and the image
is warped with it into an ``(S, S, 3)`` crop where the eyes are level and at fixed places.

Coordinates: points are ``(x, y)`` pixel coordinates with pixel centres at integers (OpenCV's
convention). The canonical face lives in a unit square, ``(0, 0)`` its top-left corner and ``(1, 1)`` its
bottom-right; a crop of side ``S`` with ``margin m`` shows that square plus ``m`` of its side on every edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .types import Box, Face, check_pixels

#: The canonical face in a unit square, rows in ``LANDMARK_NAMES`` order: eye centres, nose base, mouth
#: corners. Measured with dlib's 68-point model on 599 random LFW photos, after putting the eyes at
#: ``(0, 0)`` and ``(1, 0)``: nose base ``(0.50, 0.78)``, mouth corners ``(0.05, 1.11)`` / ``(0.95, 1.11)``,
#: jaw from x = -0.67 to 1.70, brows from y = -0.37, chin at y = 1.96 (inter-ocular distances). The
#: square is 2.4 inter-ocular distances wide, centred on x = 0.5 and y = 0.65: brows to chin, cheek to cheek.
CANONICAL_FACE = np.array(
    [
        [0.2917, 0.2292],  # left eye (image-left)
        [0.7083, 0.2292],  # right eye
        [0.5000, 0.5542],  # nose base
        [0.3125, 0.6917],  # mouth corner, image-left
        [0.6875, 0.6917],
    ],  # mouth corner, image-right
    dtype=np.float64,
)

#: Default margin: 20% of the face square on each side, so the 160 px crop shows the forehead and chin,
#: with the eyes ~48 px apart. (For the *untrained* ImageNet model on LFW folds 1-3, margins 0 / 0.2 / 0.5
#: / 0.8 gave 67.6 / 70.7 / 71.5 / 70.9% accuracy: it leans on hair and background; a trained face
#: network is expected to prefer the face itself.)
DEFAULT_MARGIN = 0.2


def estimate_similarity(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform taking ``src_pts (N, 2)`` onto ``dst_pts (N, 2)``, ``N >= 2``.

    Returns the ``(2, 3)`` float64 matrix ``M = [s R | t]`` (``dst ~ s R src + t``, ``R`` a proper
    rotation), ready for ``cv2.warpAffine``. This is Umeyama's (1991) solution in 2-D, where it has a closed
    form: writing points as complex numbers, ``dst - mean(dst) = a (src - mean(src))`` with
    ``a = s e^{i theta} = sum(conj(src_c) dst_c) / sum(|src_c|^2)``. Exact for two points or for points that
    are an exact similarity image of each other.

    Raises ``ValueError`` for mismatched shapes, fewer than two points, non-finite values, or source
    points that all coincide.
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(f"need two (N, 2) point arrays of the same shape, got {src.shape} and {dst.shape}")
    if src.shape[0] < 2:
        raise ValueError(f"need at least 2 points, got {src.shape[0]}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    zs_c, zd_c = zs - ms, zd - md
    spread = float(np.sum(np.abs(zs_c) ** 2))
    if spread <= 1e-12 * max(1.0, float(np.max(np.abs(zs)) ** 2)):
        raise ValueError("source points coincide: no transform is defined")
    a = np.sum(np.conj(zs_c) * zd_c) / spread
    t = md - a * ms
    return np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag]], dtype=np.float64)


def apply_transform(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine ``matrix`` to points ``(N, 2)`` -> ``(N, 2)`` float64."""
    p = np.asarray(pts, dtype=np.float64)
    return p @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    """Inverse of an invertible ``(2, 3)`` affine matrix, as a ``(2, 3)`` matrix."""
    m = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


def template_points(
    size: int, margin: float = DEFAULT_MARGIN, n: int = 5, template: np.ndarray = CANONICAL_FACE
) -> np.ndarray:
    """The first ``n`` canonical points in the pixel coordinates of an ``S x S`` crop with ``margin``: ``(n, 2)``."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if margin <= -0.5:
        raise ValueError(f"margin must be > -0.5, got {margin}")
    if not 2 <= n <= len(template):
        raise ValueError(f"the template has {len(template)} points; cannot use {n}")
    unit = (np.asarray(template[:n], np.float64) + margin) / (1.0 + 2.0 * margin)
    return unit * size - 0.5  # unit square edge to edge -> pixel-centre coordinates


def alignment_matrix(
    landmarks: np.ndarray, size: int = 160, margin: float = DEFAULT_MARGIN, template: np.ndarray = CANONICAL_FACE
) -> np.ndarray:
    """``(2, 3)`` matrix taking image pixels to crop pixels, fitted on ``landmarks (K, 2)`` (``K >= 2``, in
    :data:`~retrieval.faces.types.LANDMARK_NAMES` order) and the first ``K`` template points."""
    pts = np.asarray(landmarks, np.float64)
    return estimate_similarity(pts, template_points(size, margin, pts.shape[0], template))


def box_matrix(box: Box, size: int = 160, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """``(2, 3)`` matrix taking image pixels to crop pixels for a face known only by its box: the box's
    centre goes to the crop's centre and its larger side fills the face square (no rotation)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    if side <= 0:
        raise ValueError(f"empty box {box}")
    k = size / ((1.0 + 2.0 * margin) * side)
    # Box edges are pixel edges: its centre in pixel-centre coordinates is the edge midpoint - 0.5.
    cx, cy = (x0 + x1) / 2.0 - 0.5, (y0 + y1) / 2.0 - 0.5
    c = size / 2.0 - 0.5
    return np.array([[k, 0.0, c - k * cx], [0.0, k, c - k * cy]])


def warp(pixels: np.ndarray, matrix: np.ndarray, size: int, border: str = "replicate") -> np.ndarray:
    """Warp ``(H, W, 3)`` uint8 by ``matrix`` (image -> crop pixels) into an ``(S, S, 3)`` uint8 crop.

    Bilinear; when the transform shrinks by more than 2x (a large face in a large photo), the region is
    first reduced with area averaging, so the crop does not alias. ``border``: ``"replicate"`` (edge pixels
    extended) or ``"constant"`` (black) for parts of the crop outside the image.
    """
    img = check_pixels(pixels)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if border not in ("replicate", "constant"):
        raise ValueError(f"border must be 'replicate' or 'constant', got {border!r}")
    m = np.asarray(matrix, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5 and img.shape[0] > 1 and img.shape[1] > 1:
        # Crop the source region the output needs (plus a few pixels), shrink it to 2x the output scale.
        corners = apply_transform(
            invert_transform(m), np.array([[-1, -1], [size, -1], [-1, size], [size, size]], float)
        )
        pad = 2.0 / scale
        x0 = int(np.clip(np.floor(corners[:, 0].min() - pad), 0, img.shape[1] - 1))
        y0 = int(np.clip(np.floor(corners[:, 1].min() - pad), 0, img.shape[0] - 1))
        x1 = int(np.clip(np.ceil(corners[:, 0].max() + pad), x0 + 1, img.shape[1]))
        y1 = int(np.clip(np.ceil(corners[:, 1].max() + pad), y0 + 1, img.shape[0]))
        region = img[y0:y1, x0:x1]
        f = 2.0 * scale
        new_w, new_h = max(1, round(region.shape[1] * f)), max(1, round(region.shape[0] * f))
        fx, fy = new_w / region.shape[1], new_h / region.shape[0]
        img = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
        # region pixel (u, v) = image (x0 + u, y0 + v); resized pixel u' = (u + 0.5) fx - 0.5.
        to_small = np.array([[fx, 0.0, (0.5 - x0) * fx - 0.5], [0.0, fy, (0.5 - y0) * fy - 0.5]])
        m = m @ np.vstack([invert_transform(to_small), [0.0, 0.0, 1.0]])
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    return cv2.warpAffine(np.ascontiguousarray(img), m, (size, size), flags=cv2.INTER_LINEAR, borderMode=mode)


def align_face(
    pixels: np.ndarray, face: Face, size: int = 160, margin: float = DEFAULT_MARGIN, border: str = "replicate"
) -> np.ndarray:
    """Aligned crop of one face: ``(H, W, 3)`` uint8 RGB -> ``(size, size, 3)`` uint8.

    Uses the face's landmarks (eyes level and at the canonical places; with the nose base and mouth corners
    too when the detector gave them); a face without landmarks is cropped from its box instead
    (:func:`box_matrix`). Landmarks guessed from the box (``landmarks_estimated``) are used like found
    ones: for a frontal detector's box they are a fair guess.
    """
    if face.landmarks is not None:
        matrix = alignment_matrix(face.landmarks, size, margin)
    else:
        matrix = box_matrix(face.box, size, margin)
    return warp(pixels, matrix, size, border)


def align_faces(
    pixels: np.ndarray,
    faces: Sequence[Face],
    size: int = 160,
    margin: float = DEFAULT_MARGIN,
    border: str = "replicate",
) -> np.ndarray:
    """Aligned crops of several faces of one image (:func:`align_face` each):
    ``(H, W, 3)`` uint8 -> ``(len(faces), size, size, 3)`` uint8 (``(0, size, size, 3)`` for no faces)."""
    if not faces:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([align_face(pixels, f, size, margin, border) for f in faces])


def crop_box(
    pixels: np.ndarray, box: Box, size: int = 160, margin: float = DEFAULT_MARGIN, border: str = "replicate"
) -> np.ndarray:
    """Square crop around ``box`` (no landmarks): ``(H, W, 3)`` uint8 -> ``(size, size, 3)`` uint8."""
    return warp(pixels, box_matrix(box, size, margin), size, border)


#: The 5-point ArcFace template (Deng et al. 2019; the one SFace was trained with) in pixels of a 112 x 112
#: crop: eye centres, nose tip, mouth corners, image-left first.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
#: The same template in the unit square of :data:`CANONICAL_FACE` (margin 0): ``template_points(112, 0.0,
#: template=ARCFACE_FACE)`` gives back :data:`ARCFACE_112`.
ARCFACE_FACE = (ARCFACE_112 + 0.5) / 112.0
