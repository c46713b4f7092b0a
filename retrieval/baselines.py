"""Classical image descriptors that benchmarks measure beside the network, so its numbers mean something.

Each maps ``(H, W, 3)`` uint8 RGB pixels to an L2-normalised float32 vector whose inner products rank images:
- :func:`colour_histogram`: a joint RGB histogram (``bins`` per channel), Hellinger-mapped (square root).
- :func:`perceptual_hash`: the 64-bit DCT hash of duplicate finders (greyscale 32x32, DCT, the 8x8 lowest
  frequencies against their median), as +-1 entries, so the inner product is ``1 - 2 * hamming / 64``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


def _unit(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    return v / (np.linalg.norm(v) + 1e-12)


def colour_histogram(pixels: np.ndarray, bins: int = 8) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(bins**3,)``."""
    q = (pixels.astype(np.int32) * bins) // 256
    codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.bincount(codes.ravel(), minlength=bins**3).astype(np.float64)
    return _unit(np.sqrt(hist / hist.sum()))


@lru_cache(maxsize=4)
def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal ``(n, n)`` DCT-II matrix: ``D @ x`` is the DCT of ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def perceptual_hash(pixels: np.ndarray, hash_size: int = 8, scale: int = 4) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(hash_size**2,)`` +-1 entries (scaled to unit length)."""
    n = hash_size * scale
    grey = np.asarray(Image.fromarray(pixels).convert("L").resize((n, n), Image.Resampling.LANCZOS), np.float64)
    d = dct_matrix(n)
    low = (d @ grey @ d.T)[:hash_size, :hash_size].ravel()
    bits = low[1:] > np.median(low[1:])  # the DC term carries brightness only
    return _unit(np.where(np.concatenate([[True], bits]), 1.0, -1.0))
