"""PCA-whitening learned from a set of descriptors (e.g. the indexed collection itself), numpy in and out.

``learn_pca_whitening(X, dim)`` returns a :class:`Whitening` ``(shift (D,), proj (d, D))``;
``apply`` maps ``(N, D) -> (N, d)`` as ``l2n((x - shift) @ proj.T)``: centre, rotate onto the principal
axes, scale each axis to unit variance, keep the ``d`` strongest, and re-normalise.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass
class Whitening:
    shift: np.ndarray  # (D,)
    proj: np.ndarray  # (d, D)

    @property
    def in_dim(self) -> int:
        return int(self.proj.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.proj.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(N, D) -> (N, d)`` float32 unit vectors."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"whitening expects (N, {self.in_dim}) vectors, got {x.shape}")
        y = (x - self.shift) @ self.proj.T
        return l2n_np(y)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, shift=self.shift, proj=self.proj)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(shift=z["shift"].astype(np.float32), proj=z["proj"].astype(np.float32))


def l2n_np(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """L2-normalise rows: ``(N, D) -> (N, D)`` float32."""
    x = np.asarray(x, dtype=np.float32)
    return (x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)).astype(np.float32, copy=False)


def learn_pca_whitening(x: np.ndarray, dim: int | None = None, shrinkage: float = 0.0) -> Whitening:
    """Learn PCA-whitening from ``(N, D)`` descriptors, keeping ``dim`` components (default: all usable).

    At most ``N - 1`` components carry information; asking for more raises ``ValueError``.
    ``shrinkage`` in ``[0, 1)`` blends each eigenvalue with the mean eigenvalue, which softens the
    whitening of weak components (a plain PCA-whitening is ``0``; ``1`` would be a plain rotation).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) descriptors, got {x.shape}")
    n, d = x.shape
    usable = min(d, n - 1)
    if usable < 1:
        raise ValueError(f"need at least 2 descriptors to learn a whitening, got {n}")
    dim = usable if dim is None else dim
    if not 1 <= dim <= usable:
        raise ValueError(f"cannot keep {dim} components from {n} descriptors of dimension {d} (at most {usable})")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(1, n - 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:dim]
    eigval, eigvec = eigval[order], eigvec[:, order]
    if shrinkage:
        eigval = (1 - shrinkage) * eigval + shrinkage * eigval.mean()
    eigval = np.maximum(eigval, 1e-9 * max(float(eigval[0]), 1e-12))
    proj = (eigvec / np.sqrt(eigval)).T  # (dim, D)
    return Whitening(shift=mean.astype(np.float32), proj=proj.astype(np.float32))


def _inverse_sqrt(cov: np.ndarray, ridge: float) -> np.ndarray:
    """``C^{-1/2}`` of a symmetric PSD matrix, with ``ridge * mean eigenvalue`` added for stability."""
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.maximum(eigval, 0.0) + ridge * max(float(eigval.mean()), 1e-12)
    return (eigvec / np.sqrt(eigval)) @ eigvec.T


def learn_supervised_whitening(
    x: np.ndarray, pairs: np.ndarray, dim: int | None = None, ridge: float = 1e-3
) -> Whitening:
    """Radenović et al.'s learned whitening ("Lw") from matching pairs: ``(N, D)`` descriptors and
    ``pairs (P, 2)`` of indices of images that show the same thing -> :class:`Whitening` to ``dim``.

    First whiten the *intra-class* covariance ``Cs = mean (x_i - x_j)(x_i - x_j)^T`` over matching pairs
    (so the differences that do not matter shrink), then rotate onto the principal axes of all the
    descriptors in that whitened space and keep the ``dim`` strongest (so what separates images stays).
    ``ridge`` regularises ``Cs``, which is singular when there are fewer pairs than dimensions.
    """
    x = np.asarray(x, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) descriptors, got {x.shape}")
    n, d = x.shape
    if len(pairs) == 0:
        raise ValueError("supervised whitening needs at least one matching pair")
    dim = min(d, n - 1) if dim is None else dim
    if not 1 <= dim <= min(d, n - 1):
        raise ValueError(f"cannot keep {dim} components from {n} descriptors of dimension {d}")
    diff = x[pairs[:, 0]] - x[pairs[:, 1]]
    whiten_intra = _inverse_sqrt(diff.T @ diff / len(pairs), ridge)  # (D, D), symmetric
    mean = x.mean(axis=0)
    y = (x - mean) @ whiten_intra
    eigval, eigvec = np.linalg.eigh(y.T @ y / max(1, n - 1))
    order = np.argsort(eigval)[::-1][:dim]
    proj = eigvec[:, order].T @ whiten_intra  # (dim, D)
    return Whitening(shift=mean.astype(np.float32), proj=proj.astype(np.float32))
