"""The duplicates benchmark's candidate pairs, one by one: what the geometric check says of each, and which true
pairs it misses. A study aid for ``indexer/verify.py`` (run ``python -m benchmarks.bench_duplicates`` first: it
builds the set and indexes it in ``--work``).

For every pair of the collection's k-NN graph (16 neighbours) at cosine >= ``--min-cos``, and every true pair
(an original and its copies), the cosine, the inlier count of the current check (``indexer.verify``), the two
pictures' sizes and whether the pair is true. Reported: the best recall at precision >= 0.99 that any
(candidate cosine, inlier count) rule reaches on these pairs (chosen on the benchmark itself: an upper bound for
the calibrated rule, never used by it), the true pairs that rule misses, and the different pictures with the
most inliers.

Run: ``python -m benchmarks.bench_duplicates_pairs [--min-cos 0.6]``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_duplicates import group_pairs, source_duplicates
from benchmarks.common import RESULTS, BenchParser, machine, write_json
from benchmarks.timing import Stopwatch, loadavg
from indexer.duplicates import DuplicateFinder
from indexer.engine import Collection
from indexer.verify import Verifier
from retrieval.config import RuntimeOptions


def best_rule(cos: np.ndarray, inl: np.ndarray, true: np.ndarray, target: float = 0.99) -> dict:
    """The (candidate cosine, min inliers) rule with the highest recall at precision >= ``target``."""
    best = {"recall": 0.0, "candidate_cos": None, "min_inliers": None}
    for tc in np.round(np.arange(0.5, 0.80, 0.05), 2):
        for m in range(4, 200):
            acc = (cos >= tc) & (inl >= m)
            tp, fp = int((acc & true).sum()), int((acc & ~true).sum())
            if tp and tp / (tp + fp) >= target and tp / true.sum() > best["recall"]:
                best = {"recall": round(tp / int(true.sum()), 4), "candidate_cos": float(tc), "min_inliers": m}
    return best


def main() -> None:
    p = BenchParser(__doc__, threads=2, out="duplicates_pairs.json")
    p.add_argument("--work", type=Path, default=RESULTS / "duplicates-set")
    p.add_argument("--min-cos", type=float, default=0.6)
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs (a quick look)")
    args = p.parse_args()
    load_before = loadavg()
    manifest = json.loads((args.work / "manifest.json").read_text())
    pos = {m["path"]: i for i, m in enumerate(manifest)}
    same = source_duplicates(manifest)
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(manifest):
        groups.setdefault(same.get(m["group"], m["group"]), []).append(i)
    truth = group_pairs(list(groups.values()))

    coll = Collection(args.work / "home", runtime=RuntimeOptions(device="cpu", workers=1))
    ids, vecs = coll.vectors()
    rows = DuplicateFinder(coll)._rows(ids)
    order = np.array([pos[p] for p in rows.paths])
    size = {int(order[k]): [int(rows.width[k]), int(rows.height[k])] for k in range(len(order))}
    v = np.zeros_like(vecs)
    v[order] = vecs
    graph = coll.knn_graph(16)
    a, b, s = graph.edges(args.min_cos, 16)
    pa, pb = order[np.searchsorted(ids, graph.ids[a])], order[np.searchsorted(ids, graph.ids[b])]
    cand = {(int(min(x, y)), int(max(x, y))): float(c) for x, y, c in zip(pa, pb, s)}
    for i, j in truth:
        cand.setdefault((i, j), float(v[i] @ v[j]))
    pairs = sorted(cand)[: args.limit]
    verifier = Verifier()
    with Stopwatch() as clock:
        inl = np.array([verifier.inliers(manifest[i]["path"], manifest[j]["path"]) for i, j in pairs])
    cos = np.array([cand[q] for q in pairs])
    true = np.array([q in truth for q in pairs])
    rule = best_rule(cos, inl, true)

    def row(k: int) -> dict:
        i, j = pairs[k]
        return {
            "a": Path(manifest[i]["path"]).name,
            "b": Path(manifest[j]["path"]).name,
            "cos": round(float(cos[k]), 4),
            "inliers": int(inl[k]),
            "size_a": size[i],
            "size_b": size[j],
        }

    missed = [
        row(k)
        for k in np.argsort(cos)
        if true[k] and (rule["candidate_cos"] is None or cos[k] < rule["candidate_cos"] or inl[k] < rule["min_inliers"])
    ]
    false_best = [row(k) for k in np.argsort(-inl) if not true[k]][:30]
    write_json(
        args.out,
        {
            "benchmark": "duplicates_pairs",
            "verify_rule": verifier.settings.describe(),
            "pairs": len(pairs),
            "true_pairs": int(true.sum()),
            "check_seconds": round(clock.seconds, 1),
            "best_rule_on_the_benchmark": rule,
            "missed_true_pairs": missed,
            "different_pictures_most_inliers": false_best,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "machine": machine(when=time.strftime("%Y-%m-%d %H:%M")),
        },
    )


if __name__ == "__main__":
    main()
