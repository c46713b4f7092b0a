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
    def from_bytes(cls, data: bytes) -> "Whitening":
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
