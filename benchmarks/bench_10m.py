"""Search at 10 million vectors within a memory budget (issue 14, part 3): the index ``kind="auto"`` picks.

Data. ``--n`` (default 10,000,000) clustered, L2-normalised ``--dim``-d vectors (default 256) from the model of
``bench_search.py`` (a Gaussian mixture of ``--clusters`` components with log-normal popularity, a decaying
per-dimension spread like a PCA spectrum), seeded, drawn ``BLOCK`` rows at a time into a **float16** memory map
under ``--scratch`` (5 GB at 10M x 256; the float32 set, 10 GB, is never in memory at once) and kept there for
the next run (``--fresh`` redraws). ``--queries`` (default 500) held-out points of the same distribution, with
small noise added (``--query-noise``), re-normalised.

Ground truth. Exact top-10 by inner product over the stored (float16) vectors, by brute force a block at a
time (``brute_force_search`` per block, merged), cached beside the data.

Per kind (``--kinds``, default ``auto``: what ``lookalike`` picks under ``--budget-gb``, default 16):

* build: ``VectorIndex.build`` given the float16 memory map (training on a sample, then adding a block at a
  time), wall-clock seconds; the process's peak resident memory (``peak_rss_gb``: ``ru_maxrss``, which counts
  the memory-mapped data pages read, so it is an upper bound) after the build;
* index size on disk: ``VectorIndex.save`` (plus the on-disk lists file of ``ivfpq-disk``);
* the index is then dropped and loaded back from its file, as a search process would, and the resident memory
  before and after loading (``rss_gb_before_load``, ``rss_gb_after_load``: the difference is what the loaded
  index holds) is recorded;
* latency: single queries through ``VectorIndex.search`` (``bench_search.time_queries``: 10 warm-up queries,
  ``--repeats`` rounds, per-query minimum; ``raw_*`` the first round), p50 / p95 in ms, and recall@10 against
  the ground truth, for each ``--nprobe`` (IVF kinds) or ``--ef-search`` (HNSW).

The 1-minute load average is recorded around every step: the machine is shared, and FAISS runs on
``--threads`` threads (default 1: with other processes on the 2 cores, two OpenMP threads were ~10x slower
at training than one). Output: one JSON object on stdout, also written to
``benchmarks/results/bench_10m.json`` (``--out``).

Goals (issue 14): peak memory < 16 GB, p50 < 10 ms at recall@10 >= 0.90.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.bench_search import ClusteredVectors, recall_at_k, time_queries
from benchmarks.common import BenchParser, write_json
from benchmarks.timing import Stopwatch, loadavg, peak_rss_gb, rss_gb
from indexer.vector_index import IndexConfig, VectorIndex, brute_force_search

log = logging.getLogger("bench_10m")

K = 10
BLOCK = 100_000


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) ids (row + 1) of the exact top-k of ``queries`` over ``data`` (n, d) float16, a block at a time."""
    best_s = np.full((queries.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((queries.shape[0], 0), np.int64)
    step = 5 * BLOCK
    for start in range(0, data.shape[0], step):
        block = np.asarray(data[start : start + step], dtype=np.float32)
        ids = np.arange(start + 1, start + 1 + block.shape[0], dtype=np.int64)
        s, i = brute_force_search(block, ids, queries, k)
        both_s, both_i = np.hstack([best_s, s]), np.hstack([best_i, i])
        order = np.lexsort((both_i, -both_s), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(both_s, order, 1), np.take_along_axis(both_i, order, 1)
    return best_i


def dataset(args) -> tuple[np.memmap, np.ndarray, np.ndarray, dict]:
    """The float16 data (memory map), the queries and the ground truth, made or read from ``--scratch``."""
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    key = f"n{args.n}_d{args.dim}_c{args.clusters}_s{args.seed}_q{args.queries}"
    data_path, meta_path = scratch / f"{key}.f16", scratch / f"{key}.json"
    q_path, gt_path = scratch / f"{key}.queries.npy", scratch / f"{key}.truth.npy"
    timings: dict = {}
    if args.fresh or not (meta_path.exists() and q_path.exists() and gt_path.exists()):
        data = np.memmap(data_path, dtype=np.float16, mode="w+", shape=(args.n, args.dim))
        with Stopwatch() as gen:
            model = ClusteredVectors(args.dim, args.clusters, args.decay, args.spread, args.seed)
            queries = model.queries(args.queries, args.query_noise)  # drawn first, then the data
            model.fill(data, BLOCK)
            data.flush()
        timings["generate_s"] = round(gen.seconds, 1)
        log.info("drew %d x %d float16 vectors in %.0f s", args.n, args.dim, gen.seconds)
        del data
        data = np.memmap(data_path, dtype=np.float16, mode="r", shape=(args.n, args.dim))
        with Stopwatch() as gt:
            truth = exact_top_k(data, queries, K)
        timings["ground_truth_s"] = round(gt.seconds, 1)
        timings["ground_truth_loadavg"] = loadavg()
        log.info("ground truth in %.0f s", gt.seconds)
        np.save(q_path, queries)
        np.save(gt_path, truth)
        meta_path.write_text(json.dumps(timings))
    else:
        timings = {**json.loads(meta_path.read_text()), "cached": True}
    data = np.memmap(data_path, dtype=np.float16, mode="r", shape=(args.n, args.dim))
    return data, np.load(q_path), np.load(gt_path), timings


def bench_kind(kind: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> dict:
    """Build, save, reload and sweep one kind; see the module docstring."""
    cfg = IndexConfig(kind=kind, memory_budget_gb=args.budget_gb, device="cpu")
    ids = np.arange(1, data.shape[0] + 1, dtype=np.int64)
    load0 = loadavg()
    with Stopwatch() as build:
        index = VectorIndex.build(ids, data, cfg)
    result: dict = {
        "asked": kind,
        "kind": index.kind,
        "build_s": round(build.seconds, 1),
        "peak_rss_gb_after_build": peak_rss_gb(),
        "rss_gb_after_build": rss_gb(),
        "loadavg_before_build": load0,
        "loadavg_after_build": loadavg(),
        "estimate_gb": {
            k: round(v / 1e9, 2) for k, v in cfg.estimate_memory(index.kind, data.shape[0], data.shape[1]).items()
        },
    }
    ivf = VectorIndex._extract_ivf(index.faiss_index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        result["nlist"] = int(ivf.nlist)
        result["coarse_quantizer"] = type(faiss.downcast_index(ivf.quantizer)).__name__
        if isinstance(ivf, faiss.IndexIVFPQ):
            result["pq_bytes"] = int(ivf.pq.M)
    folder = Path(args.scratch) / f"index_{index.kind}"
    folder.mkdir(parents=True, exist_ok=True)
    with Stopwatch() as save:
        index.save(folder / "index.faiss")
    result["save_s"] = round(save.seconds, 1)
    files = {p.name: p.stat().st_size for p in folder.iterdir() if not p.name.startswith(".")}
    result["files_gb"] = {name: round(size / 1e9, 3) for name, size in files.items()}
    result["size_on_disk_gb"] = round(sum(files.values()) / 1e9, 3)
    del index
    gc.collect()
    result["rss_gb_before_load"] = rss_gb()
    with Stopwatch() as load:
        index = VectorIndex.load(folder / "index.faiss", cfg)
    result["load_s"] = round(load.seconds, 1)
    result["rss_gb_after_load"] = rss_gb()
    param = "ef_search" if index.kind == "hnsw" else "nprobe"
    sweep = args.ef_search if index.kind == "hnsw" else args.nprobe
    runs = []
    for value in sweep:
        for rerank in args.rerank if index.kind == "ivfpq" else [None]:
            index.set_search_params(**{param: value}, rerank=rerank)
            load_before = loadavg()
            stats, found = time_queries(index, queries, K, args.repeats)
            run = {
                param: value,
                **({"rerank": rerank} if rerank is not None else {}),
                **stats,
                "recall@10": round(recall_at_k(found, truth), 4),
                "loadavg": [load_before, loadavg()],
            }
            log.info("%s %s", index.kind, run)
            runs.append(run)
    result["runs"] = runs
    ok = [r for r in runs if r["recall@10"] >= 0.90]
    result["best_at_recall_0.90"] = min(ok, key=lambda r: r["p50_ms"]) if ok else None
    result["peak_rss_gb"] = peak_rss_gb()
    if not args.keep_index:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = BenchParser(__doc__, threads=1, threads_for=("faiss",), seed=0, out="bench_10m.json")
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--decay", type=float, default=0.5)
    parser.add_argument("--spread", type=float, default=0.6)
    parser.add_argument("--query-noise", type=float, default=0.1)
    parser.add_argument("--kinds", nargs="+", default=["auto"], help="auto (by --budget-gb), ivfpq, ivfpq-disk, ...")
    parser.add_argument("--budget-gb", type=float, default=16.0)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--rerank", type=int, nargs="+", default=[100], help="ivfpq short-list sizes to try")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[128, 384])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scratch", default="/tmp/bigindex")
    parser.add_argument("--fresh", action="store_true", help="redraw the data even when cached")
    parser.add_argument("--keep-index", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    out: dict = {
        "benchmark": "bench_10m",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "faiss_threads": args.threads,
            "faiss": faiss.__version__,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        },
        "protocol": {
            key: getattr(args, key)
            for key in ("n", "dim", "queries", "clusters", "decay", "spread", "query_noise", "seed", "budget_gb")
        }
        | {"k": K, "storage": "float16 memory map", "latency": "single query; per-query min over repeats"},
        "loadavg_start": loadavg(),
    }
    t0 = time.perf_counter()
    data, queries, truth, timings = dataset(args)
    out["data"] = timings
    out["results"] = {}
    for kind in args.kinds:
        out["results"][kind] = bench_kind(kind, data, queries, truth, args)
        write_json(args.out, out, echo=False)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    out["loadavg_end"] = loadavg()
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
