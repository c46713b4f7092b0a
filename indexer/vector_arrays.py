"""Arrays of ids and vectors checked and shaped the same way by every vector index (FAISS or torch), and index
files written atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Rows per block when checking big arrays.
_BLOCK = 65_536


def as_ids(ids: Any, name: str = "ids") -> np.ndarray:
    """Validate ids: 1-D integers, non-negative. Returns contiguous ``int64`` (n,)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.min() < 0:
        raise ValueError(f"{name} must be non-negative (-1 is reserved for padding)")
    return arr


def as_vectors(vectors: Any, dim: int | None, name: str = "vectors") -> np.ndarray:
    """Validate a (n, dim) matrix and return it as C-contiguous ``float32``.

    Non-float32 input is converted. Raises ``ValueError`` on wrong rank, wrong
    dimension or non-finite values.
    """
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"dimension mismatch: {name} have dim {arr.shape[1]}, index has dim {dim}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have dim >= 1")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for start in range(0, arr.shape[0], _BLOCK):
        if not np.isfinite(arr[start : start + _BLOCK]).all():
            raise ValueError(f"{name} contain NaN or infinite values")
    return arr


def check_normalised(vectors: np.ndarray, what: str) -> None:
    """Log a warning when rows are visibly not unit length (cosine assumes they are)."""
    if vectors.shape[0] == 0:
        return
    sample = vectors[: min(vectors.shape[0], 1024)]
    norms = np.linalg.norm(sample, axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:
        log.warning(
            "%s are not L2-normalised (norms in [%.4f, %.4f]); inner product is not cosine",
            what,
            float(norms.min()),
            float(norms.max()),
        )


def pad_results(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (Q, k') results to (Q, k); padding is id -1 / score -inf (also for FAISS's own padding)."""
    q = labels.shape[0]
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    out_i = np.full((q, k), -1, dtype=np.int64)
    kk = labels.shape[1]
    out_s[:, :kk] = scores
    out_i[:, :kk] = labels
    out_s[out_i < 0] = -np.inf
    return out_s, out_i


def atomic_write(path: Path | str, write: Callable[[str], None]) -> None:
    """Write a file at ``path`` atomically: ``write(tmp)`` writes a temporary file in the same folder, which is
    fsynced and moved over ``path`` (readers see the old or the new file, never a partial one); the rename is
    made durable by syncing the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)
