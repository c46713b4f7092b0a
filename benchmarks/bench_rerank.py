"""Re-ranking (αQE, DBA, diffusion) against plain search: retrieval quality on the shared data, and the cost at
100k-1M vectors. Everything goes through the library's own path (``indexer.reranking.rerank_search`` over a
``VectorIndex``, the k-NN graph of ``indexer.knn_graph``, the DBA vectors of ``indexer.reranking``).

Quality (``--part quality``), default model vectors (EfficientNet-Lite0 + GeM, 224 px, as ``lookalike index``
makes them; embedded once and cached under ``--cache``):

- COIL-20 leave-one-out (1,440 images; Nene, Nayar & Murase 1996): every image a query against the others, the
  same object relevant. Each method's parameters are chosen on one half of the objects (1-10 or 11-20, each half
  its own collection of 720 images, leave-one-out) and scored on the other half, both ways (``coil20_halves``:
  the mean); ``coil20`` scores the whole set with the parameters chosen on the halves (A's choice).
- COIL-20 + the 328 Weizmann horse photos as distractors (Borenstein & Ullman): COIL queries, leave-one-out.
- The near-duplicate set of ``bench_duplicates`` (its collection in ``benchmarks/results/duplicates-set``; run
  that benchmark first): each image in a group of copies a query, its copies relevant.
- COIL-20 trained-objects split (``--coil-checkpoint``: a network trained on objects 11-18, 19-20 for
  validation, by ``python -m benchmarks.bench_train_coil20 --swap --out CKPT``): objects 1-10 leave-one-out with
  its vectors; parameters chosen on half B (11-20, the objects it was trained on).
- The cluttered composites (``benchmarks.composites``, seed 0: COIL-20 objects pasted on shared Weizmann
  backgrounds; 80 queries from outside the collection against 320 images), whole images and masked by the
  default segmenter (``foreground``, applied ``both``, as ``lookalike index --mask foreground`` does).
- ``bench_objects``' collections (run it first): mosaics of 4 held-out composites, masked, with and without the
  per-object index, searched through ``Collection.search`` with each re-ranking as the collection's default.
- LFW identification (optional, when ``benchmarks/results/lfw_face_vectors.npz`` exists: YuNet + SFace, each
  photo's face nearest the centre): 2,000 seeded queries among people with 2 or more photos, against all 13,233.

The others use the parameters chosen on COIL-20 (other data than the one scored). ``auto`` rows (the default)
use the shipped parameters whatever the grid says; ``auto_choice`` records what auto chose on each collection
(the reciprocity of its mutual 5-NN graph). Scores: mAP (every relevant image
counted, a ranking truncated at ``--depth`` or the re-ranked candidates) and recall@1.

Cost (``--part cost --sizes 100000,1000000``): clustered synthetic 256-d vectors (``bench_search.make_dataset``,
3,000 clusters), the index kind the collection would choose (HNSW from 50,000; ``--index-kind`` overrides, e.g.
``ivf`` at 1M, whose HNSW build takes the better part of an hour here); per method with the default parameters:
one query at a time (held-out noisy queries), p50 / p95 latency in ms; the k-NN graph's and DBA's build time;
the time to bring the graph and DBA up to date after 1% of the vectors changed (replaced by new ones); what
``auto`` chooses, on the graph and on a sample of 2,000 images' lists (and the seconds that sample takes); the
memory the graph and DBA hold, and the process's peak RSS. Built indexes, graphs and DBA are cached under
``--cache`` with their build times (so that latency can be measured later, on a quieter machine); the 1-minute
load average is recorded with every timing.

    python -m benchmarks.bench_rerank --part quality [--coil-checkpoint CKPT]
    python -m benchmarks.bench_rerank --part cost --sizes 100000,1000000 --index-kind-1m ivf
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, BenchParser, machine, write_json
from benchmarks.timing import Stopwatch, loadavg, peak_rss_gb
from indexer.knn_graph import KnnGraph, update_graph
from indexer.reranking import DbaVectors, graph_auto_choice, rerank_search, sampled_auto_choice, update_dba
from indexer.vector_index import IndexConfig, VectorIndex
from retrieval.metrics import average_precision
from retrieval.rerank import AutoChoice, RerankSettings, l2n
from segmentation import DEFAULT_SEGMENTER

DEFAULT_CACHE = Path("/tmp/lookalike-rerank")
#: Neighbours per image of the graph built for the grid (the largest any setting asks for).
GRAPH_K = 20

#: Another diffusion compared on every data set (the best other candidate of the grid on COIL-20).
CANDIDATES = [RerankSettings(method="diffusion", graph_k=10, gamma=3.0, seeds=5)]

#: The grid of each method (``method`` set by the key).
GRID: dict[str, list[dict[str, Any]]] = {
    "qe": [dict(qe_k=k, qe_alpha=a) for k, a in product((2, 5, 10, 20), (1.0, 3.0))],
    "dba": [dict(dba_k=k, qe_k=q, dba_alpha=3.0) for k, q in product((2, 5, 10), (0, 5, 10))],
    "diffusion": [dict(graph_k=k, gamma=g, seeds=s) for k, g, s in product((5, 10, 15, 20), (1.0, 3.0), (5, 10))],
}


# --------------------------------------------------------------------------------------------- data


def embedded(
    name: str, paths: list[str], cache: Path, workers: int, model: Any = None, segmenter: str | None = None
) -> np.ndarray:
    """``(N, D)`` vectors of ``paths`` by ``model`` (a ``ModelConfig``; default: the default model), masked by
    ``segmenter`` when given (applied as the collection applies it by default), as ``lookalike index`` makes
    them; embedded once and cached as ``cache/NAME.npz``."""
    target = cache / f"{name}.npz"
    if target.exists():
        with np.load(target) as z:
            if list(z["paths"]) == list(paths):
                return l2n(z["vectors"])
    from indexer.evaluate import embed_paths
    from indexer.masking import MaskSettings
    from indexer.settings import build_masker
    from retrieval.config import ModelConfig, RuntimeOptions
    from retrieval.model import Embedder

    runtime = RuntimeOptions(device="cpu", workers=workers)
    masker = build_masker(MaskSettings(segmenter=segmenter)) if segmenter else None
    embedder = Embedder(model or ModelConfig(), runtime)
    vecs, ok, skipped, speed = embed_paths(paths, embedder, runtime.batch_size, workers, masker=masker)
    if skipped:
        raise SystemExit(f"could not embed {len(skipped)} images, e.g. {skipped[0]}")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(target, vectors=vecs, paths=np.array(paths))
    print(f"embedded {name}: {len(paths)} images, {speed:.1f} img/s", flush=True)
    return l2n(vecs)


def duplicate_set(cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The near-duplicate set's vectors (from its collection) and group labels, or ``None`` when not built."""
    work = RESULTS / "duplicates-set"
    if not (work / "manifest.json").exists() or not (work / "home").exists():
        return None
    target = cache / "duplicates.npz"
    manifest = json.loads((work / "manifest.json").read_text())
    group = {m["path"]: m["group"] for m in manifest}
    if not target.exists():
        from indexer.engine import Collection

        coll = Collection(work / "home", create=False)
        ids, vecs = coll.vectors()
        rows = coll.images(ids.tolist())
        paths = [rows[int(i)].path for i in ids]
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(target, vectors=vecs, paths=np.array(paths))
    with np.load(target) as z:
        vecs, paths = z["vectors"], [str(p) for p in z["paths"]]
    return l2n(vecs), np.array([group.get(p, -1) for p in paths])


# --------------------------------------------------------------------------------------------- one dataset


class Dataset:
    """Vectors, labels (``-1``: a distractor, never relevant) and queries (positions: leave-one-out; or
    ``outside``: query vectors and labels from outside the collection), with the index, the graph and the DBA
    vectors each setting needs (built once)."""

    def __init__(
        self,
        name: str,
        x: np.ndarray,
        labels: np.ndarray,
        queries: np.ndarray,
        depth: int,
        outside: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.name, self.x, self.labels, self.queries = name, np.asarray(x, np.float32), np.asarray(labels), queries
        self.depth = min(depth, len(x) - 1)
        self.outside = outside
        ids = np.arange(len(x), dtype=np.int64)
        self.index = VectorIndex.build(ids, self.x, IndexConfig(kind="flat"))
        self.vectors_of = lambda i: self.x[np.asarray(i)]
        self.graph, _ = update_graph(None, self.index, ids, np.full(len(x), ""), self.vectors_of, "bench", 0, GRAPH_K)
        self._dba: dict[tuple[int, float], DbaVectors] = {}
        counts = {lab: n for lab, n in zip(*np.unique(self.labels, return_counts=True))}
        if outside is None:
            self.n_relevant = np.array([counts[lab] - 1 for lab in self.labels[queries]])
        else:
            self.n_relevant = np.array([counts.get(lab, 0) for lab in outside[1][queries]])

    def auto(self) -> AutoChoice:
        """What ``auto`` chooses for this collection."""
        return graph_auto_choice(self.graph, AUTO)

    def dba(self, s: RerankSettings) -> DbaVectors:
        key = (s.dba_k, s.dba_alpha)
        if key not in self._dba:
            self._dba[key], _ = update_dba(None, self.graph, self.vectors_of, s)
        return self._dba[key]

    def score(self, s: RerankSettings) -> dict[str, float]:
        """Leave-one-out mAP and recall@1 of every query under ``s``, and the seconds per query."""
        aps, r1 = [], []
        started = time.perf_counter()
        graph: Callable[[int], KnnGraph] = lambda _k: self.graph
        for start in range(0, len(self.queries), 64):
            q = self.queries[start : start + 64]
            qx, qlab = (self.x, self.labels) if self.outside is None else self.outside
            _, found = rerank_search(
                self.index,
                qx[q],
                self.depth + 1,
                s,
                graph=graph,
                dba_vectors=lambda: self.dba(s),
                vectors_of=self.vectors_of,
            )
            for row, (qi, n_rel) in enumerate(zip(q, self.n_relevant[start : start + 64])):
                itself = found[row] == qi if self.outside is None else np.zeros(found.shape[1], bool)
                ranked = found[row][~itself & (found[row] >= 0)][: self.depth]
                rel = (self.labels[ranked] == qlab[qi]) & (qlab[qi] >= 0)
                aps.append(average_precision(rel, int(n_rel)))
                r1.append(bool(rel[:1].any()))
        return {
            "mAP": round(float(np.mean(aps)), 4),
            "recall@1": round(float(np.mean(r1)), 4),
            "ms_per_query": round(1000 * (time.perf_counter() - started) / len(self.queries), 2),
        }


def composites(
    cache: Path, workers: int, segmenter: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cluttered composites (``benchmarks.composites``, seed 0, built once under ``cache``), whole images or
    masked by ``segmenter``: database vectors and objects, query vectors and objects."""
    import re

    from benchmarks.composites import build_composites, set_folders
    from indexer.scan import scan_folder

    root = cache / "composites"
    if not (root / "images" / "database").is_dir():
        build_composites(root, seed=0)
    out = []
    for name, folder in zip(("composites_database", "composites_queries"), set_folders(root)):
        files = sorted(f.path for f in scan_folder(folder).files)
        objects = np.array([int(re.search(r"obj(\d+)", str(Path(f).parent.name)).group(1)) for f in files])
        tag = f"{name}_masked_{segmenter.replace(':', '_')}" if segmenter else name
        out += [embedded(tag, files, cache, workers, segmenter=segmenter), objects]
    return out[0], out[1], out[2], out[3]


def loo(name: str, x: np.ndarray, labels: np.ndarray, depth: int, queries: np.ndarray | None = None) -> Dataset:
    labels = np.asarray(labels)
    if queries is None:
        counts = {lab: n for lab, n in zip(*np.unique(labels, return_counts=True))}
        queries = np.array([i for i, lab in enumerate(labels) if lab >= 0 and counts[lab] > 1])
    return Dataset(name, x, labels, queries, depth)


def settings_of(method: str, params: dict[str, Any]) -> RerankSettings:
    return dataclasses.replace(RerankSettings(), method=method, **params)


def choose(data: Dataset, method: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid's best parameters of ``method`` on ``data`` (by mAP) and every point's scores."""
    rows = []
    for params in GRID[method]:
        rows.append({**params, **data.score(settings_of(method, params))})
        print(f"  {data.name:12s} {method:9s} {params} {rows[-1]}", flush=True)
    best = max(rows, key=lambda r: r["mAP"])
    return {k: best[k] for k in GRID[method][0]}, rows


def quality(args: Any) -> dict[str, Any]:
    from benchmarks.shared_data import coil20, weizmann_photos
    from indexer.scan import scan_folder

    dups = duplicate_set(args.cache)  # first: it opens a collection (a failure shows before the long grid)
    files, objects = coil20()
    coil = embedded("coil20", files, args.cache, args.workers)
    horses_paths = [f.path for f in scan_folder(weizmann_photos()).files]
    horses = embedded("weizmann", horses_paths, args.cache, args.workers)
    half_a = objects <= 10
    halves = {
        "A": loo("coil20 1-10", coil[half_a], objects[half_a], args.depth),
        "B": loo("coil20 11-20", coil[~half_a], objects[~half_a], args.depth),
    }
    out: dict[str, Any] = {"grid": {}, "chosen": {}, "datasets": {}, "auto_choice": {}}
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    for method in GRID:
        chosen[method] = {}
        for side in "AB":
            chosen[method][side], rows = choose(halves[side], method)
            out["grid"][f"{method} on coil20 {side}"] = rows
    out["chosen"] = chosen
    # COIL-20 halves: each scored with the other half's choice; plain and the default alike
    halves_rows: dict[str, Any] = {}
    for side in "AB":
        out["auto_choice"][f"coil20 {'1-10' if side == 'A' else '11-20'}"] = halves[side].auto().to_dict()
    for label, s_of in (
        ("plain", lambda side: PLAIN),
        ("auto", lambda side: AUTO),
        *[(m, (lambda side, m=m: settings_of(m, chosen[m]["B" if side == "A" else "A"]))) for m in GRID],
        *[(f"candidate {c.describe()}", (lambda side, c=c: c)) for c in CANDIDATES],
    ):
        scores = {side: halves[side].score(s_of(side)) for side in "AB"}
        halves_rows[label] = {
            "mAP": round((scores["A"]["mAP"] + scores["B"]["mAP"]) / 2, 4),
            "recall@1": round((scores["A"]["recall@1"] + scores["B"]["recall@1"]) / 2, 4),
            "by_half": scores,
            "settings": s_of("A").describe() + (" / " + s_of("B").describe() if label in GRID else ""),
        }
        print(f"coil20 halves {label:10s} {halves_rows[label]['mAP']}", flush=True)
    out["datasets"]["coil20_halves"] = halves_rows
    side_of: dict[str, str] = {}  # the half of COIL-20 whose choice of parameters a data set is scored with
    others = {
        "coil20": loo("coil20", coil, objects, args.depth),
        "coil20+weizmann": loo(
            "coil20+horses",
            np.vstack([coil, horses]),
            np.r_[objects, np.full(len(horses), -1)],
            args.depth,
            queries=np.arange(len(coil)),
        ),
    }
    if dups is not None:
        others["near_duplicates"] = loo("duplicates", dups[0], dups[1], args.depth)
    if args.coil_checkpoint is not None:
        # a network trained on objects 11-18 (19-20 validation: bench_train_coil20 --swap), scored on 1-10;
        # parameters chosen on half B (objects 11-20), which the network was trained on, not on the half scored
        from benchmarks.common import trained_config

        tag = f"coil20_1-10_trained_{args.coil_checkpoint.stem}"
        paths = [f for f, keep in zip(files, half_a) if keep]
        trained = embedded(tag, paths, args.cache, args.workers, model=trained_config(args.coil_checkpoint))
        others["coil20_trained_split"] = loo("coil20 trained", trained, objects[half_a], args.depth)
        side_of["coil20_trained_split"] = "B"
    if not args.no_composites:
        for name, segmenter in (("composites_whole", None), ("composites_masked", DEFAULT_SEGMENTER)):
            db_x, db_lab, q_x, q_lab = composites(args.cache, args.workers, segmenter)
            others[name] = Dataset(name, db_x, db_lab, np.arange(len(q_x)), args.depth, outside=(q_x, q_lab))
    lfw = RESULTS / "lfw_face_vectors.npz"
    if lfw.exists() and not args.no_lfw:
        from benchmarks.bench_face_clusters import centre_faces

        with np.load(lfw) as z:
            vecs, people, _, _ = centre_faces({k: z[k] for k in z.files})
        _, lab = np.unique(people, return_inverse=True)
        counts = np.bincount(lab)
        pool = np.flatnonzero(counts[lab] > 1)
        queries = np.sort(np.random.default_rng(args.seed).choice(pool, min(args.lfw_queries, pool.size), False))
        others["lfw_identification"] = Dataset("lfw", l2n(vecs), lab, queries, args.depth)
    for name, data in others.items():
        choice = data.auto()
        out["auto_choice"][name] = choice.to_dict()
        rows = {
            "plain": {**data.score(PLAIN), "settings": "none"},
            "auto": {**data.score(AUTO), "settings": choice.apply(AUTO).describe()},
        }
        for m in GRID:
            s = settings_of(m, chosen[m][side_of.get(name, "A")])
            rows[m] = {**data.score(s), "settings": s.describe()}
        for s in CANDIDATES:
            rows[f"candidate {s.describe()}"] = data.score(s)
        out["datasets"][name] = rows
        print(f"{name}: " + ", ".join(f"{k} {v['mAP']}" for k, v in rows.items()), flush=True)
    if not args.no_objects:
        out["datasets"].update(object_collections(args))
    return out


def object_collections(args: Any) -> dict[str, Any]:
    """``bench_objects``' collections (run it first: mosaics of 4 held-out composites each, the query composites
    searched; mask ``foreground``, with and without the per-object index), copied under ``--cache`` and searched
    through ``Collection.search`` with each collection default: plain, ``auto``, diffusion. Re-ranking applies to
    the image vectors; the objects collection then merges each image's best object match."""
    import shutil

    from benchmarks.bench_default_segmenter import ensure_set
    from benchmarks.bench_objects import Item, build_mosaics, score
    from indexer.engine import Collection
    from retrieval.config import RuntimeOptions

    work = RESULTS / "objects_bench"
    root = RESULTS / "heldout_composites_11-20"
    if not (work / "homes" / "objects").is_dir() or not (root / "manifest.json").exists():
        print("objects collections: not found (run python -m benchmarks.bench_objects first)", flush=True)
        return {}
    manifest = ensure_set(root, tuple(range(11, 21)), 0)
    # the same mosaics bench_objects made (seeded), built aside only to know what each one holds
    items = build_mosaics(manifest, root, args.cache / "objects_mosaics", 2, 0)
    for item in items:
        item.path = (work / "mosaics" / item.path.name).resolve()
    queries = [
        Item(root / r.image, [(r.object, (r.x, r.y, r.width, r.height))])
        for r in manifest.records
        if r.split == "queries"
    ]
    out: dict[str, Any] = {}
    for name in ("masked", "objects"):
        home = args.cache / "objects_homes" / name
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(work / "homes" / name, home)
        coll = Collection(home, create=False, runtime=RuntimeOptions(device="cpu", workers=args.workers))
        rows: dict[str, Any] = {}
        for label, s in (("plain", PLAIN), ("auto", AUTO), ("diffusion", DIFFUSION)):
            coll.configure(rerank=s)
            used = coll.auto_choice(s).apply(s) if s.method == "auto" else s
            rows[label] = {**score(coll, queries, items, region=False), "settings": used.describe()}
        out[f"objects_bench_{name}"] = rows
        print(f"objects_bench_{name}: " + ", ".join(f"{k} {v['mAP']}" for k, v in rows.items()), flush=True)
    return out


# --------------------------------------------------------------------------------------------- cost


def percentile_ms(laps: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(laps, q)), 2)


def cost(args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        kind = args.index_kind_1m if n >= 1_000_000 and args.index_kind_1m else args.index_kind
        out[str(n)] = cost_at(n, kind, args)
        print(json.dumps({n: out[str(n)]}), flush=True)
    return out


def cost_at(n: int, kind: str, args: Any) -> dict[str, Any]:
    """The cost figures at ``n`` vectors in an index of ``kind`` (see the module's docstring)."""
    from benchmarks.bench_search import make_dataset
    from indexer.knn_graph import GraphFile

    tag = f"{n}_{kind}"
    store = args.cache / f"cost_{tag}"
    store.mkdir(parents=True, exist_ok=True)
    db, queries = make_dataset(n, args.queries, 256, 3000, 0.5, 0.6, 0.05, args.seed)
    ids = np.arange(n, dtype=np.int64)
    vectors_of = lambda i: db[np.asarray(i)]
    built_path = store / "built.json"
    built = json.loads(built_path.read_text()) if built_path.exists() else {}
    cfg = IndexConfig(kind=kind)
    if (store / "index.faiss").exists() and built:
        index = VectorIndex.load(store / "index.faiss", cfg)
    else:
        load = loadavg()
        with Stopwatch() as clock:
            index = VectorIndex.build(ids, db, cfg)
        index.save(store / "index.faiss")
        built = {"index_kind": index.kind, "index_build_s": round(clock.seconds, 1), "index_loadavg": load}
        built_path.write_text(json.dumps(built))
    settings = DEFAULT
    graph_k = max(settings.graph_k, settings.dba_k, 16)
    graph_file = store / "graph.npz"
    graph = GraphFile(graph_file).load()
    if graph is None:
        load = loadavg()
        with Stopwatch() as clock:
            graph, _ = update_graph(None, index, ids, np.full(n, "0"), vectors_of, "bench", 0, graph_k)
        GraphFile(graph_file).save(graph)
        built.update(graph_build_s=round(clock.seconds, 1), graph_loadavg=load, graph_k=graph_k)
        built_path.write_text(json.dumps(built))
    dba_settings = dataclasses.replace(settings, method="dba")
    load = loadavg()
    with Stopwatch() as clock:
        dba, _ = update_dba(None, graph, vectors_of, dba_settings)
    built.update(dba_build_s=round(clock.seconds, 1), dba_loadavg=load)
    row: dict[str, Any] = {
        **built,
        "graph_mb": round((graph.nbr.nbytes + graph.sim.nbytes) / 2**20, 1),
        "dba_mb": round(dba.vectors.nbytes / 2**20, 1),
        "vectors_mb": round(db.nbytes / 2**20, 1),
        "latency": {},
    }
    # one query at a time, every method in turn (interleaved: drift affects all alike)
    methods = {
        "none": PLAIN,
        "qe": dataclasses.replace(settings, method="qe"),
        "dba": dba_settings,
        "diffusion": dataclasses.replace(settings, method="diffusion"),
        "auto": AUTO,
    }
    row["auto_choice"] = graph_auto_choice(graph, AUTO).to_dict()
    load = loadavg()
    with Stopwatch() as clock:  # what an index run pays for auto when the collection keeps no graph
        sampled = sampled_auto_choice(index, ids, vectors_of, AUTO)
    row["auto_choice_sampled"] = {**sampled.to_dict(), "seconds": round(clock.seconds, 2), "loadavg": load}
    laps: dict[str, list[float]] = {m: [] for m in methods}
    load_before = loadavg()
    for q in queries[:5]:  # warm-up
        for s in methods.values():
            rerank_search(index, q[None], 10, s, lambda _k: graph, lambda: dba, vectors_of)
    for q in queries:
        for name, s in methods.items():
            t0 = time.perf_counter()
            rerank_search(index, q[None], 10, s, lambda _k: graph, lambda: dba, vectors_of)
            laps[name].append(time.perf_counter() - t0)
    for name, s in methods.items():
        row["latency"][name] = {
            "settings": s.describe(),
            "p50_ms": percentile_ms(laps[name], 50),
            "p95_ms": percentile_ms(laps[name], 95),
        }
    row["latency_loadavg"] = [load_before, loadavg()]
    # 1% of the collection changes: new vectors in place of old ones
    rng = np.random.default_rng(args.seed + 1)
    changed = np.sort(rng.choice(n, max(1, n // 100), replace=False))
    db[changed] = make_dataset(changed.size, 1, 256, 3000, 0.5, 0.6, 0.05, args.seed + 2)[0]
    index.remove(changed)
    index.add(changed, db[changed])
    fingerprints = np.full(n, "0")
    fingerprints[changed] = "1"
    load = loadavg()
    with Stopwatch() as g_clock:
        graph2, searched = update_graph(graph, index, ids, fingerprints, vectors_of, "bench", 1, graph_k)
    with Stopwatch() as d_clock:
        _, recomputed = update_dba(dba, graph2, vectors_of, dba_settings)
    row["update_after_1pct"] = {
        "changed": int(changed.size),
        "graph_s": round(g_clock.seconds, 2),
        "graph_searched": searched,
        "dba_s": round(d_clock.seconds, 2),
        "dba_rows_recomputed": recomputed,
        "loadavg": load,
    }
    row["peak_rss_gb"] = peak_rss_gb()
    return row


DEFAULT = RerankSettings()
#: plain search, ``auto`` with the shipped parameters, and the diffusion it may choose
PLAIN = dataclasses.replace(DEFAULT, method="none")
AUTO = dataclasses.replace(DEFAULT, method="auto")
DIFFUSION = dataclasses.replace(DEFAULT, method="diffusion")


def main() -> None:
    p = BenchParser(__doc__, threads=2, threads_for=("torch", "faiss"), workers=2, seed=0, out="rerank.json")
    p.add_argument("--part", choices=["quality", "cost"], default="quality")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"vectors and built indexes ({DEFAULT_CACHE})")
    p.add_argument("--depth", type=int, default=1000, help="ranking depth scored (default 1000)")
    p.add_argument("--lfw-queries", type=int, default=2000)
    p.add_argument("--no-lfw", action="store_true")
    p.add_argument("--no-composites", action="store_true")
    p.add_argument("--no-objects", action="store_true", help="leave out bench_objects' collections")
    p.add_argument(
        "--coil-checkpoint",
        type=Path,
        default=None,
        help="a network trained on COIL-20 objects 11-18 (bench_train_coil20 --swap --out CKPT): scored on 1-10",
    )
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--queries", type=int, default=200, help="cost: timed queries (default 200)")
    p.add_argument("--index-kind", default="auto", help="cost: index kind (default: the collection's choice)")
    p.add_argument("--index-kind-1m", default=None, help="cost: index kind at 1M and more (default: --index-kind)")
    args = p.parse_args()
    started = loadavg()
    payload: dict[str, Any] = {
        "benchmark": f"rerank_{args.part}",
        "default": DEFAULT.to_dict(),
        "machine": machine(when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())),
        "loadavg_start": started,
    }
    payload["results"] = quality(args) if args.part == "quality" else cost(args)
    payload["loadavg_end"] = loadavg()
    payload["peak_rss_gb"] = peak_rss_gb()
    out = args.out if args.out != "rerank.json" else f"rerank_{args.part}.json"
    write_json(out, payload)


if __name__ == "__main__":
    main()
