"""Duplicate grouping at scale, on synthetic clustered vectors: seconds and peak memory to group N vectors
(the k-NN graph from a FAISS index, connected components, the keeper guard), once the index exists.

Data (seeded): ``--clusters`` random centres in ``--dim`` dimensions; every original vector is a centre plus
noise (two originals of one cluster score ~0.6: similar, not copies); ``--copy-share`` of the N vectors are
copies of a random original (score ~0.97 with it), 1 to 3 copies each. Grouping at ``--threshold`` is scored
against the true groups (pair precision and recall). The index is built first and timed apart (``--index-kind``:
``ivf``, FAISS IVF with fp16 storage, ``nprobe`` lists searched; ``hnsw``; ``flat`` = exact, N x N work).

Run: ``python -m benchmarks.bench_duplicates_scale --n 1000000`` (the issue's goal: 1M grouped in < 10 min and
< 8 GB on 2 cores) and ``--n 100000 --index-kind hnsw`` (the collection's own index kind at that size).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import BenchParser, machine, write_json
from benchmarks.timing import Stopwatch, loadavg, peak_rss_gb
from indexer.duplicates import FileTable, group_vectors
from indexer.vector_index import IndexConfig, VectorIndex


def synthetic(n: int, dim: int, clusters: int, copy_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` unit vectors and each one's true group (its original's row)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_copies = int(n * copy_share)
    n_orig = n - n_copies
    out = np.empty((n, dim), np.float32)
    chunk = 100_000
    for s in range(0, n_orig, chunk):
        e = min(n_orig, s + chunk)
        x = centres[rng.integers(0, clusters, e - s)] + 0.8 * rng.standard_normal(
            (e - s, dim), dtype=np.float32
        ) / np.sqrt(dim)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    group = np.arange(n, dtype=np.int64)
    # copies: 1-3 per chosen original
    src = []
    while sum(len(c) for c in src) < n_copies:
        o = int(rng.integers(0, n_orig))
        src.append([o] * int(rng.integers(1, 4)))
    origins = np.array([o for c in src for o in c][:n_copies], np.int64)
    for s in range(0, n_copies, chunk):
        e = min(n_copies, s + chunk)
        x = out[origins[s:e]] + 0.25 * rng.standard_normal((e - s, dim), dtype=np.float32) / np.sqrt(dim)
        out[n_orig + s : n_orig + e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    group[n_orig:] = origins
    return out, group


def pair_scores(groups: list, truth: np.ndarray) -> dict[str, float]:
    """Pair precision / recall of the found groups against the true groups."""
    tp = fp = 0
    for members, _, _ in groups:
        labels = truth[members]
        _, counts = np.unique(labels, return_counts=True)
        same = int((counts * (counts - 1) // 2).sum())
        total = len(members) * (len(members) - 1) // 2
        tp += same
        fp += total - same
    _, counts = np.unique(truth, return_counts=True)
    positives = int((counts * (counts - 1) // 2).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(positives, 1)
    return {
        "pair_precision": round(precision, 4),
        "pair_recall": round(recall, 4),
        "pair_f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
        "true_pairs": positives,
    }


def main() -> None:
    p = BenchParser(__doc__, threads=2, threads_for=("faiss",), seed=0, out="duplicates_scale.json")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=3000)
    p.add_argument("--copy-share", type=float, default=0.1)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--index-kind", default="ivf")
    p.add_argument("--nprobe", type=int, default=8)
    args = p.parse_args()
    if args.out == "duplicates_scale.json":
        args.out = f"duplicates_scale_{args.n}_{args.index_kind}.json"
    load_before = loadavg()
    with Stopwatch() as gen:
        vectors, truth = synthetic(args.n, args.dim, args.clusters, args.copy_share, args.seed)
    rss_data = peak_rss_gb()
    cfg = IndexConfig(kind=args.index_kind, nprobe=args.nprobe, ef_search=64, device="cpu")
    with Stopwatch() as build:
        index = VectorIndex.build(np.arange(args.n, dtype=np.int64), vectors, cfg)
    rss_index = peak_rss_gb()
    with Stopwatch() as clock:
        groups = group_vectors(vectors, args.threshold, FileTable.plain(args.n), index, args.k)
    write_json(
        args.out,
        {
            "benchmark": "duplicates_scale",
            "n": args.n,
            "dim": args.dim,
            "clusters": args.clusters,
            "copy_share": args.copy_share,
            "threshold": args.threshold,
            "k": args.k,
            "index": {"kind": index.kind, "nprobe": args.nprobe, "build_seconds": round(build.seconds, 1)},
            "generate_seconds": round(gen.seconds, 1),
            "group_seconds": round(clock.seconds, 1),
            "groups": len(groups),
            **pair_scores(groups, truth),
            "peak_rss_gb_after_data": rss_data,
            "peak_rss_gb_after_index": rss_index,
            "peak_rss_gb": peak_rss_gb(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "machine": machine(when=time.strftime("%Y-%m-%d %H:%M")),
        },
    )


if __name__ == "__main__":
    main()
