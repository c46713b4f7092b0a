"""FAISS vector index layer for lookalike.

Vectors are L2-normalised ``float32`` embeddings and similarity is the inner
product (= cosine similarity). Each vector carries the SQLite primary key of
its image row as an ``int64`` id. SQLite is the source of truth: the index
file is a cache that can always be rebuilt with :meth:`VectorIndex.build` from
the ``(ids, vectors)`` the caller reads back from the database.

Index kinds
-----------
``"flat"``
    ``IndexIDMap2(IndexFlatIP)``: exact search; results equal NumPy brute
    force (:func:`brute_force_search`). Removal is a real removal; the ids of
    the remaining vectors never change (that is what the id map is for).
``"ivf"``
    Inverted file (inner product) with a flat coarse quantizer, vectors
    stored as float16 (``IndexIVFScalarQuantizer``, ``QT_fp16``; the
    default ``IndexConfig.ivf_storage="fp16"``) or float32 (``IndexIVFFlat``,
    ``ivf_storage="flat"``). ``nlist`` is chosen from the collection size
    (about ``4 * sqrt(n)``, a power of two, at most ``n / 39``: 1024 at
    100k, 4096 at 1M) and k-means is trained on a seeded sample of
    ``40 * nlist`` vectors. IVF stores the ids natively (no id map: an id
    map over IVF would break on removal). With too few vectors to train, the
    build falls back to ``"flat"`` and logs it. Vectors added later are
    assigned to the existing centroids; when the collection has grown or
    shrunk a lot, :meth:`VectorIndex.needs_rebuild` says so.
``"hnsw"``
    ``IndexIDMap2(IndexHNSWFlat)``. HNSW cannot delete graph nodes, so
    :meth:`VectorIndex.remove` *marks* them: the id-map entry of a removed
    vector is overwritten with ``-1`` (a tombstone) and searches pass a
    selector that only accepts ids ``>= 0``, so tombstoned vectors keep
    routing the graph but never appear in results. Tombstones live in the
    id map itself, so they survive :meth:`~VectorIndex.save` /
    :meth:`~VectorIndex.load` in a plain FAISS file. When more than
    ``IndexConfig.max_tombstone_fraction`` of the stored vectors are
    tombstones the graph is rebuilt from the live vectors
    (:meth:`VectorIndex.compact`); that is a full HNSW build.
``"ivfpq"``
    Compressed, for collections too big for HNSW on raw vectors:
    ``IndexIDMap2(IndexRefine(IndexPreTransform(OPQ, IndexIVFPQ), SQfp16))``.
    An OPQ rotation (``IndexConfig.opq``) and product-quantizer codes of
    ``pq_bytes`` bytes per vector (default ``dim / 8``) in an inverted file
    of ``nlist`` lists (as for ``"ivf"``), whose coarse quantizer is an HNSW
    graph over the centroids once ``nlist >= hnsw_quantizer_min_nlist``
    (assigning millions of vectors to tens of thousands of lists by brute
    force would dominate the build). Training uses one seeded sample of at
    most ``max_train_points`` vectors: OPQ, then a two-level spherical
    k-means for the centroids (``sqrt(nlist)`` groups, each split into its
    share of the lists: ~``2 sqrt(nlist)`` distances per point instead of
    ``nlist``), then the PQ on the residuals. A search takes the best
    ``IndexConfig.rerank`` candidates by PQ score (at least ``k``) and
    re-ranks them exactly with the vectors kept as float16 beside the codes
    (FAISS ``IndexRefine``), so the returned scores are the float16 inner
    products. Removal is by tombstones, as for HNSW (``IndexRefine`` cannot
    remove), compacted the same way (no retraining).
``"ivfpq-disk"``
    When even that does not fit: the same OPQ + IVF-PQ (ids native, no
    float16 copy, so scores and order are PQ approximations) with the
    inverted lists in a file beside the index (``<index file>.<token>.ivfdata``,
    FAISS ``OnDiskInvertedLists``), memory-mapped on load: only the centroids
    and the id array are held in memory, the lists a search probes are read
    through the page cache. A build or an update holds the lists in memory
    (PQ codes + ids, ``pq_bytes + 8`` bytes per vector) until the next
    :meth:`~VectorIndex.save` writes them to a new lists file.
any other string
    A raw ``faiss.index_factory`` description (inner-product metric). IVF
    factory indexes carry ids natively; everything else is wrapped in
    ``IndexIDMap2``. Removal falls back to tombstones when the wrapped index
    cannot remove.

Ids must be non-negative (``-1`` is the padding / tombstone value) and unique
within the index; adding an id that is already present raises ``ValueError``
(remove it first to replace its vector).

GPU
---
Searches may run on a replica of the CPU index; which one is
:func:`choose_search_backend`'s answer for ``IndexConfig.device``:

- ``"faiss-gpu"``: with a FAISS build with GPU support (the ``gpu`` extra)
  and a visible GPU, ``flat`` and ``ivf`` indexes are copied to the GPU
  (``faiss.index_cpu_to_gpu``); same kind, same results.
- ``"torch-cuda"``: otherwise, when torch sees a CUDA GPU, the live vectors
  are copied into a :class:`indexer.torch_search.TorchFlatIndex` on it and
  searched *exactly* (chunked matrix product + top-k; ``fp16`` storage by
  default, ``IndexConfig.torch_dtype``), whatever the kind: an HNSW or IVF
  collection gets exact results on the GPU. A collection whose vectors would
  take more than ``IndexConfig.gpu_memory_fraction`` of the GPU's free memory
  stays on the CPU.
- ``"torch-cpu"``: the same torch search on the CPU (``device="torch"``
  without a GPU): the CPU twin, for tests and benchmarks.
- ``"cpu"``: the FAISS index itself.

The CPU index stays the master copy: additions go to both, a removal is
applied to the torch replica and drops a FAISS GPU replica (re-copied on the
next search). Files always hold the CPU index.

Which kind ``"auto"`` picks, and the search-time defaults, are measured
choices: see :class:`IndexConfig`. Above ``approx_threshold`` it is the first
of ``approx_kind`` (HNSW), ``"ivfpq"`` and ``"ivfpq-disk"`` whose memory
estimate (:meth:`IndexConfig.estimate_memory`) fits in ``MEMORY_HEADROOM``
(3/4) of ``IndexConfig.memory_budget_gb``; below it, ``"flat"`` when that fits.

Memory estimates, bytes per vector of dimension ``d`` (a 256-d figure after
the arrow; ``M`` = ``hnsw_m`` = 32, ``m`` = ``pq_bytes`` = 32), plus the fixed
cost of the centroids (``4 d nlist``, and ~``8 M`` more per centroid with an
HNSW quantizer) and the OPQ matrix (``4 d^2``):

- every kind: 8 for the sorted id array of :class:`VectorIndex`; the id map of
  ``IndexIDMap2`` 8 more plus ~40 for its reverse hash map;
- ``flat``: ``4 d + 56`` -> 1.1 KB;
- ``hnsw``: ``4 d + 8.4 M + 72`` -> 1.3 KB;
- ``ivf``: ``2 d + 16`` (fp16 storage) -> 0.5 KB;
- ``ivfpq``: ``m + 2 d + 64`` -> 0.6 KB (codes + ids 40, float16 re-ranking
  copy 512, id maps 56);
- ``ivfpq-disk``: 8 in memory; ``m + 8`` on disk, ``m`` = ``dim / 4`` by
  default -> 72 B.

At 10M 256-d vectors: flat 10.8 GB, HNSW 13.6 GB, IVF-PQ + float16 re-ranking
6.1 GB, on-disk IVF-PQ 0.1 GB in memory + 0.7 GB on disk.

Threads: a search with a single query runs FAISS with one OpenMP thread
(the work is single-threaded anyway, and on a small busy machine the idle
worker made flat queries several times slower); batches use FAISS's
global setting (``faiss.omp_set_num_threads``). Every public method takes
an internal lock, so one ``VectorIndex`` may be shared between threads
(calls are serialised).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .vector_arrays import as_ids as _as_ids
from .vector_arrays import as_vectors as _as_vectors
from .vector_arrays import atomic_write
from .vector_arrays import check_normalised as _check_normalised
from .vector_arrays import pad_results as _pad_results

log = logging.getLogger(__name__)

__all__ = [
    "IndexConfig",
    "VectorIndex",
    "COMPRESSED_KINDS",
    "MEMORY_HEADROOM",
    "default_memory_budget_gb",
    "parse_memory_size",
    "brute_force_search",
    "SEARCH_BACKENDS",
    "SEARCH_DEVICES",
    "choose_search_backend",
    "faiss_gpu_available",
    "torch_cuda_available",
]

_CANONICAL_KINDS = ("flat", "ivf", "hnsw")
#: The compressed kinds (module docstring).
COMPRESSED_KINDS = ("ivfpq", "ivfpq-disk")
#: ``kind="auto"`` keeps an index's estimated memory within this share of the budget (the rest: the process,
#: build-time buffers, the source vectors in flight).
MEMORY_HEADROOM = 0.75
# Bytes per vector of the id bookkeeping (module docstring, memory estimates).
_SORTED_IDS = 8
_ID_MAP = 8 + 40
_INT64_MAX = np.iinfo(np.int64).max
# Largest k / nprobe the FAISS GPU kernels accept.
_GPU_MAX_K = 2048
# IVF: FAISS's k-means wants at least this many training points per centroid.
_MIN_POINTS_PER_CENTROID = 39
# IVF: below this many lists the index is pointless; build flat instead.
_MIN_NLIST = 8
# HNSW coarse quantizer: candidate list when assigning a vector to its list (one list wanted).
_ASSIGN_EF = 32
# Rows converted to float32 at a time when a build is given float16 vectors.
_BUILD_BLOCK = 100_000


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def faiss_gpu_available() -> bool:
    """True when the installed FAISS has GPU support and sees at least one GPU."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - defensive: broken CUDA setups
        return False


_gpu_resources: Any = None


def torch_cuda_available() -> bool:
    """True when torch sees a CUDA GPU. Where no NVIDIA driver is installed, torch is not even imported (it is
    slow to import, and commands that only read a collection should start fast)."""
    if "torch" not in sys.modules and not _nvidia_driver_present():
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def _nvidia_driver_present() -> bool:
    if sys.platform == "win32":
        return True  # no cheap probe there: ask torch
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


#: ``IndexConfig.device`` values.
SEARCH_DEVICES = ("auto", "cpu", "gpu", "torch")
#: Where searches run: FAISS's GPU replica, torch's exact search on CUDA or on the CPU, FAISS on the CPU.
SEARCH_BACKENDS = ("faiss-gpu", "torch-cuda", "torch-cpu", "cpu")


def choose_search_backend(
    device: str, faiss_gpu_kind: bool, torch_kind: bool = True, *, faiss_gpu: bool, torch_cuda: bool
) -> str:
    """Where an index's searches run (one of :data:`SEARCH_BACKENDS`), a pure function of what is asked and
    what the machine has.

    ``device``: ``IndexConfig.device``; ``faiss_gpu_kind``: FAISS has a GPU version of the index's kind (flat,
    IVF); ``torch_kind``: the index gives its vectors back as stored (flat, IVF, HNSW; not a lossy FAISS factory
    string such as PQ or PCA, whose exact search would be wrong); ``faiss_gpu``: FAISS was built with GPU support
    and sees a GPU; ``torch_cuda``: torch sees a CUDA GPU. ``"auto"``: FAISS on the GPU when it can, else torch
    on the GPU, else FAISS on the CPU; ``"gpu"``: the same, but ``RuntimeError`` instead of the CPU;
    ``"torch"``: torch, on CUDA when there is one (the CPU for other kinds); ``"cpu"``: the CPU.
    """
    if device not in SEARCH_DEVICES:
        raise ValueError(f"device must be one of {', '.join(SEARCH_DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    if device == "torch":
        return ("torch-cuda" if torch_cuda else "torch-cpu") if torch_kind else "cpu"
    if faiss_gpu and faiss_gpu_kind:
        return "faiss-gpu"
    if torch_cuda and torch_kind:
        return "torch-cuda"
    if device == "gpu":
        raise RuntimeError(
            "device='gpu' requested but no GPU can be used: FAISS has no GPU support (install the gpu extra) "
            "or sees no GPU, and torch sees no CUDA GPU"
        )
    return "cpu"


def _gpu_res() -> Any:
    """Process-wide ``StandardGpuResources`` (created lazily, reused)."""
    global _gpu_resources
    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
    return _gpu_resources


def brute_force_search(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product search with NumPy (ground truth for tests/benchmarks).

    Args:
        vectors: (n, d) database vectors.
        ids: (n,) int64 ids of ``vectors``.
        queries: (Q, d) query vectors, or (d,) for a single query.
        k: number of neighbours (>= 1).

    Returns:
        ``(scores, ids)``, both (Q, k): float32 inner products in descending
        order (ties broken by ascending id) and int64 ids; padded with
        ``-inf`` / ``-1`` when ``k > n``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if vectors.ndim != 2 or queries.ndim != 2 or vectors.shape[1] != queries.shape[1]:
        raise ValueError(f"dimension mismatch: vectors {vectors.shape}, queries {queries.shape}")
    if ids.shape != (vectors.shape[0],):
        raise ValueError(f"ids shape {ids.shape} does not match {vectors.shape[0]} vectors")
    n, nq = vectors.shape[0], queries.shape[0]
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, n)
    if kk == 0 or nq == 0:
        return out_s, out_i
    # Keep the (rows, n) score block around 256 MB.
    rows = max(1, min(nq, (64 * 1024 * 1024) // max(n, 1)))
    for start in range(0, nq, rows):
        sims = queries[start : start + rows] @ vectors.T  # (r, n) float32
        if kk < n:
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n), (sims.shape[0], n))
        part_s = np.take_along_axis(sims, part, axis=1)
        part_i = ids[part]
        order = np.lexsort((part_i, -part_s), axis=1)
        out_s[start : start + rows, :kk] = np.take_along_axis(part_s, order, axis=1)
        out_i[start : start + rows, :kk] = np.take_along_axis(part_i, order, axis=1)
    return out_s, out_i


def _default_nlist(n: int) -> int:
    """IVF list count for n vectors: power of two near 4*sqrt(n), capped by n/39 (0 if too few)."""
    if n <= 0:
        return 0
    target = 4.0 * math.sqrt(n)
    nlist = 2 ** round(math.log2(max(target, 1.0)))
    cap = n // _MIN_POINTS_PER_CENTROID
    while nlist > cap and nlist > 1:
        nlist //= 2
    return nlist if nlist >= _MIN_NLIST and nlist <= cap else 0


def default_memory_budget_gb() -> float:
    """Half of this machine's physical memory, in GB (8 GB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 / 1e9
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return 8.0


def parse_memory_size(text: str) -> float:
    """A memory size as people write it -> GB (10^9 bytes): ``"8GB"``, ``"8 g"``, ``"512MB"``, ``"1.5TB"``,
    ``"16GiB"`` (binary units are binary), ``"100b"`` (bytes), or a bare number of GB. ``ValueError`` for anything
    else or a size that is not positive."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i?)b?|(b))?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (e.g. 8GB, 512MB)")
    number, prefix, binary, plain_bytes = match.groups()
    power = "bkmgt".index("b" if plain_bytes else (prefix or "g").lower())
    value = float(number) * (1024.0 if binary else 1000.0) ** power / 1e9
    if value <= 0:
        raise ValueError(f"the memory size must be positive, got {text!r}")
    return value


def _pq_bytes(dim: int, want: int | None, kind: str = "ivfpq") -> int:
    """PQ sub-quantizers (bytes per code): ``want`` (default ``dim / 8`` for ``ivfpq``, ``dim / 4`` for
    ``ivfpq-disk``, whose codes are its only scores; at least 1) lowered to a divisor of ``dim``."""
    default = dim // 4 if kind == "ivfpq-disk" else dim // 8
    m = max(1, min(dim, want if want is not None else default))
    while dim % m:
        m -= 1
    return m


def _spherical_kmeans(x: np.ndarray, k: int, seed: int, niter: int = 20) -> np.ndarray:
    """(k, d) unit-length centroids of ``x`` (n, d) float32 (k <= n)."""
    if k >= x.shape[0]:
        return x.copy()
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, max_points_per_centroid=256)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _two_level_centroids(x: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """About ``nlist`` (at most ``nlist``) unit centroids of ``x`` (n, d) float32 by two-level spherical k-means:
    ``sqrt(nlist)`` groups, then each group split into lists in proportion to its points. Each point is compared
    with ~``2 sqrt(nlist)`` centroids per iteration instead of ``nlist``, so 65k lists train in minutes on 2 cores."""
    if nlist <= 1024:
        return _spherical_kmeans(x, nlist, seed)
    groups = int(round(math.sqrt(nlist)))
    top = _spherical_kmeans(x, groups, seed)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(top)
    _, assign = flat.search(x, 1)
    assign = assign[:, 0]
    counts = np.bincount(assign, minlength=groups)
    share = counts / counts.sum() * nlist
    alloc = np.minimum(np.floor(share).astype(np.int64), counts)
    for g in np.argsort(-(share - np.floor(share))):  # largest remainders first, up to nlist in all
        if alloc.sum() >= nlist:
            break
        if alloc[g] < counts[g]:
            alloc[g] += 1
    parts = []
    for g in range(groups):
        if alloc[g] == 0:
            continue
        members = x[assign == g]
        parts.append(_spherical_kmeans(members, int(alloc[g]), seed + 1 + g, niter=15))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _sample_rows(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded random sample of ``count`` rows of ``vectors`` (any float dtype, a memmap too) as float32."""
    n = vectors.shape[0]
    if n <= count:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


# --------------------------------------------------------------------------- #
# Config
# --------------------------------------------------------------------------- #
@dataclass
class IndexConfig:
    """How to build and search a :class:`VectorIndex`.

    Defaults come from ``benchmarks/bench_search.py`` (2-core AMD EPYC VM,
    dim 256, clustered L2-normalised data; ``benchmarks/results/search.json``
    and a harder 20k-cluster variant, ``--clusters 20000``). Single query,
    fastest setting with recall@10 >= 0.95 (p50):

    ========================  ======================  ======================
    data set, n               HNSW (M=32, efC=64)     IVF fp16 (nlist 4*sqrt n)
    ========================  ======================  ======================
    3k clusters, 100k         ef 32: 0.13 ms          nprobe 48: 0.45 ms
    20k clusters, 100k        ef 128: 0.64 ms         nprobe 128: 2.0 ms [1]_
    3k clusters, 1M           ef 256: 0.68 ms         nprobe 16: 0.40 ms
    20k clusters, 1M          ef 384: 1.64 ms         nprobe 128: 3.2 ms
    ========================  ======================  ======================

    .. [1] float32 storage; the fp16 variant was not run at this point.

    HNSW is fastest in three of four cases and never far behind, needs no
    training sample and grows by ``add`` without retraining, so
    ``approx_kind="hnsw"``. Its costs: a 1M build takes 130-415 s on 2 cores
    (IVF fp16: 60-120 s), ~1.3 KB of memory per 256-d vector (IVF fp16
    ~0.5 KB), and removal is by tombstones (module docstring).
    ``ef_search=384`` is the smallest value tried that keeps recall@10 >=
    0.95 on both data sets at 1M (0.975 / 0.954; p50 1.0 / 1.6 ms) and
    costs ~0.9 ms at 100k (recall 0.997). ``nprobe=128`` does the same for
    IVF (0.994 / 0.956 at 1M; p50 2.6 / 3.2 ms).

    Attributes:
        kind: ``"auto"``, ``"flat"``, ``"ivf"``, ``"hnsw"`` or a raw
            ``faiss.index_factory`` string (inner-product metric).
        approx_threshold: with ``kind="auto"``: exact flat search below this
            many vectors, ``approx_kind`` at or above.
        approx_kind: the approximate kind ``"auto"`` picks (``"ivf"`` or
            ``"hnsw"``).
        nprobe: IVF lists probed per query (search time).
        ef_search: HNSW candidate-list size per query (search time).
        hnsw_m: HNSW graph degree (build time).
        ef_construction: HNSW candidate-list size while building.
        nlist: IVF list count; ``None`` picks it from the collection size.
        ivf_storage: how IVF stores vectors: ``"fp16"`` (half precision:
            half the memory and, search being memory-bound, 1.3-2x faster
            at the same recall; scores exact to ~1e-3) or ``"flat"``
            (float32).
        train_points_per_list: IVF k-means sample size per list (the sample
            is capped at ``nlist * train_points_per_list`` vectors).
        max_tombstone_fraction: HNSW is compacted (rebuilt) when more than
            this fraction of the stored vectors are removed ones.
        device: where searches run (module docstring, GPU): ``"auto"``
            (FAISS on the GPU when it can, else torch on a CUDA GPU, else
            FAISS on the CPU), ``"cpu"``, ``"gpu"`` (as auto, but an error
            when no GPU can be used) or ``"torch"`` (torch's exact search, on
            CUDA when torch sees it, else on the CPU).
        torch_dtype: storage of the torch search replica: ``"fp16"`` (half
            the memory and bandwidth; scores to ~1e-3, recall@10 >= 0.99) or
            ``"fp32"`` (FAISS flat search's results).
        gpu_memory_fraction: the torch replica is made only when the vectors
            take at most this share of the GPU's free memory.
        seed: seed of the IVF training sample and k-means.
        memory_budget_gb: memory ``kind="auto"`` may plan an index for, in
            GB (module docstring: estimates and the order of the kinds);
            ``None``: half of this machine's memory.
        pq_bytes: compressed kinds' code size in bytes per vector
            (sub-quantizers of 8 bits); ``None``: ``dim / 8`` for ``ivfpq``
            (32 at 256-d), ``dim / 4`` for ``ivfpq-disk`` (its codes are its
            only scores; disk is cheap). Lowered to a divisor of ``dim``.
        opq: rotate vectors with a learned OPQ matrix before IVF-PQ (better
            codes for the same size; trained on the sample).
        rerank: ``ivfpq``: candidates taken by PQ score and re-ranked
            exactly from the float16 copy (at least ``k``). 200: at 10M
            clustered 256-d vectors recall@10 is 0.93-0.94 with 200 and
            0.87 with 100 whatever nprobe (16-128), at the same latency
            (``benchmarks/bench_10m.py``).
        hnsw_quantizer_min_nlist: compressed kinds use an HNSW coarse
            quantizer from this many lists on (a flat one below).
        max_train_points: cap of the compressed kinds' training sample.
    """

    kind: str = "auto"
    approx_threshold: int = 50_000
    approx_kind: str = "hnsw"
    nprobe: int = 128
    ef_search: int = 384
    hnsw_m: int = 32
    ef_construction: int = 64
    nlist: int | None = None
    ivf_storage: str = "fp16"
    train_points_per_list: int = 40
    max_tombstone_fraction: float = 0.3
    device: str = "auto"
    torch_dtype: str = "fp16"
    gpu_memory_fraction: float = 0.5
    seed: int = 1234
    memory_budget_gb: float | None = None
    pq_bytes: int | None = None
    opq: bool = True
    rerank: int = 200
    hnsw_quantizer_min_nlist: int = 4096
    max_train_points: int = 500_000

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError("kind must be a non-empty string")
        if self.approx_kind not in ("ivf", "hnsw"):
            raise ValueError(f"approx_kind must be 'ivf' or 'hnsw', got {self.approx_kind!r}")
        if self.ivf_storage not in ("fp16", "flat"):
            raise ValueError(f"ivf_storage must be 'fp16' or 'flat', got {self.ivf_storage!r}")
        if self.device not in SEARCH_DEVICES:
            raise ValueError(f"device must be one of {', '.join(SEARCH_DEVICES)}, got {self.device!r}")
        if self.torch_dtype not in ("fp16", "fp32"):
            raise ValueError(f"torch_dtype must be 'fp16' or 'fp32', got {self.torch_dtype!r}")
        if not 0.0 < float(self.gpu_memory_fraction) <= 1.0:
            raise ValueError("gpu_memory_fraction must be in (0, 1]")
        for name in (
            "approx_threshold",
            "nprobe",
            "ef_search",
            "hnsw_m",
            "ef_construction",
            "train_points_per_list",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "approx_threshold" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.nlist is not None and (not isinstance(self.nlist, int) or self.nlist < 1):
            raise ValueError(f"nlist must be None or a positive integer, got {self.nlist!r}")
        if not 0.0 < float(self.max_tombstone_fraction) <= 1.0:
            raise ValueError("max_tombstone_fraction must be in (0, 1]")
        for name in ("rerank", "hnsw_quantizer_min_nlist", "max_train_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.pq_bytes is not None and (not isinstance(self.pq_bytes, int) or self.pq_bytes < 1):
            raise ValueError(f"pq_bytes must be None or a positive integer, got {self.pq_bytes!r}")
        if self.memory_budget_gb is not None and not float(self.memory_budget_gb) > 0:
            raise ValueError(f"memory_budget_gb must be None or > 0, got {self.memory_budget_gb!r}")

    def check_kind(self, dim: int) -> None:
        """Raise ``ValueError`` when ``kind`` is a FAISS factory string that cannot make an index of ``dim``
        dimensions (checked before the setting is stored, not when the index is first built)."""
        if self.kind in ("auto", *_CANONICAL_KINDS, *COMPRESSED_KINDS):
            return
        try:
            faiss.index_factory(int(dim), self.kind, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1].split(": ")[-1]
            raise ValueError(
                f"invalid index kind {self.kind!r} ({reason}); use auto, flat, ivf, hnsw, ivfpq, ivfpq-disk or a "
                "FAISS factory string"
            ) from None

    def resolve_kind(self, n: int, dim: int | None = None) -> str:
        """The concrete kind for a collection of ``n`` vectors of dimension ``dim``.

        ``"auto"`` gives ``"flat"`` below ``approx_threshold`` and
        ``approx_kind`` at or above it, as long as its memory estimate fits
        the budget (``MEMORY_HEADROOM * memory_budget_gb``); otherwise the
        first of ``"ivfpq"`` and ``"ivfpq-disk"`` that fits (``"ivfpq-disk"``
        when none does). Without ``dim`` the budget is not consulted. Any
        other kind is returned unchanged. (A build may still fall back to
        ``"flat"`` when ``n`` is too small to train.)
        """
        if self.kind != "auto":
            return self.kind
        first = "flat" if n < self.approx_threshold else self.approx_kind
        if dim is None:
            return first
        budget = self.budget_bytes() * MEMORY_HEADROOM
        for kind in (first, "ivfpq"):
            if self.estimate_memory(kind, n, dim)["memory"] <= budget:
                return kind
        return "ivfpq-disk"

    def budget_bytes(self) -> float:
        """``memory_budget_gb`` (or :func:`default_memory_budget_gb`) in bytes."""
        gb = self.memory_budget_gb if self.memory_budget_gb is not None else default_memory_budget_gb()
        return float(gb) * 1e9

    def estimate_memory(self, kind: str, n: int, dim: int) -> dict[str, int]:
        """Estimated bytes of an index of ``kind`` over ``n`` vectors of ``dim``: ``{"memory": ..., "disk": ...}``
        (``disk``: the on-disk lists beside the index file; the file itself is about ``memory``). The formulas
        are in the module docstring; a factory string is estimated as ``flat``."""
        ids_map = _SORTED_IDS + _ID_MAP
        nlist = self.nlist or _default_nlist(n) or 1
        coarse = 4 * dim * nlist + (8 * self.hnsw_m * nlist if nlist >= self.hnsw_quantizer_min_nlist else 0)
        opq = 4 * dim * dim if self.opq else 0
        m = _pq_bytes(dim, self.pq_bytes, kind)
        disk = 0
        if kind == "hnsw":
            per, fixed = 4 * dim + int(8.4 * self.hnsw_m) + 16 + ids_map, 0
        elif kind == "ivf":
            per, fixed = (2 if self.ivf_storage == "fp16" else 4) * dim + 8 + _SORTED_IDS, 4 * dim * nlist
        elif kind == "ivfpq":
            per, fixed = m + 8 + 2 * dim + ids_map, coarse + opq
        elif kind == "ivfpq-disk":
            per, fixed, disk = _SORTED_IDS, coarse + opq, n * (m + 8)
        else:
            per, fixed = 4 * dim + ids_map, 0
        return {"memory": int(n * per + fixed), "disk": int(disk)}

    def search_backend(self, faiss_gpu_kind: bool, torch_kind: bool = True) -> str:
        """Where searches of an index run: :func:`choose_search_backend` with what this machine has
        (``faiss_gpu_kind``: FAISS has a GPU version of the index's kind; ``torch_kind``: its vectors can be
        read back as stored). Raises ``RuntimeError`` when ``device="gpu"`` and no GPU can be used."""
        return choose_search_backend(
            self.device,
            faiss_gpu_kind,
            torch_kind,
            faiss_gpu=self.device in ("auto", "gpu") and faiss_gpu_available(),
            torch_cuda=self.device != "cpu" and torch_cuda_available(),
        )

    def to_dict(self) -> dict:
        """Plain-JSON dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IndexConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (logged), missing ones default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            log.warning("IndexConfig.from_dict: ignoring unknown keys %s", unknown)
        return cls(**{key: value for key, value in d.items() if key in known})


# --------------------------------------------------------------------------- #
# Index
# --------------------------------------------------------------------------- #
class VectorIndex:
    """A FAISS inner-product index over (id, vector) pairs.

    Create with :meth:`build` or :meth:`load`, not the constructor.
    """

    def __init__(self, index: Any, kind: str, dim: int, config: IndexConfig) -> None:
        self._index = index  # CPU master copy
        self._kind = kind
        self._dim = int(dim)
        self._config = config
        self._lock = threading.RLock()
        self._gpu_index: Any = None  # the search replica of the backend: a FAISS GPU index or a TorchFlatIndex
        self._tombstones = 0
        self._ids = np.empty(0, dtype=np.int64)  # sorted live ids
        self._apply_search_params()
        self._sync_ids()
        self._backend = config.search_backend(
            kind in ("flat", "ivf") or (self._ivf() is not None and kind not in COMPRESSED_KINDS),
            kind in (*_CANONICAL_KINDS, "ivfpq"),
        )
        if self._backend != "cpu":
            log.info("%s index searches with %s", kind, self._backend)

    # -- construction ------------------------------------------------------- #
    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        config: IndexConfig | None = None,
        dim: int | None = None,
    ) -> VectorIndex:
        """Build an index from scratch.

        Args:
            ids: (n,) non-negative unique integer ids.
            vectors: (n, dim) L2-normalised vectors (converted to float32).
                May be empty (shape (0, dim) or anything of size 0) when
                ``dim`` is given. A float16 array (a ``np.memmap`` too) is
                read and converted a block at a time, never whole: how a
                collection bigger than memory as float32 is built.
            config: build/search settings; ``IndexConfig()`` when None.
            dim: vector dimension; required for an empty build, checked
                against ``vectors`` otherwise.

        Returns:
            The index. Its :attr:`kind` is ``config.resolve_kind(n)`` except
            that IVF with too few vectors to train becomes ``"flat"``.
        """
        config = config or IndexConfig()
        ids_arr = _as_ids(ids)
        vec_arr = np.asarray(vectors)
        if vec_arr.size == 0 and ids_arr.size == 0:
            if dim is None:
                if vec_arr.ndim == 2 and vec_arr.shape[1] > 0:
                    dim = int(vec_arr.shape[1])
                else:
                    raise ValueError("an empty build needs dim")
            vec_arr = np.empty((0, int(dim)), dtype=np.float32)
        blocked = vec_arr.dtype == np.float16 and vec_arr.ndim == 2 and vec_arr.shape[0] > _BUILD_BLOCK
        if not blocked:
            vec_arr = _as_vectors(vec_arr, dim)
        elif dim is not None and vec_arr.shape[1] != dim:
            raise ValueError(f"dimension mismatch: vectors have dim {vec_arr.shape[1]}, index has dim {dim}")
        d = int(vec_arr.shape[1]) if dim is None else int(dim)
        if d < 1:
            raise ValueError(f"dim must be >= 1, got {d}")
        n = vec_arr.shape[0]
        if ids_arr.shape[0] != n:
            raise ValueError(f"ids/vectors length mismatch: {ids_arr.shape[0]} ids, {n} vectors")
        if np.unique(ids_arr).shape[0] != n:
            raise ValueError("ids must be unique")
        _check_normalised(np.asarray(vec_arr[:1024], dtype=np.float32), "vectors")

        kind = config.resolve_kind(n, d)
        index, kind = cls._make_index(kind, d, vec_arr, config)
        self = cls(index, kind, d, config)
        if not blocked and n:
            self._add_unlocked(ids_arr, vec_arr)
        elif blocked:
            for start in range(0, n, _BUILD_BLOCK):
                stop = min(n, start + _BUILD_BLOCK)
                self._index.add_with_ids(_as_vectors(vec_arr[start:stop], d), ids_arr[start:stop])
                log.info("added %d of %d vectors", stop, n)
            self._sync_ids()
        log.info("built %s index: %d vectors, dim %d", self._kind, n, d)
        return self

    @staticmethod
    def _make_compressed(kind: str, d: int, vectors: np.ndarray, config: IndexConfig) -> tuple[Any, str]:
        """An empty, trained ``ivfpq`` / ``ivfpq-disk`` index (module docstring), or a flat one when there are
        too few vectors to train. ``vectors``: (n, d), any float dtype; only a sample is read."""
        n = vectors.shape[0]
        nlist = config.nlist if config.nlist is not None else _default_nlist(n)
        m = _pq_bytes(d, config.pq_bytes, kind)
        # the PQ's 256 centroids per sub-quantizer need samples too
        if nlist < 1 or n < max(nlist * 4, _MIN_NLIST, 256):
            log.warning("%s needs more vectors to train (have %d, nlist=%s); building a flat index", kind, n, nlist)
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d)), "flat"
        sample_size = min(n, max(nlist * config.train_points_per_list, 256 * 64), config.max_train_points)
        sample = _sample_rows(vectors, sample_size, config.seed)
        log.info(
            "training %s on %d of %d vectors: nlist %d, %d-byte codes, opq %s",
            kind,
            len(sample),
            n,
            nlist,
            m,
            config.opq,
        )
        metric = faiss.METRIC_INNER_PRODUCT
        opq = None
        if config.opq:
            opq = faiss.OPQMatrix(d, m)
            opq.niter = 20
            opq.train(sample[: 256 * 256])
            sample = opq.apply(sample)
            log.info("trained the OPQ rotation")
        centroids = _two_level_centroids(sample, nlist, config.seed)
        nlist = centroids.shape[0]
        log.info("clustered the sample into %d lists", nlist)
        if nlist >= config.hnsw_quantizer_min_nlist:
            quantizer = faiss.IndexHNSWFlat(d, 32, metric)
            quantizer.hnsw.efConstruction = 40
        else:
            quantizer = faiss.IndexFlatIP(d)
        quantizer.add(centroids)
        ivf = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, metric)
        ivf.own_fields = True
        quantizer.this.disown()
        ivf.cp.seed = config.seed
        ivf.train(sample[: 256 * 256])  # the quantizer holds nlist centroids: this trains the PQ alone
        base: Any = ivf
        if opq is not None:
            base = faiss.IndexPreTransform(opq, ivf)
            base.own_fields = True
            opq.this.disown()
            ivf.this.disown()
        if kind == "ivfpq-disk":
            return base, kind
        refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, metric)
        both = faiss.IndexRefine(base, refine)
        both.own_fields = True
        both.own_refine_index = True  # (a flag of its own: without it the float16 copy outlived the index)
        base.this.disown()
        refine.this.disown()
        index = faiss.IndexIDMap2(both)
        index.own_fields = True
        both.this.disown()
        return index, kind

    @staticmethod
    def _make_index(kind: str, d: int, train: np.ndarray, config: IndexConfig) -> tuple[Any, str]:
        """Create (and train if needed) an empty CPU index. Returns (index, concrete kind)."""
        n = train.shape[0]
        metric = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d)), "flat"
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(d, config.hnsw_m, metric)
            inner.hnsw.efConstruction = config.ef_construction
            return faiss.IndexIDMap2(inner), "hnsw"
        if kind in COMPRESSED_KINDS:
            return VectorIndex._make_compressed(kind, d, train, config)
        if kind == "ivf":
            nlist = config.nlist if config.nlist is not None else _default_nlist(n)
            if nlist < 1 or n < max(nlist, _MIN_NLIST):
                log.warning(
                    "IVF needs more vectors to train (have %d, nlist=%s); building a flat index",
                    n,
                    nlist or "n/a",
                )
                return faiss.IndexIDMap2(faiss.IndexFlatIP(d)), "flat"
            quantizer = faiss.IndexFlatIP(d)
            if config.ivf_storage == "fp16":
                index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, metric)
            else:
                index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
            index.own_fields = True
            quantizer.this.disown()  # owned by the IVF index from now on
            VectorIndex._train(index, train, nlist * config.train_points_per_list, config.seed)
            return index, "ivf"
        # Raw factory string.
        try:
            index = faiss.index_factory(d, kind, metric)
        except RuntimeError as exc:
            raise ValueError(f"invalid faiss index_factory string {kind!r}: {exc}") from exc
        if not index.is_trained:
            try:
                VectorIndex._train(index, train, 256 * 1024, config.seed)
            except RuntimeError as exc:
                log.warning(
                    "could not train %r on %d vectors (%s); building a flat index",
                    kind,
                    n,
                    str(exc).splitlines()[0],
                )
                return faiss.IndexIDMap2(faiss.IndexFlatIP(d)), "flat"
        if VectorIndex._extract_ivf(index) is None and not isinstance(index, faiss.IndexIDMap2):
            if isinstance(index, faiss.IndexIDMap):
                raise ValueError("use IDMap2 (not IDMap) in factory strings, or omit it")
            index = faiss.IndexIDMap2(index)
        return index, kind

    @staticmethod
    def _train(index: Any, vectors: np.ndarray, max_points: int, seed: int) -> None:
        """Train ``index`` on a seeded random sample of at most ``max_points`` rows."""
        n = vectors.shape[0]
        if n > max_points:
            rng = np.random.default_rng(seed)
            sample = vectors[np.sort(rng.choice(n, size=max_points, replace=False))]
        else:
            sample = vectors
        ivf = VectorIndex._extract_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        log.info("training on %d of %d vectors", sample.shape[0], n)
        index.train(sample)

    @staticmethod
    def _on_disk_lists(index: Any) -> Any:
        """The ``OnDiskInvertedLists`` of ``index``'s IVF, or ``None``."""
        ivf = VectorIndex._extract_ivf(index)
        if ivf is None:
            return None
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None

    def _lists_in_memory(self) -> None:
        """Before an ``ivfpq-disk`` index changes: copy memory-mapped lists into memory (the file stays as the
        saved index refers to it; the next :meth:`save` writes a new one)."""
        disk = self._on_disk_lists(self._index)
        if disk is None:
            return
        ivf = self._ivf()
        memory = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        for lst in range(ivf.nlist):
            size = disk.list_size(lst)
            if size:
                memory.add_entries(lst, size, disk.get_ids(lst), disk.get_codes(lst))
        ivf.replace_invlists(memory, True)
        memory.this.disown()
        log.info("read %d lists of the on-disk index into memory", ivf.nlist)

    @staticmethod
    def _extract_ivf(index: Any) -> Any:
        try:
            return faiss.extract_index_ivf(index)
        except (RuntimeError, AttributeError):
            return None

    # -- persistence --------------------------------------------------------- #
    def save(self, path: Path | str) -> None:
        """Write the (CPU) index to ``path`` atomically.

        The index is written to a temporary file in the same directory,
        fsynced, and moved over ``path`` with ``os.replace``; readers see the
        old or the new file, never a partial one.
        """
        with self._lock:
            if self._kind == "ivfpq-disk":
                self._save_on_disk(Path(path))
            else:
                atomic_write(path, lambda tmp: faiss.write_index(self._index, tmp))
        log.info("saved %s index (%d vectors) to %s", self._kind, len(self), path)

    def _save_on_disk(self, path: Path) -> None:
        """Write the lists to a new ``<name>.<token>.ivfdata`` beside ``path`` (kept when they already are in
        such a file there), then the index file referring to it (atomically); lists files of older saves are
        removed."""
        ivf = self._ivf()
        current = self._on_disk_lists(self._index)
        path.parent.mkdir(parents=True, exist_ok=True)
        if (
            current is not None
            and Path(current.filename).parent.resolve() == path.parent.resolve()
            and Path(current.filename).name.startswith(path.name + ".")
        ):
            data = Path(current.filename)
            atomic_write(path, lambda tmp: faiss.write_index(self._index, tmp))
        else:
            data = path.with_name(f"{path.name}.{os.urandom(6).hex()}.ivfdata")
            disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data))
            disk.merge_from_1(ivf.invlists, False)
            in_memory, owned = ivf.invlists, ivf.own_invlists
            ivf.own_invlists = False
            ivf.replace_invlists(disk, False)
            try:
                atomic_write(path, lambda tmp: faiss.write_index(self._index, tmp))
            finally:
                ivf.replace_invlists(in_memory, owned)
            del disk  # unmapped; the next load maps the file
        for old in path.parent.glob(f"{path.name}.*.ivfdata"):
            if old.name != data.name:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path | str, config: IndexConfig | None = None) -> VectorIndex:
        """Read an index written by :meth:`save`.

        The kind is taken from the file; ``config`` supplies the search-time
        settings (``nprobe``, ``ef_search``, ``device``). Use
        :meth:`needs_rebuild` to ask whether the stored kind still suits the
        collection under ``config``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not an inner-product index this module can use.
        """
        config = config or IndexConfig()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
        except RuntimeError as exc:
            raise ValueError(f"cannot read FAISS index {path}: {exc}") from exc
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path}: index metric is not inner product")
        kind = cls._detect_kind(index, config)
        if kind is None:
            raise ValueError(f"{path}: unsupported index layout {type(index).__name__}")
        self = cls(index, kind, index.d, config)
        log.info("loaded %s index (%d vectors, dim %d) from %s", kind, len(self), self._dim, path)
        return self

    @classmethod
    def _detect_kind(cls, index: Any, config: IndexConfig) -> str | None:
        if isinstance(index, faiss.IndexIDMap2):
            inner = faiss.downcast_index(index.index)
            if type(inner) is faiss.IndexFlatIP or (
                type(inner) is faiss.IndexFlat and inner.metric_type == faiss.METRIC_INNER_PRODUCT
            ):
                return "flat"
            if type(inner) is faiss.IndexHNSWFlat:
                return "hnsw"
            if type(inner) is faiss.IndexRefine and cls._extract_ivf(inner) is not None:
                return "ivfpq"
        elif cls._on_disk_lists(index) is not None and isinstance(
            faiss.downcast_index(cls._extract_ivf(index)), faiss.IndexIVFPQ
        ):
            return "ivfpq-disk"
        elif isinstance(faiss.downcast_index(getattr(index, "quantizer", None) or index), faiss.IndexFlat) and (
            type(index) is faiss.IndexIVFFlat
            or (type(index) is faiss.IndexIVFScalarQuantizer and index.sq.qtype == faiss.ScalarQuantizer.QT_fp16)
        ):
            return "ivf"
        elif cls._extract_ivf(index) is None:
            return None  # neither id-mapped nor carrying ids natively
        if config.kind not in _CANONICAL_KINDS and config.kind != "auto":
            return config.kind
        return f"faiss:{type(faiss.downcast_index(getattr(index, 'index', index))).__name__}"

    # -- properties ---------------------------------------------------------- #
    @property
    def kind(self) -> str:
        """Concrete kind in use: ``"flat"``, ``"ivf"``, ``"hnsw"`` or the factory string."""
        return self._kind

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def config(self) -> IndexConfig:
        """The config this index was built or loaded with."""
        return self._config

    @property
    def search_backend(self) -> str:
        """Where searches run now: one of :data:`SEARCH_BACKENDS` (a replica that could not be made falls
        back to ``"cpu"``)."""
        return self._backend

    @property
    def faiss_index(self) -> Any:
        """The underlying CPU FAISS index (read-only use, e.g. introspection)."""
        return self._index

    def __len__(self) -> int:
        """Number of live (searchable) vectors."""
        return int(self._ids.shape[0])

    def __contains__(self, item: object) -> bool:
        try:
            key = int(item)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        pos = int(np.searchsorted(self._ids, key))
        return pos < self._ids.shape[0] and int(self._ids[pos]) == key

    def ids(self) -> np.ndarray:
        """Sorted (n,) int64 array of the live ids (a copy)."""
        with self._lock:
            return self._ids.copy()

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self._kind!r}, dim={self._dim}, n={len(self)})"

    # -- mutation ------------------------------------------------------------ #
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors.

        Args:
            ids: (m,) non-negative integer ids, none already in the index.
            vectors: (m, dim) L2-normalised vectors (converted to float32).

        Raises:
            ValueError: dimension mismatch, length mismatch, duplicate ids,
                negative ids or non-finite values.
        """
        ids_arr = _as_ids(ids)
        vec_arr = np.asarray(vectors)
        if vec_arr.size == 0 and ids_arr.size == 0:
            return
        vec_arr = _as_vectors(vec_arr, self._dim)
        if ids_arr.shape[0] != vec_arr.shape[0]:
            raise ValueError(f"ids/vectors length mismatch: {ids_arr.shape[0]} ids, {vec_arr.shape[0]} vectors")
        if np.unique(ids_arr).shape[0] != ids_arr.shape[0]:
            raise ValueError("ids must be unique")
        _check_normalised(vec_arr, "vectors")
        with self._lock:
            present = self._present(ids_arr)
            if present.any():
                dup = ids_arr[present][:5].tolist()
                raise ValueError(f"ids already in the index (remove them first): {dup}")
            self._add_unlocked(ids_arr, vec_arr)

    def _add_unlocked(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._lists_in_memory()
        self._index.add_with_ids(vectors, ids)
        if self._gpu_index is not None:
            try:
                if self._backend == "faiss-gpu":
                    self._gpu_index.add_with_ids(vectors, ids)
                else:
                    self._gpu_index.add(ids, vectors)
            except RuntimeError:  # (torch's out-of-memory error is a RuntimeError too)
                log.warning("the search replica rejected add; it will be re-copied", exc_info=True)
                self._gpu_index = None
        self._ids = np.union1d(self._ids, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id. Unknown ids are ignored.

        The ids of the remaining vectors are unchanged.

        Args:
            ids: (m,) integer ids.

        Returns:
            Number of vectors removed.
        """
        arr = np.asarray(ids)
        if arr.size == 0:
            return 0
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be a 1-D integer array, got {arr.dtype} {arr.shape}")
        arr = np.unique(arr.astype(np.int64))
        with self._lock:
            targets = arr[self._present(arr)]
            if targets.size == 0:
                return 0
            if self._uses_tombstones():
                removed = self._tombstone(targets)
            else:
                self._lists_in_memory()
                try:
                    removed = int(self._index.remove_ids(faiss.IDSelectorBatch(targets)))
                except RuntimeError:
                    if not isinstance(self._index, faiss.IndexIDMap2):
                        raise
                    log.info("%s cannot remove vectors; marking them removed", self._kind)
                    self._tombstones_forced = True
                    removed = self._tombstone(targets)
            self._ids = np.setdiff1d(self._ids, targets, assume_unique=True)
            if self._backend.startswith("torch") and self._gpu_index is not None:
                self._gpu_index.remove(targets)
            else:
                self._gpu_index = None  # re-copied lazily on the next search
            if removed != targets.size:  # pragma: no cover - would be a bug
                log.error("removed %d vectors, expected %d", removed, targets.size)
            if self._tombstones and self._tombstones > self._config.max_tombstone_fraction * self._index.ntotal:
                self._compact_unlocked()
            return removed

    _tombstones_forced = False

    def _uses_tombstones(self) -> bool:
        if self._kind == "hnsw" or self._tombstones_forced:
            return True
        if isinstance(self._index, faiss.IndexIDMap2):
            return isinstance(faiss.downcast_index(self._index.index), (faiss.IndexHNSW, faiss.IndexRefine))
        return False

    def _id_map_view(self) -> np.ndarray:
        """Writable (ntotal,) int64 view of an IndexIDMap2's id map."""
        id_map = self._index.id_map
        if id_map.size() == 0:
            return np.empty(0, dtype=np.int64)
        return faiss.rev_swig_ptr(id_map.data(), id_map.size())

    def _tombstone(self, targets: np.ndarray) -> int:
        """Mark ``targets`` (ids known to be live) removed by setting their id-map entry to -1."""
        view = self._id_map_view()
        hit = np.isin(view, targets)
        view[hit] = -1
        self._index.construct_rev_map()
        count = int(hit.sum())
        self._tombstones += count
        return count

    def compact(self) -> None:
        """Rebuild the graph without tombstoned vectors (no-op without tombstones)."""
        with self._lock:
            if self._tombstones:
                self._compact_unlocked()

    def _compact_unlocked(self) -> None:
        view = self._id_map_view()
        live = np.flatnonzero(view >= 0)
        log.info(
            "compacting %s index: %d tombstones, %d live vectors",
            self._kind,
            self._tombstones,
            live.size,
        )
        inner = self._index.index
        vectors = inner.reconstruct_batch(live) if live.size else np.empty((0, self._dim), np.float32)
        live_ids = view[live].copy()
        if self._kind == "hnsw":
            new_inner = faiss.IndexHNSWFlat(self._dim, self._config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            new_inner.hnsw.efConstruction = self._config.ef_construction
        else:
            new_inner = faiss.clone_index(inner)
            new_inner.reset()
        new_index = faiss.IndexIDMap2(new_inner)
        if live.size:
            new_index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), live_ids)
        self._index = new_index
        self._tombstones = 0
        self._gpu_index = None
        self._apply_search_params()

    # -- search -------------------------------------------------------------- #
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner-product search.

        Args:
            queries: (Q, dim) query vectors, or (dim,) for one query
                (converted to float32).
            k: neighbours per query, >= 1.

        Returns:
            ``(scores, ids)``: (Q, k) float32 inner products, best first, and
            (Q, k) int64 ids. When fewer than k results exist the tail is
            padded with score ``-inf`` and id ``-1``.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        q = _as_vectors(q, self._dim, name="queries")
        with self._lock:
            nq = q.shape[0]
            ntotal = int(self._index.ntotal)
            if nq == 0 or len(self) == 0:
                return _pad_results(np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64), k)
            k_search = min(k, ntotal)
            index, params = self._search_target(k_search)
            # A single query is processed by one thread anyway, but FAISS still
            # opens an OpenMP parallel region; on a small busy machine waiting
            # for the idle worker made one flat query ~4x slower (measured:
            # 100k x 256, 2 cores: 48 ms with 2 threads vs 13 ms with 1).
            # omp_set_num_threads only affects the calling thread.
            prev_threads = faiss.omp_get_max_threads() if nq == 1 else 1
            if prev_threads > 1:
                faiss.omp_set_num_threads(1)
            try:
                if params is not None:
                    scores, labels = index.search(q, k_search, params=params)
                else:
                    scores, labels = index.search(q, k_search)
            finally:
                if prev_threads > 1:
                    faiss.omp_set_num_threads(prev_threads)
        return _pad_results(scores, labels, k)

    def _search_target(self, k: int) -> tuple[Any, Any]:
        """Pick the index to search (a replica or the CPU index) and the search params."""
        if self._backend.startswith("torch"):
            if self._gpu_index is None:
                self._gpu_index = self._torch_replica()
            if self._gpu_index is not None:
                return self._gpu_index, None
        if self._kind in COMPRESSED_KINDS:
            return self._index, self._compressed_params(k)
        if self._tombstones:
            sel = faiss.IDSelectorRange(0, _INT64_MAX)
            if isinstance(self._index, faiss.IndexIDMap2) and isinstance(
                faiss.downcast_index(self._index.index), faiss.IndexHNSW
            ):
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=self._config.ef_search)
            else:
                params = faiss.SearchParameters(sel=sel)
            # keep a reference: the params object does not own the selector
            params._sel_ref = sel  # type: ignore[attr-defined]
            return self._index, params
        if self._backend == "faiss-gpu" and k <= _GPU_MAX_K and self._config.nprobe <= _GPU_MAX_K:
            if self._gpu_index is None:
                try:
                    self._gpu_index = faiss.index_cpu_to_gpu(_gpu_res(), 0, self._index)
                    ivf = self._extract_ivf(self._gpu_index)
                    if ivf is not None:
                        ivf.nprobe = self._config.nprobe
                    elif hasattr(self._gpu_index, "nprobe"):
                        self._gpu_index.nprobe = self._config.nprobe
                except RuntimeError:
                    # e.g. a FAISS build without kernels for this GPU: torch may still search on it
                    self._backend = "torch-cuda" if torch_cuda_available() else "cpu"
                    log.warning("could not copy the index to the GPU; searching with %s", self._backend, exc_info=True)
                    return self._search_target(k)
            return self._gpu_index, None
        return self._index, None

    def _compressed_params(self, k: int) -> Any:
        """Search parameters of a compressed index: ``nprobe`` lists, found by an HNSW quantizer with a candidate
        list of ``2 * nprobe`` (at least 64); for ``ivfpq`` the PQ short list of ``max(rerank, k)`` candidates
        and, with tombstones, a selector (in the inner index's numbering) that leaves them out."""
        base = faiss.SearchParametersIVF()
        base.nprobe = self._config.nprobe
        refs: list = []
        ivf = self._ivf()
        if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
            coarse = faiss.SearchParametersHNSW()
            coarse.efSearch = max(64, 2 * self._config.nprobe)
            base.quantizer_params = coarse
            refs.append(coarse)
        if self._kind == "ivfpq-disk":
            base._refs = refs  # type: ignore[attr-defined]  # the params own none of these
            return base
        if self._tombstones:
            live = faiss.IDSelectorRange(0, _INT64_MAX)
            base.sel = faiss.IDSelectorTranslated(self._index.id_map, live)
            refs = [live, base.sel]
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = max(1.0, self._config.rerank / k)
        params.base_index_params = base
        params._refs = (base, refs)  # type: ignore[attr-defined]  # the params own neither
        return params

    def _torch_replica(self) -> Any:
        """The live vectors in a :class:`~indexer.torch_search.TorchFlatIndex` on the backend's device, or
        ``None`` (and the backend falls back to ``"cpu"``) when they do not fit or cannot be read back."""
        from .torch_search import TorchFlatIndex, cuda_memory_fits

        device = "cuda" if self._backend == "torch-cuda" else "cpu"
        cfg = self._config
        n = len(self)
        try:
            if not cuda_memory_fits(n, self._dim, cfg.torch_dtype, device, cfg.gpu_memory_fraction):
                log.warning(
                    "%d vectors of dimension %d do not fit in %.0f%% of the GPU's free memory; searching on the CPU",
                    n,
                    self._dim,
                    100 * cfg.gpu_memory_fraction,
                )
                self._backend = "cpu"
                return None
            replica = TorchFlatIndex(self._dim, device, cfg.torch_dtype)
            replica.reserve(n)
            for ids, vectors in self._live_blocks():
                replica.add(ids, vectors, check_norms=False)  # (fp16 IVF storage: norms to ~1e-3)
        except RuntimeError:
            log.warning("could not copy the vectors to %s; searching on the CPU", device, exc_info=True)
            self._backend = "cpu"
            return None
        log.info("searching %d vectors exactly with torch on %s (%s)", n, device, cfg.torch_dtype)
        return replica

    def _live_blocks(self, rows: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The live ``(ids (m,), vectors (m, dim) float32)`` read back from the CPU index, a block at a time
        (tombstoned vectors left out). Raises ``RuntimeError`` when the index cannot give its vectors back."""
        if isinstance(self._index, faiss.IndexIDMap2):
            view = self._id_map_view()
            inner = self._index.index
            for start in range(0, int(inner.ntotal), rows):
                count = min(rows, int(inner.ntotal) - start)
                vectors = inner.reconstruct_n(start, count)
                ids = view[start : start + count]
                live = ids >= 0
                yield ids[live].copy(), np.ascontiguousarray(vectors[live])
            return
        ivf = self._ivf()
        if ivf is None:  # pragma: no cover - guarded by _make_index/_detect_kind
            raise RuntimeError("index carries no ids")
        invlists = ivf.invlists
        coarse = ivf.coarse_code_size()
        for lst in range(ivf.nlist):
            size = invlists.list_size(lst)
            if not size:
                continue
            ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy()
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size)
            # a standalone code is the list number (little-endian, coarse_code_size bytes) + the list's code
            prefix = np.frombuffer(np.array([lst], dtype="<u8").tobytes()[:coarse], dtype=np.uint8)
            full = np.hstack([np.broadcast_to(prefix, (size, coarse)), codes.reshape(size, invlists.code_size)])
            yield ids, ivf.sa_decode(np.ascontiguousarray(full))

    def set_search_params(
        self, nprobe: int | None = None, ef_search: int | None = None, rerank: int | None = None
    ) -> None:
        """Change search-time settings in place (IVF ``nprobe``, HNSW ``ef_search``, ``ivfpq`` ``rerank``).

        The index's config is replaced by a copy with the new values; nothing
        is rebuilt. Values that do not apply to the index kind are kept in the
        config but have no effect.
        """
        changes: dict[str, int] = {}
        if nprobe is not None:
            changes["nprobe"] = nprobe
        if ef_search is not None:
            changes["ef_search"] = ef_search
        if rerank is not None:
            changes["rerank"] = rerank
        if not changes:
            return
        with self._lock:
            self._config = IndexConfig.from_dict({**self._config.to_dict(), **changes})
            self._apply_search_params()
            self._gpu_index = None  # re-copied with the new nprobe on the next search

    # -- maintenance --------------------------------------------------------- #
    def needs_rebuild(self, config: IndexConfig | None = None) -> bool:
        """Whether a fresh :meth:`build` would give a materially different index.

        True when ``config.resolve_kind(len(self))`` differs from :attr:`kind`
        (e.g. a flat index that grew past ``approx_threshold``), or when an
        IVF index's list count is more than 4x off the size-based choice.
        """
        config = config or self._config
        n = len(self)
        want = config.resolve_kind(n, self._dim)
        if want in ("ivf", *COMPRESSED_KINDS) and self._kind == "flat" and _default_nlist(n) == 0:
            return False  # IVF would fall back to flat anyway
        if want != self._kind:
            return True
        if self._kind in ("ivf", *COMPRESSED_KINDS) and config.nlist is None:
            ideal = _default_nlist(n)
            nlist = self._ivf().nlist
            return ideal == 0 or not (nlist / 4 <= ideal <= nlist * 4)
        return False

    # -- internals ----------------------------------------------------------- #
    def _ivf(self) -> Any:
        return self._extract_ivf(self._index)

    def _apply_search_params(self) -> None:
        ivf = self._ivf()
        if ivf is not None:
            ivf.nprobe = self._config.nprobe
            quantizer = faiss.downcast_index(ivf.quantizer)
            if isinstance(quantizer, faiss.IndexHNSW):  # assigning a vector to its list (searches pass their own)
                quantizer.hnsw.efSearch = _ASSIGN_EF
        inner = faiss.downcast_index(self._index.index) if isinstance(self._index, faiss.IndexIDMap2) else None
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = self._config.ef_search

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are live in the index."""
        if self._ids.size == 0 or ids.size == 0:
            return np.zeros(ids.shape, dtype=bool)
        pos = np.searchsorted(self._ids, ids)
        pos = np.minimum(pos, self._ids.size - 1)
        return self._ids[pos] == ids

    def _sync_ids(self) -> None:
        """Recompute the sorted live-id array (and tombstone count) from the FAISS index."""
        if isinstance(self._index, faiss.IndexIDMap2):
            view = self._id_map_view()
            live = view[view >= 0]
            self._tombstones = int(view.size - live.size)
            self._ids = np.sort(live)
            return
        ivf = self._ivf()
        if ivf is None:  # pragma: no cover - guarded by _make_index/_detect_kind
            raise ValueError("index carries no ids")
        invlists = ivf.invlists
        parts = []
        for lst in range(ivf.nlist):
            size = invlists.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
        self._ids = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
        self._tombstones = 0
