"""Face clustering on all of LFW: each algorithm side by side, parameters chosen on other people than those scored.

Faces: the vectors cached by ``python -m benchmarks.lfw_face_vectors`` (YuNet + SFace, every face of the 13,233
deep-funneled photos; run it first, once). Each photo's labelled face is the detected face nearest the photo's
centre (LFW photos are 250 x 250, centred on the person named). Scores: pairwise precision / recall / F1 and
BCubed precision / recall / F1 (``retrieval.faces.clustering``; an unclustered face is a cluster of one), the
number of clusters (of at least 2 faces) against the number of people with at least 2 photos, and the time.

Parameters: LFW's people, sorted by name, alternate between half A and half B. Each algorithm's parameters are
chosen on one half (grid search, best mean of the two F1s) and scored on the other, both ways round; Immich's
DBSCAN keeps Immich's defaults (``maxDistance`` 0.5, ``minFaces`` 3; ``server/src/config.ts``). Then all 13,233
photos are clustered at once with the parameters chosen on half A (whose people are among them: for scale), and
last every face detected in them (other faces of a photo are distractors; faces of one photo cannot be one
person), scoring the labelled faces.

    python -m benchmarks.lfw_face_vectors        # once, ~10-20 min on 2 cores
    python -m benchmarks.bench_face_clusters
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from benchmarks.common import BenchParser, machine, write_json
from benchmarks.lfw_face_vectors import CACHE
from retrieval.faces.clustering import (
    ClusterParams,
    bcubed_scores,
    cluster_faces,
    immich_params,
    knn_graph,
    pairwise_scores,
    relabel,
)

#: The grid: thresholds 0.20-0.65 by 0.05, then by 0.0125 around the best; clusters of at least 2 or 3 faces;
#: DBSCAN's core size 2 or 3 (scored from one run per threshold: ``min_size`` only dissolves small clusters).
COARSE = [round(t, 4) for t in np.arange(0.20, 0.651, 0.05)]
FINE = (-0.0375, -0.025, -0.0125, 0.0125, 0.025, 0.0375)
MIN_SIZES = (2, 3)
MIN_SAMPLES = {"agglomerative": (3,), "chinese_whispers": (3,), "dbscan": (2, 3), "hdbscan": (1, 2, 3)}
PHOTO_SIDE = 250


def centre_faces(cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per photo with a face: its face nearest the photo's centre -> ``(vectors, person names, photo indexes,
    face indexes)``."""
    photo, boxes, vectors = cache["photo"], cache["boxes"], cache["vectors"]
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    dist = np.linalg.norm(centres - PHOTO_SIDE / 2, axis=1)
    order = np.lexsort((dist, photo))
    first = order[np.r_[True, photo[order][1:] != photo[order][:-1]]]
    return vectors[first], cache["people"][photo[first]], photo[first], first


def score(people: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    pw, b3 = pairwise_scores(people, labels), bcubed_scores(people, labels)
    _, counts = np.unique(people, return_counts=True)
    return {
        "pairwise_precision": pw["precision"],
        "pairwise_recall": pw["recall"],
        "pairwise_f1": pw["f1"],
        "bcubed_precision": b3["precision"],
        "bcubed_recall": b3["recall"],
        "bcubed_f1": b3["f1"],
        "clusters": len(np.unique(labels[labels >= 0])),
        "people_with_2_photos": int((counts >= 2).sum()),
        "people": len(counts),
        "faces": len(labels),
        "unclustered": int((labels < 0).sum()),
    }


def run(vectors: np.ndarray, people: np.ndarray, params: ClusterParams, graph: Any = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    labels = cluster_faces(vectors, params, graph=graph)
    return {**score(people, labels), "seconds": time.perf_counter() - t0}


def tune(vectors: np.ndarray, people: np.ndarray, algorithm: str, k: int) -> tuple[ClusterParams, dict[str, Any]]:
    """The grid point with the best mean of pairwise and BCubed F1 on these faces."""
    graph = knn_graph(vectors, k)
    tried: dict[tuple[float, int], np.ndarray] = {}
    best: tuple[float, ClusterParams, dict[str, Any]] | None = None

    def at(threshold: float, samples: int) -> None:
        nonlocal best
        if (threshold, samples) in tried or not -1 <= threshold <= 1:
            return
        raw = ClusterParams(algorithm=algorithm, k=k, threshold=threshold, min_samples=samples, min_size=1)
        tried[threshold, samples] = labels = cluster_faces(vectors, raw, graph=graph)
        for m in MIN_SIZES:
            if algorithm == "hdbscan":  # its minimum cluster size shapes the tree: one run each
                labels = cluster_faces(vectors, dataclasses.replace(raw, min_size=m), graph=graph)
            r = score(people, relabel(labels, m))
            key = (r["pairwise_f1"] + r["bcubed_f1"]) / 2
            if best is None or key > best[0]:
                best = (key, dataclasses.replace(raw, min_size=m), r)

    for t in COARSE + ([-1.0, 0.0, 0.1] if algorithm == "hdbscan" else []):
        for samples in MIN_SAMPLES[algorithm]:
            at(t, samples)
    assert best is not None
    centre = best[1]
    for d in FINE:
        at(round(centre.threshold + d, 4), centre.min_samples)
    return best[1], best[2]


def incremental(vectors: np.ndarray, people: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The library's path (:class:`indexer.face_clusters.FaceClusters` on a gallery's database, default parameters):
    a random half of the photos' faces clustered, then the other half added and clustered incrementally (they join
    the people found or form new ones); scored on all faces, beside clustering everything at once."""
    import tempfile

    from sqlalchemy import insert, select

    from indexer.db import FaceRecord
    from indexer.face_clusters import FaceClusters
    from indexer.faces import INDEX, FaceGallery

    first = np.random.default_rng(seed).random(len(vectors)) < 0.5
    out: dict[str, Any] = {"first_batch": int(first.sum()), "second_batch": int((~first).sum())}
    with tempfile.TemporaryDirectory() as home:
        gallery = FaceGallery(home)
        clusters = FaceClusters(gallery)

        def add(rows: np.ndarray) -> None:
            with gallery.session() as s, s.begin():
                s.execute(
                    insert(FaceRecord),
                    [
                        dict(
                            id=int(i) + 1,
                            source=INDEX,
                            photo_id=int(i) + 1,
                            path=f"{i}.jpg",
                            x0=0.0,
                            y0=0.0,
                            x1=1.0,
                            y1=1.0,
                            vector=vectors[i].astype(np.float32).tobytes(),
                        )
                        for i in rows
                    ],
                )

        add(np.flatnonzero(first))
        out["first"] = dataclasses.asdict(clusters.cluster())
        add(np.flatnonzero(~first))
        out["second"] = dataclasses.asdict(clusters.cluster())
        with gallery.session() as s:
            got = dict(s.execute(select(FaceRecord.id, FaceRecord.cluster_id)).all())
        labels = np.array([got.get(i + 1) if got.get(i + 1) is not None else -1 for i in range(len(vectors))])
        out["incremental"] = score(people, labels)
        out["at_once"] = run(vectors, people, clusters.params)
    return out


def main() -> None:
    parser = BenchParser(__doc__, threads=2, threads_for=("faiss",), out="face_clusters.json")
    parser.add_argument("--cache", default=str(CACHE), help=f"face vectors (default {CACHE})")
    parser.add_argument("--k", type=int, default=32, help="neighbours per face in the graph (default 32)")
    parser.add_argument("--algorithms", default="agglomerative,chinese_whispers,dbscan,hdbscan")
    parser.add_argument("--skip-incremental", action="store_true", help="leave out the incremental run")
    parser.add_argument("--incremental-only", action="store_true", help="only the incremental run")
    args = parser.parse_args()
    cache = np.load(args.cache)
    vectors, people, _, centre = centre_faces(cache)
    names = np.unique(people)
    half_a = np.isin(people, names[0::2])
    halves = {"A": half_a, "B": ~half_a}
    if args.incremental_only:
        write_json(args.out, {"incremental": incremental(vectors, people), "machine": machine()})
        return
    algorithms = [a for a in args.algorithms.split(",") if a]
    result: dict[str, Any] = {
        "data": "LFW deep-funneled, every photo's face nearest the centre",
        "pipeline": str(cache["pipeline"]),
        "photos": len(cache["paths"]),
        "photos_with_a_face": len(vectors),
        "immich_defaults": {
            "source": "immich-app/immich server/src/config.ts (machineLearning.facialRecognition: maxDistance 0.5, "
            "minFaces 3) and server/src/services/person.service.ts (handleRecognizeFaces)",
            "params": immich_params().to_dict(),
        },
        "k": args.k,
        "tuned": {},
        "cross": {},
        "all": {},
        "machine": machine(load_average=list(__import__("os").getloadavg())),
    }
    chosen: dict[str, dict[str, ClusterParams]] = {}
    for tune_on, test_on in (("A", "B"), ("B", "A")):
        tv, tp = vectors[halves[tune_on]], people[halves[tune_on]]
        sv, sp = vectors[halves[test_on]], people[halves[test_on]]
        cross: dict[str, Any] = {"immich": run(sv, sp, immich_params())}
        for algorithm in algorithms:
            params, on_tuning = tune(tv, tp, algorithm, args.k)
            chosen.setdefault(algorithm, {})[tune_on] = params
            result["tuned"].setdefault(algorithm, {})[tune_on] = {
                "params": params.to_dict(),
                "on_tuning_half": on_tuning,
            }
            cross[algorithm] = {"params": params.to_dict(), **run(sv, sp, params)}
            print(f"tuned on {tune_on}, scored on {test_on}: {algorithm} {cross[algorithm]}", flush=True)
        result["cross"][f"tuned on {tune_on}, scored on {test_on}"] = cross
    result["all"]["immich"] = run(vectors, people, immich_params())
    for algorithm in algorithms:
        params = chosen[algorithm]["A"]
        result["all"][algorithm] = {"params": params.to_dict(), **run(vectors, people, params)}
    # every detected face clustered (the other faces of a photo are distractors, never its person), the
    # labelled faces scored
    every, photos = cache["vectors"], cache["photo"]
    result["all_faces"] = {"faces": len(every)}
    for name, params in [("immich", immich_params()), *[(a, chosen[a]["A"]) for a in algorithms]]:
        t0 = time.perf_counter()
        labels = cluster_faces(every, params, photos)
        result["all_faces"][name] = {**score(people, labels[centre]), "seconds": time.perf_counter() - t0}
    # the mean of both directions, per algorithm
    summary = {}
    for name in ["immich", *algorithms]:
        rows = [c[name] for c in result["cross"].values()]
        summary[name] = {m: float(np.mean([r[m] for r in rows])) for m in ("pairwise_f1", "bcubed_f1")}
    result["cross_mean"] = summary
    if not args.skip_incremental:
        result["incremental"] = incremental(vectors, people)
        print(f"incremental: {result['incremental']['incremental']} at once: {result['incremental']['at_once']}")
    result["grid"] = {"coarse": COARSE, "fine": FINE, "min_sizes": MIN_SIZES, "min_samples": MIN_SAMPLES}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
