"""Whole image vs. the true object mask on the composites set: how much could perfect masking gain?

Protocol: the set written by ``python -m benchmarks.composites OUT`` (see that module: COIL-20 objects pasted
onto shared Weizmann-horse background patches; queries in poses and on backgrounds their object never has in the
database, while 16 database distractors per query share its exact background). Each composite is decoded with
the library's decoder, resized as indexing does (``indexer.imageio.load_image(path, image_size)``, 256 -> 224) and
embedded by the default model (``Embedder(ModelConfig())``: EfficientNet-Lite0 ImageNet + GeM, L2) twice: without
a mask (whole image), and with its true mask from ``masks/`` (bilinearly resized to the same size, values in
[0, 1], passed to the pooling, which averages the feature map under it). Scores: ``query_database_metrics``
(queries vs database, same object = relevant): mAP, recall@1/5/10, precision@k; and ``top1_same_background``,
the share of queries whose first result shows the query's own background patch (always a wrong object here).
Queries and database are masked alike (the engine masks both or neither). Threads: ``--threads`` (default 1).

Output: JSON on stdout, written to ``benchmarks/results/composites_oracle.json``.

    python -m benchmarks.composites benchmarks/results/composites        # build the set once (seed 0)
    python -m benchmarks.bench_composites_oracle benchmarks/results/composites
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import BenchParser, machine, write_json
from benchmarks.composites import CompositeRecord, Manifest
from benchmarks.timing import Stopwatch
from indexer.imageio import load_image
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.metrics import query_database_metrics
from retrieval.model import Embedder


def load(root: Path, record: CompositeRecord, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """-> pixels ``(h, w, 3) uint8`` resized as indexing does, and the true mask ``(h, w) float32`` in [0, 1]."""
    pixels = load_image(root / record.image, image_size).pixels
    with Image.open(root / record.mask) as im:
        mask = im.convert("L").resize((pixels.shape[1], pixels.shape[0]), Image.Resampling.BILINEAR)
    return pixels, np.asarray(mask, dtype=np.float32) / 255.0


def embed(embedder: Embedder, root: Path, records: list[CompositeRecord], masked: bool, batch: int = 16) -> np.ndarray:
    """``records`` -> ``(N, D)`` vectors, with or without their true masks (images of one size batch together)."""
    out: list[np.ndarray] = []
    for start in range(0, len(records), batch):
        items = [load(root, r, embedder.config.image_size) for r in records[start : start + batch]]
        shapes = {p.shape for p, _ in items}
        if len(shapes) == 1:
            pixels = np.stack([p for p, _ in items])
            masks = np.stack([m for _, m in items]) if masked else None
            out.append(embedder.embed_batch(pixels, masks))
        else:
            out.extend(embedder.embed_batch(p[None], m[None] if masked else None) for p, m in items)
    return np.concatenate(out)


def top1_same_background(
    q_vecs: np.ndarray, db_vecs: np.ndarray, queries: list[CompositeRecord], database: list[CompositeRecord]
) -> float:
    best = np.argmax(q_vecs @ db_vecs.T, axis=1)
    return float(np.mean([database[b].background == q.background for q, b in zip(queries, best)]))


def main() -> None:
    ap = BenchParser(__doc__, threads=1, out="composites_oracle.json")
    ap.add_argument("folder", type=Path, help="a set built by benchmarks.composites (holds manifest.json)")
    args = ap.parse_args()
    manifest = Manifest.load(args.folder / "manifest.json")
    queries = [r for r in manifest.records if r.split == "queries"]
    database = [r for r in manifest.records if r.split == "database"]
    q_labels = [r.object for r in queries]
    db_labels = [r.object for r in database]
    config = ModelConfig()
    embedder = Embedder(config, RuntimeOptions(device="cpu"))
    vecs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    results: dict[str, dict[str, float]] = {}
    with Stopwatch() as clock:
        for name, masked in (("whole_image", False), ("oracle_mask", True)):
            q = embed(embedder, args.folder, queries, masked)
            d = embed(embedder, args.folder, database, masked)
            vecs[name] = (q, d)
            m = query_database_metrics(q, q_labels, d, db_labels)
            results[name] = {
                **{k: round(v, 4) for k, v in m.items()},
                "top1_same_background": round(top1_same_background(q, d, queries, database), 4),
            }
    write_json(
        args.out,
        {
            "benchmark": "composites_oracle",
            "folder": str(args.folder),
            "model": config.to_dict(),
            "dataset": {
                "seed": manifest.config.seed,
                "queries": len(queries),
                "database": len(database),
                "objects": len(manifest.config.objects),
                "backgrounds": len(manifest.backgrounds),
                "mean_mask_cover": round(float(np.mean([r.mask_cover for r in manifest.records])), 4),
            },
            "results": results,
            "gain_mAP": round(results["oracle_mask"]["mAP"] - results["whole_image"]["mAP"], 4),
            "seconds": round(clock.seconds, 1),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
