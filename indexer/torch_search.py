"""Exact inner-product search with torch: a chunked matrix product and top-k, on a GPU or on the CPU.

FAISS from pip (``faiss-cpu``) has no GPU support, but torch usually has: :class:`TorchFlatIndex` keeps
``(id, vector)`` pairs on a torch device and answers top-k inner-product queries exactly, so a machine whose
torch sees a GPU searches on it. :class:`indexer.vector_index.VectorIndex` uses it as its search replica when
FAISS cannot use the GPU (``IndexConfig.device``); on device ``"cpu"`` the same class is the twin the tests
check against FAISS's flat search.

Storage is ``fp16`` (half the memory and, search being memory-bound, about twice the speed; scores exact to
~1e-3, recall@10 >= 0.99 on unit vectors) or ``fp32`` (same results as FAISS's flat search). Queries are
answered in blocks of rows, so the score matrix in memory stays under ``score_budget`` elements whatever
the collection's size: each block's top-k is merged into the running top-k.

Ids are the database's primary keys (non-negative ``int64``); results are padded with id ``-1`` and score
``-inf`` when fewer than ``k`` vectors exist. Not thread-safe on its own: ``VectorIndex`` serialises calls.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .vector_arrays import as_ids, as_vectors, atomic_write, check_normalised, pad_results

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "TorchFlatIndex", "cuda_memory_fits"]

#: Storage dtypes by setting name (``IndexConfig.torch_dtype``).
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
#: Rows copied to the device at a time when adding (bounds the host-side float conversion).
_ADD_BLOCK = 65_536
#: Queries answered together at most (more are split into blocks of this many).
_QUERY_BLOCK = 4_096


def cuda_memory_fits(n: int, dim: int, dtype: str, device: str | torch.device, fraction: float) -> bool:
    """Whether ``n`` vectors of ``dim`` ``dtype`` numbers take at most ``fraction`` of the free memory of the
    CUDA ``device`` (always true on other devices)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(dev)
    need = n * dim * DTYPES[dtype].itemsize
    return need <= fraction * free


class TorchFlatIndex:
    """Exact top-k inner-product search over ``(id, vector)`` pairs held on a torch device.

    ``dim``: vector dimension; ``device``: any torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``); ``dtype``:
    ``"fp16"`` or ``"fp32"`` storage; ``score_budget``: the most query x row scores computed at once.
    """

    def __init__(
        self, dim: int, device: str | torch.device = "cpu", dtype: str = "fp16", score_budget: int = 1 << 26
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self._dim = int(dim)
        self._device = torch.device(device)
        self._dtype_name = dtype
        self._dtype = DTYPES[dtype]
        self._budget = int(score_budget)
        self._store = torch.empty((0, self._dim), dtype=self._dtype, device=self._device)  # capacity rows
        self._n = 0
        self._ids = np.empty(0, dtype=np.int64)  # row -> id

    # -- construction ------------------------------------------------------- #
    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        dim: int | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "fp16",
    ) -> TorchFlatIndex:
        """An index holding ``vectors (n, dim)`` under ``ids (n,)``; ``dim`` is needed when ``n`` is 0."""
        arr = np.asarray(vectors)
        if dim is None:
            if arr.ndim != 2 or arr.shape[1] == 0:
                raise ValueError("an empty build needs dim")
            dim = int(arr.shape[1])
        index = cls(dim, device, dtype)
        index.add(ids, arr.reshape(-1, dim) if arr.size == 0 else arr)
        return index

    # -- properties ---------------------------------------------------------- #
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> str:
        """Storage dtype name: ``"fp16"`` or ``"fp32"``."""
        return self._dtype_name

    @property
    def nbytes(self) -> int:
        """Bytes the stored vectors take on the device (the capacity in use)."""
        return self._n * self._dim * self._dtype.itemsize

    def __len__(self) -> int:
        return self._n

    def __contains__(self, item: object) -> bool:
        try:
            key = int(item)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return bool(np.any(self._ids[: self._n] == key))

    def ids(self) -> np.ndarray:
        """Sorted ``(n,)`` int64 array of the stored ids (a copy)."""
        return np.sort(self._ids[: self._n])

    def __repr__(self) -> str:
        return f"TorchFlatIndex(dim={self._dim}, n={self._n}, device={self._device}, dtype={self._dtype_name})"

    # -- mutation ------------------------------------------------------------ #
    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` vectors in all (no copy on the device until then)."""
        if rows <= self._store.shape[0]:
            return
        grown = torch.empty((rows, self._dim), dtype=self._dtype, device=self._device)
        if self._n:
            grown[: self._n] = self._store[: self._n]
        self._store = grown

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, check_norms: bool = True) -> None:
        """Add ``vectors (m, dim)`` (L2-normalised: a warning says when not, unless ``check_norms`` is false)
        under ``ids (m,)``, none of them already present.

        Raises ``ValueError`` on a dimension or length mismatch, duplicate or negative ids, non-finite values.
        """
        ids_arr = as_ids(ids)
        vec_arr = np.asarray(vectors)
        if ids_arr.size == 0 and vec_arr.size == 0:
            return
        vec_arr = as_vectors(vec_arr, self._dim)
        if ids_arr.shape[0] != vec_arr.shape[0]:
            raise ValueError(f"ids/vectors length mismatch: {ids_arr.shape[0]} ids, {vec_arr.shape[0]} vectors")
        if np.unique(ids_arr).shape[0] != ids_arr.shape[0]:
            raise ValueError("ids must be unique")
        present = np.isin(ids_arr, self._ids[: self._n])
        if present.any():
            raise ValueError(f"ids already in the index (remove them first): {ids_arr[present][:5].tolist()}")
        if check_norms:
            check_normalised(vec_arr, "vectors")
        m = ids_arr.shape[0]
        if self._n + m > self._store.shape[0]:
            self.reserve(max(self._n + m, int(self._store.shape[0] * 1.5)))
        for start in range(0, m, _ADD_BLOCK):
            block = torch.from_numpy(vec_arr[start : start + _ADD_BLOCK])
            rows = slice(self._n + start, self._n + start + block.shape[0])
            self._store[rows] = block.to(self._device).to(self._dtype)
        self._ids = np.concatenate([self._ids[: self._n], ids_arr])
        self._n += m

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors of ``ids`` (unknown ones are ignored); returns how many were removed."""
        arr = np.asarray(ids)
        if arr.size == 0 or self._n == 0:
            return 0
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be a 1-D integer array, got {arr.dtype} {arr.shape}")
        keep = ~np.isin(self._ids[: self._n], arr.astype(np.int64))
        removed = int(self._n - keep.sum())
        if removed == 0:
            return 0
        rows = torch.from_numpy(np.flatnonzero(keep)).to(self._device)
        self._store = self._store[: self._n].index_select(0, rows)
        self._ids = self._ids[: self._n][keep]
        self._n = int(keep.sum())
        return removed

    # -- search -------------------------------------------------------------- #
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k inner-product search.

        Args:
            queries: ``(Q, dim)`` query vectors, or ``(dim,)`` for one.
            k: neighbours per query, >= 1.

        Returns:
            ``(scores, ids)``, both ``(Q, k)``: float32 inner products, best first, and int64 ids; padded with
            ``-inf`` / ``-1`` when fewer than ``k`` vectors exist.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        q = as_vectors(q, self._dim, name="queries")
        nq = q.shape[0]
        if nq == 0 or self._n == 0:
            return pad_results(np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64), k)
        kk = min(k, self._n)
        scores = np.empty((nq, kk), np.float32)
        rows = np.empty((nq, kk), np.int64)
        with torch.inference_mode():
            for start in range(0, nq, _QUERY_BLOCK):
                block = torch.from_numpy(q[start : start + _QUERY_BLOCK]).to(self._device)
                s, r = self._search_block(block, kk)
                scores[start : start + block.shape[0]] = s.cpu().numpy()
                rows[start : start + block.shape[0]] = r.cpu().numpy()
        return pad_results(scores, self._ids[rows], k)

    def _search_block(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``q (B, dim)`` float32 on the device -> the top-``k`` ``(scores (B, k) float32, rows (B, k) int64)``."""
        chunk = max(k, self._budget // max(1, q.shape[0]))
        best_s: torch.Tensor | None = None
        best_r: torch.Tensor | None = None
        for start in range(0, self._n, chunk):
            part = self._store[start : min(self._n, start + chunk)]
            sims = self._scores(q, part)  # (B, rows) float32
            s, r = sims.topk(min(k, part.shape[0]), dim=1)
            r = r + start
            if best_s is None:
                best_s, best_r = s, r
            else:
                s = torch.cat([best_s, s], dim=1)
                r = torch.cat([best_r, r], dim=1)  # type: ignore[list-item]
                best_s, pick = s.topk(k, dim=1)
                best_r = r.gather(1, pick)
        assert best_s is not None and best_r is not None
        return best_s, best_r

    def _scores(self, q: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        """Inner products ``(B, rows)`` float32 of queries and stored rows. On a GPU the product runs in the
        storage dtype (fp16 tensor cores, fp32 accumulation); on the CPU, which has no fast fp16 kernels, a
        chunk stored in fp16 is widened to fp32 first."""
        if self._device.type == "cpu" or self._dtype == torch.float32:
            return q @ part.float().T if part.dtype != torch.float32 else q @ part.T
        return (q.to(self._dtype) @ part.T).float()

    # -- persistence --------------------------------------------------------- #
    def save(self, path: Path | str) -> None:
        """Write ids and vectors (in the storage dtype) to ``path`` as a NumPy ``.npz`` file, atomically."""
        ids = self._ids[: self._n]
        vectors = self._store[: self._n].cpu().numpy()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=ids, vectors=vectors, dim=np.int64(self._dim))

        atomic_write(path, write)
        log.info("saved torch index (%d vectors, %s) to %s", self._n, self._dtype_name, path)

    @classmethod
    def load(cls, path: Path | str, device: str | torch.device = "cpu", dtype: str | None = None) -> TorchFlatIndex:
        """Read a file written by :meth:`save`; ``dtype`` ``None`` keeps the stored one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        with np.load(path, allow_pickle=False) as data:
            ids, vectors, dim = data["ids"], data["vectors"], int(data["dim"])
        stored = "fp16" if vectors.dtype == np.float16 else "fp32"
        index = cls(dim, device, dtype or stored)
        index.add(ids, vectors.astype(np.float32, copy=False), check_norms=False)
        return index
